"""test_moejit_activations.py: activations beyond SwiGLU-OAI, gate/up in halves, layers without
biases and batch invariance, through moejit.experts and moejit.GptOssExperts.

CPU tests (torch; the descriptor and offline-compile tests need libmoejit, the latter NVRTC too):
moejit.Activation / moejit.GateUpLayout and the strings they take, the moejit_layer_desc built for
each activation / layout / bias / batch-invariance choice, the plan key (one field for every desc
field the binding sets, keys apart when any differs), the shape checks and their messages, the
torch.compile trace on fake tensors, and an offline (sm_90a) plan of a Mixtral-shaped layer.
GPU tests (skip without CUDA and libmoejit): every activation x layout x biases against a float64
reference written here from the formulas of include/moejit.h, within 2e-2 x max|ref| (bf16); a
token's row, batch-invariant, bitwise the same alone and inside batches of 64.
"""
from __future__ import annotations

import itertools
import math
from typing import Dict, Optional, Tuple

import pytest

torch = pytest.importorskip("torch")

from torch_helpers import compile_recording, make_routing, make_x, rel_error  # noqa: E402
import moejit  # noqa: E402  (after the torch check)
from moejit import Activation, DType, GateUpLayout, MoejitError, Routing, Status, \
    WeightFormat  # noqa: E402

TOLERANCE = 2e-2
ALPHA, LIMIT = 1.702, 7.0
NO_MUL = (Activation.SILU, Activation.GELU, Activation.RELU2)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")








# ---- the enums and their strings ----------------------------------------------------------------------


def test_enum_values_are_the_headers() -> None:
    """The values of include/moejit.h (test_structs checks them against the header itself)."""
    assert [(m.name, int(m)) for m in Activation] == [
        ("SWIGLU_OAI", 0), ("SILU_MUL", 1), ("GELU_MUL", 2), ("GELU_TANH_MUL", 3),
        ("SWIGLU_STEP", 4), ("SILU", 5), ("GELU", 6), ("RELU2", 7)]
    assert [(m.name, int(m)) for m in GateUpLayout] == [
        ("INTERLEAVED", 0), ("HALVES", 1), ("UP_GATE_HALVES", 2)]
    assert [m.gated for m in Activation] == [True] * 5 + [False] * 3
    assert moejit.Activation is Activation and moejit.GateUpLayout is GateUpLayout


@pytest.mark.parametrize("text, member", [
    ("swigluoai", Activation.SWIGLU_OAI), ("silu", Activation.SILU_MUL),
    ("gelu", Activation.GELU_MUL), ("swiglustep", Activation.SWIGLU_STEP),
    ("silu_no_mul", Activation.SILU), ("gelu_no_mul", Activation.GELU),
    ("relu2_no_mul", Activation.RELU2), ("gelu_tanh", Activation.GELU_TANH_MUL),
    ("SiLU", Activation.SILU_MUL), ("silu_mul", Activation.SILU_MUL),
    ("gelu_tanh_mul", Activation.GELU_TANH_MUL), ("swiglu_oai", Activation.SWIGLU_OAI),
    ("relu2", Activation.RELU2), (5, Activation.SILU), (Activation.GELU, Activation.GELU),
])
def test_activation_strings(text: object, member: Activation) -> None:
    """vLLM's MoEActivation names (its "silu" and "gelu" are gated: SILU_MUL, GELU_MUL)."""
    assert Activation.parse(text) is member


def test_activation_takes_vllms_enum_by_value() -> None:
    import enum

    class MoEActivation(enum.Enum):  # vLLM's, as it spells its members
        SILU = "silu"
        RELU2_NO_MUL = "relu2_no_mul"

    assert Activation.parse(MoEActivation.SILU) is Activation.SILU_MUL
    assert Activation.parse(MoEActivation.RELU2_NO_MUL) is Activation.RELU2
    assert [Activation.parse(m.vllm_name) for m in Activation] == list(Activation)


@pytest.mark.parametrize("text, member", [
    ("interleaved", GateUpLayout.INTERLEAVED), ("halves", GateUpLayout.HALVES),
    ("gate_up_halves", GateUpLayout.HALVES), ("UP_GATE_HALVES", GateUpLayout.UP_GATE_HALVES),
    (1, GateUpLayout.HALVES), (GateUpLayout.UP_GATE_HALVES, GateUpLayout.UP_GATE_HALVES),
])
def test_layout_strings(text: object, member: GateUpLayout) -> None:
    assert GateUpLayout.parse(text) is member


@pytest.mark.parametrize("kind, bad, match", [
    (Activation, "swish", r"^activation: is 'swish'; expected a moejit\.Activation.*'relu2_no_mul'"),
    (Activation, 8, r"^activation: is 8"),
    (Activation, True, r"^activation: is True"),
    (Activation, None, r"^activation: is None"),
    (GateUpLayout, "concatenated", r"^gate_up_layout: is 'concatenated'.*'halves'"),
    (GateUpLayout, 3, r"^gate_up_layout: is 3"),
])
def test_bad_enum_values_name_the_argument(kind: type, bad: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        kind.parse(bad)


# ---- descriptors and plan keys (no GPU) -------------------------------------------------------------------


CHOICES = list(itertools.product(Activation, GateUpLayout, (True, False), (False, True)))


def _choice_id(choice) -> str:
    act, layout, bias, invariant = choice
    return (f"{act.vllm_name}-{layout.name.lower()}-{'bias' if bias else 'nobias'}"
            f"{'-bi' if invariant else ''}")


@pytest.mark.parametrize("choice", CHOICES, ids=_choice_id)
def test_desc_holds_the_choice(lib: object, choice) -> None:
    """GptOssExperts(activation=, gate_up_layout=, bias=, batch_invariant=).layer_desc(): the C
    values of each field (and E, H, I from the parameters, whose shapes follow the activation)."""
    act, layout, bias, invariant = choice
    layer = moejit.GptOssExperts(num_local_experts=4, hidden_size=64, intermediate_size=96,
                                 dtype=torch.bfloat16, activation=act.vllm_name,
                                 gate_up_layout=layout.name.lower(), bias=bias,
                                 batch_invariant=invariant)
    cols = 192 if act.gated else 96
    assert layer.gate_up_proj.shape == (4, 64, cols)
    assert (layer.gate_up_proj_bias is None) == (not bias) == (not layer.has_bias)
    if bias:
        assert layer.gate_up_proj_bias.shape == (4, cols)
    d = layer.layer_desc()
    assert (d.activation, d.gate_up_layout) == (int(act), int(layout))
    assert (d.no_bias, d.batch_invariant, d.bias_f32) == (int(not bias), int(invariant), 0)
    assert (d.hidden, d.intermediate, d.experts, d.dtype) == (64, 96, 4, DType.BF16)
    text = moejit._capi.describe(d)
    assert f"activation={act.name.lower()}" in text and f"no_bias={int(not bias)}" in text


def test_mxfp4_desc_holds_the_choice(lib: object) -> None:
    """MXFP4 layers: a no-mul activation gives I rows of gate_up blocks; no biases."""
    layer = moejit.GptOssExperts(num_local_experts=4, hidden_size=64, intermediate_size=96,
                                 weight_format="mxfp4", activation="relu2_no_mul", bias=False,
                                 batch_invariant=True)
    assert layer.gate_up_proj_blocks.shape == (4, 96, 2, 16)
    assert layer.gate_up_proj_scales.shape == (4, 96, 2)
    assert layer.gate_up_proj_bias is None and layer.down_proj_bias is None
    d = layer.layer_desc()
    assert (d.weight_format, d.activation, d.no_bias, d.batch_invariant, d.dtype) == \
        (WeightFormat.MXFP4, Activation.RELU2, 1, 1, DType.BF16)
    assert "activation=relu2_no_mul" in repr(layer) and "bias=False" in repr(layer)


def _key(**changes: object) -> object:
    from moejit._ops import plan_key

    kw = dict(device=0, dtype=torch.bfloat16, ids_dtype=torch.int32, weights_dtype=torch.float32,
              hidden=64, inter=96, n_experts=4, top_k=2, routing=Routing.TOPK, alpha=ALPHA,
              limit=LIMIT, bias_dtype=torch.bfloat16, weight_format=WeightFormat.DENSE,
              activation=Activation.SWIGLU_OAI, gate_up_layout=GateUpLayout.INTERLEAVED,
              batch_invariant=False)
    kw.update(changes)
    return plan_key(**kw)


def test_plan_key_has_every_desc_field() -> None:
    """Every moejit_layer_desc field the binding sets is a PlanKey field (a new desc field fails
    here until it is keyed or listed as left at the library's default)."""
    from moejit._capi import LayerDesc
    from moejit._runtime import PlanKey

    left_default = {"struct_size", "max_tokens", "expert_capacity", "global_experts",
                    "apply_router_weight_on_input", "logits_dtype", "unfused"}
    desc_fields = {name for name, _ in LayerDesc._fields_}
    assert desc_fields - left_default == set(PlanKey._fields) - {"device"}


@pytest.mark.parametrize("field, value, desc_field, c_value", [
    ("activation", Activation.SILU_MUL, "activation", 1),
    ("activation", Activation.RELU2, "activation", 7),
    ("gate_up_layout", GateUpLayout.HALVES, "gate_up_layout", 1),
    ("gate_up_layout", GateUpLayout.UP_GATE_HALVES, "gate_up_layout", 2),
    ("bias_dtype", None, "no_bias", 1),
    ("batch_invariant", True, "batch_invariant", 1),
])
def test_plan_key_differs_in_each_new_field(lib: object, field: str, value: object,
                                            desc_field: str, c_value: int) -> None:
    """Two layers differing only there never share a plan: their keys differ (as dict keys, as
    the plan cache holds them) and so do the descs they plan with, in that field alone."""
    from moejit import _runtime

    base, other = _key(), _key(**{field: value})
    assert base != other and len({base: 0, other: 1}) == 2
    d0, d1 = _runtime.layer_desc(base, 1024), _runtime.layer_desc(other, 1024)
    assert getattr(d0, desc_field) == 0 and getattr(d1, desc_field) == c_value
    differ = [n for n, _ in type(d0)._fields_ if getattr(d0, n) != getattr(d1, n)]
    assert differ == [desc_field]


def test_plan_keys_of_all_choices_are_distinct() -> None:
    keys = {_key(activation=a, gate_up_layout=g, bias_dtype=torch.bfloat16 if b else None,
                 batch_invariant=i) for a, g, b, i in CHOICES}
    assert len(keys) == len(CHOICES)


def test_no_bias_is_never_bias_f32() -> None:
    """f16 activations without biases: no_bias, and bias_f32 off (the library refuses both)."""
    key = _key(dtype=torch.float16, bias_dtype=None)
    assert (key.no_bias, key.bias_f32) == (True, False)
    assert _key(dtype=torch.float16, bias_dtype=torch.float32).bias_f32


def test_op_keys_the_plan_by_the_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    """The op's CUDA path (run here on fake tensors, the plan cache stubbed) asks for the plan of
    the key its arguments give: activation, layout, no biases, batch invariance."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from moejit import _ops, _runtime

    class Planned(Exception):
        pass

    seen = []

    def plan_for(key: object, tokens: int) -> None:
        seen.append((key, tokens))
        raise Planned

    monkeypatch.setattr(_runtime, "plan_for", plan_for)
    monkeypatch.setattr(_ops, "_check_aligned", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    with FakeTensorMode():
        a = _dense_args(activation=Activation.SILU_MUL, bias=False)
        with pytest.raises(Planned):
            _ops._forward(*_positional(a), ALPHA, LIMIT, None, False, None, None, None,
                          int(Activation.SILU_MUL), int(GateUpLayout.HALVES), True)
        a = _dense_args(activation=Activation.RELU2)
        with pytest.raises(Planned):
            _ops._forward(*_positional(a), ALPHA, LIMIT, None, False, None, None, None,
                          int(Activation.RELU2), int(GateUpLayout.INTERLEAVED), False)
    (silu, t1), (relu2, t2) = seen
    assert (t1, t2) == (5, 5)
    assert (silu.activation, silu.gate_up_layout, silu.no_bias, silu.batch_invariant) == \
        (Activation.SILU_MUL, GateUpLayout.HALVES, True, True)
    assert (silu.intermediate, silu.bias_f32) == (96, False)
    assert (relu2.activation, relu2.gate_up_layout, relu2.no_bias, relu2.batch_invariant) == \
        (Activation.RELU2, GateUpLayout.INTERLEAVED, False, False)
    assert relu2.intermediate == 96


# ---- the argument checks, on fake CUDA tensors ------------------------------------------------------------


def _dense_args(tokens: int = 5, hidden: int = 64, inter: int = 96, n_experts: int = 4,
                top_k: int = 2, dtype: torch.dtype = torch.bfloat16,
                activation: Activation = Activation.SWIGLU_OAI,
                bias: bool = True) -> Dict[str, Optional[torch.Tensor]]:
    """moejit.experts's dense arguments by name, as CUDA tensors (within a FakeTensorMode):
    gate_up_proj [E, H, 2I] or, without mul, [E, H, I]."""
    cuda = dict(dtype=dtype, device="cuda")
    cols = 2 * inter if activation.gated else inter
    e, h, i = n_experts, hidden, inter
    return {
        "hidden_states": torch.empty(tokens, h, **cuda),
        "router_indices": torch.zeros(tokens, top_k, dtype=torch.int32, device="cuda"),
        "routing_weights": torch.empty(tokens, top_k, dtype=torch.float32, device="cuda"),
        "gate_up_proj": torch.empty(e, h, cols, **cuda),
        "gate_up_proj_bias": torch.empty(e, cols, **cuda) if bias else None,
        "down_proj": torch.empty(e, i, h, **cuda),
        "down_proj_bias": torch.empty(e, h, **cuda) if bias else None,
    }


def _positional(a: Dict[str, Optional[torch.Tensor]]) -> Tuple[Optional[torch.Tensor], ...]:
    return tuple(a[n] for n in ("hidden_states", "router_indices", "routing_weights",
                                "gate_up_proj", "gate_up_proj_bias", "down_proj",
                                "down_proj_bias"))


def _mxfp4_args(tokens: int = 5, hidden: int = 64, inter: int = 96, n_experts: int = 4,
                top_k: int = 2, activation: Activation = Activation.SWIGLU_OAI,
                bias: bool = True) -> Dict[str, Optional[torch.Tensor]]:
    """The MXFP4 arguments (blocks in gate_up_proj / down_proj, and both scales)."""
    u8 = dict(dtype=torch.uint8, device="cuda")
    rows = 2 * inter if activation.gated else inter
    a = _dense_args(tokens, hidden, inter, n_experts, top_k, activation=activation, bias=bias)
    e, h, i = n_experts, hidden, inter
    a.update(gate_up_proj=torch.empty(e, rows, h // 32, 16, **u8),
             down_proj=torch.empty(e, h, i // 32, 16, **u8),
             gate_up_proj_scales=torch.empty(e, rows, h // 32, **u8),
             down_proj_scales=torch.empty(e, h, i // 32, **u8))
    return a


def _call(a: Dict[str, Optional[torch.Tensor]], **kw: object) -> torch.Tensor:
    scales = {n: a[n] for n in ("gate_up_proj_scales", "down_proj_scales") if n in a}
    return moejit.experts(*_positional(a), **scales, **kw)


@pytest.mark.parametrize("activation", list(Activation), ids=lambda a: a.vllm_name)
@pytest.mark.parametrize("mxfp4", [False, True], ids=["dense", "mxfp4"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_fake_tensors_take_every_activation(activation: Activation, mxfp4: bool, bias: bool) -> None:
    """Each activation's weights (I columns / rows without mul), with biases or none, dense or
    MXFP4: the output shape and dtype of hidden_states, for every layout."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    make = _mxfp4_args if mxfp4 else _dense_args
    with FakeTensorMode():
        for layout in GateUpLayout:
            y = _call(make(activation=activation, bias=bias), activation=activation,
                      gate_up_layout=layout, batch_invariant=True)
            assert y.shape == (5, 64) and y.dtype == torch.bfloat16


def _no_mul_w1(a: Dict[str, Optional[torch.Tensor]]) -> torch.Tensor:
    return torch.empty(4, 64, 192, dtype=torch.bfloat16, device="cuda")


@pytest.mark.parametrize("activation, make, match", [
    (Activation.RELU2, lambda a: a.update(gate_up_proj=_no_mul_w1(a)),
     r"^gate_up_proj: has shape \[4, 64, 192\]; expected \[E, H, I\] with I = 96 \(I = 96 from "
     r"down_proj; activation RELU2 \('relu2_no_mul'\) has no mul: I, no gate\)"),
    (Activation.SILU_MUL, lambda a: a.update(
        gate_up_proj=torch.empty(4, 64, 96, dtype=torch.bfloat16, device="cuda")),
     r"^gate_up_proj: has shape \[4, 64, 96\]; expected \[E, H, 2I\] with 2I = 192 \(I = 96 from "
     r"down_proj; activation SILU_MUL \('silu'\) is gated: gate and up, 2I; an activation "
     r"without mul takes I\)"),
    (Activation.SILU_MUL, lambda a: a.update(
        gate_up_proj=torch.empty(4, 64, 191, dtype=torch.bfloat16, device="cuda")),
     r"^gate_up_proj: has shape \[4, 64, 191\]; expected \[E, H, 2I\], 2I even, not 191"),
    (Activation.GELU, lambda a: a.update(
        gate_up_proj_bias=torch.empty(4, 192, dtype=torch.bfloat16, device="cuda")),
     r"^gate_up_proj_bias: has shape \[4, 192\]; expected \[E, I\] = \[4, 96\]"),
    (Activation.GELU, lambda a: a.update(gate_up_proj=torch.empty(4, 32, 96, dtype=torch.bfloat16,
                                                                  device="cuda")),
     r"^gate_up_proj: has shape \[4, 32, 96\]; expected \[E, H, I\] with H = 64"),
    (Activation.SWIGLU_OAI, lambda a: a.update(down_proj_bias=None),
     r"^down_proj_bias: is None, but gate_up_proj_bias is given: pass both biases, or neither"),
    (Activation.SILU_MUL, lambda a: a.update(gate_up_proj_bias=None),
     r"^gate_up_proj_bias: is None, but down_proj_bias is given"),
    (Activation.SILU_MUL, lambda a: a.update(down_proj=None), r"^down_proj: is None"),
], ids=["nomul-2I", "gated-I", "gated-odd", "nomul-bias-2I", "nomul-H", "one-bias-b2",
        "one-bias-b1", "no-down"])
def test_dense_checks_name_the_argument(activation: Activation, make, match: str) -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        a = _dense_args(activation=activation)
        make(a)
        with pytest.raises(ValueError, match=match):
            _call(a, activation=activation)


@pytest.mark.parametrize("activation, make, match", [
    (Activation.RELU2, lambda a: a.update(
        gate_up_proj=torch.empty(4, 192, 2, 16, dtype=torch.uint8, device="cuda")),
     r"^gate_up_proj: has shape \[4, 192, 2, 16\]; expected uint8 \[E, I, H/32, 16\] \(MXFP4 "
     r"blocks\) with I = 96 \(I = 96 from down_proj;.*has no mul"),
    (Activation.SILU, lambda a: a.update(
        gate_up_proj_scales=torch.empty(4, 192, 2, dtype=torch.uint8, device="cuda")),
     r"^gate_up_proj_scales: must be uint8 \[E, I, H/32\] = \[4, 96, 2\], got uint8 \[4, 192, 2\]"),
    (Activation.SILU_MUL, lambda a: a.update(down_proj_bias=None),
     r"^down_proj_bias: is None, but gate_up_proj_bias is given"),
], ids=["nomul-blocks-2I", "nomul-scales-2I", "one-bias"])
def test_mxfp4_checks_name_the_argument(activation: Activation, make, match: str) -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        a = _mxfp4_args(activation=activation)
        make(a)
        with pytest.raises(ValueError, match=match):
            _call(a, activation=activation)


def test_keyword_values_are_checked() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        a = _dense_args()
        with pytest.raises(ValueError, match=r"^activation: is 'swish'"):
            _call(a, activation="swish")
        with pytest.raises(ValueError, match=r"^gate_up_layout: is 'concat'"):
            _call(a, gate_up_layout="concat")
        with pytest.raises(ValueError, match=r"^batch_invariant: is 2; expected True or False"):
            _call(a, batch_invariant=2)


def test_module_checks_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"^activation: is 'swish'"):
        moejit.GptOssExperts(num_local_experts=2, hidden_size=8, intermediate_size=8,
                             activation="swish")
    with pytest.raises(ValueError, match=r"^gate_up_layout: is 7"):
        moejit.GptOssExperts(num_local_experts=2, hidden_size=8, intermediate_size=8,
                             gate_up_layout=7)
    with pytest.raises(ValueError, match="multiples of 32"):  # MXFP4 without mul: I rows
        moejit.GptOssExperts(num_local_experts=2, hidden_size=64, intermediate_size=48,
                             weight_format="mxfp4", activation="silu_no_mul")


def test_from_module_keeps_the_layer() -> None:
    """A moejit layer's activation, layout, biases (none) and batch invariance carry over to the
    layer that shares its tensors; keywords override them; a no-mul module's [E, H, I] passes."""
    m = moejit.GptOssExperts(num_local_experts=2, hidden_size=8, intermediate_size=8,
                             activation="silu", gate_up_layout="halves", bias=False,
                             batch_invariant=True)
    m2 = moejit.GptOssExperts.from_module(m)
    assert m2.gate_up_proj is m.gate_up_proj and m2.gate_up_proj_bias is None
    assert (m2.activation, m2.gate_up_layout, m2.has_bias, m2.batch_invariant) == \
        (Activation.SILU_MUL, GateUpLayout.HALVES, False, True)
    m3 = moejit.GptOssExperts.from_module(m, gate_up_layout="up_gate_halves", batch_invariant=False)
    assert (m3.gate_up_layout, m3.batch_invariant) == (GateUpLayout.UP_GATE_HALVES, False)
    relu = moejit.GptOssExperts(num_local_experts=2, hidden_size=8, intermediate_size=8,
                                activation="relu2_no_mul")
    assert moejit.GptOssExperts.from_module(relu).expert_dim == 8
    with pytest.raises(ValueError, match=r"GptOssExperts\.gate_up_proj: has shape \[2, 8, 8\]; "
                                         r"expected \[E, H, 2I\] with 2I = 16"):
        moejit.GptOssExperts.from_module(relu, activation="swigluoai")


def test_from_checkpoint_takes_batch_invariant(lib: object) -> None:
    sd = {f"model.layers.0.mlp.experts.{n}": t for n, t in moejit.GptOssExperts(
        num_local_experts=2, hidden_size=64, intermediate_size=64,
        weight_format="mxfp4", dtype=torch.bfloat16).state_dict().items()}
    layer = moejit.GptOssExperts.from_checkpoint(sd, 0, batch_invariant=True)
    assert layer.batch_invariant and layer.layer_desc().batch_invariant == 1
    assert layer.activation == Activation.SWIGLU_OAI


# ---- torch.compile (fake tensors: no GPU) --------------------------------------------------------------


def _mixtral(x: torch.Tensor, ids: torch.Tensor, w: torch.Tensor, w13: torch.Tensor,
             w2: torch.Tensor) -> torch.Tensor:
    return moejit.experts(x, ids, w, w13, None, w2, None, activation="silu",
                          gate_up_layout="halves") * 2


def test_compile_fullgraph_traces_a_mixtral_layer() -> None:
    """torch.compile(fullgraph=True) of experts() with activation="silu", gate_up_layout="halves"
    and no biases: one graph, the op in it once, with None biases and the C values 1 and 1."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    compiled, graphs = compile_recording(_mixtral)
    with FakeTensorMode():
        a = _dense_args(activation=Activation.SILU_MUL, bias=False)
        y = compiled(a["hidden_states"], a["router_indices"], a["routing_weights"],
                     a["gate_up_proj"], a["down_proj"])
    assert y.shape == (5, 64) and y.dtype == torch.bfloat16
    assert len(graphs) == 1
    calls = [n for n in graphs[0].graph.nodes
             if n.op == "call_function" and "moejit.experts" in str(n.target)]
    assert len(calls) == 1
    args = calls[0].args
    assert args[4] is None and args[6] is None  # the biases
    assert tuple(args[14:17]) == (int(Activation.SILU_MUL), int(GateUpLayout.HALVES), False)


def test_compile_module_without_biases() -> None:
    """A GptOssExperts without biases, SiLU in halves, batch-invariant: one graph, one op."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        layer = moejit.GptOssExperts(num_local_experts=4, hidden_size=64, intermediate_size=96,
                                     dtype=torch.bfloat16, device="cuda", activation="silu",
                                     gate_up_layout="halves", bias=False, batch_invariant=True)
        compiled, graphs = compile_recording(layer)
        a = _dense_args(tokens=6)
        y = compiled(a["hidden_states"].view(2, 3, 64), a["router_indices"], a["routing_weights"])
    assert y.shape == (2, 3, 64)
    calls = [n for g in graphs for n in g.graph.nodes
             if n.op == "call_function" and "moejit.experts" in str(n.target)]
    assert len(graphs) == 1 and len(calls) == 1
    assert tuple(calls[0].args[14:17]) == (1, 1, True)


# ---- offline compile (libmoejit and NVRTC, no GPU) -------------------------------------------------------


@pytest.mark.parametrize("kw", [
    dict(activation="silu", gate_up_layout="halves", bias=False),
    dict(activation="silu", gate_up_layout="halves", bias=False, batch_invariant=True),
    dict(activation="relu2_no_mul", bias=False, weight_format="mxfp4"),
    dict(activation="gelu_tanh", gate_up_layout="up_gate_halves"),
], ids=["mixtral", "mixtral-bi", "relu2-mxfp4", "gelu_tanh-upgate"])
def test_layer_compiles_offline(lib: object, kw: Dict[str, object]) -> None:
    """The descriptor of such a layer is one the library plans: compiled for sm_90a, no GPU."""
    layer = moejit.GptOssExperts(num_local_experts=8, hidden_size=128, intermediate_size=96,
                                 dtype=torch.bfloat16, top_k=2, **kw)
    ctx = lib.create_context(offline_arch="sm_90a")
    plan = None
    try:
        try:
            plan = ctx.create_plan(layer.layer_desc())
        except MoejitError as e:
            if e.status == Status.ERR_NO_COMPILER:
                pytest.skip(f"no NVRTC: {e}")
            raise
        d = plan.desc
        assert (d.activation, d.gate_up_layout) == (int(layer.activation), int(layer.gate_up_layout))
        assert (d.no_bias, d.batch_invariant) == (int(not layer.has_bias), int(layer.batch_invariant))
        assert plan.workspace_size(100) > 0
    finally:
        if plan is not None:
            plan.close()
        ctx.close()


# ---- on the GPU: against the formulas of moejit.h ---------------------------------------------------------





def _silu(v: torch.Tensor) -> torch.Tensor:
    return v * torch.sigmoid(v)


def _gelu(v: torch.Tensor) -> torch.Tensor:
    return v / 2 * (1 + torch.erf(v / math.sqrt(2)))


def _gelu_tanh(v: torch.Tensor) -> torch.Tensor:
    return v / 2 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))


def activate(gu: torch.Tensor, activation: Activation, layout: GateUpLayout, alpha: float = ALPHA,
             limit: float = LIMIT) -> torch.Tensor:
    """moejit.h's activations on GEMM1's outputs gu [..., 2I] (gated; gate and up where layout
    says) or [..., I] (no mul)."""
    if activation == Activation.SILU:
        return _silu(gu)
    if activation == Activation.GELU:
        return _gelu(gu)
    if activation == Activation.RELU2:
        return gu.clamp(min=0) ** 2
    inter = gu.shape[-1] // 2
    if layout == GateUpLayout.INTERLEAVED:
        gate, up = gu[..., 0::2], gu[..., 1::2]
    elif layout == GateUpLayout.HALVES:
        gate, up = gu[..., :inter], gu[..., inter:]
    else:
        up, gate = gu[..., :inter], gu[..., inter:]
    if activation == Activation.SWIGLU_OAI:
        gate, up = gate.clamp(max=limit), up.clamp(min=-limit, max=limit)
        return (up + 1) * gate * torch.sigmoid(alpha * gate)
    if activation == Activation.SILU_MUL:
        return _silu(gate) * up
    if activation == Activation.GELU_MUL:
        return _gelu(gate) * up
    if activation == Activation.GELU_TANH_MUL:
        return _gelu_tanh(gate) * up
    assert activation == Activation.SWIGLU_STEP
    return _silu(gate).clamp(max=limit) * up.clamp(min=-limit, max=limit)


def reference(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, w1: torch.Tensor,
              b1: Optional[torch.Tensor], w2: torch.Tensor, b2: Optional[torch.Tensor],
              activation: Activation, layout: GateUpLayout) -> torch.Tensor:
    """The loop form in float64 -> [T, H]: for each routed slot, gu = x @ w1[e] (+ b1[e]),
    h = act(gu), out += weight * (h @ w2[e] (+ b2[e])); top-k weights [T, K]."""
    hidden = x.shape[-1]
    x = x.reshape(-1, hidden).double()
    tokens = x.shape[0]
    ids = ids.reshape(tokens, -1).long()
    wts = weights.reshape(tokens, -1).double()
    out = torch.zeros(tokens, hidden, dtype=torch.float64, device=x.device)
    for e in range(w1.shape[0]):
        tok, slot = torch.where(ids == e)
        if tok.numel() == 0:
            continue
        gu = x[tok] @ w1[e].double()
        if b1 is not None:
            gu = gu + b1[e].double()
        o = activate(gu, activation, layout) @ w2[e].double()
        if b2 is not None:
            o = o + b2[e].double()
        out.index_add_(0, tok, o * wts[tok, slot][:, None])
    return out




def make_layer(hidden: int, inter: int, n_experts: int, activation: Activation, bias: bool,
               dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Dict[str, Optional[torch.Tensor]]:
    """Random weights on the GPU: gate_up ~3/sqrt(H) (the clamps act on some values), down
    ~1/sqrt(I), biases ~0.1 (or None)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    cols = 2 * inter if activation.gated else inter

    def randn(*shape: int, scale: float) -> torch.Tensor:
        return (torch.randn(shape, generator=g, device="cuda") * scale).to(dtype)

    return {
        "gate_up_proj": randn(n_experts, hidden, cols, scale=3.0 / hidden**0.5),
        "gate_up_proj_bias": randn(n_experts, cols, scale=0.1) if bias else None,
        "down_proj": randn(n_experts, inter, hidden, scale=1.0 / inter**0.5),
        "down_proj_bias": randn(n_experts, hidden, scale=0.1) if bias else None,
    }






SMALL = (64, 96, 5, 2)  # H, I, E, K
GPU_CASES = list(itertools.product(Activation, GateUpLayout, (True, False)))


@pytest.mark.parametrize("case", GPU_CASES,
                         ids=lambda c: f"{c[0].vllm_name}-{c[1].name.lower()}-"
                                       f"{'bias' if c[2] else 'nobias'}")
def test_experts_matches_the_formulas(lib_on_gpu: None, case) -> None:
    activation, layout, bias = case
    hidden, inter, n_experts, top_k = SMALL
    w = make_layer(hidden, inter, n_experts, activation, bias)
    x = make_x(33, hidden)
    ids, weights = make_routing(33, n_experts, top_k)
    with torch.no_grad():
        got = moejit.experts(x, ids, weights, w["gate_up_proj"], w["gate_up_proj_bias"],
                             w["down_proj"], w["down_proj_bias"], activation=activation,
                             gate_up_layout=layout)
    assert got.shape == (33, hidden) and got.dtype == torch.bfloat16
    ref = reference(x, ids, weights, w["gate_up_proj"], w["gate_up_proj_bias"], w["down_proj"],
                    w["down_proj_bias"], activation, layout)
    err = rel_error(got, ref)
    assert err <= TOLERANCE, f"relative max-abs error {err:.3g} > {TOLERANCE:g}"
    keys = [k for k, _ in moejit.cache_info() if (k.hidden, k.intermediate) == (hidden, inter)]
    assert any((k.activation, k.gate_up_layout, k.no_bias) == (activation, layout, not bias)
               for k in keys)


def test_module_matches_the_formulas(lib_on_gpu: None) -> None:
    """GptOssExperts(activation="silu", gate_up_layout="halves", bias=False): [B, S, H] input,
    top-k weights."""
    hidden, inter, n_experts, top_k = SMALL
    layer = moejit.GptOssExperts(num_local_experts=n_experts, hidden_size=hidden,
                                 intermediate_size=inter, dtype=torch.bfloat16, device="cuda",
                                 activation="silu", gate_up_layout="halves", bias=False)
    w = make_layer(hidden, inter, n_experts, Activation.SILU_MUL, bias=False, seed=4)
    with torch.no_grad():
        layer.gate_up_proj.copy_(w["gate_up_proj"])
        layer.down_proj.copy_(w["down_proj"])
        x = make_x(40, hidden)
        ids, weights = make_routing(40, n_experts, top_k)
        got = layer(x.view(4, 10, hidden), ids, weights)
    assert got.shape == (4, 10, hidden)
    ref = reference(x, ids, weights, w["gate_up_proj"], None, w["down_proj"], None,
                    Activation.SILU_MUL, GateUpLayout.HALVES)
    assert rel_error(got, ref) <= TOLERANCE


def _dequantise(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """blocks uint8 [..., R, K/32, 16], scales [..., R, K/32] -> float64 [..., R, K] (the low
    nibble first, code * 2^(scale - 127))."""
    codes = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
    table = torch.tensor(codes, dtype=torch.float64, device=blocks.device)
    pairs = torch.stack((table[(blocks & 0x0F).long()], table[(blocks >> 4).long()]), dim=-1)
    return (pairs.flatten(-2) * torch.exp2(scales.double() - 127)[..., None]).flatten(-2)


@pytest.mark.parametrize("activation, layout", [
    (Activation.SILU_MUL, GateUpLayout.HALVES), (Activation.RELU2, GateUpLayout.INTERLEAVED),
    (Activation.GELU_TANH_MUL, GateUpLayout.UP_GATE_HALVES),
], ids=["silu-halves", "relu2", "gelu_tanh-upgate"])
def test_mxfp4_without_biases_matches_the_formulas(lib_on_gpu: None, activation: Activation,
                                                   layout: GateUpLayout) -> None:
    """MXFP4 blocks (I rows without mul), no biases, against the dequantised formulas."""
    hidden, inter, n_experts, top_k = SMALL
    rows = 2 * inter if activation.gated else inter
    g = torch.Generator(device="cuda").manual_seed(7)

    def codes(*shape: int) -> torch.Tensor:
        return torch.randint(0, 256, shape, generator=g, device="cuda", dtype=torch.uint8)

    def scales(std: float, *shape: int) -> torch.Tensor:
        byte = 127 + round(math.log2(std / 2.93))
        return torch.randint(byte - 1, byte + 2, shape, generator=g, device="cuda",
                             dtype=torch.uint8)

    b1, s1 = codes(n_experts, rows, hidden // 32, 16), scales(3.0 / hidden**0.5, n_experts, rows,
                                                                 hidden // 32)
    b2, s2 = codes(n_experts, hidden, inter // 32, 16), scales(1.0 / inter**0.5, n_experts, hidden,
                                                                 inter // 32)
    x = make_x(33, hidden)
    ids, weights = make_routing(33, n_experts, top_k)
    with torch.no_grad():
        got = moejit.experts(x, ids, weights, b1, None, b2, None, gate_up_proj_scales=s1,
                             down_proj_scales=s2, activation=activation, gate_up_layout=layout)
    w1 = _dequantise(b1, s1).transpose(1, 2)  # [E, H, rows]
    w2 = _dequantise(b2, s2).transpose(1, 2)  # [E, I, H]
    ref = reference(x, ids, weights, w1, None, w2, None, activation, layout)
    err = rel_error(got, ref)
    assert err <= TOLERANCE, f"relative max-abs error {err:.3g} > {TOLERANCE:g}"


@pytest.mark.parametrize("activation, layout, bias", [
    (Activation.SWIGLU_OAI, GateUpLayout.INTERLEAVED, True),
    (Activation.SILU_MUL, GateUpLayout.HALVES, False),
    (Activation.RELU2, GateUpLayout.INTERLEAVED, False),
], ids=["swigluoai", "silu-halves-nobias", "relu2-nobias"])
def test_batch_invariant_rows_are_bitwise_alone_and_in_a_batch(
        lib_on_gpu: None, activation: Activation, layout: GateUpLayout, bias: bool) -> None:
    """batch_invariant=True: each of a few tokens gives the same bits alone (T = 1) as inside a
    batch of 64 (at its position, and at another one in a shuffled batch)."""
    hidden, inter, n_experts, top_k = 512, 256, 8, 2
    w = make_layer(hidden, inter, n_experts, activation, bias, seed=11)
    x = make_x(64, hidden, seed=12)
    ids, weights = make_routing(64, n_experts, top_k, seed=13)
    kw = dict(activation=activation, gate_up_layout=layout, batch_invariant=True)
    args = (w["gate_up_proj"], w["gate_up_proj_bias"], w["down_proj"], w["down_proj_bias"])
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(3)).to("cuda")
    with torch.no_grad():
        batch = moejit.experts(x, ids, weights, *args, **kw)
        shuffled = moejit.experts(x[perm].contiguous(), ids[perm].contiguous(),
                                  weights[perm].contiguous(), *args, **kw)
        for t in (0, 17, 63):
            alone = moejit.experts(x[t:t + 1].contiguous(), ids[t:t + 1].contiguous(),
                                   weights[t:t + 1].contiguous(), *args, **kw)
            assert torch.equal(alone[0], batch[t]), f"token {t}: alone != in the batch"
            where = int((perm == t).nonzero()[0, 0])
            assert torch.equal(shuffled[where], batch[t]), f"token {t}: moved in the batch"
    keys = [k for k, _ in moejit.cache_info() if (k.hidden, k.intermediate) == (hidden, inter)]
    assert any(k.batch_invariant and k.activation == activation for k in keys)


# ---- the README's Mixtral recipe against transformers' MixtralExperts --------------------------------


def _mixtral_experts(device: str) -> Tuple[torch.nn.Module, int]:
    """transformers' MixtralExperts (5.x: gate_up_proj [E, 2I, H], down_proj [E, H, I]), random,
    and its top-k."""
    mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    from transformers import MixtralConfig

    config = MixtralConfig(hidden_size=64, intermediate_size=96, num_local_experts=5,
                           num_experts_per_tok=2, hidden_act="silu")
    experts = mixtral.MixtralExperts(config)
    g = torch.Generator().manual_seed(21)
    with torch.no_grad():
        experts.gate_up_proj.copy_(torch.randn(experts.gate_up_proj.shape, generator=g) * 0.3)
        experts.down_proj.copy_(torch.randn(experts.down_proj.shape, generator=g) * 0.1)
    return experts.to(device), config.num_experts_per_tok


def _mixtral_weights(experts: torch.nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """The README's conversion: [E, 2I, H] -> [E, H, 2I] ([gate | up] columns), [E, H, I] ->
    [E, I, H]."""
    w13 = experts.gate_up_proj.detach().transpose(1, 2).contiguous()
    w2 = experts.down_proj.detach().transpose(1, 2).contiguous()
    return w13, w2


def test_mixtral_recipe_is_silu_in_halves() -> None:
    """On the CPU: the formulas (SILU_MUL, HALVES, no biases) over the README's converted weights
    give transformers' eager MixtralExperts (so the recipe's layout and activation are right)."""
    experts, top_k = _mixtral_experts("cpu")
    experts.config._experts_implementation = "eager"
    g = torch.Generator().manual_seed(22)
    x = torch.randn(7, 64, generator=g)
    probs = torch.softmax(torch.randn(7, 5, generator=g), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    with torch.no_grad():
        want = experts(x, ids, weights).double()
    w13, w2 = _mixtral_weights(experts)
    got = reference(x, ids, weights, w13, None, w2, None, Activation.SILU_MUL, GateUpLayout.HALVES)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    interleaved = reference(x, ids, weights, w13, None, w2, None, Activation.SILU_MUL,
                            GateUpLayout.INTERLEAVED)
    assert not torch.allclose(interleaved, want, rtol=1e-3, atol=1e-4)


def test_mixtral_recipe_matches_transformers(lib_on_gpu: None) -> None:
    """On the GPU: moejit.experts(..., activation="silu", gate_up_layout="halves", no biases) on
    the converted weights against transformers' eager MixtralExperts, in bf16."""
    experts, top_k = _mixtral_experts("cuda")
    experts = experts.to(torch.bfloat16)
    experts.config._experts_implementation = "eager"
    x = make_x(50, 64)
    probs = torch.softmax(torch.randn(50, 5, device="cuda"), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    w13, w2 = _mixtral_weights(experts)
    with torch.no_grad():
        got = moejit.experts(x, ids.to(torch.int32), weights, w13, None, w2, None,
                             activation="silu", gate_up_layout="halves")
        want = reference(x, ids, weights, w13, None, w2, None, Activation.SILU_MUL,
                         GateUpLayout.HALVES)
        eager = experts(x, ids, weights.to(torch.bfloat16))
    assert rel_error(got, want) <= TOLERANCE
    assert rel_error(eager, want) <= TOLERANCE  # transformers' bf16 loop, for scale
