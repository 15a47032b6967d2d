"""_ops.py: moejit.experts, the MoE expert layer (GPT-OSS's by default) on torch tensors.

Checks the tensors (device, dtype, shape, contiguity: a ValueError names the argument), then calls
the custom op torch.ops.moejit.experts (torch.library, CUDA, with a fake implementation for
torch.compile), which checks alignment, finds or creates the plan (_runtime), allocates the output
and the workspace from torch's caching allocator and launches moejit_forward on torch's current
stream. The expert weights are dense (in the activation dtype) or MXFP4: the gpt-oss checkpoint's
uint8 blocks and e8m0 scales, passed to the library as they are (no repacking, no dense copy). The
activation (moejit.Activation), where gate and up sit (moejit.GateUpLayout), the biases (both or
none) and batch invariance are the layer's too: each is in the plan key.
Uses torch (imported with this module, which moejit imports lazily).
"""
from __future__ import annotations

import ctypes
import math
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch

from . import _runtime
from ._capi import Activation, DType, GateUpLayout, Routing, WeightFormat, load_library

__all__ = ["MXFP4_ACTIVATION_DTYPES", "check_biases", "experts", "gate_up_spelling",
           "mxfp4_layer", "parse_batch_invariant"]

_ACTIVATION_DTYPES: Dict[torch.dtype, DType] = {
    torch.float32: DType.F32,
    torch.float16: DType.F16,
    torch.bfloat16: DType.BF16,
}
_IDS_DTYPES: Dict[torch.dtype, DType] = {torch.int32: DType.I32, torch.int64: DType.I64}
_WEIGHTS_DTYPES = _ACTIVATION_DTYPES

# The activation dtypes MXFP4 weights run with (their weights are decoded to it).
MXFP4_ACTIVATION_DTYPES = (torch.bfloat16, torch.float16)
# MXFP4: 32 weights a block, 16 bytes of e2m1 codes and one e8m0 scale byte.
_MXFP4_BLOCK = 32

# The GEMMs load 16-byte vectors of x and of both weight tensors, and MXFP4 GEMM tiles their rows'
# scales in 16-byte pieces (moejit_forward checks it too).
_VECTOR_ALIGN = 16
_WORKSPACE_ALIGN = 256


def _fail(name: str, what: str) -> ValueError:
    return ValueError(f"{name}: {what}")


def _check_tensor(name: str, t: object, device: torch.device) -> torch.Tensor:
    """t is a contiguous tensor on `device`."""
    if not isinstance(t, torch.Tensor):
        raise _fail(name, f"expected a torch.Tensor, got {type(t).__name__}")
    if t.device != device:
        raise _fail(name, f"is on {t.device}, but hidden_states is on {device}; all tensors must be "
                          "on the same CUDA device")
    if not t.is_contiguous():
        raise _fail(name, f"must be contiguous (shape {list(t.shape)}, strides {list(t.stride())}); "
                          f"pass {name}.contiguous()")
    return t


def _check_dtype(name: str, t: torch.Tensor, allowed: Sequence[torch.dtype], why: str = "") -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d) for d in allowed)
        raise _fail(name, f"has dtype {t.dtype}; expected {names}{why}")


def _check_shape(name: str, t: torch.Tensor, want: Tuple[int, ...], spelled: str) -> None:
    if tuple(t.shape) != want:
        raise _fail(name, f"has shape {list(t.shape)}; expected {spelled} = {list(want)}")


def _check_aligned(name: str, t: torch.Tensor, align: int) -> None:
    if t.data_ptr() % align != 0:
        raise _fail(name, f"data pointer {t.data_ptr():#x} is not {align}-byte aligned (a view with a "
                          f"storage offset?); pass {name}.clone()")


def _spell(t: torch.Tensor) -> str:
    """"uint8 [4, 128, 2]"."""
    return f"{str(t.dtype).replace('torch.', '')} {list(t.shape)}"


def _check_uint8(name: str, t: torch.Tensor, want: Tuple[int, ...], spelled: str) -> None:
    """t is uint8 of shape `want` (spelled "[E, 2I, H/32]")."""
    if t.dtype != torch.uint8 or tuple(t.shape) != want:
        raise _fail(name, f"must be uint8 {spelled} = {list(want)}, got {_spell(t)}")


def gate_up_spelling(activation: Activation) -> str:
    """"2I" (gated: gate and up) or "I" (no mul): the gate_up_proj columns / rows of a layer."""
    return "2I" if activation.gated else "I"


def _activation_why(activation: Activation) -> str:
    """Why gate_up_proj has the width it must have, for messages."""
    act = f"activation {activation.name} ({activation.vllm_name!r})"
    if activation.gated:
        return f"{act} is gated: gate and up, 2I; an activation without mul takes I"
    return f"{act} has no mul: I, no gate"


def _gate_up_inter(name: str, t: torch.Tensor, width: int, down_inter: Optional[int],
                   activation: Activation, spelled: str, down_name: str) -> int:
    """I from gate_up_proj's `width` (its 2I or I outputs): checked against the activation (gated:
    even) and against down_inter (I as down_proj holds it, when its shape gives one), with a
    ValueError naming gate_up_proj and the activation when they disagree."""
    if activation.gated and width % 2 != 0:
        raise _fail(name, f"has shape {list(t.shape)}; expected {spelled}, 2I even, not {width} "
                          f"({_activation_why(activation)})")
    inter = width // 2 if activation.gated else width
    if down_inter is not None and down_inter != inter:
        want = 2 * down_inter if activation.gated else down_inter
        raise _fail(name, f"has shape {list(t.shape)}; expected {spelled} with "
                          f"{gate_up_spelling(activation)} = {want} (I = {down_inter} from "
                          f"{down_name}; {_activation_why(activation)})")
    return inter


def check_biases(gate_up_proj_bias: Optional[torch.Tensor], down_proj_bias: Optional[torch.Tensor],
                 names: Optional[Mapping[str, str]] = None) -> bool:
    """True when the layer has no biases (both None); False when it has both. One without the
    other is a ValueError naming the missing one."""
    names = names or {}
    b1, b2 = gate_up_proj_bias is None, down_proj_bias is None
    if b1 != b2:
        missing, given = ("gate_up_proj_bias", "down_proj_bias") if b1 else \
            ("down_proj_bias", "gate_up_proj_bias")
        raise _fail(names.get(missing, missing),
                    f"is None, but {names.get(given, given)} is given: pass both biases, or neither "
                    "for a layer without biases")
    return b1


def parse_batch_invariant(value: object) -> bool:
    """batch_invariant as a bool: True / False (or 1 / 0); ValueError otherwise."""
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise _fail("batch_invariant", f"is {value!r}; expected True or False")


def mxfp4_layer(gate_up_proj_blocks: torch.Tensor, gate_up_proj_scales: torch.Tensor,
                gate_up_proj_bias: Optional[torch.Tensor], down_proj_blocks: torch.Tensor,
                down_proj_scales: torch.Tensor, down_proj_bias: Optional[torch.Tensor], *,
                hidden: Optional[int] = None, names: Optional[Mapping[str, str]] = None,
                device: Optional[torch.device] = None,
                bias_dtypes: Sequence[torch.dtype] = (torch.bfloat16, torch.float16, torch.float32),
                bias_why: str = " (bf16, f16 or f32)",
                activation: Activation = Activation.SWIGLU_OAI) -> Tuple[int, int, int]:
    """(E, H, I) of MXFP4 expert weights, as the gpt-oss checkpoints hold them:
      gate_up_proj_blocks  uint8 [E, 2I, H/32, 16]   gate_up_proj_scales  uint8 [E, 2I, H/32]
      down_proj_blocks     uint8 [E, H, I/32, 16]    down_proj_scales     uint8 [E, H, I/32]
      gate_up_proj_bias    [E, 2I]                   down_proj_bias       [E, H] (the same dtype)
    (2I rows for a gated activation, I without mul; both biases None: a layer without biases).
    Each is checked (a tensor, contiguous, on `device` when given, dtype, shape: a ValueError
    names it, by names[its parameter name] when given). H is `hidden` when given (a multiple of 32,
    which the caller checks), else read from gate_up_proj_blocks; E and I from gate_up_proj_blocks;
    I must be a multiple of 32. Reads no data and no address (torch.compile traces it)."""
    names = names or {}
    rows = gate_up_spelling(activation)

    def tensor(param: str, t: object) -> Tuple[str, torch.Tensor]:
        name = names.get(param, param)
        if device is not None:
            return name, _check_tensor(name, t, device)
        if not isinstance(t, torch.Tensor):
            raise _fail(name, f"expected a torch.Tensor, got {type(t).__name__}")
        if not t.is_contiguous():
            raise _fail(name, f"must be contiguous (shape {list(t.shape)}, strides {list(t.stride())})")
        return name, t

    no_bias = check_biases(gate_up_proj_bias, down_proj_bias, names)
    name, w1 = tensor("gate_up_proj_blocks", gate_up_proj_blocks)
    if hidden is None and w1.dim() == 4:
        hidden = int(w1.shape[2]) * _MXFP4_BLOCK
    if (w1.dtype != torch.uint8 or w1.dim() != 4 or w1.shape[3] != 16
            or hidden is None or w1.shape[2] * _MXFP4_BLOCK != hidden):
        with_h = f" with H/32 = {hidden // _MXFP4_BLOCK}" if hidden is not None else ""
        raise _fail(name, f"must be uint8 [E, {rows}, H/32, 16] (MXFP4 blocks){with_h}, got "
                          f"{_spell(w1)}")
    n_experts = int(w1.shape[0])
    down_inter = None  # I as down_proj_blocks [E, H, I/32, 16] holds it, when its shape gives one
    if isinstance(down_proj_blocks, torch.Tensor) and down_proj_blocks.dim() == 4 \
            and down_proj_blocks.shape[3] == 16 \
            and tuple(down_proj_blocks.shape[:2]) == (n_experts, hidden):
        down_inter = int(down_proj_blocks.shape[2]) * _MXFP4_BLOCK
    spelled = f"uint8 [E, {rows}, H/32, 16] (MXFP4 blocks)"
    inter = _gate_up_inter(name, w1, int(w1.shape[1]), None, activation, spelled, "")
    if inter % _MXFP4_BLOCK != 0:
        raise _fail(name, f"has {rows} = {int(w1.shape[1])} rows ({_spell(w1)}); MXFP4 weights "
                          "need I a multiple of 32")
    # then against down_proj_blocks' I, naming gate_up_proj_blocks and the activation
    _gate_up_inter(name, w1, int(w1.shape[1]), down_inter, activation, spelled,
                   names.get("down_proj_blocks", "down_proj_blocks"))
    e, h, i, b = n_experts, hidden, inter, _MXFP4_BLOCK
    cols = 2 * i if activation.gated else i
    name, s1 = tensor("gate_up_proj_scales", gate_up_proj_scales)
    _check_uint8(name, s1, (e, cols, h // b), f"[E, {rows}, H/32]")
    if not no_bias:
        name, b1 = tensor("gate_up_proj_bias", gate_up_proj_bias)
        _check_dtype(name, b1, tuple(bias_dtypes), bias_why)
        _check_shape(name, b1, (e, cols), f"[E, {rows}]")
    name, w2 = tensor("down_proj_blocks", down_proj_blocks)
    _check_uint8(name, w2, (e, h, i // b, 16), "[E, H, I/32, 16]")
    name, s2 = tensor("down_proj_scales", down_proj_scales)
    _check_uint8(name, s2, (e, h, i // b), "[E, H, I/32]")
    if not no_bias:
        name, b2 = tensor("down_proj_bias", down_proj_bias)
        _check_dtype(name, b2, (b1.dtype,),
                     f" (the dtype of {names.get('gate_up_proj_bias', 'gate_up_proj_bias')})")
        _check_shape(name, b2, (e, h), "[E, H]")
    return e, h, i


def _leading(name: str, t: torch.Tensor, tokens: int, expected: str) -> int:
    """The last dimension of t [..., N], whose leading dimensions must hold `tokens` rows."""
    if t.dim() < 2 or math.prod(t.shape[:-1]) != tokens:
        raise _fail(name, f"has shape {list(t.shape)}; expected {expected} with T = {tokens} (the "
                          "rows of hidden_states; leading dimensions may be split like them)")
    return int(t.shape[-1])


def _routing_form(routing: Optional[str], width: int, top_k: int, n_experts: int,
                  weights: torch.Tensor) -> Routing:
    """The form of routing_weights [..., width]: as `routing` says, else K -> top-k, E -> dense."""
    if routing not in (None, "topk", "dense"):
        raise _fail("routing", f"is {routing!r}; expected None, 'topk' or 'dense'")
    if routing != "dense" and width == top_k:
        return Routing.TOPK
    if routing != "topk" and width == n_experts:
        return Routing.DENSE
    want = {None: f"K = {top_k} (top-k form) or E = {n_experts} (dense form)",
            "topk": f"K = {top_k} (routing='topk')", "dense": f"E = {n_experts} (routing='dense')"}[routing]
    raise _fail("routing_weights", f"has shape {list(weights.shape)}; its last dimension must be {want}")


def _workspace(nbytes: int, device: torch.device) -> Tuple[torch.Tensor, int]:
    """A workspace of nbytes from torch's caching allocator and its 256-byte aligned address.
    Fresh blocks are 512-byte aligned; should one not be, a larger block is aligned by hand."""
    ws = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)
    ptr = ws.data_ptr()
    if ptr % _WORKSPACE_ALIGN != 0:
        ws = torch.empty(nbytes + _WORKSPACE_ALIGN, dtype=torch.uint8, device=device)
        ptr = (ws.data_ptr() + _WORKSPACE_ALIGN - 1) // _WORKSPACE_ALIGN * _WORKSPACE_ALIGN
    return ws, ptr


def _c_float(v: float) -> float:
    """v as a C float holds it (the plan key must not split 1.702 and float32(1.702))."""
    return float(ctypes.c_float(float(v)).value)


_Layer = Tuple[Tuple[int, ...], int, int, int, int, int, Routing, Optional[torch.dtype],
               WeightFormat]

# The op's argument names for MXFP4 weights: the blocks come in gate_up_proj and down_proj.
_OP_NAMES = {"gate_up_proj_blocks": "gate_up_proj", "down_proj_blocks": "down_proj"}


def _layer(x: torch.Tensor, router_indices: torch.Tensor, routing_weights: torch.Tensor,
           gate_up_proj: torch.Tensor, gate_up_proj_bias: Optional[torch.Tensor],
           down_proj: torch.Tensor, down_proj_bias: Optional[torch.Tensor], routing: Optional[str],
           num_tokens: Optional[torch.Tensor], gate_up_proj_scales: Optional[torch.Tensor] = None,
           down_proj_scales: Optional[torch.Tensor] = None,
           activation: Activation = Activation.SWIGLU_OAI) -> _Layer:
    """The checks of every argument that shapes, dtypes and devices decide (ValueError naming it),
    and the layer they give: (leading shape, H, T, E, I, K, routing form, bias dtype (None: no
    biases), weight format). Nothing here reads a tensor's data or address, so torch.compile
    traces it."""
    if not isinstance(x, torch.Tensor):
        raise _fail("hidden_states", f"expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_cuda:
        raise _fail("hidden_states", f"must be a CUDA tensor, got one on {x.device}")
    device = x.device
    _check_tensor("hidden_states", x, device)
    _check_dtype("hidden_states", x, tuple(_ACTIVATION_DTYPES))
    if x.dim() < 2:
        raise _fail("hidden_states", f"has shape {list(x.shape)}; expected [T, H] or [B, S, H]")
    lead, hidden = tuple(int(n) for n in x.shape[:-1]), int(x.shape[-1])
    tokens = math.prod(lead)
    same = (x.dtype,)
    why = " (the dtype of hidden_states)"
    rows = gate_up_spelling(activation)
    no_bias = check_biases(gate_up_proj_bias, down_proj_bias)

    if gate_up_proj_scales is not None or down_proj_scales is not None:
        fmt = WeightFormat.MXFP4
        for name, t in (("gate_up_proj_scales", gate_up_proj_scales),
                        ("down_proj_scales", down_proj_scales)):
            if t is None:
                raise _fail(name, "is None, but the other scales are given: MXFP4 weights need "
                                  "both gate_up_proj_scales and down_proj_scales")
        _check_dtype("hidden_states", x, MXFP4_ACTIVATION_DTYPES,
                     " (MXFP4 weights run with bf16 or f16 activations)")
        if hidden % _MXFP4_BLOCK != 0:
            raise _fail("hidden_states", f"has H = {hidden}; MXFP4 weights need H a multiple of 32")
        n_experts, _, inter = mxfp4_layer(
            gate_up_proj, gate_up_proj_scales, gate_up_proj_bias, down_proj, down_proj_scales,
            down_proj_bias, hidden=hidden, names=_OP_NAMES, device=device,
            bias_dtypes=same + (torch.float32,),
            bias_why=" (the dtype of hidden_states, or f32 for both biases)",
            activation=activation)
        bias_dtype = None if no_bias else gate_up_proj_bias.dtype
    else:
        fmt = WeightFormat.DENSE
        w1 = _check_tensor("gate_up_proj", gate_up_proj, device)
        if w1.dtype == torch.uint8:
            raise _fail("gate_up_proj", "is uint8 (MXFP4 blocks?) but no gate_up_proj_scales / "
                                        "down_proj_scales are given: pass both scales for MXFP4 "
                                        "weights, or weights in the dtype of hidden_states")
        _check_dtype("gate_up_proj", w1, same, why)
        if w1.dim() != 3 or w1.shape[1] != hidden:
            raise _fail("gate_up_proj",
                        f"has shape {list(w1.shape)}; expected [E, H, {rows}] with H = {hidden}")
        n_experts = int(w1.shape[0])
        down_inter = None
        if isinstance(down_proj, torch.Tensor) and down_proj.dim() == 3 \
                and (int(down_proj.shape[0]), int(down_proj.shape[2])) == (n_experts, hidden):
            down_inter = int(down_proj.shape[1])
        inter = _gate_up_inter("gate_up_proj", w1, int(w1.shape[2]), down_inter, activation,
                               f"[E, H, {rows}]", "down_proj")
        cols = 2 * inter if activation.gated else inter
        if not no_bias:
            b1 = _check_tensor("gate_up_proj_bias", gate_up_proj_bias, device)
            if x.dtype == torch.float32:
                _check_dtype("gate_up_proj_bias", b1, same, why)
            else:
                _check_dtype("gate_up_proj_bias", b1, same + (torch.float32,),
                             " (the dtype of hidden_states, or f32 for both biases)")
            _check_shape("gate_up_proj_bias", b1, (n_experts, cols), f"[E, {rows}]")
        w2 = _check_tensor("down_proj", down_proj, device)
        _check_dtype("down_proj", w2, same, why)
        _check_shape("down_proj", w2, (n_experts, inter, hidden), "[E, I, H]")
        if not no_bias:
            b2 = _check_tensor("down_proj_bias", down_proj_bias, device)
            _check_dtype("down_proj_bias", b2, (b1.dtype,), " (the dtype of gate_up_proj_bias)")
            _check_shape("down_proj_bias", b2, (n_experts, hidden), "[E, H]")
        bias_dtype = None if no_bias else b1.dtype

    ids = _check_tensor("router_indices", router_indices, device)
    _check_dtype("router_indices", ids, tuple(_IDS_DTYPES))
    top_k = _leading("router_indices", ids, tokens, "[T, K]")
    weights = _check_tensor("routing_weights", routing_weights, device)
    _check_dtype("routing_weights", weights, tuple(_WEIGHTS_DTYPES))
    width = _leading("routing_weights", weights, tokens, "[T, K] or [T, E]")
    form = _routing_form(routing, width, top_k, n_experts, weights)
    if num_tokens is not None:
        count = _check_tensor("num_tokens", num_tokens, device)
        _check_dtype("num_tokens", count, (torch.int32,))
        if count.numel() != 1:
            raise _fail("num_tokens", f"has {count.numel()} elements; expected one (an int32 count)")
    return lead, hidden, tokens, n_experts, inter, top_k, form, bias_dtype, fmt


def plan_key(device: int, dtype: torch.dtype, ids_dtype: torch.dtype, weights_dtype: torch.dtype,
             hidden: int, inter: int, n_experts: int, top_k: int, routing: Routing, alpha: float,
             limit: float, bias_dtype: Optional[torch.dtype],
             weight_format: WeightFormat = WeightFormat.DENSE,
             activation: Activation = Activation.SWIGLU_OAI,
             gate_up_layout: GateUpLayout = GateUpLayout.INTERLEAVED,
             batch_invariant: bool = False) -> _runtime.PlanKey:
    """The plan key of a layer (what its moejit_layer_desc holds, but max_tokens): f32 biases with
    f16 / bf16 activations set bias_f32, no biases (bias_dtype None) no_bias; f32 layers are exact
    unless torch allows TF32."""
    return _runtime.PlanKey(
        device=device, hidden=hidden, intermediate=inter, experts=n_experts, top_k=top_k,
        dtype=_ACTIVATION_DTYPES[dtype], ids_dtype=_IDS_DTYPES[ids_dtype],
        weights_dtype=_WEIGHTS_DTYPES[weights_dtype], routing=routing,
        alpha=_c_float(alpha), limit=_c_float(limit),
        bias_f32=bias_dtype is not None and bias_dtype != dtype,
        exact_f32=dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32,
        weight_format=WeightFormat(weight_format), activation=Activation(activation),
        gate_up_layout=GateUpLayout(gate_up_layout), no_bias=bias_dtype is None,
        batch_invariant=bool(batch_invariant))


@torch.library.custom_op("moejit::experts", mutates_args=(), device_types="cuda")
def _experts_op(hidden_states: torch.Tensor, router_indices: torch.Tensor,
                routing_weights: torch.Tensor, gate_up_proj: torch.Tensor,
                gate_up_proj_bias: Optional[torch.Tensor], down_proj: torch.Tensor,
                down_proj_bias: Optional[torch.Tensor], alpha: float, limit: float,
                routing: Optional[str], check: bool, num_tokens: Optional[torch.Tensor],
                gate_up_proj_scales: Optional[torch.Tensor] = None,
                down_proj_scales: Optional[torch.Tensor] = None, activation: int = 0,
                gate_up_layout: int = 0, batch_invariant: bool = False) -> torch.Tensor:
    """torch.ops.moejit.experts: the forward on torch's current stream (see experts). With the
    scales, gate_up_proj and down_proj are MXFP4 blocks; without biases (both None) the layer has
    none; activation and gate_up_layout are the C enums' values."""
    return _forward(hidden_states, router_indices, routing_weights, gate_up_proj,
                    gate_up_proj_bias, down_proj, down_proj_bias, alpha, limit, routing, check,
                    num_tokens, gate_up_proj_scales, down_proj_scales, activation,
                    gate_up_layout, batch_invariant)


def _forward(hidden_states: torch.Tensor, router_indices: torch.Tensor,
             routing_weights: torch.Tensor, gate_up_proj: torch.Tensor,
             gate_up_proj_bias: Optional[torch.Tensor], down_proj: torch.Tensor,
             down_proj_bias: Optional[torch.Tensor], alpha: float, limit: float,
             routing: Optional[str], check: bool, num_tokens: Optional[torch.Tensor],
             gate_up_proj_scales: Optional[torch.Tensor], down_proj_scales: Optional[torch.Tensor],
             activation: int, gate_up_layout: int, batch_invariant: bool) -> torch.Tensor:
    """The CUDA implementation of torch.ops.moejit.experts: checks, the plan of the layer's key
    (_runtime.plan_for), the forward args (NULL biases without biases) and the launch."""
    x = hidden_states
    act, layout = Activation.parse(activation), GateUpLayout.parse(gate_up_layout)
    lead, hidden, tokens, n_experts, inter, top_k, form, bias_dtype, fmt = _layer(
        x, router_indices, routing_weights, gate_up_proj, gate_up_proj_bias, down_proj,
        down_proj_bias, routing, num_tokens, gate_up_proj_scales, down_proj_scales, act)
    device = x.device
    aligned = [("hidden_states", x), ("gate_up_proj", gate_up_proj), ("down_proj", down_proj)]
    if fmt == WeightFormat.MXFP4:
        aligned += [("gate_up_proj_scales", gate_up_proj_scales),
                    ("down_proj_scales", down_proj_scales)]
    for name, t in aligned:
        _check_aligned(name, t, _VECTOR_ALIGN)
    y = torch.empty(lead + (hidden,), dtype=x.dtype, device=device)
    if tokens == 0:
        return y
    key = plan_key(device.index if device.index is not None else torch.cuda.current_device(),
                   x.dtype, router_indices.dtype, routing_weights.dtype, hidden, inter, n_experts,
                   top_k, form, alpha, limit, bias_dtype, fmt, act, layout, batch_invariant)
    if torch.cuda.is_current_stream_capturing() and _runtime.lookup(key, tokens) is None:
        raise RuntimeError(
            f"moejit.experts: no plan yet for this layer ({tokens} tokens, H={hidden} I={inter} "
            f"E={n_experts} K={top_k} {x.dtype}, {fmt.name.lower()} weights, {act.vllm_name}) and "
            "plans cannot be compiled during CUDA graph capture: run one call of the same layer "
            "(with at least as many tokens) before capturing")
    plan = _runtime.plan_for(key, tokens)

    stream = torch.cuda.current_stream(device).cuda_stream
    nbytes = plan.workspace_size(tokens)
    ws, ws_ptr = _workspace(nbytes, device)
    args = load_library().forward_args()
    args.tokens = tokens
    args.x = x.data_ptr()
    args.topk_ids = router_indices.data_ptr()
    args.routing_weights = routing_weights.data_ptr()
    args.gate_up_proj = gate_up_proj.data_ptr()
    args.down_proj = down_proj.data_ptr()
    if bias_dtype is not None:  # else NULL, as desc->no_bias demands
        args.gate_up_proj_bias = gate_up_proj_bias.data_ptr()
        args.down_proj_bias = down_proj_bias.data_ptr()
    args.y = y.data_ptr()
    args.device_tokens = num_tokens.data_ptr() if num_tokens is not None else None
    if fmt == WeightFormat.MXFP4:
        args.gate_up_proj_scales = gate_up_proj_scales.data_ptr()
        args.down_proj_scales = down_proj_scales.data_ptr()
    plan.forward(args, ws_ptr, nbytes, stream)
    if check:
        plan.check(ws_ptr, stream)
    del ws  # back to the caching allocator, ordered after the forward on this stream
    return y


@_experts_op.register_fake
def _experts_fake(hidden_states: torch.Tensor, router_indices: torch.Tensor,
                  routing_weights: torch.Tensor, gate_up_proj: torch.Tensor,
                  gate_up_proj_bias: Optional[torch.Tensor], down_proj: torch.Tensor,
                  down_proj_bias: Optional[torch.Tensor], alpha: float, limit: float,
                  routing: Optional[str], check: bool,
                  num_tokens: Optional[torch.Tensor],
                  gate_up_proj_scales: Optional[torch.Tensor] = None,
                  down_proj_scales: Optional[torch.Tensor] = None, activation: int = 0,
                  gate_up_layout: int = 0, batch_invariant: bool = False) -> torch.Tensor:
    """What torch.compile and fake tensors see: a new tensor shaped and typed as hidden_states
    (dense or MXFP4 weights, any activation, layout, biases or none alike)."""
    return hidden_states.new_empty(hidden_states.shape)


def _no_backward(ctx: object, grad: torch.Tensor) -> None:
    raise RuntimeError("moejit.experts has no backward: it is an inference kernel (call it under "
                       "torch.no_grad() or on detached tensors)")


torch.library.register_autograd("moejit::experts", _no_backward)


def _detached(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.detach()


def experts(
    hidden_states: torch.Tensor,
    router_indices: torch.Tensor,
    routing_weights: torch.Tensor,
    gate_up_proj: torch.Tensor,
    gate_up_proj_bias: Optional[torch.Tensor] = None,
    down_proj: Optional[torch.Tensor] = None,
    down_proj_bias: Optional[torch.Tensor] = None,
    *,
    alpha: float = 1.702,
    limit: float = 7.0,
    routing: Optional[str] = None,
    check: bool = False,
    num_tokens: Optional[torch.Tensor] = None,
    gate_up_proj_scales: Optional[torch.Tensor] = None,
    down_proj_scales: Optional[torch.Tensor] = None,
    activation: Union[Activation, str, int] = Activation.SWIGLU_OAI,
    gate_up_layout: Union[GateUpLayout, str, int] = GateUpLayout.INTERLEAVED,
    batch_invariant: bool = False,
) -> torch.Tensor:
    """An MoE expert layer (GPT-OSS's by default; yamoe / GptOssExperts argument order), dropless.

    Shapes (T tokens, H hidden, I intermediate, E experts, K top-k):
      hidden_states      [T, H] or [B, S, H] (any [..., H]; T = the product of the leading dims)
                         bf16, f16 or f32: the activation dtype
      router_indices     [T, K] (or [..., K]) int32 or int64 expert ids; may repeat within a token
                         (each slot counts); ids outside [0, E) contribute nothing
      routing_weights    [T, K] (top-k form: weight of slot k) or [T, E] (dense form, as
                         GptOssExperts takes it: weight(t, k) = routing_weights[t, ids[t, k]]);
                         told apart by the last dimension; when K == E the top-k form is assumed
                         unless routing="dense" says otherwise. f32, bf16 or f16
      gate_up_proj       [E, H, 2I]: gate = even columns, up = odd columns (the checkpoint layout;
                         see gate_up_layout), [E, H, I] with an activation without mul
      gate_up_proj_bias  [E, 2I] ([E, I] without mul), or None
      down_proj          [E, I, H]
      down_proj_bias     [E, H], or None   (all four in the activation dtype; with f16 / bf16
                                            activations both biases may instead be f32; both
                                            biases None: a layer without biases)
    MXFP4 weights (the gpt-oss checkpoints' form, read as they are: no repacking, no dense copy):
    pass gate_up_proj_scales and down_proj_scales, and the blocks in place of the dense weights:
      gate_up_proj         uint8 [E, 2I, H/32, 16]  the checkpoint's gate_up_proj_blocks
      gate_up_proj_scales  uint8 [E, 2I, H/32]      e8m0: a block's weights are code * 2^(s - 127)
      down_proj            uint8 [E, H, I/32, 16]   the checkpoint's down_proj_blocks
      down_proj_scales     uint8 [E, H, I/32]
                         (32 e2m1 codes a block of 16 bytes, the low nibble first; rows 2j and
                         2j + 1 of gate_up_proj are gate j and up j, as gate_up_layout says; I
                         rows without mul), with bf16 or f16 activations, biases in their dtype
                         or both f32 (or none), H and I multiples of 32, and the blocks and
                         scales 16-byte aligned.
    Returns a new tensor [..., H] with the leading shape of hidden_states, in the activation dtype:
      y[t] = sum_k weight(t,k) * (h @ down_proj[e] + down_proj_bias[e]),  e = ids[t, k],
      h = act(gu), gu = x[t] @ gate_up_proj[e] + gate_up_proj_bias[e]   (no biases: zero),
    act the activation (moejit.Activation; a string as vLLM's MoEActivation names it, or the
    enum's int value), in fp32, silu(v) = v * sigmoid(v):
      "swigluoai"     SWIGLU_OAI (default)  gate = min(gate, limit), up = clamp(up, -limit, limit),
                                            (up + 1) * gate * sigmoid(alpha * gate)
      "silu"          SILU_MUL              silu(gate) * up  (Mixtral, Qwen, DeepSeek)
      "gelu"          GELU_MUL              gelu(gate) * up, gelu(v) = v / 2 * (1 + erf(v / sqrt 2))
      "gelu_tanh"     GELU_TANH_MUL         gelu_tanh(gate) * up
      "swiglustep"    SWIGLU_STEP           min(silu(gate), limit) * clamp(up, -limit, limit)
      "silu_no_mul"   SILU                  silu(gu)       (no mul: gate_up_proj [E, H, I])
      "gelu_no_mul"   GELU                  gelu(gu)       (no mul)
      "relu2_no_mul"  RELU2                 max(gu, 0)^2   (no mul)
    gate_up_layout (moejit.GateUpLayout, or "interleaved", "halves", "up_gate_halves"): where gate
    j and up j sit in gu: "interleaved" (default) 2j and 2j + 1; "halves" j and I + j ([gate | up],
    vLLM's w13, Mixtral's w1 and w3 side by side); "up_gate_halves" I + j and j. Unused without
    mul. alpha and limit only matter to SWIGLU_OAI (both) and SWIGLU_STEP (limit); limit must be
    > 0 for every activation.
    batch_invariant=True: a token's output bits never depend on its batch (T, its position, the
    other tokens, num_tokens, eager or graph): the plan runs one tile family for every T, at some
    cost in speed. Holds for one GPU architecture, library version and plan options.

    Every tensor must be a contiguous CUDA tensor on one device (ValueError naming the argument
    otherwise). Runs on torch.cuda.current_stream(); may be captured in a CUDA graph once a call
    of the same layer has run outside capture (the first call compiles the kernels: seconds).
    routing: None (from the shape, as above), "topk" or "dense": the form of routing_weights.
    f32 layers use TF32 tensor cores when torch.backends.cuda.matmul.allow_tf32 is set (as torch's
    own f32 matmuls do), exact f32 FFMA otherwise (torch's default).
    num_tokens: an int32 tensor of one element on the same device, read by the GPU when the forward
    runs: only the first n = min(max(num_tokens, 0), T) tokens are computed (their routing alone
    is read) and rows [n, T) of the result are zeros. A CUDA graph captured at the largest batch T
    then serves every smaller one: write the count into num_tokens, then replay.
    The forward is the custom op torch.ops.moejit.experts (torch.library, with a fake
    implementation), so torch.compile(fullgraph=True) traces it as one node.
    No autograd: the result has no grad_fn. check=True additionally waits for the forward and
    raises MoejitError (MOEJIT_ERR_BAD_EXPERT_ID) if an id was outside [0, E).
    Raises MoejitError when the library rejects the layer (e.g. H not a multiple of 8).
    """
    act = Activation.parse(activation)
    layout = GateUpLayout.parse(gate_up_layout)
    invariant = parse_batch_invariant(batch_invariant)
    if down_proj is None:
        raise _fail("down_proj", "is None; expected the [E, I, H] weights (MXFP4: the blocks)")
    _layer(hidden_states, router_indices, routing_weights, gate_up_proj, gate_up_proj_bias,
           down_proj, down_proj_bias, routing, num_tokens, gate_up_proj_scales, down_proj_scales,
           act)
    if torch.is_grad_enabled() and hidden_states.requires_grad:
        raise RuntimeError("moejit.experts has no backward: call it under torch.no_grad() or "
                           "torch.inference_mode(), or detach hidden_states")
    # weights that are nn.Parameters (requires_grad) go in detached: inference only, the result
    # has no grad_fn, in grad mode or not
    return torch.ops.moejit.experts(hidden_states, router_indices, routing_weights,
                                    gate_up_proj.detach(), _detached(gate_up_proj_bias),
                                    down_proj.detach(), _detached(down_proj_bias), float(alpha),
                                    float(limit), routing, bool(check), num_tokens,
                                    _detached(gate_up_proj_scales), _detached(down_proj_scales),
                                    int(act), int(layout), invariant)
