"""_transformers.py: moejit as an experts implementation of transformers.

transformers (5.x) dispatches the forward of an experts module decorated with
`use_experts_implementation` through its ExpertsInterface by `config._experts_implementation`.
register_transformers() adds "moejit" there, so

    moejit.register_transformers()
    model = GptOssForCausalLM.from_pretrained(path, experts_implementation="moejit")

runs every GptOssExperts forward through moejit.experts. Only the gpt-oss form is taken:
interleaved gate/up columns ([E, H, 2I], not concatenated), transposed weights, biases, and the
clamped SwiGLU with the module's alpha and limit; any other experts module is refused by name.
Imports transformers only when called.
"""
from __future__ import annotations

import torch

from ._ops import experts

__all__ = ["experts_forward", "register_transformers"]

NAME = "moejit"


def experts_forward(self: torch.nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor) -> torch.Tensor:
    """The ExpertsInterface entry: (module, hidden_states [T, H], top_k_index [T, K],
    top_k_weights [T, K]) -> [T, H]. Ids outside [0, E) (expert-parallel sentinels) contribute
    nothing, as transformers expects."""
    form = {name: getattr(self, name, None)
            for name in ("is_concatenated", "is_transposed", "has_bias", "has_gate")}
    wanted = {"is_concatenated": False, "is_transposed": True, "has_bias": True, "has_gate": True}
    wrong = [f"{k}={form[k]}" for k, v in wanted.items() if form[k] != v]
    if wrong or not hasattr(self, "alpha") or not hasattr(self, "limit"):
        raise ValueError(
            f"experts_implementation=\"{NAME}\": {type(self).__name__} is not in gpt-oss's form "
            f"(interleaved gate/up [E, H, 2I], biases, a SwiGLU with alpha and limit; got "
            f"{', '.join(wrong) or 'no alpha/limit'}); use another experts implementation for it")
    return experts(hidden_states, top_k_index, top_k_weights, self.gate_up_proj,
                   self.gate_up_proj_bias, self.down_proj, self.down_proj_bias,
                   alpha=float(self.alpha), limit=float(self.limit), routing="topk")


def register_transformers() -> None:
    """Registers experts_forward as transformers' experts implementation "moejit" (for every
    model; idempotent). Raises ImportError when transformers has no ExpertsInterface (< 5)."""
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register(NAME, experts_forward)
