"""test_moejit_transformers.py: moejit as transformers' experts implementation "moejit".

Skips without torch and transformers (with an ExpertsInterface). The dispatch and form checks
run on the CPU (the call reaches moejit.experts, which refuses CPU tensors by name); the logits
test needs a GPU and libmoejit: a small random GptOssForCausalLM, logits with the eager experts
against logits with moejit's.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
moe = pytest.importorskip("transformers.integrations.moe")
if not hasattr(moe, "ExpertsInterface"):
    pytest.skip("this transformers has no ExpertsInterface", allow_module_level=True)

import moejit  # noqa: E402

from transformers import GptOssConfig, GptOssForCausalLM  # noqa: E402


def _config(**kw) -> "GptOssConfig":
    c = dict(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=8,
             num_experts_per_tok=2, max_position_embeddings=64, layer_types=None)
    c.update(kw)
    return GptOssConfig(**c)


def test_registered_name_is_accepted() -> None:
    moejit.register_transformers()
    assert "moejit" in moe.ALL_EXPERTS_FUNCTIONS
    model = GptOssForCausalLM(_config())
    model.set_experts_implementation("moejit")
    assert model.config._experts_implementation == "moejit"


def test_experts_forward_reaches_moejit() -> None:
    """The experts module's forward goes to moejit.experts: on CPU tensors it names the argument."""
    moejit.register_transformers()
    model = GptOssForCausalLM(_config())
    model.set_experts_implementation("moejit")
    experts = model.model.layers[0].mlp.experts
    x = torch.randn(3, 64)
    ids = torch.randint(0, 8, (3, 2))
    w = torch.rand(3, 2)
    with pytest.raises(ValueError, match="hidden_states: must be a CUDA tensor"):
        experts(x, ids, w)


def test_other_forms_are_refused_by_name() -> None:
    class Concatenated(torch.nn.Module):
        is_concatenated, is_transposed, has_bias, has_gate = True, False, False, True

    from moejit._transformers import experts_forward

    with pytest.raises(ValueError, match="Concatenated is not in gpt-oss's form.*is_concatenated=True"):
        experts_forward(Concatenated(), torch.empty(1, 8), torch.zeros(1, 1), torch.ones(1, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_logits_match_eager() -> None:
    try:
        moejit.library_path()
    except moejit.MoejitError as e:
        pytest.skip(f"no libmoejit: {e}")
    moejit.register_transformers()
    torch.manual_seed(0)
    model = GptOssForCausalLM(_config(hidden_size=256, intermediate_size=192))
    model = model.to("cuda", torch.bfloat16).eval()
    for layer in model.model.layers:  # random experts and router (the init leaves some zero)
        for p in layer.mlp.parameters():
            p.data.normal_(0, 0.05)
    tokens = torch.randint(0, 128, (2, 24), device="cuda")
    with torch.no_grad():
        model.set_experts_implementation("eager")
        ref = model(tokens).logits.float()
        model.set_experts_implementation("moejit")
        got = model(tokens).logits.float()
    err = (got - ref).abs().max().item() / ref.abs().max().item()
    assert err <= 2e-2, f"logits differ: max |moejit - eager| / max |eager| = {err:.3g}"


# ---- MXFP4 experts modules (CPU: moejit.experts stubbed to see what it is given) ---------------------


def _capture(monkeypatch: pytest.MonkeyPatch) -> list:
    """Replaces the moejit.experts that experts_forward calls with one recording its arguments."""
    import moejit._transformers as mt

    calls = []

    def fake(*args, **kwargs):
        calls.append((args, kwargs))
        return args[0]

    monkeypatch.setattr(mt, "experts", fake)
    return calls


def _mxfp4_experts_class(**form):
    """An experts module as a model would declare one holding the checkpoint's MXFP4 tensors by
    their names, dispatched through transformers' ExpertsInterface."""
    from transformers.integrations.moe import use_experts_implementation

    form = {"is_concatenated": False, "is_transposed": True, "has_bias": True, **form}

    @use_experts_implementation(**form)
    class Mxfp4Experts(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            e, h, i = config.num_local_experts, config.hidden_size, config.intermediate_size
            u8 = dict(dtype=torch.uint8)
            self.gate_up_proj_blocks = torch.nn.Parameter(torch.zeros(e, 2 * i, h // 32, 16, **u8),
                                                          requires_grad=False)
            self.gate_up_proj_scales = torch.nn.Parameter(torch.zeros(e, 2 * i, h // 32, **u8),
                                                          requires_grad=False)
            self.gate_up_proj_bias = torch.nn.Parameter(torch.zeros(e, 2 * i))
            self.down_proj_blocks = torch.nn.Parameter(torch.zeros(e, h, i // 32, 16, **u8),
                                                       requires_grad=False)
            self.down_proj_scales = torch.nn.Parameter(torch.zeros(e, h, i // 32, **u8),
                                                       requires_grad=False)
            self.down_proj_bias = torch.nn.Parameter(torch.zeros(e, h))
            self.alpha, self.limit = 1.702, 7.0

        def forward(self, hidden_states, top_k_index, top_k_weights):
            raise AssertionError("the eager forward must not run")

    return Mxfp4Experts


def test_mxfp4_module_runs_its_blocks_and_scales(monkeypatch: pytest.MonkeyPatch) -> None:
    """A module holding gate_up_proj_blocks / _scales, down_proj_blocks / _scales by name:
    experts_implementation="moejit" passes the blocks and scales as they are."""
    calls = _capture(monkeypatch)
    moejit.register_transformers()
    config = _config()
    config._experts_implementation = "moejit"
    m = _mxfp4_experts_class()(config)
    x, ids, w = torch.randn(3, 64), torch.zeros(3, 2, dtype=torch.int64), torch.rand(3, 2)
    m(x, ids, w)
    (args, kwargs), = calls
    assert args[3] is m.gate_up_proj_blocks and args[5] is m.down_proj_blocks
    assert args[4] is m.gate_up_proj_bias and args[6] is m.down_proj_bias
    assert kwargs["gate_up_proj_scales"] is m.gate_up_proj_scales
    assert kwargs["down_proj_scales"] is m.down_proj_scales
    assert (kwargs["alpha"], kwargs["limit"], kwargs["routing"]) == (1.702, 7.0, "topk")
    assert kwargs["batch_invariant"] is False


def test_mxfp4_module_reaches_moejit() -> None:
    """Unstubbed, on CPU tensors: the call gets to moejit.experts, which names the argument."""
    moejit.register_transformers()
    config = _config()
    config._experts_implementation = "moejit"
    m = _mxfp4_experts_class()(config)
    with pytest.raises(ValueError, match="hidden_states: must be a CUDA tensor"):
        m(torch.randn(3, 64), torch.zeros(3, 2, dtype=torch.int64), torch.rand(3, 2))


def test_mxfp4_module_in_another_form_is_refused() -> None:
    from moejit._transformers import experts_forward

    config = _config()
    m = _mxfp4_experts_class(is_concatenated=True)(config)
    with pytest.raises(ValueError, match="Mxfp4Experts is not in gpt-oss's form.*is_concatenated=True"):
        experts_forward(m, torch.randn(3, 64), torch.zeros(3, 2, dtype=torch.int64),
                        torch.rand(3, 2))


def test_transformers_mxfp4_experts_are_refused_with_the_way_out() -> None:
    """transformers' Mxfp4GptOssExperts: before loading it holds uint8 blocks but no scales;
    loaded, its blocks are swizzled triton tensors with the scales in a precision config. Both
    are refused, saying what to do instead."""
    mxfp4 = pytest.importorskip("transformers.integrations.mxfp4")
    from moejit._transformers import experts_forward

    m = mxfp4.Mxfp4GptOssExperts(_config())
    args = (torch.randn(3, 64), torch.zeros(3, 2, dtype=torch.int64), torch.rand(3, 2))
    with pytest.raises(ValueError, match=r"Mxfp4GptOssExperts holds MXFP4 weights but no tensor "
                                         r"gate_up_proj_scales.*dequantize=True.*from_checkpoint"):
        experts_forward(m, *args)

    class Swizzled:  # what triton_kernels' Tensor looks like from here: not a torch.Tensor
        pass

    del m._parameters["gate_up_proj"]
    m.gate_up_proj = Swizzled()
    m.gate_up_proj_precision_config = object()
    with pytest.raises(ValueError, match=r"Mxfp4GptOssExperts holds its MXFP4 gate_up_proj "
                                         r"swizzled.*dequantize=True"):
        experts_forward(m, *args)


def test_register_batch_invariant(monkeypatch: pytest.MonkeyPatch) -> None:
    """register_transformers(batch_invariant=True): every call plans batch-invariant, unless the
    module says otherwise; registering again without it goes back."""
    calls = _capture(monkeypatch)
    model = GptOssForCausalLM(_config())
    experts = model.model.layers[0].mlp.experts
    args = (torch.randn(3, 64), torch.zeros(3, 2, dtype=torch.int64), torch.rand(3, 2))
    try:
        moejit.register_transformers(batch_invariant=True)
        model.set_experts_implementation("moejit")
        experts(*args)
        experts.batch_invariant = False
        experts(*args)
        del experts.batch_invariant
        moejit.register_transformers()
        experts(*args)
    finally:
        moejit.register_transformers()
    assert [kw["batch_invariant"] for _, kw in calls] == [True, False, False]
    assert all("gate_up_proj_scales" not in kw for _, kw in calls)  # dense: as before
    assert calls[0][0][3] is experts.gate_up_proj
