"""_module.py: moejit.GptOssExperts, a drop-in for the GptOssExperts module of transformers / yamoe.

Same parameters (names, shapes), same attributes, same forward signature and output shape; the
forward runs moejit.experts. Uses torch (imported with this module, which moejit imports lazily).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ._ops import experts

__all__ = ["GptOssExperts"]


def _size(name: str, config: Any, given: Optional[int]) -> int:
    if given is not None:
        return int(given)
    if config is None or not hasattr(config, name):
        raise ValueError(f"GptOssExperts: {name} is required (pass a config with it, or {name}=...)")
    return int(getattr(config, name))


class GptOssExperts(nn.Module):
    """The GPT-OSS expert layer on moejit kernels (inference only: no backward).

    Parameters, as in the reference module (E = num_experts, H = hidden_size, I = expert_dim):
      gate_up_proj       [E, H, 2I]  gate = even columns, up = odd columns
      gate_up_proj_bias  [E, 2I]
      down_proj          [E, I, H]
      down_proj_bias     [E, H]
    Attributes: num_experts, hidden_size, intermediate_size, expert_dim (= I), alpha (1.702),
    limit (7.0).

    `config` is any object with num_local_experts, hidden_size and intermediate_size (a
    transformers GptOssConfig); the keywords give or override them. The parameters start as zeros
    (the reference leaves them uninitialised); load a checkpoint's state_dict, or use
    from_module() to share another module's parameters.
    """

    def __init__(
        self,
        config: Any = None,
        *,
        num_local_experts: Optional[int] = None,
        hidden_size: Optional[int] = None,
        intermediate_size: Optional[int] = None,
        alpha: float = 1.702,
        limit: float = 7.0,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self.intermediate_size = _size("intermediate_size", config, intermediate_size)
        self.num_experts = _size("num_local_experts", config, num_local_experts)
        self.hidden_size = _size("hidden_size", config, hidden_size)
        self.expert_dim = self.intermediate_size
        e, h, i = self.num_experts, self.hidden_size, self.expert_dim
        kw = {"device": device, "dtype": dtype}
        self.gate_up_proj = nn.Parameter(torch.zeros(e, h, 2 * i, **kw))
        self.gate_up_proj_bias = nn.Parameter(torch.zeros(e, 2 * i, **kw))
        self.down_proj = nn.Parameter(torch.zeros(e, i, h, **kw))
        self.down_proj_bias = nn.Parameter(torch.zeros(e, h, **kw))
        self.alpha = alpha
        self.limit = limit

    @classmethod
    def from_module(cls, module: nn.Module) -> "GptOssExperts":
        """A GptOssExperts that shares (does not copy) the parameters of a reference
        GptOssExperts `module`, with its alpha and limit."""
        gate_up = module.gate_up_proj
        new = cls(num_local_experts=gate_up.shape[0], hidden_size=gate_up.shape[1],
                  intermediate_size=gate_up.shape[2] // 2, alpha=getattr(module, "alpha", 1.702),
                  limit=getattr(module, "limit", 7.0), device=torch.device("meta"), dtype=gate_up.dtype)
        for name in ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"):
            setattr(new, name, getattr(module, name))
        return new

    def forward(
        self,
        hidden_states: torch.Tensor,
        router_indices: Optional[torch.Tensor] = None,
        routing_weights: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """hidden_states [B, S, H] (or [T, H]); router_indices [T, K] int32/int64 (T = B*S);
        routing_weights [T, E] dense, the reference's form (taken as dense even when K == E);
        [T, K] top-k weights are accepted too. Returns [B, S, H]; like the reference, [T, H]
        input gives [T, 1, H]."""
        if router_indices is None or routing_weights is None:
            raise ValueError("router_indices: moejit.GptOssExperts needs router_indices and "
                             "routing_weights (it has no dense all-experts path)")
        batch_size = hidden_states.shape[0]
        dense = isinstance(routing_weights, torch.Tensor) and routing_weights.dim() > 0 \
            and routing_weights.shape[-1] == self.gate_up_proj.shape[0]
        out = experts(hidden_states, router_indices, routing_weights, self.gate_up_proj,
                      self.gate_up_proj_bias, self.down_proj, self.down_proj_bias,
                      alpha=self.alpha, limit=self.limit, routing="dense" if dense else None)
        return out.view(batch_size, -1, self.hidden_size)

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, hidden_size={self.hidden_size}, "
                f"expert_dim={self.expert_dim}, alpha={self.alpha}, limit={self.limit}")
