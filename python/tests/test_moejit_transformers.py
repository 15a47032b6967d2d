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
