"""_runtime.py: the process's moejit contexts and plan cache.

Uses _capi for the C handles. This is the binding's only mutable state:
  - one moejit_ctx per CUDA device, created on the first forward on that device;
  - a cache of plans keyed by PlanKey (device, shape, dtypes, routing form, alpha, limit, f32
    biases, exact f32, weight format, activation, gate/up layout, no biases, batch invariance:
    every field of moejit_layer_desc the binding sets, but max_tokens), each key
    holding plans of growing max_tokens. A forward of T tokens takes the smallest cached plan with
    max_tokens >= T, else creates one with max_tokens = bucket(T), a power of two, so one plan
    serves every batch size up to it. (A plan's kernels do not depend on max_tokens today: it only
    bounds T; the workspace is sized per call from the real T.)
Both live until clear() or the end of the process, behind one lock (plan creation is not
thread-safe on a context; forwards on a plan are).
"""
from __future__ import annotations

import threading
from typing import Dict, List, NamedTuple, Optional, Tuple

from ._capi import Activation, Context, DType, GateUpLayout, LayerDesc, Plan, Routing, WeightFormat, \
    load_library

__all__ = ["PlanKey", "bucket", "cached_plans", "clear", "context", "layer_desc", "plan_for"]

# The smallest max_tokens a plan is created with: plans cost seconds of NVRTC, and one made for a
# single decode token would be replaced at the first prefill.
MIN_BUCKET = 1024
# plan.c accepts max_tokens in [1, INT32_MAX / 32].
MAX_TOKENS_LIMIT = (2**31 - 1) // 32


class PlanKey(NamedTuple):
    """What a plan is specialised for, apart from max_tokens: one field for each field of
    moejit_layer_desc that the binding sets (layer_desc() writes them all), so that two layers
    differing in any of them never share a plan."""

    device: int
    hidden: int
    intermediate: int
    experts: int
    top_k: int
    dtype: DType
    ids_dtype: DType
    weights_dtype: DType
    routing: Routing
    alpha: float  # as the C float holds it
    limit: float
    bias_f32: bool = False  # f32 biases with f16 / bf16 activations
    exact_f32: bool = False  # f32 layers: exact FFMA instead of TF32
    weight_format: WeightFormat = WeightFormat.DENSE  # MXFP4: the checkpoint's blocks and scales
    activation: Activation = Activation.SWIGLU_OAI
    gate_up_layout: GateUpLayout = GateUpLayout.INTERLEAVED
    no_bias: bool = False  # no biases: the forward's bias pointers are NULL
    batch_invariant: bool = False  # a token's output bits never depend on its batch


def bucket(tokens: int) -> int:
    """max_tokens of a new plan for `tokens` tokens: the next power of two, at least MIN_BUCKET,
    at most the library's limit (beyond it, `tokens` itself, which the library then rejects with
    a message naming desc->max_tokens)."""
    b = MIN_BUCKET
    while b < tokens:
        b *= 2
    if b > MAX_TOKENS_LIMIT:
        b = MAX_TOKENS_LIMIT if tokens <= MAX_TOKENS_LIMIT else tokens
    return b


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.contexts: Dict[int, Context] = {}
        self.plans: Dict[PlanKey, List[Plan]] = {}


_state = _State()


def _context_locked(device: int) -> Context:
    ctx = _state.contexts.get(device)
    if ctx is None:
        ctx = load_library().create_context(device)
        _state.contexts[device] = ctx
    return ctx


def context(device: int) -> Context:
    """The moejit context of CUDA device `device`, created on first use. Raises MoejitError."""
    with _state.lock:
        return _context_locked(device)


def layer_desc(key: PlanKey, max_tokens: int) -> LayerDesc:
    """The moejit_layer_desc of a plan of `key` for up to max_tokens tokens (library defaults for
    the fields a key does not set). Loads the library; needs no GPU."""
    d = load_library().layer_desc()
    d.hidden, d.intermediate, d.experts, d.top_k = key.hidden, key.intermediate, key.experts, key.top_k
    d.max_tokens = max_tokens
    d.dtype, d.ids_dtype, d.weights_dtype = int(key.dtype), int(key.ids_dtype), int(key.weights_dtype)
    d.routing = int(key.routing)
    d.alpha, d.limit = key.alpha, key.limit
    d.bias_f32, d.exact_f32 = int(key.bias_f32), int(key.exact_f32)
    d.weight_format = int(key.weight_format)
    d.activation, d.gate_up_layout = int(key.activation), int(key.gate_up_layout)
    d.no_bias, d.batch_invariant = int(key.no_bias), int(key.batch_invariant)
    return d


def lookup(key: PlanKey, tokens: int) -> Optional[Plan]:
    """The cached plan that serves `tokens` tokens of `key`, or None."""
    with _state.lock:
        for plan in _state.plans.get(key, ()):
            if plan.max_tokens >= tokens:
                return plan
    return None


def plan_for(key: PlanKey, tokens: int) -> Plan:
    """The smallest cached plan of `key` with max_tokens >= tokens, else a new one (compiles: may
    take seconds). Raises MoejitError from moejit_create / moejit_plan_create."""
    with _state.lock:
        plans = _state.plans.setdefault(key, [])
        for plan in plans:
            if plan.max_tokens >= tokens:
                return plan
        ctx = _context_locked(key.device)
        plan = ctx.create_plan(layer_desc(key, bucket(tokens)))
        plans.append(plan)
        plans.sort(key=lambda p: p.max_tokens)
        return plan


def cached_plans() -> List[Tuple[PlanKey, int]]:
    """(key, max_tokens) of every cached plan."""
    with _state.lock:
        return [(k, p.max_tokens) for k, ps in _state.plans.items() for p in ps]


def clear() -> None:
    """Destroys every cached plan and context (after synchronising their devices). A CUDA graph
    that captured a moejit forward must not be replayed afterwards: its kernels are unloaded."""
    with _state.lock:
        if _state.contexts:
            import torch  # only here: the cache holds something, so torch has run a forward

            for device in _state.contexts:
                torch.cuda.synchronize(device)
        for plans in _state.plans.values():
            for plan in plans:
                plan.close()
        _state.plans.clear()
        for ctx in _state.contexts.values():
            ctx.close()
        _state.contexts.clear()
