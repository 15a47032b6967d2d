"""_module.py: moejit.GptOssExperts, a drop-in for the GptOssExperts module of transformers / yamoe.

Same parameters (names, shapes), same attributes, same forward signature and output shape; the
forward runs moejit.experts. A layer holds dense weights (as GptOssExperts) or the gpt-oss
checkpoints' MXFP4 ones under the checkpoint's names (gate_up_proj_blocks, gate_up_proj_scales,
..., as transformers' Mxfp4GptOssExperts): from_checkpoint and from_module build one around the
caller's tensors, without copying them or moving them between devices. The activation, the gate/up
layout, the biases (or none) and batch invariance are the layer's too (GPT-OSS's by default).
Uses torch (imported with this module, which moejit imports lazily).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Optional, Set, Tuple, Union

import torch
from torch import nn

from . import _runtime
from ._capi import Activation, GateUpLayout, LayerDesc, Routing, WeightFormat
from ._ops import MXFP4_ACTIVATION_DTYPES, _check_dtype, _check_shape, _fail, _gate_up_inter, \
    _spell, check_biases, experts, gate_up_spelling, mxfp4_layer, parse_batch_invariant, plan_key

__all__ = ["CHECKPOINT_PREFIX", "DENSE_PARAMETERS", "GptOssExperts", "MXFP4_PARAMETERS"]

# The expert tensors of one layer, by their names in the module, the checkpoint and transformers.
DENSE_PARAMETERS = ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias")
MXFP4_PARAMETERS = ("gate_up_proj_blocks", "gate_up_proj_scales", "gate_up_proj_bias",
                    "down_proj_blocks", "down_proj_scales", "down_proj_bias")
# Where a gpt-oss checkpoint (safetensors) keeps layer {layer}'s experts.
CHECKPOINT_PREFIX = "model.layers.{layer}.mlp.experts."
# gpt-oss's num_experts_per_tok (20b and 120b alike).
GPT_OSS_TOP_K = 4

_FORMATS = {"dense": WeightFormat.DENSE, "mxfp4": WeightFormat.MXFP4}


def _size(name: str, config: Any, given: Optional[int]) -> int:
    if given is not None:
        return int(given)
    if config is None or not hasattr(config, name):
        raise ValueError(f"GptOssExperts: {name} is required (pass a config with it, or {name}=...)")
    return int(getattr(config, name))


def _parameter(t: Optional[torch.Tensor]) -> Optional[nn.Parameter]:
    """t itself when it is a Parameter (or None), else a Parameter over t's storage (no copy; no
    grad)."""
    return t if t is None or isinstance(t, nn.Parameter) else nn.Parameter(t, requires_grad=False)


def _tensor_source(tensors: Any) -> Tuple[Set[str], Callable[[str], torch.Tensor]]:
    """The names and the getter of a safetensors safe_open handle (keys / get_tensor) or of a
    mapping name -> tensor (a state dict)."""
    if hasattr(tensors, "get_tensor") and hasattr(tensors, "keys"):
        return set(tensors.keys()), tensors.get_tensor
    if isinstance(tensors, Mapping) or (hasattr(tensors, "keys") and hasattr(tensors, "__getitem__")):
        return set(tensors.keys()), tensors.__getitem__
    raise TypeError("GptOssExperts.from_checkpoint: tensors must be a mapping name -> tensor (a "
                    "state dict) or a safetensors safe_open(..., framework='pt') handle, got "
                    f"{type(tensors).__name__}")


def _one_device(where: str, tensors: Mapping[str, torch.Tensor], names: Mapping[str, str]) -> None:
    """All of a layer's tensors on one device (nothing is moved for the caller)."""
    tensors = {n: t for n, t in tensors.items() if t is not None}
    first = next(iter(tensors))
    for n, t in tensors.items():
        if isinstance(t, torch.Tensor) and isinstance(tensors[first], torch.Tensor) \
                and t.device != tensors[first].device:
            raise ValueError(f"{where}: {names[n]} is on {t.device} but {names[first]} is on "
                             f"{tensors[first].device}; a layer's tensors must be on one device "
                             "(moejit moves none of them: move them first)")


def _dense_layer(t: Mapping[str, Optional[torch.Tensor]], names: Mapping[str, str],
                 activation: Activation = Activation.SWIGLU_OAI) -> Tuple[int, int, int]:
    """(E, H, I) of dense expert weights gate_up_proj [E, H, 2I], gate_up_proj_bias [E, 2I],
    down_proj [E, I, H], down_proj_bias [E, H] ([E, H, I] and [E, I] without mul; both biases
    None: none) (ValueError naming the tensor)."""
    floats = (torch.bfloat16, torch.float16, torch.float32)
    no_bias = check_biases(t["gate_up_proj_bias"], t["down_proj_bias"], names)
    for n in DENSE_PARAMETERS:
        if not isinstance(t[n], torch.Tensor) and not (no_bias and n.endswith("_bias")):
            raise _fail(names[n], f"expected a torch.Tensor, got {type(t[n]).__name__}")
    rows = gate_up_spelling(activation)
    w1, w2 = t["gate_up_proj"], t["down_proj"]
    _check_dtype(names["gate_up_proj"], w1, floats, " (dense weights: bf16, f16 or f32)")
    if w1.dim() != 3:
        raise _fail(names["gate_up_proj"], f"must be [E, H, {rows}], got {_spell(w1)}")
    e, h = int(w1.shape[0]), int(w1.shape[1])
    down_inter = int(w2.shape[1]) if w2.dim() == 3 and (w2.shape[0], w2.shape[2]) == (e, h) else None
    i = _gate_up_inter(names["gate_up_proj"], w1, int(w1.shape[2]), down_inter, activation,
                       f"[E, H, {rows}]", names["down_proj"])
    _check_dtype(names["down_proj"], w2, (w1.dtype,), " (the dtype of gate_up_proj)")
    _check_shape(names["down_proj"], w2, (e, i, h), "[E, I, H]")
    if not no_bias:
        b1, b2 = t["gate_up_proj_bias"], t["down_proj_bias"]
        _check_dtype(names["gate_up_proj_bias"], b1, (w1.dtype, torch.float32),
                     " (the dtype of gate_up_proj, or f32)")
        _check_shape(names["gate_up_proj_bias"], b1, (e, 2 * i if activation.gated else i),
                     f"[E, {rows}]")
        _check_dtype(names["down_proj_bias"], b2, (b1.dtype,), " (the dtype of gate_up_proj_bias)")
        _check_shape(names["down_proj_bias"], b2, (e, h), "[E, H]")
    return e, h, i


ActivationLike = Union[Activation, str, int]
GateUpLayoutLike = Union[GateUpLayout, str, int]


class GptOssExperts(nn.Module):
    """The GPT-OSS expert layer on moejit kernels (inference only: no backward).

    Parameters, as in the reference module (E = num_experts, H = hidden_size, I = expert_dim):
      gate_up_proj       [E, H, 2I]  gate = even columns, up = odd columns
      gate_up_proj_bias  [E, 2I]
      down_proj          [E, I, H]
      down_proj_bias     [E, H]
    or, with weight_format="mxfp4", the gpt-oss checkpoint's tensors under its names (those of
    transformers' Mxfp4GptOssExperts; uint8, no gradient):
      gate_up_proj_blocks  [E, 2I, H/32, 16]   gate_up_proj_scales  [E, 2I, H/32]
      down_proj_blocks     [E, H, I/32, 16]    down_proj_scales     [E, H, I/32]
      gate_up_proj_bias    [E, 2I]             down_proj_bias       [E, H]   (bf16, f16 or f32)
    (see moejit.experts for the format; H and I multiples of 32; bf16 / f16 activations).
    Attributes: num_experts, hidden_size, intermediate_size, expert_dim (= I), alpha (1.702),
    limit (7.0), weight_format ("dense" or "mxfp4"), top_k (the K of layer_desc: the config's
    num_experts_per_tok, else gpt-oss's 4; forward takes K from router_indices), activation (a
    moejit.Activation), gate_up_layout (a moejit.GateUpLayout), batch_invariant (bool), has_bias.

    Beyond GPT-OSS (see moejit.experts for the formulas): activation= (moejit.Activation or
    vLLM's names: "swigluoai", the default, "silu", "gelu", "gelu_tanh", "swiglustep",
    "silu_no_mul", "gelu_no_mul", "relu2_no_mul"; without mul gate_up_proj is [E, H, I], its bias
    [E, I], the MXFP4 gate_up blocks [E, I, H/32, 16]), gate_up_layout= ("interleaved", the
    default, "halves" [gate | up], "up_gate_halves"), bias=False (no bias parameters: they are
    None) and batch_invariant=True (a token's output bits never depend on its batch).

    `config` is any object with num_local_experts, hidden_size and intermediate_size (a
    transformers GptOssConfig); the keywords give or override them. The parameters start as zeros
    (the reference leaves them uninitialised); load a checkpoint's state_dict, or use
    from_checkpoint() / from_module() to share the tensors of a checkpoint or another module.
    `dtype` is that of the dense weights and of the biases.
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
        weight_format: str = "dense",
        top_k: Optional[int] = None,
        activation: ActivationLike = Activation.SWIGLU_OAI,
        gate_up_layout: GateUpLayoutLike = GateUpLayout.INTERLEAVED,
        bias: bool = True,
        batch_invariant: bool = False,
    ) -> None:
        super().__init__()
        if weight_format not in _FORMATS:
            raise ValueError(f"GptOssExperts: weight_format is {weight_format!r}; expected 'dense' "
                             "or 'mxfp4'")
        self.activation = Activation.parse(activation)
        self.gate_up_layout = GateUpLayout.parse(gate_up_layout)
        self.batch_invariant = parse_batch_invariant(batch_invariant)
        self.intermediate_size = _size("intermediate_size", config, intermediate_size)
        self.num_experts = _size("num_local_experts", config, num_local_experts)
        self.hidden_size = _size("hidden_size", config, hidden_size)
        self.expert_dim = self.intermediate_size
        self.weight_format = weight_format
        if top_k is None:
            top_k = getattr(config, "num_experts_per_tok", None) or GPT_OSS_TOP_K
        self.top_k = int(top_k)
        e, h, i = self.num_experts, self.hidden_size, self.expert_dim
        cols = 2 * i if self.activation.gated else i  # gate_up_proj's outputs
        kw = {"device": device, "dtype": dtype}
        if weight_format == "dense":
            self.gate_up_proj = nn.Parameter(torch.zeros(e, h, cols, **kw))
            self.register_parameter("gate_up_proj_bias",
                                    nn.Parameter(torch.zeros(e, cols, **kw)) if bias else None)
            self.down_proj = nn.Parameter(torch.zeros(e, i, h, **kw))
            self.register_parameter("down_proj_bias",
                                    nn.Parameter(torch.zeros(e, h, **kw)) if bias else None)
        else:
            if h % 32 != 0 or i % 32 != 0:
                raise ValueError(f"GptOssExperts: hidden_size={h} and intermediate_size={i} must be "
                                 "multiples of 32 with MXFP4 weights (32 weights a scale)")
            u8 = {"device": device, "dtype": torch.uint8}

            def zeros(*shape: int, **kw: Any) -> nn.Parameter:
                return nn.Parameter(torch.zeros(*shape, **kw), requires_grad=False)

            self.gate_up_proj_blocks = zeros(e, cols, h // 32, 16, **u8)
            self.gate_up_proj_scales = zeros(e, cols, h // 32, **u8)
            self.register_parameter("gate_up_proj_bias", zeros(e, cols, **kw) if bias else None)
            self.down_proj_blocks = zeros(e, h, i // 32, 16, **u8)
            self.down_proj_scales = zeros(e, h, i // 32, **u8)
            self.register_parameter("down_proj_bias", zeros(e, h, **kw) if bias else None)
        self.alpha = alpha
        self.limit = limit

    @property
    def has_bias(self) -> bool:
        """False for a layer without biases (gate_up_proj_bias and down_proj_bias are None)."""
        return self.gate_up_proj_bias is not None

    # ---- building around existing tensors ------------------------------------------------------

    @classmethod
    def _around_mxfp4(cls, tensors: Mapping[str, Optional[torch.Tensor]], names: Mapping[str, str],
                      where: str, top_k: int, alpha: float, limit: float,
                      **layer: Any) -> "GptOssExperts":
        """A layer in MXFP4 form holding `tensors` (MXFP4_PARAMETERS -> tensor; both biases may be
        None) themselves. layer: activation, gate_up_layout, batch_invariant."""
        _one_device(where, tensors, names)
        activation = Activation.parse(layer.get("activation", Activation.SWIGLU_OAI))
        e, h, i = mxfp4_layer(*(tensors[n] for n in MXFP4_PARAMETERS), names=names,
                              activation=activation)
        bias = tensors["gate_up_proj_bias"]
        new = cls(num_local_experts=e, hidden_size=h, intermediate_size=i, alpha=alpha, limit=limit,
                  device=torch.device("meta"), dtype=bias.dtype if bias is not None else None,
                  weight_format="mxfp4", top_k=top_k, bias=bias is not None, **layer)
        for n in MXFP4_PARAMETERS:
            setattr(new, n, _parameter(tensors[n]))
        return new

    @classmethod
    def from_checkpoint(
        cls,
        tensors: Any,
        layer: int,
        *,
        top_k: int = GPT_OSS_TOP_K,
        alpha: float = 1.702,
        limit: float = 7.0,
        prefix: str = CHECKPOINT_PREFIX,
        batch_invariant: bool = False,
    ) -> "GptOssExperts":
        """The experts of layer `layer` of a gpt-oss checkpoint, around its own tensors.

        tensors: a mapping name -> tensor (a state dict, a dict of a safetensors file's tensors)
        or a safetensors safe_open(path, framework="pt", device=...) handle. Read by name under
        prefix.format(layer=layer) ("model.layers.{layer}.mlp.experts."): gate_up_proj_blocks,
        gate_up_proj_scales, gate_up_proj_bias, down_proj_blocks, down_proj_scales, down_proj_bias
        (MXFP4, the released checkpoints), else gate_up_proj, gate_up_proj_bias, down_proj,
        down_proj_bias (a dense, e.g. bf16, checkpoint). E, H and I come from their shapes, each
        tensor is checked (a ValueError names it: "...gate_up_proj_scales: must be uint8
        [E, 2I, H/32] = [32, 5760, 90], got ..."). top_k: the router's K (gpt-oss: 4), for
        layer_desc; alpha and limit: gpt-oss's SwiGLU (the activation is gpt-oss's: SWIGLU_OAI,
        gate and up interleaved, biases). batch_invariant: as the constructor's.

        Nothing is copied or moved: the layer's parameters share the tensors' storage and stay
        on their device (a safe_open(device="cuda:0") handle gives GPU tensors; a layer of CPU
        tensors must be moved with .to("cuda") before a forward, which otherwise refuses it by
        name). The router (model.layers.{layer}.mlp.router.weight / .bias) is not read.
        """
        pre = prefix.format(layer=layer)
        keys, get = _tensor_source(tensors)
        where = "GptOssExperts.from_checkpoint"
        invariant = parse_batch_invariant(batch_invariant)
        for params in (MXFP4_PARAMETERS, DENSE_PARAMETERS):
            if all(pre + n in keys for n in params):
                names = {n: pre + n for n in params}
                got = {n: get(pre + n) for n in params}
                if params is MXFP4_PARAMETERS:
                    return cls._around_mxfp4(got, names, where, top_k, alpha, limit,
                                             batch_invariant=invariant)
                _one_device(where, got, names)
                e, h, i = _dense_layer(got, names)
                new = cls(num_local_experts=e, hidden_size=h, intermediate_size=i, alpha=alpha,
                          limit=limit, device=torch.device("meta"), dtype=got["gate_up_proj"].dtype,
                          top_k=top_k, batch_invariant=invariant)
                for n in DENSE_PARAMETERS:
                    setattr(new, n, _parameter(got[n]))
                return new
        under = sorted(k[len(pre):] for k in keys if k.startswith(pre))
        if under:
            missing = [pre + n for n in MXFP4_PARAMETERS if pre + n not in keys]
            raise ValueError(f"{where}: {missing[0]} not found (MXFP4 experts need "
                             f"{', '.join(MXFP4_PARAMETERS)}; dense ones {', '.join(DENSE_PARAMETERS)}"
                             f"); the tensors under {pre} are: {', '.join(under)}")
        pattern = re.compile(re.escape(prefix).replace(re.escape("{layer}"), r"(\d+)"))
        layers = sorted({int(m.group(1)) for m in map(pattern.match, keys) if m and m.groups()})
        found = f"layers with experts: {layers[0]}..{layers[-1]} ({len(layers)})" if layers else \
            f"no name starts like {prefix!r} ({len(keys)} names)"
        raise ValueError(f"{where}: no tensor of layer {layer} under {pre}; {found}")

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        *,
        top_k: Optional[int] = None,
        activation: Optional[ActivationLike] = None,
        gate_up_layout: Optional[GateUpLayoutLike] = None,
        batch_invariant: Optional[bool] = None,
    ) -> "GptOssExperts":
        """A GptOssExperts that shares (does not copy) the tensors of another experts module, with
        its alpha and limit: a reference GptOssExperts (gate_up_proj, gate_up_proj_bias, down_proj,
        down_proj_bias), or an MXFP4 one such as transformers' Mxfp4GptOssExperts holding
        gate_up_proj_blocks, gate_up_proj_scales, gate_up_proj_bias, down_proj_blocks,
        down_proj_scales and down_proj_bias (read by name; checked as from_checkpoint checks them).
        Both biases may be None (a layer without biases). top_k: for layer_desc; default the
        module's top_k, else 4. activation, gate_up_layout, batch_invariant: default those of a
        moejit GptOssExperts module, else GPT-OSS's (SWIGLU_OAI, interleaved) and False. Nothing
        is moved between devices."""
        kind = type(module).__name__
        if top_k is None:
            top_k = getattr(module, "top_k", None) or GPT_OSS_TOP_K
        alpha, limit = getattr(module, "alpha", 1.702), getattr(module, "limit", 7.0)
        own = isinstance(module, GptOssExperts)
        layer = {
            "activation": Activation.parse(
                activation if activation is not None else
                module.activation if own else Activation.SWIGLU_OAI),
            "gate_up_layout": GateUpLayout.parse(
                gate_up_layout if gate_up_layout is not None else
                module.gate_up_layout if own else GateUpLayout.INTERLEAVED),
            "batch_invariant": parse_batch_invariant(
                batch_invariant if batch_invariant is not None else
                module.batch_invariant if own else False),
        }

        def tensor_or_none(n: str) -> bool:
            t = getattr(module, n, None)
            return t is None or isinstance(t, torch.Tensor)

        if any(hasattr(module, n) for n in ("gate_up_proj_blocks", "gate_up_proj_scales")):
            missing = [n for n in MXFP4_PARAMETERS
                       if not (isinstance(getattr(module, n, None), torch.Tensor)
                               or (n.endswith("_bias") and tensor_or_none(n)))]
            if missing:
                raise ValueError(f"GptOssExperts.from_module: {kind} has MXFP4 blocks or scales "
                                 f"but no tensor {missing[0]} (MXFP4 experts need "
                                 f"{', '.join(MXFP4_PARAMETERS)})")
            got = {n: getattr(module, n, None) for n in MXFP4_PARAMETERS}
            names = {n: f"{kind}.{n}" for n in MXFP4_PARAMETERS}
            return cls._around_mxfp4(got, names, "GptOssExperts.from_module", int(top_k),
                                     float(alpha), float(limit), **layer)
        gate_up = getattr(module, "gate_up_proj", None)
        if not isinstance(gate_up, torch.Tensor) or gate_up.dim() != 3 \
                or not gate_up.dtype.is_floating_point:
            what = _spell(gate_up) if isinstance(gate_up, torch.Tensor) else type(gate_up).__name__
            raise ValueError(
                f"GptOssExperts.from_module: {kind} holds its experts in neither form moejit reads: "
                f"MXFP4 tensors by name ({', '.join(MXFP4_PARAMETERS)}) or a dense gate_up_proj "
                f"[E, H, 2I] (its gate_up_proj: {what}). transformers swizzles MXFP4 experts "
                "for its triton kernels when it loads them, and drops their blocks and scales: "
                "build the layer from the checkpoint instead, "
                "GptOssExperts.from_checkpoint(safe_open(path, 'pt', device='cuda'), layer)")
        got = {n: getattr(module, n, None) for n in DENSE_PARAMETERS}
        names = {n: f"{kind}.{n}" for n in DENSE_PARAMETERS}
        e, h, i = _dense_layer(got, names, layer["activation"])
        new = cls(num_local_experts=e, hidden_size=h, intermediate_size=i, alpha=alpha,
                  limit=limit, device=torch.device("meta"), dtype=gate_up.dtype, top_k=int(top_k),
                  bias=got["gate_up_proj_bias"] is not None, **layer)
        for name in DENSE_PARAMETERS:
            setattr(new, name, getattr(module, name))
        return new

    # ---- what runs ---------------------------------------------------------------------------------

    def _weights(self) -> Tuple[str, ...]:
        return MXFP4_PARAMETERS if self.weight_format == "mxfp4" else DENSE_PARAMETERS

    def _check_devices(self, hidden_states: torch.Tensor) -> None:
        """Every weight on the device of hidden_states (a CUDA one): moejit moves none of them."""
        if not isinstance(hidden_states, torch.Tensor) or not hidden_states.is_cuda:
            return  # moejit.experts names hidden_states
        device = hidden_states.device
        for name in self._weights():
            t = getattr(self, name)
            if isinstance(t, torch.Tensor) and t.device != device:
                raise ValueError(
                    f"GptOssExperts.{name}: is on {t.device}, but hidden_states is on {device}; "
                    "moejit moves no weights between devices: move the layer first "
                    f"(layer.to({str(device)!r}))")

    def layer_desc(
        self,
        max_tokens: int = 1024,
        *,
        top_k: Optional[int] = None,
        dtype: Optional[torch.dtype] = None,
        ids_dtype: torch.dtype = torch.int32,
        weights_dtype: torch.dtype = torch.float32,
        routing: str = "topk",
    ) -> LayerDesc:
        """The moejit_layer_desc a forward of this layer plans with (loads libmoejit; needs no
        GPU): E, H, I, K (top_k, default self.top_k), the activation dtype (default: dense, the
        weights'; MXFP4, the biases' when bf16 / f16, else bf16), the dtypes of router_indices and
        routing_weights, the routing form ("topk" or "dense"), alpha, limit, bias_f32 (f32 biases
        with f16 / bf16 activations), the weight format, the activation, the gate/up layout,
        no_bias, batch_invariant, and max_tokens."""
        mxfp4 = self.weight_format == "mxfp4"
        bias = self.gate_up_proj_bias.dtype if self.has_bias else None
        if dtype is None:
            if mxfp4:
                dtype = bias if bias in MXFP4_ACTIVATION_DTYPES else torch.bfloat16
            else:
                dtype = self.gate_up_proj.dtype
        if routing not in ("topk", "dense"):
            raise ValueError(f"routing: is {routing!r}; expected 'topk' or 'dense'")
        key = plan_key(0, dtype, ids_dtype, weights_dtype, self.hidden_size, self.expert_dim,
                       self.num_experts, self.top_k if top_k is None else int(top_k),
                       Routing.TOPK if routing == "topk" else Routing.DENSE, self.alpha,
                       self.limit, bias, _FORMATS[self.weight_format], self.activation,
                       self.gate_up_layout, self.batch_invariant)
        return _runtime.layer_desc(key, int(max_tokens))

    def forward(
        self,
        hidden_states: torch.Tensor,
        router_indices: Optional[torch.Tensor] = None,
        routing_weights: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """hidden_states [B, S, H] (or [T, H]); router_indices [T, K] int32/int64 (T = B*S);
        routing_weights [T, E] dense, the reference's form (taken as dense even when K == E);
        [T, K] top-k weights are accepted too. Returns [B, S, H]; like the reference, [T, H]
        input gives [T, 1, H]. Every weight must be on the device of hidden_states (a ValueError
        names the one that is not: the layer is never moved for the caller)."""
        if router_indices is None or routing_weights is None:
            raise ValueError("router_indices: moejit.GptOssExperts needs router_indices and "
                             "routing_weights (it has no dense all-experts path)")
        self._check_devices(hidden_states)
        batch_size = hidden_states.shape[0]
        n_experts = getattr(self, self._weights()[0]).shape[0]
        dense = isinstance(routing_weights, torch.Tensor) and routing_weights.dim() > 0 \
            and routing_weights.shape[-1] == n_experts
        routing = "dense" if dense else None
        layer = dict(alpha=self.alpha, limit=self.limit, routing=routing,
                     activation=self.activation, gate_up_layout=self.gate_up_layout,
                     batch_invariant=self.batch_invariant)
        if self.weight_format == "mxfp4":
            out = experts(hidden_states, router_indices, routing_weights, self.gate_up_proj_blocks,
                          self.gate_up_proj_bias, self.down_proj_blocks, self.down_proj_bias,
                          gate_up_proj_scales=self.gate_up_proj_scales,
                          down_proj_scales=self.down_proj_scales, **layer)
        else:
            out = experts(hidden_states, router_indices, routing_weights, self.gate_up_proj,
                          self.gate_up_proj_bias, self.down_proj, self.down_proj_bias, **layer)
        return out.view(batch_size, -1, self.hidden_size)

    def extra_repr(self) -> str:
        more = ""
        if self.weight_format == "mxfp4":
            more += ", weight_format=mxfp4"
        if self.activation != Activation.SWIGLU_OAI:
            more += f", activation={self.activation.vllm_name}"
        if self.gate_up_layout != GateUpLayout.INTERLEAVED:
            more += f", gate_up_layout={self.gate_up_layout.name.lower()}"
        if not self.has_bias:
            more += ", bias=False"
        if self.batch_invariant:
            more += ", batch_invariant=True"
        return (f"num_experts={self.num_experts}, hidden_size={self.hidden_size}, "
                f"expert_dim={self.expert_dim}, alpha={self.alpha}, limit={self.limit}{more}")
