"""moejit: the PyTorch binding of libmoejit, a run-time kernel generator for GPT-OSS-style
Mixture-of-Experts layers (and others: SiLU / GELU gated or not, gate and up in halves, no biases).

    import moejit
    y = moejit.experts(hidden_states, router_indices, routing_weights,
                       gate_up_proj, gate_up_proj_bias, down_proj, down_proj_bias)
    layer = moejit.GptOssExperts(config)          # drop-in for transformers' GptOssExperts
    layer = moejit.GptOssExperts.from_checkpoint(safe_open(path, "pt", device="cuda"), layer=3)
                                                  # a gpt-oss checkpoint's MXFP4 experts, as stored
    y = moejit.experts(x, ids, weights, w13, None, w2, None,         # a Mixtral-shaped layer
                       activation="silu", gate_up_layout="halves")
    moejit.register_transformers()                # then experts_implementation="moejit"

ctypes over the shared library, no compiled extension. The library is found through
$MOEJIT_LIBRARY, else libmoejit.so* next to this package, else ctypes.util.find_library("moejit"),
else a build of the source tree this package sits in (build-dev/, build/), else the soname
"libmoejit.so.0". torch is imported on first use of experts / GptOssExperts, so `import moejit`
works without it.

State: the loaded library, one moejit context per CUDA device and a cache of compiled plans keyed
by layer shape, dtypes, routing form and a power-of-two token bucket, all created lazily and kept
until clear_cache() or exit (see _runtime.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Tuple

from ._capi import ABI_VERSION, Activation, DType, GateUpLayout, MoejitError, Routing, Status, \
    WeightFormat, load_library

if TYPE_CHECKING:  # pragma: no cover
    from ._module import GptOssExperts
    from ._ops import experts
    from ._transformers import register_transformers

__version__ = "0.4.0"

__all__ = [
    "ABI_VERSION",
    "Activation",
    "DType",
    "GateUpLayout",
    "GptOssExperts",
    "MoejitError",
    "Routing",
    "Status",
    "WeightFormat",
    "cache_info",
    "clear_cache",
    "experts",
    "library_path",
    "library_version",
    "register_transformers",
]

_LAZY = {
    "experts": ("._ops", "experts"),
    "GptOssExperts": ("._module", "GptOssExperts"),
    "register_transformers": ("._transformers", "register_transformers"),
}


def __getattr__(name: str) -> Any:
    """experts, GptOssExperts and register_transformers import torch: loaded on first access."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module, __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'moejit' has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))


def library_path() -> str:
    """The path of the libmoejit loaded (loads it). Raises MoejitError when none loads."""
    return load_library().path


def library_version() -> str:
    """moejit_version_string() of the library loaded ("0.4.0")."""
    return load_library().version_string


def cache_info() -> List[Tuple[Any, int]]:
    """(PlanKey, max_tokens) of every cached plan."""
    from . import _runtime

    return _runtime.cached_plans()


def clear_cache() -> None:
    """Destroys the cached plans and contexts (synchronising their devices first). CUDA graphs that
    captured a moejit forward must not be replayed afterwards."""
    from . import _runtime

    _runtime.clear()
