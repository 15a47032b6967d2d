"""_transformers.py: moejit as an experts implementation of transformers.

transformers (5.x) dispatches the forward of an experts module decorated with
`use_experts_implementation` through its ExpertsInterface by `config._experts_implementation`.
register_transformers() adds "moejit" there, so

    moejit.register_transformers()
    model = GptOssForCausalLM.from_pretrained(path, experts_implementation="moejit")

runs every GptOssExperts forward through moejit.experts. Only the gpt-oss form is taken:
interleaved gate/up (not concatenated), biases, and the clamped SwiGLU with the module's alpha and
limit, with the weights either dense and transposed ([E, H, 2I], GptOssExperts) or MXFP4 blocks and
scales held by the module as torch tensors under the checkpoint's names (gate_up_proj_blocks,
gate_up_proj_scales, ..., down_proj_scales; or uint8 blocks in gate_up_proj / down_proj beside
gate_up_proj_scales / down_proj_scales). Any other experts module is refused by name, and so is
transformers' own Mxfp4GptOssExperts: it keeps its blocks swizzled for its triton kernels, the
scales inside gate_up_proj_precision_config, and is not dispatched through ExpertsInterface at all
(the MLP's forward is replaced by one that routes for triton). Imports transformers only when
called.
"""
from __future__ import annotations

import functools
from typing import Dict, Optional

import torch

from ._ops import experts, parse_batch_invariant

__all__ = ["experts_forward", "register_transformers"]

NAME = "moejit"

_WANTED = {"is_concatenated": False, "is_transposed": True, "has_bias": True, "has_gate": True}
# MXFP4 blocks are [E, 2I, H/32, 16] whatever is_transposed says of a dense layout.
_WANTED_MXFP4 = {k: v for k, v in _WANTED.items() if k != "is_transposed"}

_HOW_TO_LOAD_MXFP4 = (
    "load the model dequantised (quantization_config=Mxfp4Config(dequantize=True)) and keep "
    "experts_implementation=\"moejit\", or keep the checkpoint's MXFP4 weights by replacing each "
    "layer's mlp.experts of that dequantised model with "
    "moejit.GptOssExperts.from_checkpoint(safe_open(shard, 'pt', device='cuda'), layer)")


def _mxfp4_tensors(module: torch.nn.Module) -> Optional[Dict[str, torch.Tensor]]:
    """The module's MXFP4 blocks and scales as torch tensors, by the names moejit.experts takes
    them ("gate_up_proj", "gate_up_proj_scales", "down_proj", "down_proj_scales"), or None when
    the module holds no MXFP4 weights. A module with MXFP4 weights that cannot be read (blocks
    without scales, swizzled tensors) is a ValueError saying what it holds."""
    kind = type(module).__name__
    scales = {p: getattr(module, f"{p}_scales", None) for p in ("gate_up_proj", "down_proj")}
    blocks = {}
    for p in ("gate_up_proj", "down_proj"):
        by_name = getattr(module, f"{p}_blocks", None)
        plain = getattr(module, p, None)
        blocks[p] = by_name if by_name is not None else (
            plain if isinstance(plain, torch.Tensor) and plain.dtype == torch.uint8 else None)
    swizzled = [p for p in ("gate_up_proj", "down_proj")
                if getattr(module, f"{p}_precision_config", None) is not None
                or (getattr(module, p, None) is not None
                    and not isinstance(getattr(module, p), torch.Tensor))]
    if swizzled:
        raise ValueError(
            f"experts_implementation=\"{NAME}\": {kind} holds its MXFP4 {swizzled[0]} swizzled for "
            f"transformers' triton kernels (scales in {swizzled[0]}_precision_config), which "
            f"moejit cannot read; {_HOW_TO_LOAD_MXFP4}")
    if all(b is None for b in blocks.values()) and all(s is None for s in scales.values()):
        return None
    missing = [f"{p}_scales" for p, s in scales.items() if not isinstance(s, torch.Tensor)]
    missing += [f"{p}_blocks" for p, b in blocks.items() if not isinstance(b, torch.Tensor)]
    if missing:
        raise ValueError(
            f"experts_implementation=\"{NAME}\": {kind} holds MXFP4 weights but no tensor "
            f"{missing[0]} (moejit reads gate_up_proj_blocks, gate_up_proj_scales, "
            f"down_proj_blocks and down_proj_scales, as the gpt-oss checkpoints name them; "
            f"transformers' Mxfp4GptOssExperts keeps no scales of its own); {_HOW_TO_LOAD_MXFP4}")
    return {"gate_up_proj": blocks["gate_up_proj"], "down_proj": blocks["down_proj"],
            "gate_up_proj_scales": scales["gate_up_proj"],
            "down_proj_scales": scales["down_proj"]}


def _refuse_form(module: torch.nn.Module, wanted: Dict[str, bool], weights: str) -> None:
    form = {name: getattr(module, name, None) for name in wanted}
    wrong = [f"{k}={form[k]}" for k, v in wanted.items() if form[k] != v]
    if wrong or not hasattr(module, "alpha") or not hasattr(module, "limit"):
        raise ValueError(
            f"experts_implementation=\"{NAME}\": {type(module).__name__} is not in gpt-oss's form "
            f"(interleaved gate/up, {weights}, biases, a SwiGLU with alpha and limit; got "
            f"{', '.join(wrong) or 'no alpha/limit'}); use another experts implementation for it")


def experts_forward(self: torch.nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor, *, batch_invariant: bool = False) -> torch.Tensor:
    """The ExpertsInterface entry: (module, hidden_states [T, H], top_k_index [T, K],
    top_k_weights [T, K]) -> [T, H]. Ids outside [0, E) (expert-parallel sentinels) contribute
    nothing, as transformers expects. MXFP4 modules (blocks and scales by the checkpoint's names)
    run as they are stored. batch_invariant: the registration's; a module attribute
    `batch_invariant` (set by the caller) takes precedence."""
    invariant = parse_batch_invariant(getattr(self, "batch_invariant", batch_invariant))
    mxfp4 = _mxfp4_tensors(self)
    if mxfp4 is not None:
        _refuse_form(self, _WANTED_MXFP4, "MXFP4 blocks [E, 2I, H/32, 16] and scales")
        return experts(hidden_states, top_k_index, top_k_weights, mxfp4["gate_up_proj"],
                       self.gate_up_proj_bias, mxfp4["down_proj"], self.down_proj_bias,
                       alpha=float(self.alpha), limit=float(self.limit), routing="topk",
                       gate_up_proj_scales=mxfp4["gate_up_proj_scales"],
                       down_proj_scales=mxfp4["down_proj_scales"], batch_invariant=invariant)
    _refuse_form(self, _WANTED, "transposed weights [E, H, 2I]")
    return experts(hidden_states, top_k_index, top_k_weights, self.gate_up_proj,
                   self.gate_up_proj_bias, self.down_proj, self.down_proj_bias,
                   alpha=float(self.alpha), limit=float(self.limit), routing="topk",
                   batch_invariant=invariant)


def register_transformers(*, batch_invariant: bool = False) -> None:
    """Registers experts_forward as transformers' experts implementation "moejit" (for every
    model; calling it again replaces the registration). batch_invariant=True: every layer it runs
    plans batch-invariant (a token's output bits never depend on its batch), unless the module
    has a `batch_invariant` attribute of its own. Raises ImportError when transformers has no
    ExpertsInterface (< 5)."""
    from transformers.integrations.moe import ExpertsInterface

    if not parse_batch_invariant(batch_invariant):
        ExpertsInterface.register(NAME, experts_forward)
        return

    @functools.wraps(experts_forward)
    def invariant_forward(self: torch.nn.Module, hidden_states: torch.Tensor,
                          top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        return experts_forward(self, hidden_states, top_k_index, top_k_weights,
                               batch_invariant=True)

    ExpertsInterface.register(NAME, invariant_forward)
