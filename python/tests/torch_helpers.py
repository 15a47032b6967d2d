"""torch_helpers.py: what the torch suites share: the error metric, random inputs on the GPU, and a
torch.compile whose backend keeps the graphs it is given (imported by the test files beside it)."""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch


def rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max|got - ref| / max|ref| over all elements (NaN when got has a non-finite value)."""
    got = got.reshape(ref.shape).double()
    if not torch.isfinite(got).all():
        return float("nan")
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def make_routing(tokens: int, n_experts: int, top_k: int, *, dense: bool = False,
                 ids_dtype: torch.dtype = torch.int32, weights_dtype: torch.dtype = torch.float32,
                 repeats: bool = False, seed: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """ids [T, K] (distinct experts per token, or drawn with repeats) and weights: softmax over K
    ([T, K]) or over all E ([T, E], nonzero everywhere, as kernels-benchmarks makes them)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    if repeats:
        ids = torch.randint(0, n_experts, (tokens, top_k), generator=g, device="cuda")
    else:
        ids = torch.rand(tokens, n_experts, generator=g, device="cuda").argsort(dim=1)[:, :top_k]
    width = n_experts if dense else top_k
    logits = torch.randn(tokens, width, generator=g, device="cuda")
    return ids.to(ids_dtype).contiguous(), torch.softmax(logits, dim=-1).to(weights_dtype)


def make_x(tokens: int, hidden: int, dtype: torch.dtype = torch.bfloat16,
           batch: Optional[int] = None, seed: int = 2) -> torch.Tensor:
    """hidden_states [T, H], or [batch, T / batch, H]."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g, device="cuda").to(dtype)
    return x.view(batch, tokens // batch, hidden) if batch else x


def compile_recording(fn: Callable) -> Tuple[Callable, List[torch.fx.GraphModule]]:
    """torch.compile(fn, fullgraph=True) after a dynamo reset, with a backend that keeps each graph
    it is handed (in the list returned) and runs it as traced."""
    graphs: List[torch.fx.GraphModule] = []

    def record(gm: torch.fx.GraphModule, example_inputs) -> object:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend=record), graphs
