#!/usr/bin/env python3
"""peers.py: moejit beside its peers on GPT-OSS expert layers, in one process on one GPU.

Implementations (the `impl` of each record):
  moejit        moejit.experts replayed from a CUDA graph (mode "graph")
  moejit_eager  moejit.experts called from Python (mode "eager")
  triton_ogs    triton_kernels' matmul_ogs as vLLM's OAITritonExperts runs it: top-k routing from
                the logits, GEMM1 gathering rows with fused SwiGLU, GEMM2 with the routing weights
                and the k-way reduction; from a CUDA graph. Only where `import triton_kernels` works
                and its API is one of the two this script knows (else "unavailable: <reason>").
  grouped       what a PyTorch user writes: sort slots by expert, gather, torch._grouped_mm for both
                GEMMs, bias and SwiGLU in torch ops, weighted index_add_ (eager; bf16 only)
  ref_loop      the GptOssExperts loop reference (kernels-benchmarks' reference; eager; T <= 4096)

Workloads:
  gptoss      bf16, H = I = 2880, top-4, E in {32, 128}, T in {1, 8, 64, 512, 4096, 16384, 65536};
              random top-4 distinct experts per token from tie-free logits, softmax over the four
              (moejit gets the top-k form: int32 ids, f32 weights; ref_loop the dense [T, E] form)
  openai_moe  kernels-benchmarks' openai_moe: f32, H = 2880, I = 2880, top-2, E in {2, 4},
              B in {1, 4}, S in {512, 1024}; ids drawn with repeats; dense softmax weights [T, E]

Each measurement: warm-up, then CUDA events around each call with a 256 MB buffer written before
it (L2 flushed), median of the repeats. Each implementation's output is checked against a float64
reference on up to --check-tokens sampled tokens (relative max-abs error, 2e-2 for bf16, 1e-5 for
f32). Output: JSON lines (one per impl x workload) to --out, a PNG of ms vs tokens next to it,
progress on stderr, a table on stdout. See bench/README.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import inspect
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
try:
    import moejit
except ImportError:  # run from the source tree without `pip install ./python`
    sys.path.insert(0, str(REPO / "python"))
    import moejit

ALPHA, LIMIT = 1.702, 7.0
TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 2e-2, torch.float32: 1e-5}
DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}
FLUSH_BYTES = 256 << 20

GPTOSS_TOKENS = [1, 8, 64, 512, 4096, 16384, 65536]
GPTOSS_EXPERTS = [32, 128]
QUICK_TOKENS = [1, 64, 4096]
OPENAI_BATCHES, OPENAI_SEQS, OPENAI_EXPERTS = [1, 4], [512, 1024], [2, 4]
IMPLS = ["moejit", "moejit_eager", "triton_ogs", "grouped", "ref_loop"]


def log(msg: str) -> None:
    """A progress line on stderr."""
    print(msg, file=sys.stderr, flush=True)


# ---- workloads and their tensors ----------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One layer shape and token count."""

    name: str
    family: str  # "gptoss" or "openai_moe"
    dtype: torch.dtype
    tokens: int
    experts: int
    top_k: int
    hidden: int
    intermediate: int
    batch: Optional[int] = None  # openai_moe: B and S, T = B * S
    seq_len: Optional[int] = None
    seed: int = 0

    def record(self) -> Dict[str, Any]:
        """The `wl` field of a record."""
        out: Dict[str, Any] = {
            "name": self.name, "family": self.family, "dtype": DTYPE_NAMES[self.dtype],
            "tokens": self.tokens, "experts": self.experts, "top_k": self.top_k,
            "hidden": self.hidden, "intermediate": self.intermediate,
            "routing": "topk" if self.family == "gptoss" else "dense",
            "ids": "int32" if self.family == "gptoss" else "int64", "seed": self.seed,
        }
        if self.batch is not None:
            out.update(batch=self.batch, seq_len=self.seq_len)
        return out


def gptoss_workloads(tokens: Sequence[int], experts: Sequence[int], seed: int) -> List[Workload]:
    """bf16, H = I = 2880, top-4."""
    return [Workload(f"gptoss_E{e}_T{t}", "gptoss", torch.bfloat16, t, e, 4, 2880, 2880, seed=seed)
            for e in experts for t in tokens]


def openai_moe_workloads(batches: Sequence[int], seed: int) -> List[Workload]:
    """kernels-benchmarks' openai_moe: f32, H = 2880, expert_dim 5760 (I = 2880), top-2."""
    return [Workload(f"cuda_B{b}_S{s}_E{e}", "openai_moe", torch.float32, b * s, e, 2, 2880, 2880,
                     batch=b, seq_len=s, seed=seed)
            for e in OPENAI_EXPERTS for b in batches for s in OPENAI_SEQS]


@dataclass
class Layer:
    """Expert weights in the activation dtype: w1 [E, H, 2I], b1 [E, 2I], w2 [E, I, H], b2 [E, H]."""

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    key: Tuple[Any, ...] = ()


def make_layer(wl: Workload) -> Layer:
    """Random weights: gptoss ~ N(0, 1/H) and N(0, 1/I) with biases 0.1 * N(0, 1); openai_moe as
    kernels-benchmarks makes them (0.1 * N(0, 1), biases 0.01 * N(0, 1))."""
    g = torch.Generator(device="cuda").manual_seed(1000 + wl.seed)
    e, h, i = wl.experts, wl.hidden, wl.intermediate
    if wl.family == "gptoss":
        scales = (1 / math.sqrt(h), 0.1, 1 / math.sqrt(i), 0.1)
    else:
        scales = (0.1, 0.01, 0.1, 0.01)
    shapes = ((e, h, 2 * i), (e, 2 * i), (e, i, h), (e, h))
    ts = [torch.randn(s, generator=g, device="cuda", dtype=wl.dtype).mul_(c) for s, c in zip(shapes, scales)]
    return Layer(*ts, key=(wl.family, e, h, i, wl.dtype, wl.seed))


@dataclass
class Batch:
    """The activations and the routing of one workload.

    x [T, H]; ids [T, K] (int32 for gptoss, int64 for openai_moe); w_slot [T, K] f32, the weight of
    each slot; dense [T, E] (gptoss: the top-k weights scattered, in the activation dtype, as
    GptOssMLP's router_scores; openai_moe: a softmax over all E, f32); logits [T, E] bf16 (gptoss:
    distinct values per row, so every top-k is tie-free and the same in any implementation).
    """

    x: torch.Tensor
    ids: torch.Tensor
    w_slot: torch.Tensor
    dense: torch.Tensor
    logits: Optional[torch.Tensor] = None


def make_batch(wl: Workload) -> Batch:
    """Activations and routing for wl (see Batch)."""
    g = torch.Generator(device="cuda").manual_seed(2000 + wl.seed * 131 + wl.tokens)
    t, e, k, h = wl.tokens, wl.experts, wl.top_k, wl.hidden
    if wl.family == "gptoss":
        x = torch.randn(t, h, generator=g, device="cuda", dtype=wl.dtype)
        # E distinct multiples of 1/32 in [0, 8) per row: exact in bf16, no ties.
        logits = torch.rand(t, 256, generator=g, device="cuda").argsort(dim=1)[:, :e].float() / 32
        top, ids = logits.topk(k, dim=1)
        w_slot = torch.softmax(top, dim=1)
        dense = torch.zeros(t, e, device="cuda", dtype=wl.dtype).scatter_(1, ids, w_slot.to(wl.dtype))
        return Batch(x, ids.to(torch.int32), w_slot, dense, logits.to(torch.bfloat16))
    x = torch.randn(t, h, generator=g, device="cuda", dtype=wl.dtype).mul_(0.1)
    ids = torch.randint(0, e, (t, k), generator=g, device="cuda")
    dense = torch.softmax(torch.rand(t, e, generator=g, device="cuda", dtype=wl.dtype), dim=-1)
    return Batch(x, ids, dense.gather(1, ids).float(), dense)


# ---- the float64 reference on sampled tokens ----------------------------------------------------------------


def sample_tokens(tokens: int, n: int) -> torch.Tensor:
    """All tokens when tokens <= n, else n spread evenly over [0, T) (first and last included)."""
    if tokens <= n:
        return torch.arange(tokens, device="cuda")
    return torch.linspace(0, tokens - 1, n, device="cuda").round().long().unique()


@torch.no_grad()
def oracle(layer: Layer, x: torch.Tensor, ids: torch.Tensor, w_slot: torch.Tensor,
           alpha: float = ALPHA, limit: float = LIMIT) -> torch.Tensor:
    """The layer in float64 on upcast copies, per slot: x [S, H], ids [S, K], w_slot [S, K] -> [S, H]."""
    n_experts = layer.w1.shape[0]
    xd, wd = x.double(), w_slot.double()
    out = torch.zeros(x.shape[0], layer.w2.shape[2], dtype=torch.float64, device=x.device)
    for e in ids.unique().tolist():
        if not 0 <= e < n_experts:
            continue
        tok, slot = torch.where(ids == e)
        gu = xd[tok] @ layer.w1[e].double() + layer.b1[e].double()
        gate = gu[:, 0::2].clamp(max=limit)
        up = gu[:, 1::2].clamp(min=-limit, max=limit)
        h = (up + 1) * gate * torch.sigmoid(alpha * gate)
        o = h @ layer.w2[e].double() + layer.b2[e].double()
        out.index_add_(0, tok, o * wd[tok, slot, None])
    return out


def rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max|got - ref| / max|ref|; inf when got has a non-finite value."""
    g = got.double()
    if not torch.isfinite(g).all():
        return math.inf
    return float((g - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


# ---- implementations ------------------------------------------------------------------------------------------


class Unavailable(Exception):
    """The implementation cannot run this workload here; the message says why."""


Fn = Callable[[], torch.Tensor]


class Impl:
    """An implementation: build(wl, layer, batch) returns a function computing y [T, H]."""

    name = ""
    mode = "eager"  # "graph": timed as the replay of a CUDA graph of the function

    def skip_reason(self, wl: Workload, args: argparse.Namespace) -> Optional[str]:
        """Why this workload is not run (a record with that status is still written), or None."""
        return None

    def build(self, wl: Workload, layer: Layer, batch: Batch) -> Fn:
        raise NotImplementedError

    def note(self) -> Optional[str]:
        """What the record should say about how it ran (API flavour, layout), or None."""
        return None

    def release(self) -> None:
        """Drops what was kept for the last layer (weight copies)."""


class Moejit(Impl):
    """moejit.experts: the top-k form for gptoss, the dense form for openai_moe."""

    def __init__(self, name: str, mode: str) -> None:
        self.name, self.mode = name, mode

    def build(self, wl: Workload, layer: Layer, batch: Batch) -> Fn:
        # Named routing form: openai_moe at E = 2 has K == E, where the shape alone says top-k.
        form, weights = ("topk", batch.w_slot) if wl.family == "gptoss" else ("dense", batch.dense)
        args = (batch.x, batch.ids, weights, layer.w1, layer.b1, layer.w2, layer.b2)
        return lambda: moejit.experts(*args, alpha=ALPHA, limit=LIMIT, routing=form)


class RefLoop(Impl):
    """The GptOssExperts loop form (transformers' training / CPU path, kernels-benchmarks'
    reference), in the activation dtype, with the dense [T, E] routing weights."""

    name = "ref_loop"

    def skip_reason(self, wl: Workload, args: argparse.Namespace) -> Optional[str]:
        if wl.tokens > args.ref_max_tokens:
            return f"skipped: T > {args.ref_max_tokens} (seconds per call; '—' in PEERS.md)"
        return None

    def build(self, wl: Workload, layer: Layer, batch: Batch) -> Fn:
        return lambda: ref_loop(batch.x, batch.ids, batch.dense, layer)


def ref_loop(x: torch.Tensor, ids: torch.Tensor, dense: torch.Tensor, layer: Layer,
             alpha: float = ALPHA, limit: float = LIMIT) -> torch.Tensor:
    """x [T, H], ids [T, K], dense [T, E] -> [T, H], as GptOssExperts.forward computes it."""
    n_experts = dense.shape[1]
    out = torch.zeros_like(x)
    expert_mask = torch.nn.functional.one_hot(ids.long(), num_classes=n_experts + 1).permute(2, 1, 0)
    expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
    for expert_idx in expert_hit[:]:
        expert_idx = expert_idx[0]
        if expert_idx == n_experts:
            continue
        _, token_idx = torch.where(expert_mask[expert_idx])
        gate_up = x[token_idx] @ layer.w1[expert_idx] + layer.b1[expert_idx]
        gate, up = gate_up[..., ::2], gate_up[..., 1::2]
        gate = gate.clamp(min=None, max=limit)
        up = up.clamp(min=-limit, max=limit)
        glu = gate * torch.sigmoid(gate * alpha)
        gated = (up + 1) * glu
        o = gated @ layer.w2[expert_idx] + layer.b2[expert_idx]
        weighted = o * dense[token_idx, expert_idx, None]
        out.index_add_(0, token_idx, weighted.to(x.dtype))
    return out


class Grouped(Impl):
    """Sort slots by expert, gather, torch._grouped_mm (CUTLASS) for both GEMMs with per-expert
    offsets, bias and SwiGLU in torch ops, weighted index_add_ back in f32. bf16 only."""

    name = "grouped"

    def __init__(self) -> None:
        self._col: Optional[Tuple[Tuple[Any, ...], torch.Tensor, torch.Tensor]] = None
        self._layout = "row"

    def note(self) -> Optional[str]:
        return f"weights {self._layout}-major"

    def release(self) -> None:
        self._col = None

    def skip_reason(self, wl: Workload, args: argparse.Namespace) -> Optional[str]:
        if not hasattr(torch, "_grouped_mm"):
            return f"unavailable: torch {torch.__version__} has no torch._grouped_mm"
        if wl.dtype != torch.bfloat16:
            return "skipped: torch._grouped_mm takes bf16 only"
        return None

    def _column_major(self, layer: Layer) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._col is None or self._col[0] != layer.key:
            self._col = None
            self._col = (layer.key, column_major(layer.w1), column_major(layer.w2))
        return self._col[1], self._col[2]

    def build(self, wl: Workload, layer: Layer, batch: Batch) -> Fn:
        fn = self._fn(wl, layer, batch, layer.w1, layer.w2)
        self._layout = "row"
        try:
            fn()
        except RuntimeError as e:  # some builds want mat_b column-major
            w1c, w2c = self._column_major(layer)
            log(f"  grouped: row-major weights refused ({str(e).splitlines()[0]}); column-major copies")
            fn = self._fn(wl, layer, batch, w1c, w2c)
            fn()
            self._layout = "column"
        return fn

    @staticmethod
    def _fn(wl: Workload, layer: Layer, batch: Batch, w1: torch.Tensor, w2: torch.Tensor) -> Fn:
        x, ids, w_slot, b1, b2 = batch.x, batch.ids.long(), batch.w_slot, layer.b1, layer.b2
        t, k, e, h = wl.tokens, wl.top_k, wl.experts, wl.hidden

        def run() -> torch.Tensor:
            flat = ids.reshape(-1)                                   # [T*K]
            order = torch.argsort(flat, stable=True)                 # slots sorted by expert
            sorted_e = flat[order]
            tok = order // k
            offs = torch.cumsum(torch.bincount(flat, minlength=e), 0).to(torch.int32)  # [E] ends
            gu = torch._grouped_mm(x.index_select(0, tok), w1, offs=offs)  # [T*K, 2I]
            gu = gu + b1.index_select(0, sorted_e)
            gate = gu[:, 0::2].clamp(max=LIMIT)
            up = gu[:, 1::2].clamp(min=-LIMIT, max=LIMIT)
            hh = (up + 1) * gate * torch.sigmoid(ALPHA * gate)      # [T*K, I] bf16
            y = torch._grouped_mm(hh, w2, offs=offs)                 # [T*K, H]
            y = (y + b2.index_select(0, sorted_e)).float() * w_slot.reshape(-1)[order, None]
            out = torch.zeros(t, h, dtype=torch.float32, device=x.device).index_add_(0, tok, y)
            return out.to(x.dtype)

        return run


def column_major(w: torch.Tensor) -> torch.Tensor:
    """The same [E, K, N] values with stride(-2) == 1 (as triton_kernels' bench_mlp lays bf16 out)."""
    return w.transpose(-1, -2).contiguous().transpose(-1, -2)


@dataclass
class OgsApi:
    """The parts of triton_kernels this script uses, whichever version provides them."""

    flavour: str
    route: Callable[[torch.Tensor, int], Tuple[Any, Any, Any]]
    matmul_ogs: Callable[..., torch.Tensor]
    precision_config: Any
    activation: Any


def _first_attr(obj: Any, *names: str) -> Any:
    for n in names:
        if hasattr(obj, n):
            return getattr(obj, n)
    raise AttributeError(f"{type(obj).__name__} has none of {names}")


def load_ogs_api(alpha: float = ALPHA, limit: float = LIMIT) -> OgsApi:
    """triton_kernels' routing + matmul_ogs, in either of the two APIs this script knows:
    - `triton_kernels.routing.routing(logits, k)` (Triton <= 3.5; what vLLM's OAITritonExperts
      calls), returning (RoutingData, GatherIndx, ScatterIndx[, ...]);
    - Triton 3.6's: `triton_kernels.topk.topk` returning a sparse matrix whose mask metadata give
      the sorted indices, `make_ragged_tensor_metadata`, and RoutingData / GatherIndx / ScatterIndx
      from `triton_kernels.matmul_ogs`, built as the legacy routing built them (GatherIndx(src =
      slots in expert order, dst = its inverse), ScatterIndx the other way, gate_scal in expert
      order), which of the two metadata arrays is which told by the data.
    Raises ImportError / AttributeError / TypeError when neither matches."""
    import importlib

    swiglu = importlib.import_module("triton_kernels.swiglu")
    mo = importlib.import_module("triton_kernels.matmul_ogs")  # the module, even if a name shadows it

    try:
        from triton_kernels.routing import routing as legacy_routing
    except ImportError:
        legacy_routing = None
    if legacy_routing is not None:
        def route(logits: torch.Tensor, k: int) -> Tuple[Any, Any, Any]:
            r = legacy_routing(logits, k, sm_first=False)
            return r[0], r[1], r[2]
        flavour = "routing"
    else:
        from triton_kernels.tensor import make_ragged_tensor_metadata
        from triton_kernels.topk import topk

        # Which of the mask metadata's two index arrays lists the slots in expert order (the
        # legacy routing's topk_indx: GatherIndx's src, the order of gate_scal) and which is its
        # inverse (gate_indx): triton_kernels' col_sorted_indx / row_sorted_indx have meant
        # either across versions, so the data decide, once, on the first (eager) call.
        order: List[str] = []

        def expert_order(sparse: Any, meta: Any) -> Tuple[torch.Tensor, torch.Tensor]:
            names = ("col_sorted_indx", "row_sorted_indx")
            if order:
                return getattr(meta, order[0]), getattr(meta, order[1])
            if torch.cuda.is_current_stream_capturing():
                # undecided yet (every earlier batch fit both): either fits this one's routing
                return getattr(meta, names[0]), getattr(meta, names[1])
            experts = sparse.indx.flatten().long()
            fits = []
            for first, second in (names, names[::-1]):
                a, b = getattr(meta, first).long(), getattr(meta, second).long()
                e = experts[a]
                if bool((e[1:] >= e[:-1]).all()) and torch.equal(
                        b[a], torch.arange(a.numel(), device=a.device)):
                    fits.append((first, second))
            if not fits:
                raise RuntimeError("triton_ogs: neither col_sorted_indx nor row_sorted_indx "
                                   "lists the slots in expert order")
            if len(fits) == 1:  # decided: kept for every later call
                order.extend(fits[0])
            return getattr(meta, fits[0][0]), getattr(meta, fits[0][1])

        def route(logits: torch.Tensor, k: int) -> Tuple[Any, Any, Any]:
            sparse = topk(logits, k, apply_softmax=True)
            meta = sparse.mask_metadata if hasattr(sparse, "mask_metadata") else sparse.mask.metadata
            topk_indx, gate_indx = expert_order(sparse, meta)
            ragged = make_ragged_tensor_metadata(meta.col_sum, topk_indx.shape[0])
            gate_scal = sparse.vals.flatten()[topk_indx]
            sizes = _first_attr(ragged, "slice_sizes", "batch_sizes")
            rdata = mo.RoutingData(gate_scal, sizes, logits.shape[-1], k, ragged)
            return rdata, mo.GatherIndx(topk_indx, gate_indx), mo.ScatterIndx(gate_indx, topk_indx)
        flavour = "topk"
    specs_params = inspect.signature(mo.FnSpecs).parameters
    act_fields = {f.name for f in dataclasses.fields(mo.FusedActivation)} \
        if dataclasses.is_dataclass(mo.FusedActivation) else set(inspect.signature(mo.FusedActivation).parameters)
    if "reduction_n" in specs_params:
        act = mo.FusedActivation(mo.FnSpecs("swiglu", swiglu.swiglu_fn, ("alpha", "limit"), reduction_n=2),
                                 (alpha, limit))
    elif "reduction_n" in act_fields:
        act = mo.FusedActivation(mo.FnSpecs("swiglu", swiglu.swiglu_fn, ("alpha", "limit")), (alpha, limit), 2)
    else:
        raise TypeError("neither FnSpecs nor FusedActivation takes reduction_n")
    return OgsApi(flavour, route, mo.matmul_ogs, mo.PrecisionConfig(), act)


class TritonOgs(Impl):
    """triton_kernels: routing from the logits, matmul_ogs GEMM1 (gather, bias, fused SwiGLU),
    matmul_ogs GEMM2 (bias, gammas = routing weights, scatter + k-way reduction)."""

    name = "triton_ogs"
    mode = "graph"

    def __init__(self, layout: str) -> None:
        self.layout = layout
        self._api: Optional[OgsApi] = None
        self._why: Optional[str] = None
        self._weights: Optional[Tuple[Tuple[Any, ...], Tuple[torch.Tensor, ...]]] = None

    def api(self) -> OgsApi:
        if self._api is None and self._why is None:
            try:
                import triton_kernels  # noqa: F401
            except Exception as e:  # noqa: BLE001 (any import failure makes it unavailable)
                self._why = f"unavailable: import triton_kernels: {type(e).__name__}: {e}"
            else:
                try:
                    self._api = load_ogs_api()
                except Exception as e:  # noqa: BLE001
                    self._why = f"unavailable: triton_kernels API not as expected: {type(e).__name__}: {e}"
        if self._api is None:
            raise Unavailable(self._why)
        return self._api

    def note(self) -> Optional[str]:
        return f"triton_kernels API: {self._api.flavour}; weights {self.layout}-major" if self._api else None

    def release(self) -> None:
        self._weights = None

    def skip_reason(self, wl: Workload, args: argparse.Namespace) -> Optional[str]:
        if wl.family != "gptoss":
            return ("unavailable: the workload repeats expert ids within a token, which "
                    "triton_kernels' routing (top-k of logits, a bitmatrix) cannot express")
        try:
            self.api()
        except Unavailable as e:
            return str(e)
        return None

    def _layer(self, layer: Layer) -> Tuple[torch.Tensor, ...]:
        if self._weights is None or self._weights[0] != layer.key:
            self._weights = None
            w1 = column_major(layer.w1) if self.layout == "col" else layer.w1
            w2 = column_major(layer.w2) if self.layout == "col" else layer.w2
            self._weights = (layer.key, (w1, layer.b1.float(), w2, layer.b2.float()))
        return self._weights[1]

    def build(self, wl: Workload, layer: Layer, batch: Batch) -> Fn:
        api = self.api()
        w1, b1, w2, b2 = self._layer(layer)
        x, logits, k, t, h = batch.x, batch.logits, wl.top_k, wl.tokens, wl.hidden

        def run() -> torch.Tensor:
            rdata, gather, scatter = api.route(logits, k)
            inter = api.matmul_ogs(x, w1, b1, rdata, gather_indx=gather,
                                   precision_config=api.precision_config, fused_activation=api.activation)
            inter = inter.reshape(-1, inter.shape[-1])
            y = api.matmul_ogs(inter, w2, b2, rdata, scatter_indx=scatter,
                               precision_config=api.precision_config, gammas=rdata.gate_scal)
            if y.numel() != t * h:
                raise RuntimeError(f"matmul_ogs returned {list(y.shape)}, expected [{t}, {h}]")
            return y.reshape(t, h)

        return run


def make_impls(names: Sequence[str], args: argparse.Namespace) -> List[Impl]:
    table: Dict[str, Callable[[], Impl]] = {
        "moejit": lambda: Moejit("moejit", "graph"),
        "moejit_eager": lambda: Moejit("moejit_eager", "eager"),
        "triton_ogs": lambda: TritonOgs(args.ogs_layout),
        "grouped": Grouped,
        "ref_loop": RefLoop,
    }
    return [table[n]() for n in names]


# ---- timing ----------------------------------------------------------------------------------------------------------


@dataclass
class Timing:
    times_ms: List[float]
    warmup: int

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    def quantile(self, q: float) -> float:
        xs = sorted(self.times_ms)
        return xs[min(len(xs) - 1, max(0, int(q * (len(xs) - 1))))]


class Timer:
    """CUDA events around each call, a 256 MB buffer written before it (L2 flushed)."""

    def __init__(self, budget_ms: float, min_reps: int, max_reps: int, warmup: int) -> None:
        self.flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
        self.budget_ms, self.min_reps, self.max_reps, self.warmup = budget_ms, min_reps, max_reps, warmup

    def _timed(self, run: Callable[[], Any], n: int) -> List[float]:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(n)]
        for start, end in events:
            self.flush.zero_()
            start.record()
            run()
            end.record()
        torch.cuda.synchronize()
        return [s.elapsed_time(e) for s, e in events]

    def measure(self, run: Callable[[], Any]) -> Timing:
        """Warm-up (one call when a call takes over 50 ms), then as many repeats as fit the budget,
        between min_reps and max_reps."""
        t0 = time.perf_counter()
        run()
        torch.cuda.synchronize()
        first = (time.perf_counter() - t0) * 1e3
        warmup = 1 if first > 50 else self.warmup
        for _ in range(warmup - 1):
            run()
        estimate = self._timed(run, 1)[0]
        n = int(max(self.min_reps, min(self.max_reps, self.budget_ms // max(estimate, 1e-3))))
        return Timing(self._timed(run, n), warmup)


def capture_graph(fn: Fn) -> Tuple[Callable[[], Any], torch.Tensor, Any]:
    """fn captured in a CUDA graph after two warm-up calls on a side stream: (replay, output
    tensor the replays write, the graph)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out, graph


# ---- records -----------------------------------------------------------------------------------------------------------


def expert_bytes(wl: Workload) -> int:
    """Bytes of one expert's weights and biases."""
    h, i = wl.hidden, wl.intermediate
    return (h * 2 * i + 2 * i + i * h + h) * torch.finfo(wl.dtype).bits // 8


def flops(wl: Workload) -> float:
    """Dropless FLOPs: 2 * T * K * 3 * H * I."""
    return 2.0 * wl.tokens * wl.top_k * 3.0 * wl.hidden * wl.intermediate


def commit() -> Tuple[str, Optional[bool]]:
    """(git rev-parse HEAD, whether the tree has changes), else ($MOEJIT_COMMIT or "unknown", None)."""
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], check=True,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               check=True, capture_output=True, text=True, timeout=10).stdout.strip()
        return sha, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("MOEJIT_COMMIT", "unknown"), None


def versions() -> Dict[str, Optional[str]]:
    out: Dict[str, Optional[str]] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import triton

        out["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        out["triton"] = None
    try:
        out["moejit"] = moejit.library_version()
        out["moejit_library"] = moejit.library_path()
    except moejit.MoejitError as e:
        out["moejit"], out["moejit_library"] = None, str(e)
    return out


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# ---- the run ---------------------------------------------------------------------------------------------------------------


@dataclass
class Context:
    args: argparse.Namespace
    timer: Timer
    base: Dict[str, Any]
    out: Any  # the open JSON-lines file
    records: List[Dict[str, Any]] = field(default_factory=list)


def quiet_sync() -> None:
    """torch.cuda.synchronize after a failure, reporting (not raising) a second error."""
    try:
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001
        log(f"  synchronize after the failure also failed: {type(e).__name__}: {e}")


def run_impl(ctx: Context, impl: Impl, wl: Workload, layer: Layer, batch: Batch,
             sample: torch.Tensor, want: torch.Tensor, distinct: int) -> Dict[str, Any]:
    """Times and checks one implementation on one workload; returns its record."""
    rec: Dict[str, Any] = {"impl": impl.name, "mode": impl.mode, "wl": wl.record(), "ms": None,
                           "ok": False, "err": None, "tol": TOLERANCE[wl.dtype], "tflops": None,
                           "gbps": None, "distinct_experts": distinct, "status": "ok"}
    reason = impl.skip_reason(wl, ctx.args)
    if reason:
        rec["status"] = reason
        return rec
    graph = None
    try:
        fn = impl.build(wl, layer, batch)
        if impl.mode == "graph":
            try:
                run, out, graph = capture_graph(fn)
            except Exception as e:  # noqa: BLE001: record it and time eagerly instead
                quiet_sync()
                rec["mode"] = "eager"
                rec["note"] = f"graph capture failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); eager"
                run, out = fn, None
        else:
            run, out = fn, None
        if impl.note():
            rec["note"] = "; ".join(filter(None, [impl.note(), rec.get("note")]))
        timing = ctx.timer.measure(run)
        y = out if out is not None else fn()
        torch.cuda.synchronize()
        err = rel_error(y.reshape(wl.tokens, wl.hidden)[sample], want)
        ms = timing.median
        moved = distinct * expert_bytes(wl) + 2 * wl.tokens * wl.hidden * torch.finfo(wl.dtype).bits // 8
        rec.update(ms=ms, ok=bool(err <= TOLERANCE[wl.dtype]), err=None if math.isinf(err) else err,
                   tflops=flops(wl) / (ms * 1e-3) / 1e12, gbps=moved / (ms * 1e-3) / 1e9,
                   lat_ms={"p10": timing.quantile(0.1), "p50": ms, "p90": timing.quantile(0.9),
                           "reps": len(timing.times_ms), "warmup": timing.warmup})
        if math.isinf(err):
            rec["status"] = "non-finite output"
    except Unavailable as e:
        rec["status"] = str(e)
    except Exception as e:  # noqa: BLE001: one implementation's failure must not end the run
        rec["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        if ctx.args.verbose:
            traceback.print_exc()
        quiet_sync()
    finally:
        del graph
    return rec


def run_workload(ctx: Context, impls: Sequence[Impl], wl: Workload, layer: Layer, index: str) -> None:
    batch = make_batch(wl)
    sample = sample_tokens(wl.tokens, ctx.args.check_tokens)
    want = oracle(layer, batch.x[sample], batch.ids[sample], batch.w_slot[sample])
    distinct = int(batch.ids.unique().numel())
    for impl in impls:
        t0 = time.perf_counter()
        rec = run_impl(ctx, impl, wl, layer, batch, sample, want, distinct)
        rec.update(ctx.base)
        ctx.records.append(rec)
        ctx.out.write(json.dumps(rec) + "\n")
        ctx.out.flush()
        if rec["ms"] is not None:
            what = (f"{rec['ms']:.3f} ms {rec['tflops']:.1f} TFLOP/s {rec['gbps']:.0f} GB/s "
                    f"{'ok' if rec['ok'] else 'CHECK FAILED'} err={rec['err']:.2e}"
                    if rec["err"] is not None else f"{rec['ms']:.3f} ms {rec['status']}")
        else:
            what = rec["status"]
        log(f"{index} {wl.name:<22} {impl.name:<13} {what}  ({time.perf_counter() - t0:.1f} s)")
        torch.cuda.empty_cache()


def run_all(ctx: Context, impls: Sequence[Impl], workloads: Sequence[Workload]) -> None:
    """Workloads grouped by layer (weights made once), largest T first (one moejit plan per layer)."""
    groups: Dict[Tuple[Any, ...], List[Workload]] = {}
    for wl in workloads:
        groups.setdefault((wl.family, wl.experts, wl.hidden, wl.intermediate, wl.dtype), []).append(wl)
    done, total = 0, len(workloads)
    for wls in groups.values():
        layer = make_layer(wls[0])
        for wl in sorted(wls, key=lambda w: -w.tokens):
            done += 1
            run_workload(ctx, impls, wl, layer, f"[{done}/{total}]")
        for impl in impls:
            impl.release()
        del layer
        torch.cuda.empty_cache()


# ---- outputs ----------------------------------------------------------------------------------------------------------------


def table(records: Sequence[Dict[str, Any]], impls: Sequence[str]) -> str:
    """Workloads x implementations: median ms; '*' after a failed check; '—' when not run."""
    rows: Dict[str, Dict[str, str]] = {}
    order: List[Tuple[Tuple[Any, ...], str]] = []
    for r in records:
        wl = r["wl"]
        if wl["name"] not in rows:
            rows[wl["name"]] = {}
            order.append(((wl["family"], wl["experts"], wl["tokens"]), wl["name"]))
        cell = "—" if r["ms"] is None else f"{r['ms']:.3f}" + ("" if r["ok"] else "*")
        rows[wl["name"]][r["impl"]] = cell
    width = max([len(n) for n in rows] + [8])
    head = f"{'workload':<{width}} " + " ".join(f"{n:>13}" for n in impls)
    lines = [head, "-" * len(head)]
    for _, name in sorted(order):
        lines.append(f"{name:<{width}} " + " ".join(f"{rows[name].get(n, '—'):>13}" for n in impls))
    lines.append("ms, median of the repeats (L2 flushed); * = the check against the float64 reference failed")
    return "\n".join(lines)


def plot(records: Sequence[Dict[str, Any]], path: Path) -> None:
    """ms vs tokens per implementation, log-log, one panel per E."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot")
        return
    panels = sorted({r["wl"]["experts"] for r in records}, reverse=True)
    colors = {impl: f"C{i}" for i, impl in enumerate(dict.fromkeys(r["impl"] for r in records))}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, experts in zip(axes[0], panels):
        rs = [r for r in records if r["wl"]["experts"] == experts and r["ms"] is not None]
        for impl in dict.fromkeys(r["impl"] for r in rs):
            pts = sorted((r["wl"]["tokens"], r["ms"], r["ok"]) for r in rs if r["impl"] == impl)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl, color=colors[impl])
            bad = [p for p in pts if not p[2]]
            if bad:
                ax.scatter([p[0] for p in bad], [p[1] for p in bad], marker="x", s=80, color=colors[impl])
        some = next((r["wl"] for r in records if r["wl"]["experts"] == experts), {})
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"E={experts}: {some.get('family', '')} {some.get('dtype', '')} top-{some.get('top_k', '')}")
        ax.set_xlabel("tokens")
        ax.set_ylabel("ms (median)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    device = records[0].get("device", "") if records else ""
    fig.suptitle(f"moejit and peers, {device} (x: check failed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    log(f"plot: {path}")


def parse_list(text: str) -> List[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="T in {1, 64, 4096}, E in {32, 128}, openai_moe at B=1 only, fewer repeats")
    p.add_argument("--tokens", type=parse_list, help="gptoss token counts, e.g. 1,64,4096")
    p.add_argument("--experts", type=parse_list, help="gptoss expert counts, e.g. 32,128")
    p.add_argument("--suites", default="gptoss,openai_moe", help="comma list of gptoss, openai_moe")
    p.add_argument("--openai-batches", type=parse_list, help="openai_moe batch sizes (default 1,4; --quick 1)")
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma list of {', '.join(IMPLS)}")
    p.add_argument("--out", type=Path, help="JSON-lines file (default bench/results/<date>-<device>-peers.jsonl)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--check-tokens", type=int, default=64, help="tokens checked against float64 (default 64)")
    p.add_argument("--budget-ms", type=float, help="timing budget per measurement (default 2000, --quick 600)")
    p.add_argument("--ref-max-tokens", type=int, default=4096, help="ref_loop runs up to this T (default 4096)")
    p.add_argument("--ogs-layout", choices=["col", "row"], default="col",
                   help="triton_ogs weight layout: col (stride(-2) == 1, as bench_mlp) or row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="tracebacks of failed implementations")
    args = p.parse_args(argv)
    args.tokens = args.tokens or (QUICK_TOKENS if args.quick else GPTOSS_TOKENS)
    args.experts = args.experts or GPTOSS_EXPERTS
    args.openai_batches = args.openai_batches or ([1] if args.quick else OPENAI_BATCHES)
    args.budget_ms = args.budget_ms or (600.0 if args.quick else 2000.0)
    args.impls = [n for n in args.impls.split(",") if n]
    for n in args.impls:
        if n not in IMPLS:
            p.error(f"--impls: unknown implementation {n!r}")
    args.suites = [s for s in args.suites.split(",") if s]
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        log("peers.py: no CUDA device")
        return 2
    torch.set_grad_enabled(False)
    torch.backends.cuda.matmul.allow_tf32 = False  # f32 references in full precision
    device = torch.cuda.get_device_name()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    out_path = args.out or REPO / "bench" / "results" / f"{date}-{slug(device)}-peers.jsonl"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sha, dirty = commit()
    base = {"device": device, "commit": sha, "dirty": dirty, "date": date, "allow_tf32": False,
            **versions()}
    log(f"peers.py on {device}: torch {base['torch']}, triton {base['triton']}, moejit {base['moejit']} "
        f"({base['moejit_library']}), commit {sha}{' (dirty)' if dirty else ''}")
    workloads: List[Workload] = []
    if "gptoss" in args.suites:
        workloads += gptoss_workloads(args.tokens, args.experts, args.seed)
    if "openai_moe" in args.suites:
        workloads += openai_moe_workloads(args.openai_batches, args.seed)
    impls = make_impls(args.impls, args)
    t0 = time.perf_counter()
    with open(out_path, "w", encoding="utf-8") as f:
        ctx = Context(args, Timer(args.budget_ms, 3 if args.quick else 10, 15 if args.quick else 30,
                                  2 if args.quick else 3), base, f)
        run_all(ctx, impls, workloads)
    log(f"{len(ctx.records)} records in {out_path} ({time.perf_counter() - t0:.0f} s)")
    if not args.no_plot and ctx.records:
        plot(ctx.records, out_path.with_suffix(".png"))
    print(table(ctx.records, args.impls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
