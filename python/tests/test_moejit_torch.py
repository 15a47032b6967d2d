"""test_moejit_torch.py: moejit.GptOssExperts and moejit.experts on the GPU against a float64
reference module (the GptOssExperts loop form), the argument checks, graphs, streams and the plan
cache.

Skips without torch; the GPU tests skip without CUDA, and those that launch kernels skip without
libmoejit (set MOEJIT_LIBRARY) or when the library finds no device. Tolerance: max|got - ref| /
max|ref| <= 2e-2 for bf16 and f16, <= 1e-5 for f32 (the golden vectors' tolerance).
"""
from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Dict, Optional, Tuple

import pytest

torch = pytest.importorskip("torch")

from torch_helpers import compile_recording, make_routing, make_x, rel_error  # noqa: E402
import moejit  # noqa: E402  (after the torch check)
from moejit import MoejitError, Status  # noqa: E402

TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 2e-2, torch.float32: 1e-5}
ALPHA, LIMIT = 1.702, 7.0

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


# ---- the oracle ----------------------------------------------------------------------------------


class RefGptOssExperts(torch.nn.Module):
    """The GptOssExperts loop form, computed in float64 on upcast copies: for each expert e with
    slots routed to it, gate_up = x @ gate_up_proj[e] + bias; gate, up = gate_up[..., ::2],
    gate_up[..., 1::2]; gate = gate.clamp(max=limit); up = up.clamp(-limit, limit);
    glu = gate * sigmoid(gate * alpha); next = (up + 1) * glu; out = next @ down_proj[e] +
    down_proj_bias[e], weighted by routing_weights[token, e] (dense [T, E]) or by the slot's weight
    (top-k [T, K]; the top-k form when K == E, as moejit assumes), summed over the slots."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.gate_up_proj = module.gate_up_proj
        self.gate_up_proj_bias = module.gate_up_proj_bias
        self.down_proj = module.down_proj
        self.down_proj_bias = module.down_proj_bias
        self.alpha, self.limit = module.alpha, module.limit

    @torch.no_grad()
    def forward(self, hidden_states: torch.Tensor, router_indices: torch.Tensor,
                routing_weights: torch.Tensor, dense: Optional[bool] = None) -> torch.Tensor:
        """hidden_states [..., H] -> [T, H] float64. dense: None = from the shape (top-k when
        K == E)."""
        n_experts, hidden = self.gate_up_proj.shape[0], self.gate_up_proj.shape[1]
        x = hidden_states.reshape(-1, hidden).double()
        tokens = x.shape[0]
        ids = router_indices.reshape(tokens, -1).long()
        w = routing_weights.reshape(tokens, -1).double()
        if dense is None:
            dense = w.shape[1] != ids.shape[1]
        out = torch.zeros(tokens, hidden, dtype=torch.float64, device=x.device)
        for e in range(n_experts):
            tok, slot = torch.where(ids == e)
            if tok.numel() == 0:
                continue
            gate_up = x[tok] @ self.gate_up_proj[e].double() + self.gate_up_proj_bias[e].double()
            gate, up = gate_up[..., ::2], gate_up[..., 1::2]
            gate = gate.clamp(max=self.limit)
            up = up.clamp(min=-self.limit, max=self.limit)
            glu = gate * torch.sigmoid(gate * self.alpha)
            nxt = (up + 1) * glu
            o = nxt @ self.down_proj[e].double() + self.down_proj_bias[e].double()
            weight = w[tok, e] if dense else w[tok, slot]
            out.index_add_(0, tok, o * weight[:, None])
        return out




# ---- layers and routing ---------------------------------------------------------------------------

Shape = Tuple[int, int, int, int]  # H, I, E, K
GPT_OSS: Shape = (2880, 2880, 32, 4)
SMALL: Shape = (64, 96, 5, 2)


@functools.lru_cache(maxsize=4)
def make_module(hidden: int, inter: int, n_experts: int, dtype: torch.dtype,
                seed: int = 0) -> torch.nn.Module:
    """A moejit.GptOssExperts on the GPU with random weights: gate_up of std ~3 so that both
    clamps act on some values, down_proj ~ 1/sqrt(I), biases ~0.1."""
    cfg = SimpleNamespace(num_local_experts=n_experts, hidden_size=hidden, intermediate_size=inter)
    m = moejit.GptOssExperts(cfg, dtype=dtype, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(seed)
    with torch.no_grad():
        for p, scale in ((m.gate_up_proj, 3.0 / hidden**0.5), (m.gate_up_proj_bias, 0.1),
                         (m.down_proj, 1.0 / inter**0.5), (m.down_proj_bias, 0.1)):
            p.copy_(torch.randn(p.shape, generator=g, device="cuda", dtype=torch.float32) * scale)
    return m









# ---- the module against the reference ---------------------------------------------------------------

DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def _cases():
    """(shape, dtype, tokens, batch, dense, ids dtype, weights dtype, repeats)."""
    out = []
    for dtype in DTYPES:
        for tokens in (1, 64, 512):
            batch = 2 if tokens == 512 else None
            out.append((GPT_OSS, dtype, tokens, batch, False, torch.int32, torch.float32, False))
            out.append((GPT_OSS, dtype, tokens, batch, True, torch.int64, dtype, False))
        for dense in (False, True):
            for ids_dtype in (torch.int32, torch.int64):
                for tokens in (1, 7, 300):
                    out.append((SMALL, dtype, tokens, None, dense, ids_dtype, torch.float32, True))
    for wdt in (torch.bfloat16, torch.float16):
        out.append((SMALL, torch.bfloat16, 33, None, False, torch.int32, wdt, True))
        out.append((SMALL, torch.float32, 33, None, True, torch.int64, wdt, True))
    return out


def _case_id(case) -> str:
    (h, i, e, k), dtype, tokens, batch, dense, ids_dtype, wdt, repeats = case
    return (f"H{h}-I{i}-E{e}-K{k}-{str(dtype)[6:]}-T{tokens}{'-B' + str(batch) if batch else ''}-"
            f"{'dense' if dense else 'topk'}-{str(ids_dtype)[6:]}-w{str(wdt)[6:]}{'-rep' if repeats else ''}")


@pytest.mark.parametrize("case", _cases(), ids=_case_id)
def test_module_matches_reference(lib_on_gpu: None, case) -> None:
    (hidden, inter, n_experts, top_k), dtype, tokens, batch, dense, ids_dtype, wdt, repeats = case
    module = make_module(hidden, inter, n_experts, dtype)
    ref = RefGptOssExperts(module)
    x = make_x(tokens, hidden, dtype, batch)
    ids, weights = make_routing(tokens, n_experts, top_k, dense=dense, ids_dtype=ids_dtype,
                                weights_dtype=wdt, repeats=repeats)
    with torch.no_grad():
        got = module(x, ids, weights)
    want = ref(x, ids, weights)
    assert got.dtype == dtype
    assert got.shape == (x.shape[0], tokens // x.shape[0], hidden)  # the reference's view
    err = rel_error(got, want)
    assert err <= TOLERANCE[dtype], f"relative max-abs error {err:.3g} > {TOLERANCE[dtype]:g}"


def test_experts_keeps_the_leading_shape(lib_on_gpu: None) -> None:
    hidden, inter, n_experts, top_k = SMALL
    m = make_module(hidden, inter, n_experts, torch.bfloat16)
    x = make_x(24, hidden, torch.bfloat16, batch=3)
    ids, w = make_routing(24, n_experts, top_k, dense=False, ids_dtype=torch.int64,
                          weights_dtype=torch.float32)
    args = (m.gate_up_proj, m.gate_up_proj_bias, m.down_proj, m.down_proj_bias)
    with torch.no_grad():
        y3 = moejit.experts(x, ids.view(3, 8, top_k), w.view(3, 8, top_k), *args)
        y2 = moejit.experts(x.reshape(24, hidden), ids, w, *args)
    assert y3.shape == (3, 8, hidden) and y2.shape == (24, hidden)
    assert torch.equal(y3.reshape(24, hidden), y2)


def _k_equal_e(seed: int) -> Tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """E = K = 2 (kernels-benchmarks' openai_moe E=2): a [T, 2] weight tensor fits both forms."""
    m = make_module(64, 96, 2, torch.float32)
    x = make_x(16, 64, torch.float32)
    ids, w = make_routing(16, 2, 2, dense=False, ids_dtype=torch.int32, weights_dtype=torch.float32,
                          repeats=True, seed=seed)
    return m, x, ids, w


def test_k_equal_e_experts_assumes_topk(lib_on_gpu: None) -> None:
    m, x, ids, w = _k_equal_e(3)
    args = (m.gate_up_proj, m.gate_up_proj_bias, m.down_proj, m.down_proj_bias)
    ref = RefGptOssExperts(m)
    with torch.no_grad():
        topk = moejit.experts(x, ids, w, *args)
        dense = moejit.experts(x, ids, w, *args, routing="dense")
    assert rel_error(topk, ref(x, ids, w, dense=False)) <= TOLERANCE[torch.float32]
    assert rel_error(dense, ref(x, ids, w, dense=True)) <= TOLERANCE[torch.float32]


def test_k_equal_e_module_takes_dense_weights(lib_on_gpu: None) -> None:
    """The reference module's routing_weights are always [T, E]: so are the drop-in's."""
    m, x, ids, w = _k_equal_e(4)
    with torch.no_grad():
        got = m(x, ids, w)
    assert rel_error(got, RefGptOssExperts(m)(x, ids, w, dense=True)) <= TOLERANCE[torch.float32]


def test_f32_biases_with_bf16(lib_on_gpu: None) -> None:
    hidden, inter, n_experts, top_k = SMALL
    m = make_module(hidden, inter, n_experts, torch.bfloat16)
    x = make_x(40, hidden, torch.bfloat16)
    ids, w = make_routing(40, n_experts, top_k, dense=False, ids_dtype=torch.int32,
                          weights_dtype=torch.float32)
    b1, b2 = m.gate_up_proj_bias.float(), m.down_proj_bias.float()
    with torch.no_grad():
        got = moejit.experts(x, ids, w, m.gate_up_proj, b1, m.down_proj, b2)
        with pytest.raises(ValueError, match="down_proj_bias"):
            moejit.experts(x, ids, w, m.gate_up_proj, b1, m.down_proj, m.down_proj_bias)
    assert rel_error(got, RefGptOssExperts(m)(x, ids, w)) <= TOLERANCE[torch.bfloat16]
    assert any(k.bias_f32 for k, _ in moejit.cache_info())


def test_f32_follows_torch_tf32_flag(lib_on_gpu: None) -> None:
    hidden, inter, n_experts, top_k = SMALL
    m = make_module(hidden, inter, n_experts, torch.float32)
    x = make_x(40, hidden, torch.float32)
    ids, w = make_routing(40, n_experts, top_k, dense=False, ids_dtype=torch.int32,
                          weights_dtype=torch.float32)
    ref = RefGptOssExperts(m)(x, ids, w)
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        with torch.no_grad():
            tf32 = m(x, ids, w)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    assert rel_error(tf32, ref) <= 2e-2  # TF32: 10-bit mantissa products
    keys = [k for k, _ in moejit.cache_info() if (k.hidden, k.dtype) == (hidden, moejit.DType.F32)]
    assert any(not k.exact_f32 for k in keys), "no TF32 plan was made"


def test_alpha_and_limit_reach_the_kernels(lib_on_gpu: None) -> None:
    hidden, inter, n_experts, top_k = SMALL
    m = make_module(hidden, inter, n_experts, torch.float32)
    x = make_x(40, hidden, torch.float32)
    ids, w = make_routing(40, n_experts, top_k, dense=False, ids_dtype=torch.int32,
                          weights_dtype=torch.float32)
    m2 = moejit.GptOssExperts.from_module(m)
    m2.alpha, m2.limit = 1.0, 2.5
    with torch.no_grad():
        got = m2(x, ids, w)
    assert rel_error(got, RefGptOssExperts(m2)(x, ids, w)) <= TOLERANCE[torch.float32]


# ---- the module's surface (CPU: torch only) ----------------------------------------------------------


def test_module_parameters_and_attributes() -> None:
    cfg = SimpleNamespace(num_local_experts=4, hidden_size=16, intermediate_size=24)
    m = moejit.GptOssExperts(cfg)
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert shapes == {"gate_up_proj": (4, 16, 48), "gate_up_proj_bias": (4, 48),
                      "down_proj": (4, 24, 16), "down_proj_bias": (4, 16)}
    assert (m.num_experts, m.hidden_size, m.expert_dim, m.intermediate_size) == (4, 16, 24, 24)
    assert (m.alpha, m.limit) == (1.702, 7.0)
    k = moejit.GptOssExperts(num_local_experts=2, hidden_size=8, intermediate_size=8,
                             dtype=torch.bfloat16)
    assert k.gate_up_proj.shape == (2, 8, 16) and k.gate_up_proj.dtype == torch.bfloat16
    override = moejit.GptOssExperts(cfg, num_local_experts=8)
    assert override.num_experts == 8 and override.hidden_size == 16
    with pytest.raises(ValueError, match="hidden_size"):
        moejit.GptOssExperts(num_local_experts=2, intermediate_size=8)
    assert set(m.state_dict()) == set(shapes)


def test_from_module_shares_parameters() -> None:
    m = moejit.GptOssExperts(num_local_experts=2, hidden_size=8, intermediate_size=8)
    m2 = moejit.GptOssExperts.from_module(m)
    assert m2.gate_up_proj is m.gate_up_proj and m2.down_proj_bias is m.down_proj_bias
    assert m2.num_experts == 2 and m2.expert_dim == 8


# ---- argument errors (CUDA tensors; no library needed) ---------------------------------------------------


def _args(dtype: torch.dtype = torch.bfloat16, tokens: int = 8) -> Dict[str, torch.Tensor]:
    hidden, inter, n_experts, top_k = 64, 32, 4, 2
    dev = "cuda"
    return {
        "hidden_states": torch.randn(tokens, hidden, device=dev).to(dtype),
        "router_indices": torch.randint(0, n_experts, (tokens, top_k), device=dev),
        "routing_weights": torch.rand(tokens, top_k, device=dev),
        "gate_up_proj": torch.randn(n_experts, hidden, 2 * inter, device=dev).to(dtype),
        "gate_up_proj_bias": torch.randn(n_experts, 2 * inter, device=dev).to(dtype),
        "down_proj": torch.randn(n_experts, inter, hidden, device=dev).to(dtype),
        "down_proj_bias": torch.randn(n_experts, hidden, device=dev).to(dtype),
    }


def _call(a: Dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return moejit.experts(a["hidden_states"], a["router_indices"], a["routing_weights"],
                              a["gate_up_proj"], a["gate_up_proj_bias"], a["down_proj"],
                              a["down_proj_bias"])


def _bad(name: str, value) -> Dict[str, torch.Tensor]:
    a = _args()
    a[name] = value(a) if callable(value) else value
    return a


@needs_cuda
@pytest.mark.parametrize("name, make", [
    ("gate_up_proj", lambda a: a["gate_up_proj"].half()),
    ("down_proj", lambda a: a["down_proj"].float()),
    ("down_proj_bias", lambda a: a["down_proj_bias"].half()),
    ("router_indices", lambda a: a["router_indices"].float()),
    ("router_indices", lambda a: a["router_indices"].short()),
    ("routing_weights", lambda a: a["routing_weights"].double()),
    ("hidden_states", lambda a: a["hidden_states"].double()),
], ids=["gate_up_proj-f16", "down_proj-f32", "down_proj_bias-f16", "ids-float", "ids-int16",
        "weights-f64", "x-f64"])
def test_wrong_dtype_names_the_argument(name: str, make) -> None:
    with pytest.raises(ValueError, match=name):
        _call(_bad(name, make))


@needs_cuda
@pytest.mark.parametrize("name, make", [
    ("hidden_states", lambda a: a["hidden_states"].t().contiguous().t()),
    ("hidden_states", lambda a: torch.cat([a["hidden_states"]] * 2, dim=1)[:, ::2]),
    ("gate_up_proj", lambda a: a["gate_up_proj"].transpose(1, 2).contiguous().transpose(1, 2)),
    ("down_proj", lambda a: a["down_proj"].transpose(1, 2).contiguous().transpose(1, 2)),
    ("router_indices", lambda a: a["router_indices"].t().contiguous().t()),
    ("routing_weights", lambda a: a["routing_weights"].t().contiguous().t()),
], ids=["x-transposed", "x-strided", "gate_up_proj", "down_proj", "ids", "weights"])
def test_non_contiguous_names_the_argument(name: str, make) -> None:
    a = _bad(name, make)
    assert not a[name].is_contiguous()
    with pytest.raises(ValueError, match=f"{name}.*contiguous"):
        _call(a)


@needs_cuda
@pytest.mark.parametrize("name, make", [
    ("gate_up_proj", lambda a: a["gate_up_proj"][:, :32].contiguous()),
    ("gate_up_proj", lambda a: a["gate_up_proj"][:, :, :63].contiguous()),
    ("gate_up_proj_bias", lambda a: a["gate_up_proj_bias"][:3]),
    ("down_proj", lambda a: a["down_proj"].transpose(1, 2).contiguous()),
    ("down_proj_bias", lambda a: a["down_proj_bias"][:, :32].contiguous()),
    ("router_indices", lambda a: a["router_indices"][:5]),
    ("router_indices", lambda a: a["router_indices"].reshape(-1)),
    ("routing_weights", lambda a: torch.rand(8, 3, device="cuda")),
    ("routing_weights", lambda a: a["routing_weights"][:7]),
    ("hidden_states", lambda a: a["hidden_states"].reshape(-1)),
], ids=["w1-H", "w1-odd", "b1-E", "w2-transposed", "b2-H", "ids-T", "ids-1d", "weights-width",
        "weights-T", "x-1d"])
def test_wrong_shape_names_the_argument(name: str, make) -> None:
    with pytest.raises(ValueError, match=name):
        _call(_bad(name, make))


@needs_cuda
def test_cpu_and_unaligned_inputs_name_the_argument() -> None:
    with pytest.raises(ValueError, match="hidden_states.*CUDA"):
        _call(_bad("hidden_states", lambda a: a["hidden_states"].cpu()))
    with pytest.raises(ValueError, match="routing_weights.*same CUDA device"):
        _call(_bad("routing_weights", lambda a: a["routing_weights"].cpu()))
    # a contiguous view that starts 2 bytes into its storage
    with pytest.raises(ValueError, match="hidden_states.*aligned"):
        _call(_bad("hidden_states", lambda a: torch.randn(8 * 64 + 1, device="cuda")
                   .to(torch.bfloat16)[1:].view(8, 64)))


@needs_cuda
def test_routing_keyword_is_checked() -> None:
    a = _args()
    a["routing_weights"] = torch.rand(8, 4, device="cuda")  # [T, E], E = 4 != K = 2
    with pytest.raises(ValueError, match="routing_weights.*routing='topk'"):
        with torch.no_grad():
            moejit.experts(*a.values(), routing="topk")
    with pytest.raises(ValueError, match="routing: is 'sparse'"):
        with torch.no_grad():
            moejit.experts(*a.values(), routing="sparse")
    with pytest.raises(ValueError, match="routing_weights.*routing='dense'"):
        with torch.no_grad():
            moejit.experts(*_args().values(), routing="dense")


@needs_cuda
def test_grad_requiring_input_is_refused() -> None:
    a = _args(torch.float32)
    a["hidden_states"].requires_grad_(True)
    with pytest.raises(RuntimeError, match="no backward"):
        moejit.experts(*a.values())


@needs_cuda
def test_num_tokens_is_checked() -> None:
    for bad, match in ((torch.tensor([3], device="cuda"), "num_tokens.*int32"),
                       (torch.tensor([3, 4], dtype=torch.int32, device="cuda"), "num_tokens.*one"),
                       (torch.tensor([3], dtype=torch.int32), "num_tokens.*CUDA")):
        with pytest.raises(ValueError, match=match):
            with torch.no_grad():
                moejit.experts(*_args().values(), num_tokens=bad)


def test_num_tokens_serves_smaller_batches_from_one_graph(lib_on_gpu: None) -> None:
    """One graph captured at 48 tokens, replayed with counts 48, 5, 0 and 100: the first
    min(count, 48) rows match the reference of that many tokens, the others are zeros."""
    hidden, inter, n_experts, top_k = SMALL
    m = make_module(hidden, inter, n_experts, torch.bfloat16)
    x = make_x(48, hidden, torch.bfloat16)
    ids, w = make_routing(48, n_experts, top_k, dense=False, ids_dtype=torch.int32,
                          weights_dtype=torch.float32)
    args = (m.gate_up_proj, m.gate_up_proj_bias, m.down_proj, m.down_proj_bias)
    count = torch.tensor([48], dtype=torch.int32, device="cuda")
    with torch.no_grad():
        moejit.experts(x, ids, w, *args, num_tokens=count)  # compiles outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = moejit.experts(x, ids, w, *args, num_tokens=count)
        for n in (48, 5, 0, 100):
            count.fill_(n)
            y.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            live = min(n, 48)
            assert torch.equal(y[live:], torch.zeros_like(y[live:]))
            if live:
                want = RefGptOssExperts(m)(x[:live], ids[:live], w[:live])
                err = rel_error(y[:live], want)
                assert err <= TOLERANCE[torch.bfloat16], f"count {n}: {err:.3g}"


@needs_cuda
def test_zero_tokens_gives_an_empty_output() -> None:
    y = _call(_args(tokens=0))
    assert y.shape == (0, 64) and y.dtype == torch.bfloat16


# ---- errors from the library ---------------------------------------------------------------------------------


def test_library_rejection_is_a_moejit_error(lib_on_gpu: None) -> None:
    a = _args(torch.float32)
    a["hidden_states"] = torch.randn(8, 12, device="cuda")
    a["gate_up_proj"] = torch.randn(4, 12, 64, device="cuda")
    a["down_proj"] = torch.randn(4, 32, 12, device="cuda")
    a["down_proj_bias"] = torch.randn(4, 12, device="cuda")
    with pytest.raises(MoejitError) as info:
        _call(a)
    assert info.value.status == Status.ERR_INVALID_ARG
    assert "MOEJIT_ERR_INVALID_ARG" in str(info.value) and "hidden=12" in str(info.value)


def test_bad_expert_ids_are_reported_with_check(lib_on_gpu: None) -> None:
    hidden, inter, n_experts, top_k = SMALL
    m = make_module(hidden, inter, n_experts, torch.float32)
    x = make_x(10, hidden, torch.float32)
    ids, w = make_routing(10, n_experts, top_k, dense=False, ids_dtype=torch.int64,
                          weights_dtype=torch.float32)
    ids[3, 1] = n_experts
    ids[7, 0] = -1
    args = (m.gate_up_proj, m.gate_up_proj_bias, m.down_proj, m.down_proj_bias)
    with torch.no_grad():
        y = moejit.experts(x, ids, w, *args)  # no check: the bad slots contribute nothing
        with pytest.raises(MoejitError) as info:
            moejit.experts(x, ids, w, *args, check=True)
    assert info.value.status == Status.ERR_BAD_EXPERT_ID
    assert rel_error(y, RefGptOssExperts(m)(x, ids, w)) <= TOLERANCE[torch.float32]


# ---- streams, graphs, the plan cache -------------------------------------------------------------------------


def test_side_stream(lib_on_gpu: None) -> None:
    hidden, inter, n_experts, top_k = SMALL
    m = make_module(hidden, inter, n_experts, torch.float16)
    x = make_x(50, hidden, torch.float16)
    ids, w = make_routing(50, n_experts, top_k, dense=True, ids_dtype=torch.int32,
                          weights_dtype=torch.float16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(s):
        y = m(x, ids, w)
    torch.cuda.current_stream().wait_stream(s)
    assert rel_error(y, RefGptOssExperts(m)(x, ids, w)) <= TOLERANCE[torch.float16]


def test_cuda_graph_replay_matches_eager(lib_on_gpu: None) -> None:
    hidden, inter, n_experts, top_k = GPT_OSS
    m = make_module(hidden, inter, n_experts, torch.bfloat16)
    tokens = 64
    x = make_x(tokens, hidden, torch.bfloat16)
    ids, w = make_routing(tokens, n_experts, top_k, dense=False, ids_dtype=torch.int32,
                          weights_dtype=torch.float32)
    with torch.no_grad():
        m(x, ids, w)  # warm-up outside capture: compiles the plan
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y_static = m(x, ids, w)
        x2 = make_x(tokens, hidden, torch.bfloat16, seed=7)
        ids2, w2 = make_routing(tokens, n_experts, top_k, dense=False, ids_dtype=torch.int32,
                                weights_dtype=torch.float32, seed=8)
        x.copy_(x2)
        ids.copy_(ids2)
        w.copy_(w2)
        g.replay()
        eager = m(x2, ids2, w2)
    torch.cuda.synchronize()
    assert torch.equal(y_static, eager), "graph replay and eager forward differ (not reproducible)"


# ---- torch.compile: one custom op (fake tensors need no GPU) ---------------------------------------


def _fake_args(tokens: int = 5, lead: Tuple[int, ...] = ()) -> Tuple[torch.Tensor, ...]:
    """Fake CUDA tensors of a small layer (within a FakeTensorMode)."""
    hidden, inter, n_experts, top_k = 64, 96, 4, 2
    bf16 = dict(dtype=torch.bfloat16, device="cuda")
    shape = lead + (tokens,) if lead else (tokens,)
    return (torch.empty(shape + (hidden,), **bf16),
            torch.zeros(shape + (top_k,), dtype=torch.int32, device="cuda"),
            torch.empty(shape + (top_k,), dtype=torch.float32, device="cuda"),
            torch.empty(n_experts, hidden, 2 * inter, **bf16),
            torch.empty(n_experts, 2 * inter, **bf16),
            torch.empty(n_experts, inter, hidden, **bf16),
            torch.empty(n_experts, hidden, **bf16))


def _in_a_layer(*a: torch.Tensor) -> torch.Tensor:
    return moejit.experts(*a) * 2


def test_fake_tensors_get_the_output_shape() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        y = moejit.experts(*_fake_args(lead=(3,)))
    assert y.shape == (3, 5, 64) and y.dtype == torch.bfloat16 and y.device.type == "cuda"


def test_parameters_give_no_grad_fn() -> None:
    """Weights that are nn.Parameters (as in GptOssExperts) in grad mode: the result still has no
    grad_fn (inference only), as before the op existed."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        a = list(_fake_args())
        a[3] = torch.nn.Parameter(a[3])
        y = moejit.experts(*a)
    assert y.grad_fn is None


def test_compile_fullgraph_traces_one_op() -> None:
    """torch.compile(fullgraph=True) of a module calling moejit.experts: one graph, the custom op
    in it once, no break (traced on fake tensors: no GPU, nothing launched)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    compiled, graphs = compile_recording(_in_a_layer)
    with FakeTensorMode():
        y = compiled(*_fake_args())
    assert y.shape == (5, 64)
    assert len(graphs) == 1
    ops = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert sum("moejit.experts" in op for op in ops) == 1, ops


def test_compile_keeps_the_argument_checks() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    torch._dynamo.reset()
    compiled = torch.compile(_in_a_layer, fullgraph=True, backend="eager")
    with FakeTensorMode():
        a = list(_fake_args())
        a[3] = torch.empty(4, 63, 192, dtype=torch.bfloat16, device="cuda")  # H = 63, not 64
        with pytest.raises(Exception, match="gate_up_proj: has shape \\[4, 63, 192\\]"):
            compiled(*a)


def test_compiled_matches_eager(lib_on_gpu: None) -> None:
    """On the GPU: the compiled module (inductor) gives bitwise the eager result, and a CUDA
    graph of it replays to the same bits."""
    hidden, inter, n_experts, top_k = GPT_OSS
    m = make_module(hidden, inter, n_experts, torch.bfloat16)
    x = make_x(64, hidden, torch.bfloat16)
    ids, w = make_routing(64, n_experts, top_k, dense=False, ids_dtype=torch.int32,
                          weights_dtype=torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True)
    with torch.no_grad():
        eager = m(x, ids, w)
        got = compiled(x, ids, w)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            replayed = compiled(x, ids, w)
        g.replay()
    torch.cuda.synchronize()
    assert torch.equal(got, eager)
    assert torch.equal(replayed, eager)


def test_plans_are_cached_per_power_of_two_bucket(lib_on_gpu: None) -> None:
    from moejit import _runtime

    hidden, inter, n_experts, top_k = 72, 40, 3, 1  # a shape no other test uses

    def run(tokens: int) -> None:
        m = make_module(hidden, inter, n_experts, torch.float32)
        x = make_x(tokens, hidden, torch.float32)
        ids, w = make_routing(tokens, n_experts, top_k, dense=False, ids_dtype=torch.int32,
                              weights_dtype=torch.float32)
        with torch.no_grad():
            m(x, ids, w)

    def buckets():
        return sorted(mt for k, mt in moejit.cache_info() if (k.hidden, k.intermediate) == (hidden, inter))

    run(1)
    run(100)
    assert buckets() == [_runtime.bucket(1)] == [1024]
    run(3000)
    assert buckets() == [1024, 4096]
    run(500)  # served by the smallest plan that fits
    assert buckets() == [1024, 4096]


def test_capture_without_a_plan_is_refused(lib_on_gpu: None) -> None:
    hidden, inter, n_experts, top_k = 80, 48, 3, 2  # a shape no other test uses
    m = make_module(hidden, inter, n_experts, torch.float32)
    x = make_x(4, hidden, torch.float32)
    ids, w = make_routing(4, n_experts, top_k, dense=False, ids_dtype=torch.int32,
                          weights_dtype=torch.float32)
    g = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="capture"):
        with torch.no_grad(), torch.cuda.graph(g):
            m(x, ids, w)
