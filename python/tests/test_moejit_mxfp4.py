"""test_moejit_mxfp4.py: MXFP4 expert weights (the gpt-oss checkpoints' blocks and scales) through
moejit.experts, moejit.GptOssExperts, its checkpoint loader and from_module.

CPU tests (torch only; the loader's file tests need safetensors, the descriptor tests libmoejit):
the loader on a small safetensors file with a real checkpoint layer's names and shapes, the
descriptor it builds, its refusals by name; from_module; the op's argument checks and its
torch.compile trace on fake tensors; the test's own dequantisation against transformers'.
GPU tests (skip without CUDA and libmoejit): forwards against a float64 reference computed from the
dequantised weights, within 2e-2 x max|ref|.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest

torch = pytest.importorskip("torch")

from torch_helpers import compile_recording, make_routing, make_x, rel_error  # noqa: E402
import moejit  # noqa: E402  (after the torch check)
from moejit import DType, MoejitError, Status, WeightFormat  # noqa: E402

TOLERANCE = 2e-2
ALPHA, LIMIT = 1.702, 7.0
PREFIX = "model.layers.{}.mlp.experts."
NAMES = ("gate_up_proj_blocks", "gate_up_proj_scales", "gate_up_proj_bias", "down_proj_blocks",
         "down_proj_scales", "down_proj_bias")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


# ---- the format, written from its definition --------------------------------------------------------

# e2m1 codes: bit 3 the sign; 0, 0.5, 1, 1.5, 2, 3, 4, 6
FP4_CODES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def dequantise(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """blocks uint8 [..., R, K/32, 16], scales uint8 [..., R, K/32] -> float64 [..., R, K]: weight
    2b of a block is the low nibble of byte b, 2b + 1 the high one, each code * 2^(scale - 127)."""
    table = torch.tensor(FP4_CODES, dtype=torch.float64, device=blocks.device)
    lo, hi = (blocks & 0x0F).long(), (blocks >> 4).long()
    codes = torch.stack((table[lo], table[hi]), dim=-1).flatten(-2)  # [..., R, K/32, 32]
    out = codes * torch.exp2(scales.double() - 127)[..., None]
    return out.flatten(-2)


def dense_weights(w: Dict[str, torch.Tensor], e: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Expert e's weights in the dense layout, float64: gate_up [H, 2I] (column 2j gate j, 2j + 1
    up j: the blocks' rows), down [I, H]."""
    w1 = dequantise(w["gate_up_proj_blocks"][e], w["gate_up_proj_scales"][e])  # [2I, H]
    w2 = dequantise(w["down_proj_blocks"][e], w["down_proj_scales"][e])  # [H, I]
    return w1.t(), w2.t()


def reference(w: Dict[str, torch.Tensor], x: torch.Tensor, ids: torch.Tensor,
              weights: torch.Tensor, dense: bool, alpha: float = ALPHA,
              limit: float = LIMIT) -> torch.Tensor:
    """The GptOssExperts loop form in float64 over the dequantised weights -> [T, H]: for each
    routed slot, gu = x @ gate_up + b1; gate = min(gu[::2], limit); up = clamp(gu[1::2], +-limit);
    h = (up + 1) * gate * sigmoid(alpha * gate); out += weight * (h @ down + b2). Weights: the
    slot's ([T, K]) or routing_weights[t, e] ([T, E], dense)."""
    n_experts, hidden = w["down_proj_bias"].shape
    x = x.reshape(-1, hidden).double()
    tokens = x.shape[0]
    ids = ids.reshape(tokens, -1).long()
    wts = weights.reshape(tokens, -1).double()
    out = torch.zeros(tokens, hidden, dtype=torch.float64, device=x.device)
    for e in range(n_experts):
        tok, slot = torch.where(ids == e)
        if tok.numel() == 0:
            continue
        w1, w2 = dense_weights(w, e)
        gu = x[tok] @ w1 + w["gate_up_proj_bias"][e].double()
        gate, up = gu[..., ::2].clamp(max=limit), gu[..., 1::2].clamp(min=-limit, max=limit)
        h = (up + 1) * gate * torch.sigmoid(gate * alpha)
        o = h @ w2 + w["down_proj_bias"][e].double()
        weight = wts[tok, e] if dense else wts[tok, slot]
        out.index_add_(0, tok, o * weight[:, None])
    return out




def _scale_byte(std: float) -> int:
    """The e8m0 byte that gives random codes (RMS ~2.93) a standard deviation near std."""
    return 127 + round(math.log2(std / 2.93))


def make_mxfp4(n_experts: int, hidden: int, inter: int, *, bias_dtype: torch.dtype = torch.bfloat16,
               device: str = "cpu", seed: int = 0) -> Dict[str, torch.Tensor]:
    """One layer's tensors under their checkpoint names: random codes, scales around the byte
    that makes gate_up ~3/sqrt(H) (both clamps act on some values) and down ~1/sqrt(I), biases
    ~0.1."""
    g = torch.Generator(device=device).manual_seed(seed)
    e, h, i = n_experts, hidden, inter

    def codes(*shape: int) -> torch.Tensor:
        return torch.randint(0, 256, shape, generator=g, device=device, dtype=torch.uint8)

    def scales(byte: int, *shape: int) -> torch.Tensor:
        return torch.randint(byte - 1, byte + 2, shape, generator=g, device=device, dtype=torch.uint8)

    def bias(*shape: int) -> torch.Tensor:
        return (torch.randn(shape, generator=g, device=device) * 0.1).to(bias_dtype)

    return {
        "gate_up_proj_blocks": codes(e, 2 * i, h // 32, 16),
        "gate_up_proj_scales": scales(_scale_byte(3.0 / h**0.5), e, 2 * i, h // 32),
        "gate_up_proj_bias": bias(e, 2 * i),
        "down_proj_blocks": codes(e, h, i // 32, 16),
        "down_proj_scales": scales(_scale_byte(1.0 / i**0.5), e, h, i // 32),
        "down_proj_bias": bias(e, h),
    }


def checkpoint(layers: Dict[int, Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """The tensors of a gpt-oss checkpoint's layers by their names, with each layer's router and an
    attention weight beside them (as a real checkpoint has)."""
    out: Dict[str, torch.Tensor] = {}
    for layer, w in layers.items():
        n_experts, hidden = w["down_proj_bias"].shape
        for name, t in w.items():
            out[PREFIX.format(layer) + name] = t
        out[f"model.layers.{layer}.mlp.router.weight"] = torch.zeros(n_experts, hidden,
                                                                     dtype=torch.bfloat16)
        out[f"model.layers.{layer}.mlp.router.bias"] = torch.zeros(n_experts, dtype=torch.bfloat16)
        out[f"model.layers.{layer}.self_attn.q_proj.weight"] = torch.zeros(hidden, hidden,
                                                                           dtype=torch.bfloat16)
    return out








# ---- the oracle itself (CPU) ----------------------------------------------------------------------------


def test_dequantise_follows_the_format() -> None:
    blocks = torch.zeros(1, 1, 16, dtype=torch.uint8)
    blocks[0, 0, 0] = 0x21  # weight 0: code 1 (0.5), weight 1: code 2 (1.0)
    blocks[0, 0, 1] = 0x8F  # weight 2: code 15 (-6), weight 3: code 8 (-0)
    blocks[0, 0, 15] = 0x7A  # weight 30: code 10 (-1), weight 31: code 7 (6)
    got = dequantise(blocks, torch.tensor([[128]], dtype=torch.uint8))  # x 2
    assert got.shape == (1, 32)
    assert got[0, :4].tolist() == [1.0, 2.0, -12.0, 0.0] and got[0, 3].item() == 0.0
    assert torch.signbit(got[0, 3])
    assert got[0, 30:].tolist() == [-2.0, 12.0]
    assert got[0, 4:30].abs().sum() == 0
    assert dequantise(blocks, torch.tensor([[125]], dtype=torch.uint8))[0, 1].item() == 0.25


def test_dequantise_matches_transformers() -> None:
    mxfp4 = pytest.importorskip("transformers.integrations.mxfp4")
    w = make_mxfp4(2, 64, 96)
    ours = torch.stack([dense_weights(w, e)[0] for e in range(2)])  # [E, H, 2I]
    theirs = mxfp4.convert_moe_packed_tensors(w["gate_up_proj_blocks"], w["gate_up_proj_scales"],
                                              dtype=torch.float32)
    assert theirs.shape == ours.shape and torch.equal(theirs.double(), ours)
    down = torch.stack([dense_weights(w, e)[1] for e in range(2)])  # [E, I, H]
    theirs = mxfp4.convert_moe_packed_tensors(w["down_proj_blocks"], w["down_proj_scales"],
                                              dtype=torch.float32)
    assert torch.equal(theirs.double(), down)


# ---- the loader (CPU) ------------------------------------------------------------------------------------


def _write(tmp_path: Path, tensors: Dict[str, torch.Tensor]) -> Path:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    path = tmp_path / "model-00001-of-00001.safetensors"
    safetensors_torch.save_file(tensors, str(path))
    return path


def test_from_checkpoint_file_builds_the_descriptor(tmp_path: Path, lib: object) -> None:
    """A safetensors file with two gpt-oss layers (E = 4, H = I = 64): layer 1's experts, their
    names and shapes, and the moejit_layer_desc the layer plans with."""
    safetensors = pytest.importorskip("safetensors")
    path = _write(tmp_path, checkpoint({0: make_mxfp4(4, 64, 64, seed=1),
                                        1: make_mxfp4(4, 64, 64, seed=2)}))
    with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
        layer = moejit.GptOssExperts.from_checkpoint(f, 1)
        want = {n: f.get_tensor(PREFIX.format(1) + n) for n in NAMES}
    assert layer.weight_format == "mxfp4"
    assert (layer.num_experts, layer.hidden_size, layer.intermediate_size, layer.expert_dim,
            layer.top_k) == (4, 64, 64, 64, 4)
    assert (layer.alpha, layer.limit) == (1.702, 7.0)
    got = dict(layer.named_parameters())
    assert set(got) == set(NAMES) and set(layer.state_dict()) == set(NAMES)
    for n in NAMES:
        assert got[n].dtype == want[n].dtype and torch.equal(got[n], want[n]), n
        assert not got[n].requires_grad
    assert "weight_format=mxfp4" in repr(layer)

    d = layer.layer_desc()
    assert (d.experts, d.hidden, d.intermediate, d.top_k) == (4, 64, 64, 4)
    assert d.weight_format == WeightFormat.MXFP4
    assert d.dtype == DType.BF16 and d.bias_f32 == 0  # the checkpoint's bf16 biases
    assert (d.ids_dtype, d.weights_dtype, d.routing) == (DType.I32, DType.F32, moejit.Routing.TOPK)
    assert d.alpha == pytest.approx(1.702) and d.limit == 7.0 and d.max_tokens == 1024
    d = layer.layer_desc(4096, top_k=2, ids_dtype=torch.int64, weights_dtype=torch.bfloat16,
                         routing="dense")
    assert (d.top_k, d.max_tokens, d.ids_dtype, d.weights_dtype, d.routing) == \
        (2, 4096, DType.I64, DType.BF16, moejit.Routing.DENSE)
    with pytest.raises(KeyError):
        layer.layer_desc(dtype=torch.float64)
    other = moejit.GptOssExperts.from_checkpoint({k: v for k, v in checkpoint(
        {7: make_mxfp4(4, 64, 64, bias_dtype=torch.float16)}).items()}, 7, top_k=3)
    d = other.layer_desc()
    assert (d.dtype, d.bias_f32, d.top_k) == (DType.F16, 0, 3)


def test_descriptor_compiles_offline(lib: object) -> None:
    """The loader's descriptor is one the library plans (compiled for sm_90a, no GPU)."""
    layer = moejit.GptOssExperts.from_checkpoint(checkpoint({0: make_mxfp4(4, 64, 96)}), 0)
    ctx = lib.create_context(offline_arch="sm_90a")
    plan = None
    try:
        try:
            plan = ctx.create_plan(layer.layer_desc())
        except MoejitError as e:
            if e.status == Status.ERR_NO_COMPILER:
                pytest.skip(f"no NVRTC: {e}")
            raise
        assert plan.desc.weight_format == WeightFormat.MXFP4
        assert (plan.desc.hidden, plan.desc.intermediate) == (64, 96)
    finally:
        if plan is not None:
            plan.close()
        ctx.close()


def test_from_checkpoint_keeps_the_callers_tensors() -> None:
    """A state dict's tensors are shared, not copied (H = 64, I = 96: H and I told apart), and
    stay where they are."""
    w = make_mxfp4(4, 64, 96, bias_dtype=torch.float32)
    sd = checkpoint({3: w})
    layer = moejit.GptOssExperts.from_checkpoint(sd, 3)
    assert (layer.num_experts, layer.hidden_size, layer.expert_dim) == (4, 64, 96)
    for n in NAMES:
        p = getattr(layer, n)
        assert p.data_ptr() == w[n].data_ptr() and p.device == w[n].device, n
    w["down_proj_scales"][0, 0, 0] = 99  # the caller's write is the layer's
    assert layer.down_proj_scales[0, 0, 0].item() == 99
    assert layer.gate_up_proj_bias.dtype == torch.float32


def _bad_layer(name: str, make) -> Dict[str, torch.Tensor]:
    w = make_mxfp4(4, 64, 64)
    w[name] = make(w[name])
    return checkpoint({1: w})


@pytest.mark.parametrize("name, make, match", [
    ("gate_up_proj_scales", lambda t: t[:, :, :1].contiguous(),
     r"gate_up_proj_scales: must be uint8 \[E, 2I, H/32\] = \[4, 128, 2\], got uint8 \[4, 128, 1\]"),
    ("gate_up_proj_scales", lambda t: t.float(),
     r"gate_up_proj_scales: must be uint8 \[E, 2I, H/32\] = \[4, 128, 2\], got float32 \[4, 128, 2\]"),
    ("down_proj_scales", lambda t: t[:3].contiguous(),
     r"down_proj_scales: must be uint8 \[E, H, I/32\] = \[4, 64, 2\], got uint8 \[3, 64, 2\]"),
    ("down_proj_blocks", lambda t: t.view(torch.int8),
     r"down_proj_blocks: must be uint8 \[E, H, I/32, 16\] = \[4, 64, 2, 16\], got int8"),
    ("down_proj_blocks", lambda t: t.reshape(4, 64, 32),
     r"down_proj_blocks: must be uint8 \[E, H, I/32, 16\] = \[4, 64, 2, 16\], got uint8 \[4, 64, 32\]"),
    ("gate_up_proj_blocks", lambda t: t.reshape(4, 128, 32),
     r"gate_up_proj_blocks: must be uint8 \[E, 2I, H/32, 16\] \(MXFP4 blocks\), got uint8 \[4, 128, 32\]"),
    ("gate_up_proj_blocks", lambda t: t.to(torch.bfloat16),
     r"gate_up_proj_blocks: must be uint8 \[E, 2I, H/32, 16\].*got bfloat16"),
    ("gate_up_proj_blocks", lambda t: t[:, :80].contiguous(),
     r"gate_up_proj_blocks: has 2I = 80 rows.*I a multiple of 32"),
    ("gate_up_proj_bias", lambda t: t[:, :64].contiguous(),
     r"gate_up_proj_bias: has shape \[4, 64\]; expected \[E, 2I\] = \[4, 128\]"),
    ("gate_up_proj_bias", lambda t: t.to(torch.int32), r"gate_up_proj_bias: has dtype torch.int32"),
    ("down_proj_bias", lambda t: t.float(),
     r"down_proj_bias: has dtype torch.float32; expected torch.bfloat16 \(the dtype of "
     r"model.layers.1.mlp.experts.gate_up_proj_bias\)"),
    ("down_proj_scales", lambda t: t.transpose(1, 2), r"down_proj_scales: must be contiguous"),
], ids=["s1-shape", "s1-dtype", "s2-E", "w2-dtype", "w2-rank", "w1-rank", "w1-dtype", "w1-I",
        "b1-shape", "b1-dtype", "b2-dtype", "s2-strided"])
def test_from_checkpoint_refuses_by_name(name: str, make, match: str) -> None:
    with pytest.raises(ValueError, match=r"^model\.layers\.1\.mlp\.experts\." + match):
        moejit.GptOssExperts.from_checkpoint(_bad_layer(name, make), 1)


def test_from_checkpoint_file_refuses_a_bad_tensor(tmp_path: Path) -> None:
    safetensors = pytest.importorskip("safetensors")
    path = _write(tmp_path, _bad_layer("gate_up_proj_scales", lambda t: t[:, :, :1].contiguous()))
    with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
        with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.experts\.gate_up_proj_scales: "
                                             r"must be uint8 \[E, 2I, H/32\] = \[4, 128, 2\], got "
                                             r"uint8 \[4, 128, 1\]"):
            moejit.GptOssExperts.from_checkpoint(f, 1)


def test_from_checkpoint_says_what_is_missing() -> None:
    sd = checkpoint({0: make_mxfp4(4, 64, 64), 1: make_mxfp4(4, 64, 64)})
    with pytest.raises(ValueError, match=r"no tensor of layer 5 .*layers with experts: 0\.\.1 \(2\)"):
        moejit.GptOssExperts.from_checkpoint(sd, 5)
    del sd[PREFIX.format(1) + "down_proj_scales"]
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.experts\.down_proj_scales not "
                                         r"found.*down_proj_blocks"):
        moejit.GptOssExperts.from_checkpoint(sd, 1)
    with pytest.raises(TypeError, match="mapping name -> tensor"):
        moejit.GptOssExperts.from_checkpoint([1, 2], 0)


def test_from_checkpoint_refuses_mixed_devices() -> None:
    sd = checkpoint({0: make_mxfp4(4, 64, 64)})
    sd[PREFIX.format(0) + "down_proj_bias"] = sd[PREFIX.format(0) + "down_proj_bias"].to("meta")
    with pytest.raises(ValueError, match=r"down_proj_bias is on meta but .*gate_up_proj_blocks is "
                                         r"on cpu.*one device"):
        moejit.GptOssExperts.from_checkpoint(sd, 0)


def test_from_checkpoint_reads_a_dense_checkpoint(lib: object) -> None:
    """A dequantised (bf16) checkpoint's names: gate_up_proj [E, H, 2I] ... give a dense layer."""
    e, h, i = 4, 64, 96
    sd = {PREFIX.format(2) + "gate_up_proj": torch.randn(e, h, 2 * i).to(torch.bfloat16),
          PREFIX.format(2) + "gate_up_proj_bias": torch.randn(e, 2 * i).to(torch.bfloat16),
          PREFIX.format(2) + "down_proj": torch.randn(e, i, h).to(torch.bfloat16),
          PREFIX.format(2) + "down_proj_bias": torch.randn(e, h).to(torch.bfloat16)}
    layer = moejit.GptOssExperts.from_checkpoint(sd, 2)
    assert layer.weight_format == "dense"
    assert layer.gate_up_proj.data_ptr() == sd[PREFIX.format(2) + "gate_up_proj"].data_ptr()
    d = layer.layer_desc()
    assert (d.experts, d.hidden, d.intermediate, d.weight_format, d.dtype) == \
        (e, h, i, WeightFormat.DENSE, DType.BF16)
    sd[PREFIX.format(2) + "down_proj"] = torch.randn(e, h, i).to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"down_proj: has shape \[4, 64, 96\]; expected \[E, I, H\]"):
        moejit.GptOssExperts.from_checkpoint(sd, 2)


# ---- from_module and the constructor (CPU) -----------------------------------------------------------------


class Mxfp4Experts(torch.nn.Module):
    """The parameters of transformers' Mxfp4GptOssExperts (4.55+): uint8 blocks and scales, f32
    biases, by name."""

    def __init__(self, w: Dict[str, torch.Tensor], limit: float = 7.0) -> None:
        super().__init__()
        for n in NAMES:
            setattr(self, n, torch.nn.Parameter(w[n], requires_grad=False))
        self.alpha, self.limit = 1.702, limit


def test_from_module_shares_the_mxfp4_parameters(lib: object) -> None:
    ref = Mxfp4Experts(make_mxfp4(4, 64, 96, bias_dtype=torch.float32), limit=6.0)
    layer = moejit.GptOssExperts.from_module(ref)
    for n in NAMES:
        assert getattr(layer, n) is getattr(ref, n), n
    assert layer.weight_format == "mxfp4" and (layer.alpha, layer.limit) == (1.702, 6.0)
    assert (layer.num_experts, layer.hidden_size, layer.expert_dim, layer.top_k) == (4, 64, 96, 4)
    d = layer.layer_desc()
    assert (d.experts, d.hidden, d.intermediate, d.weight_format) == (4, 64, 96, WeightFormat.MXFP4)
    assert (d.dtype, d.bias_f32, d.limit) == (DType.BF16, 1, 6.0)  # f32 biases, bf16 activations
    assert layer.layer_desc(dtype=torch.float16).dtype == DType.F16
    assert moejit.GptOssExperts.from_module(ref, top_k=2).layer_desc().top_k == 2


def test_from_module_refuses_what_it_cannot_read() -> None:
    ref = Mxfp4Experts(make_mxfp4(4, 64, 64))
    del ref.down_proj_scales
    with pytest.raises(ValueError, match="Mxfp4Experts has MXFP4 blocks or scales but no tensor "
                                         "down_proj_scales"):
        moejit.GptOssExperts.from_module(ref)
    ref = Mxfp4Experts(make_mxfp4(4, 64, 64))
    ref.gate_up_proj_scales = torch.nn.Parameter(ref.gate_up_proj_scales[:, :64].contiguous(),
                                                 requires_grad=False)
    with pytest.raises(ValueError, match=r"Mxfp4Experts\.gate_up_proj_scales: must be uint8 "
                                         r"\[E, 2I, H/32\] = \[4, 128, 2\], got uint8 \[4, 64, 2\]"):
        moejit.GptOssExperts.from_module(ref)

    class Swizzled(torch.nn.Module):  # transformers 5: uint8 gate_up_proj, the scales elsewhere
        def __init__(self) -> None:
            super().__init__()
            self.gate_up_proj = torch.nn.Parameter(torch.zeros(4, 128, 2, 16, dtype=torch.uint8),
                                                   requires_grad=False)

    with pytest.raises(ValueError, match="Swizzled holds its experts in neither form.*from_checkpoint"):
        moejit.GptOssExperts.from_module(Swizzled())


def test_mxfp4_constructor_has_the_checkpoint_names() -> None:
    """GptOssExperts(weight_format="mxfp4") holds zeros under the checkpoint's names and shapes,
    so a checkpoint layer's tensors load with load_state_dict."""
    layer = moejit.GptOssExperts(num_local_experts=4, hidden_size=64, intermediate_size=96,
                                 weight_format="mxfp4", dtype=torch.bfloat16)
    shapes = {n: (tuple(p.shape), p.dtype) for n, p in layer.named_parameters()}
    u8, bf16 = torch.uint8, torch.bfloat16
    assert shapes == {"gate_up_proj_blocks": ((4, 192, 2, 16), u8),
                      "gate_up_proj_scales": ((4, 192, 2), u8),
                      "gate_up_proj_bias": ((4, 192), bf16),
                      "down_proj_blocks": ((4, 64, 3, 16), u8),
                      "down_proj_scales": ((4, 64, 3), u8),
                      "down_proj_bias": ((4, 64), bf16)}
    w = make_mxfp4(4, 64, 96)
    layer.load_state_dict(w)
    assert torch.equal(layer.down_proj_blocks, w["down_proj_blocks"])
    with pytest.raises(ValueError, match="multiples of 32"):
        moejit.GptOssExperts(num_local_experts=4, hidden_size=64, intermediate_size=40,
                             weight_format="mxfp4")
    with pytest.raises(ValueError, match="weight_format"):
        moejit.GptOssExperts(num_local_experts=4, hidden_size=64, intermediate_size=64,
                             weight_format="nf4")


# ---- the op on fake tensors: checks, shapes, torch.compile (CPU) -------------------------------------


def _fake_args(tokens: int = 5, lead: Tuple[int, ...] = (), hidden: int = 64, inter: int = 96,
               n_experts: int = 4, top_k: int = 2, dtype: torch.dtype = torch.bfloat16,
               bias_dtype: Optional[torch.dtype] = None) -> Dict[str, torch.Tensor]:
    """moejit.experts's MXFP4 arguments by name, as CUDA tensors (within a FakeTensorMode)."""
    cuda = dict(device="cuda")
    u8 = dict(dtype=torch.uint8, device="cuda")
    bias = dict(dtype=bias_dtype or dtype, device="cuda")
    shape = lead + (tokens,)
    e, h, i = n_experts, hidden, inter
    return {
        "hidden_states": torch.empty(shape + (h,), dtype=dtype, **cuda),
        "router_indices": torch.zeros(shape + (top_k,), dtype=torch.int32, **cuda),
        "routing_weights": torch.empty(shape + (top_k,), dtype=torch.float32, **cuda),
        "gate_up_proj": torch.empty(e, 2 * i, h // 32, 16, **u8),
        "gate_up_proj_bias": torch.empty(e, 2 * i, **bias),
        "down_proj": torch.empty(e, h, i // 32, 16, **u8),
        "down_proj_bias": torch.empty(e, h, **bias),
        "gate_up_proj_scales": torch.empty(e, 2 * i, h // 32, **u8),
        "down_proj_scales": torch.empty(e, h, i // 32, **u8),
    }


def _experts(a: Dict[str, torch.Tensor]) -> torch.Tensor:
    return moejit.experts(a["hidden_states"], a["router_indices"], a["routing_weights"],
                          a["gate_up_proj"], a["gate_up_proj_bias"], a["down_proj"],
                          a["down_proj_bias"], gate_up_proj_scales=a["gate_up_proj_scales"],
                          down_proj_scales=a["down_proj_scales"])


def test_fake_tensors_get_the_output_shape() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        y = _experts(_fake_args(lead=(3,)))
        y16 = _experts(_fake_args(dtype=torch.float16, bias_dtype=torch.float32))
    assert y.shape == (3, 5, 64) and y.dtype == torch.bfloat16 and y.device.type == "cuda"
    assert y16.shape == (5, 64) and y16.dtype == torch.float16


@pytest.mark.parametrize("name, make, match", [
    ("gate_up_proj_scales", lambda a: a["gate_up_proj_scales"][:, :, :1].contiguous(),
     r"gate_up_proj_scales: must be uint8 \[E, 2I, H/32\] = \[4, 192, 2\], got uint8 \[4, 192, 1\]"),
    ("down_proj_scales", lambda a: a["down_proj_scales"].float(),
     r"down_proj_scales: must be uint8 \[E, H, I/32\] = \[4, 64, 3\], got float32 \[4, 64, 3\]"),
    ("gate_up_proj", lambda a: a["gate_up_proj"][:, :, :1].contiguous(),
     r"gate_up_proj: must be uint8 \[E, 2I, H/32, 16\] \(MXFP4 blocks\) with H/32 = 2, got uint8 "
     r"\[4, 192, 1, 16\]"),
    ("down_proj", lambda a: a["down_proj"][:, :32].contiguous(),
     r"down_proj: must be uint8 \[E, H, I/32, 16\] = \[4, 64, 3, 16\], got uint8 \[4, 32, 3, 16\]"),
    ("gate_up_proj_bias", lambda a: a["gate_up_proj_bias"].half(),
     r"gate_up_proj_bias: has dtype torch.float16; expected torch.bfloat16, torch.float32"),
    ("down_proj_bias", lambda a: a["down_proj_bias"].float(),
     r"down_proj_bias: has dtype torch.float32; expected torch.bfloat16 \(the dtype of "
     r"gate_up_proj_bias\)"),
    ("hidden_states", lambda a: a["hidden_states"].float(),
     r"hidden_states: has dtype torch.float32; expected torch.bfloat16, torch.float16 \(MXFP4"),
    ("down_proj_scales", lambda a: None, r"down_proj_scales: is None, but the other scales"),
    ("gate_up_proj_scales", lambda a: a["gate_up_proj_scales"].cpu(),
     r"gate_up_proj_scales: is on cpu, but hidden_states is on cuda"),
    ("gate_up_proj", lambda a: a["gate_up_proj"].transpose(1, 2),
     r"gate_up_proj: must be contiguous"),
], ids=["s1-shape", "s2-dtype", "w1-H", "w2-H", "b1-dtype", "b2-dtype", "x-f32", "s2-none",
        "s1-cpu", "w1-strided"])
def test_op_checks_name_the_argument(name: str, make, match: str) -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        a = _fake_args()
        a[name] = make(a)
        with pytest.raises(ValueError, match="^" + match):
            _experts(a)


def test_op_checks_h_and_uint8_without_scales() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        a = _fake_args()
        a["hidden_states"] = torch.empty(5, 48, dtype=torch.bfloat16, device="cuda")
        with pytest.raises(ValueError, match="hidden_states: has H = 48; MXFP4 weights need H a "
                                             "multiple of 32"):
            _experts(a)
        a = _fake_args()
        with pytest.raises(ValueError, match=r"gate_up_proj: is uint8 \(MXFP4 blocks\?\) but no "
                                             "gate_up_proj_scales"):
            moejit.experts(*list(a.values())[:7])


def _in_a_layer(*a: torch.Tensor) -> torch.Tensor:
    return moejit.experts(*a[:7], gate_up_proj_scales=a[7], down_proj_scales=a[8]) * 2


def test_compile_fullgraph_traces_one_op() -> None:
    """torch.compile(fullgraph=True) of a function calling moejit.experts with MXFP4 weights: one
    graph, the custom op in it once with the scales as its inputs (fake tensors: no GPU)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    compiled, graphs = compile_recording(_in_a_layer)
    with FakeTensorMode():
        y = compiled(*_fake_args().values())
    assert y.shape == (5, 64) and y.dtype == torch.bfloat16
    assert len(graphs) == 1
    calls = [n for n in graphs[0].graph.nodes
             if n.op == "call_function" and "moejit.experts" in str(n.target)]
    assert len(calls) == 1
    scales = calls[0].args[12:14]  # the op's last two arguments: graph inputs, not None
    assert len(scales) == 2 and all(isinstance(s, torch.fx.Node) for s in scales), calls[0].args


def test_compile_keeps_the_argument_checks() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    torch._dynamo.reset()
    compiled = torch.compile(_in_a_layer, fullgraph=True, backend="eager")
    with FakeTensorMode():
        a = _fake_args()
        a["down_proj_scales"] = torch.empty(4, 64, 4, dtype=torch.uint8, device="cuda")
        with pytest.raises(Exception, match=r"down_proj_scales: must be uint8 \[E, H, I/32\] = "
                                            r"\[4, 64, 3\], got uint8 \[4, 64, 4\]"):
            compiled(*a.values())


def test_compile_module_fullgraph() -> None:
    """The MXFP4 GptOssExperts module compiles to one graph with one moejit op (fake tensors)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        layer = moejit.GptOssExperts(num_local_experts=4, hidden_size=64, intermediate_size=96,
                                     weight_format="mxfp4", dtype=torch.bfloat16, device="cuda")
        compiled, graphs = compile_recording(layer)
        a = _fake_args(lead=(2,))
        y = compiled(a["hidden_states"], a["router_indices"].view(10, 2),
                     torch.empty(10, 4, device="cuda"))  # [T, E]: dense routing
    assert y.shape == (2, 5, 64)
    ops = [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert len(graphs) == 1 and sum("moejit.experts" in op for op in ops) == 1, ops


def test_cpu_layer_is_refused_by_name_for_a_gpu_forward() -> None:
    """A layer loaded on the CPU and CUDA hidden_states: the forward names the weight and says to
    move the layer (nothing is moved for the caller). Fake CUDA input: no GPU needed."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    layer = moejit.GptOssExperts.from_checkpoint(checkpoint({0: make_mxfp4(4, 64, 64)}), 0)
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(3, 64, dtype=torch.bfloat16, device="cuda")
        ids = torch.zeros(3, 4, dtype=torch.int32, device="cuda")
        w = torch.empty(3, 4, device="cuda")
        with pytest.raises(ValueError, match=r"GptOssExperts\.gate_up_proj_blocks: is on cpu, but "
                                             r"hidden_states is on cuda:0; moejit moves no weights.*"
                                             r"layer\.to\('cuda:0'\)"):
            layer(x, ids, w)
    with pytest.raises(ValueError, match="hidden_states: must be a CUDA tensor"):
        layer(torch.zeros(3, 64, dtype=torch.bfloat16), torch.zeros(3, 4, dtype=torch.int32),
              torch.zeros(3, 4))


# ---- on the GPU: against the dequantised reference ------------------------------------------------------









_LAYERS: Dict[Tuple[int, int, int, torch.dtype], Dict[str, torch.Tensor]] = {}


def gpu_layer(n_experts: int, hidden: int, inter: int, bias_dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    key = (n_experts, hidden, inter, bias_dtype)
    if key not in _LAYERS:
        _LAYERS.clear()  # one gpt-oss layer at a time (~400 MB)
        _LAYERS[key] = make_mxfp4(n_experts, hidden, inter, bias_dtype=bias_dtype, device="cuda")
    return _LAYERS[key]


SMALL = (64, 96, 5, 2)  # H, I, E, K
GPT_OSS = (2880, 2880, 32, 4)


def _cases():
    """(shape, activation dtype, bias dtype, tokens, dense routing)."""
    out = []
    for dtype in (torch.bfloat16, torch.float16):
        for bias in (dtype, torch.float32):
            for tokens in (1, 33, 300):
                for dense in (False, True):
                    out.append((SMALL, dtype, bias, tokens, dense))
    for tokens in (1, 64, 512):
        out.append((GPT_OSS, torch.bfloat16, torch.bfloat16, tokens, False))
    out.append((GPT_OSS, torch.bfloat16, torch.float32, 200, True))
    out.append((GPT_OSS, torch.float16, torch.float16, 64, False))
    return out


def _case_id(case) -> str:
    (h, i, e, k), dtype, bias, tokens, dense = case
    return (f"H{h}-I{i}-E{e}-K{k}-{str(dtype)[6:]}-b{str(bias)[6:]}-T{tokens}-"
            f"{'dense' if dense else 'topk'}")


@pytest.mark.parametrize("case", _cases(), ids=_case_id)
def test_experts_matches_dequantised_reference(lib_on_gpu: None, case) -> None:
    (hidden, inter, n_experts, top_k), dtype, bias, tokens, dense = case
    w = gpu_layer(n_experts, hidden, inter, bias)
    x = make_x(tokens, hidden, dtype)
    ids, weights = make_routing(tokens, n_experts, top_k, dense=dense)
    with torch.no_grad():
        got = moejit.experts(x, ids, weights, w["gate_up_proj_blocks"], w["gate_up_proj_bias"],
                             w["down_proj_blocks"], w["down_proj_bias"],
                             gate_up_proj_scales=w["gate_up_proj_scales"],
                             down_proj_scales=w["down_proj_scales"])
    assert got.shape == (tokens, hidden) and got.dtype == dtype
    err = rel_error(got, reference(w, x, ids, weights, dense))
    assert err <= TOLERANCE, f"relative max-abs error {err:.3g} > {TOLERANCE:g}"
    keys = [k for k, _ in moejit.cache_info() if (k.hidden, k.intermediate) == (hidden, inter)]
    assert any(k.weight_format == WeightFormat.MXFP4 for k in keys)


def test_module_from_checkpoint_on_gpu(lib_on_gpu: None, tmp_path: Path) -> None:
    """A safetensors file opened on the GPU: from_checkpoint, then the module's forward ([B, S, H]
    input, [T, E] routing weights as the reference module takes them) against the reference."""
    safetensors = pytest.importorskip("safetensors")
    hidden, inter, n_experts, top_k = SMALL
    w = make_mxfp4(n_experts, hidden, inter, seed=5)
    path = _write(tmp_path, checkpoint({4: w}))
    with safetensors.safe_open(str(path), framework="pt", device="cuda:0") as f:
        layer = moejit.GptOssExperts.from_checkpoint(f, 4, top_k=top_k)
    assert layer.gate_up_proj_blocks.is_cuda
    x = make_x(48, hidden, torch.bfloat16).view(2, 24, hidden)
    ids, weights = make_routing(48, n_experts, top_k, dense=True)
    with torch.no_grad():
        got = layer(x, ids, weights)
    assert got.shape == (2, 24, hidden)
    ref = reference({n: t.cuda() for n, t in w.items()}, x, ids, weights, dense=True)
    assert rel_error(got, ref) <= TOLERANCE


def test_cpu_layer_moved_by_the_caller(lib_on_gpu: None) -> None:
    """A CPU-loaded layer is refused for a GPU forward until the caller moves it (.to("cuda"))."""
    hidden, inter, n_experts, top_k = SMALL
    w = make_mxfp4(n_experts, hidden, inter, seed=6)
    layer = moejit.GptOssExperts.from_checkpoint(checkpoint({0: w}), 0)
    x = make_x(16, hidden, torch.bfloat16)
    ids, weights = make_routing(16, n_experts, top_k, dense=False)
    with pytest.raises(ValueError, match=r"gate_up_proj_blocks: is on cpu.*layer\.to"):
        with torch.no_grad():
            layer(x, ids, weights)
    layer.to("cuda")
    assert w["gate_up_proj_blocks"].device.type == "cpu"  # the caller's tensors stay put
    with torch.no_grad():
        got = layer(x, ids, weights)
    ref = reference({n: t.cuda() for n, t in w.items()}, x, ids, weights, dense=False)
    assert rel_error(got, ref) <= TOLERANCE


@needs_cuda
def test_unaligned_scales_are_named() -> None:
    """Blocks and scales must start 16-byte aligned (a view 1 byte into its storage is not)."""
    hidden, inter, n_experts, top_k = SMALL
    w = make_mxfp4(n_experts, hidden, inter, device="cuda")
    x = make_x(8, hidden, torch.bfloat16)
    ids, weights = make_routing(8, n_experts, top_k, dense=False)
    s1 = w["gate_up_proj_scales"]
    shifted = torch.empty(s1.numel() + 1, dtype=torch.uint8, device="cuda")[1:].view(s1.shape)
    with pytest.raises(ValueError, match="gate_up_proj_scales.*16-byte aligned"):
        with torch.no_grad():
            moejit.experts(x, ids, weights, w["gate_up_proj_blocks"], w["gate_up_proj_bias"],
                           w["down_proj_blocks"], w["down_proj_bias"],
                           gate_up_proj_scales=shifted, down_proj_scales=w["down_proj_scales"])


def test_compiled_mxfp4_matches_eager(lib_on_gpu: None) -> None:
    """The compiled MXFP4 module (inductor) gives bitwise the eager result."""
    hidden, inter, n_experts, top_k = SMALL
    layer = moejit.GptOssExperts.from_checkpoint(
        checkpoint({0: make_mxfp4(n_experts, hidden, inter, device="cuda", seed=7)}), 0)
    x = make_x(64, hidden, torch.bfloat16)
    ids, weights = make_routing(64, n_experts, top_k, dense=False)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    with torch.no_grad():
        eager = layer(x, ids, weights)
        got = compiled(x, ids, weights)
    torch.cuda.synchronize()
    assert torch.equal(got, eager)
