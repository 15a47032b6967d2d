"""_capi.py: the C API of libmoejit through ctypes, without torch.

Provides the ctypes mirrors of the structs and enums of include/moejit.h, the loading of the shared
library (MOEJIT_LIBRARY, next to the package, the system, a source-tree build), MoejitError, and
three small owners of the C handles: Library, Context (moejit_ctx) and Plan (moejit_plan). Device
pointers and streams are plain integers here; the torch side lives in _runtime.py and _ops.py.

Module state: the loaded Library, created once on first use (load_library) and kept for the life
of the process, since the contexts and plans made from it must not outlive it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import enum
import glob
import importlib.util
import logging
import os
import threading
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

__all__ = [
    "ABI_VERSION",
    "Activation",
    "Context",
    "CtxOptions",
    "DType",
    "ForwardArgs",
    "GateUpLayout",
    "LayerDesc",
    "Library",
    "LogLevel",
    "MoejitError",
    "Plan",
    "Routing",
    "Status",
    "WeightFormat",
    "load_library",
    "library_candidates",
]

# The header this binding mirrors: MOEJIT_VERSION_MAJOR * 10000 + MINOR * 100 + PATCH.
ABI_VERSION = 400

_log = logging.getLogger("moejit")


# ---- enums (C ints) -------------------------------------------------------------------------------


class Status(enum.IntEnum):
    """moejit_status: the X-macro table of moejit.h. Codes are appended, never renumbered."""

    OK = 0
    ERR_INVALID_ARG = 1
    ERR_UNSUPPORTED = 2
    ERR_NO_DEVICE = 3
    ERR_NO_COMPILER = 4
    ERR_COMPILE = 5
    ERR_TEMPLATE = 6
    ERR_CUDA = 7
    ERR_OUT_OF_MEMORY = 8
    ERR_BAD_EXPERT_ID = 9
    ERR_IO = 10
    ERR_INTERNAL = 11


class DType(enum.IntEnum):
    """moejit_dtype."""

    F32 = 0
    F16 = 1
    BF16 = 2
    I32 = 3
    I64 = 4


class Routing(enum.IntEnum):
    """moejit_routing: how the routing reaches moejit_forward."""

    TOPK = 0  # topk_ids [T, K] + routing_weights [T, K]
    DENSE = 1  # topk_ids [T, K] + routing_weights [T, E]: weight = w[t, ids[t, k]]
    LOGITS = 2  # router_logits [T, E]: top-K, softmax over the K (not used by this binding yet)


class WeightFormat(enum.IntEnum):
    """moejit_weight_format: how the expert weights (gate_up_proj, down_proj) are stored."""

    DENSE = 0  # [E, H, 2I] and [E, I, H] in the activation dtype
    MXFP4 = 1  # the gpt-oss checkpoint's blocks [E, 2I, H/32, 16] / [E, H, I/32, 16] + e8m0 scales


class Activation(enum.IntEnum):
    """moejit_activation: the activation between the GEMMs (vLLM's MoEActivation formulas, in
    fp32; silu(v) = v * sigmoid(v)). The gated ones take GEMM1's 2I outputs as gate and up (where
    GateUpLayout says); SILU, GELU and RELU2 take GEMM1's I outputs (gate_up_proj [E, H, I], its
    bias [E, I]). Strings, as vLLM spells MoEActivation, through Activation.parse."""

    SWIGLU_OAI = 0  # gate = min(gate, limit), up = clamp(up, +-limit), (up + 1) * gate * sigmoid(alpha * gate)
    SILU_MUL = 1  # silu(gate) * up (Mixtral, Qwen, DeepSeek)
    GELU_MUL = 2  # gelu(gate) * up, gelu(v) = v / 2 * (1 + erf(v / sqrt 2))
    GELU_TANH_MUL = 3  # gelu_tanh(gate) * up
    SWIGLU_STEP = 4  # min(silu(gate), limit) * clamp(up, -limit, limit)
    SILU = 5  # silu(v), no mul
    GELU = 6  # gelu(v) (erf form), no mul
    RELU2 = 7  # max(v, 0)^2, no mul

    @property
    def gated(self) -> bool:
        """True when gate_up_proj holds gate and up (2I columns); False: I columns, no mul."""
        return self <= Activation.SWIGLU_STEP

    @property
    def vllm_name(self) -> str:
        """The name vLLM's MoEActivation gives it ("swigluoai", "silu", ..., "relu2_no_mul"; for
        GELU_TANH_MUL, which vLLM has no member for, "gelu_tanh")."""
        return _ACTIVATION_VLLM_NAMES[self]

    @classmethod
    def parse(cls, value: object, name: str = "activation") -> "Activation":
        """An Activation from itself, its int value, a vLLM MoEActivation member (by its .value),
        or a string: vLLM's names ("swigluoai", "silu", "gelu", "swiglustep", "silu_no_mul",
        "gelu_no_mul", "relu2_no_mul"; gated "silu" and "gelu" are SILU_MUL and GELU_MUL, as vLLM
        means them), "gelu_tanh", or a member name ("silu_mul", "gelu_tanh_mul", "swiglu_oai",
        ...; case-insensitive; "silu" and "gelu" keep vLLM's meaning). ValueError naming `name`
        otherwise."""
        got = _enum_value(value)
        if isinstance(got, str):
            key = got.strip().lower()
            if key in _ACTIVATION_STRINGS:
                return _ACTIVATION_STRINGS[key]
        elif isinstance(got, int) and not isinstance(got, bool) and got in cls._value2member_map_:
            return cls(got)
        names = ", ".join(repr(s) for s in _ACTIVATION_STRINGS)
        raise ValueError(f"{name}: is {value!r}; expected a moejit.Activation, its int value "
                         f"(0..7) or one of {names}")


_ACTIVATION_VLLM_NAMES = {
    Activation.SWIGLU_OAI: "swigluoai",
    Activation.SILU_MUL: "silu",
    Activation.GELU_MUL: "gelu",
    Activation.GELU_TANH_MUL: "gelu_tanh",
    Activation.SWIGLU_STEP: "swiglustep",
    Activation.SILU: "silu_no_mul",
    Activation.GELU: "gelu_no_mul",
    Activation.RELU2: "relu2_no_mul",
}
# vLLM's names first (they decide "silu" and "gelu": gated), then the members' own names.
_ACTIVATION_STRINGS = {**{v: k for k, v in _ACTIVATION_VLLM_NAMES.items()},
                       **{m.name.lower(): m for m in Activation if m.name.lower() not in
                          _ACTIVATION_VLLM_NAMES.values()}}


class GateUpLayout(enum.IntEnum):
    """moejit_gate_up_layout: where gate j and up j sit along gate_up_proj's 2I outputs (the
    columns of the dense [E, H, 2I], the rows of the MXFP4 blocks) and its bias. Unused by the
    activations without mul."""

    INTERLEAVED = 0  # gate j = 2j, up j = 2j + 1 (GPT-OSS; the default)
    HALVES = 1  # [gate | up]: gate j = j, up j = I + j (vLLM's w13, Mixtral-style models)
    UP_GATE_HALVES = 2  # [up | gate]

    @classmethod
    def parse(cls, value: object, name: str = "gate_up_layout") -> "GateUpLayout":
        """A GateUpLayout from itself, its int value or a string: "interleaved", "halves" (also
        "gate_up_halves"), "up_gate_halves" (case-insensitive). ValueError naming `name`."""
        got = _enum_value(value)
        if isinstance(got, str):
            key = got.strip().lower()
            if key in _LAYOUT_STRINGS:
                return _LAYOUT_STRINGS[key]
        elif isinstance(got, int) and not isinstance(got, bool) and got in cls._value2member_map_:
            return cls(got)
        names = ", ".join(repr(s) for s in _LAYOUT_STRINGS)
        raise ValueError(f"{name}: is {value!r}; expected a moejit.GateUpLayout, its int value "
                         f"(0..2) or one of {names}")


_LAYOUT_STRINGS = {"interleaved": GateUpLayout.INTERLEAVED, "halves": GateUpLayout.HALVES,
                   "gate_up_halves": GateUpLayout.HALVES,
                   "up_gate_halves": GateUpLayout.UP_GATE_HALVES}


def _enum_value(value: object) -> object:
    """value itself (an int or a str); an enum member of another enum (vLLM's MoEActivation, a
    str-valued Enum) gives its .value; an IntEnum stays an int."""
    if isinstance(value, (int, str)):
        return value
    if isinstance(value, enum.Enum):
        return value.value
    return value


class LogLevel(enum.IntEnum):
    """moejit_log_level."""

    DEBUG = 0
    INFO = 1
    WARN = 2


# ---- struct mirrors --------------------------------------------------------------------------------

# typedef void (*moejit_log_fn)(void *user, moejit_log_level level, const char *message);
LOG_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p)


class CtxOptions(ctypes.Structure):
    """moejit_ctx_options, field for field."""

    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("device", ctypes.c_int),
        ("offline_arch", ctypes.c_char_p),
        ("template_dir", ctypes.c_char_p),
        ("log", LOG_FN),
        ("log_user", ctypes.c_void_p),
        ("cache_dir", ctypes.c_char_p),
    ]


class LayerDesc(ctypes.Structure):
    """moejit_layer_desc, field for field (enums are C ints)."""

    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("hidden", ctypes.c_int64),
        ("intermediate", ctypes.c_int64),
        ("experts", ctypes.c_int64),
        ("top_k", ctypes.c_int64),
        ("max_tokens", ctypes.c_int64),
        ("dtype", ctypes.c_int),
        ("ids_dtype", ctypes.c_int),
        ("weights_dtype", ctypes.c_int),
        ("routing", ctypes.c_int),
        ("alpha", ctypes.c_float),
        ("limit", ctypes.c_float),
        ("expert_capacity", ctypes.c_int64),
        ("global_experts", ctypes.c_int64),
        ("apply_router_weight_on_input", ctypes.c_int),
        ("logits_dtype", ctypes.c_int),  # router_logits dtype (MOEJIT_ROUTING_LOGITS)
        ("bias_f32", ctypes.c_int),  # 1: f32 biases with f16 / bf16 x and weights
        ("exact_f32", ctypes.c_int),  # f32 layers: 1 exact FFMA GEMMs, 0 TF32 tensor cores
        ("unfused", ctypes.c_int),  # 1: the activation as a launch of its own (staged forwards)
        ("weight_format", ctypes.c_int),  # WeightFormat: DENSE (default) or MXFP4
        ("batch_invariant", ctypes.c_int),  # 1: a token's output bits depend on that token alone
        ("activation", ctypes.c_int),  # moejit_activation: 0 SWIGLU_OAI (GPT-OSS, the default)
        ("gate_up_layout", ctypes.c_int),  # moejit_gate_up_layout: 0 interleaved (the default)
        ("no_bias", ctypes.c_int),  # 1: no biases (the args' bias pointers NULL)
    ]


class ForwardArgs(ctypes.Structure):
    """moejit_forward_args, field for field. Every pointer is a device address."""

    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("tokens", ctypes.c_int64),
        ("x", ctypes.c_void_p),  # [T, H] dtype
        ("topk_ids", ctypes.c_void_p),  # [T, K] ids_dtype
        ("routing_weights", ctypes.c_void_p),  # [T, K] or [T, E] weights_dtype
        ("router_logits", ctypes.c_void_p),  # [T, E], MOEJIT_ROUTING_LOGITS only
        ("expert_map", ctypes.c_void_p),  # const int32_t * [global_experts]
        ("gate_up_proj", ctypes.c_void_p),  # [E, H, 2I]; MXFP4: the blocks [E, 2I, H/32, 16]
        ("gate_up_proj_bias", ctypes.c_void_p),  # [E, 2I]
        ("down_proj", ctypes.c_void_p),  # [E, I, H]; MXFP4: the blocks [E, H, I/32, 16]
        ("down_proj_bias", ctypes.c_void_p),  # [E, H]
        ("y", ctypes.c_void_p),  # [T, H] dtype, written
        ("device_tokens", ctypes.c_void_p),  # const int32_t * [1], optional
        ("gate_up_proj_scales", ctypes.c_void_p),  # MXFP4 only: uint8 [E, 2I, H/32], 16-byte aligned
        ("down_proj_scales", ctypes.c_void_p),  # MXFP4 only: uint8 [E, H, I/32], 16-byte aligned
    ]


STRUCTS = {
    "moejit_ctx_options": CtxOptions,
    "moejit_layer_desc": LayerDesc,
    "moejit_forward_args": ForwardArgs,
}


# ---- errors ------------------------------------------------------------------------------------------


class MoejitError(RuntimeError):
    """A moejit call failed.

    status: the Status (None when the library itself could not be loaded); status_name: the C
    name ("MOEJIT_ERR_INVALID_ARG"); detail: moejit_last_error's text (the argument and its value,
    the NVRTC log, the failing driver call) or, for a context that could not be created, what the
    library logged.
    """

    def __init__(self, status: Optional[int], status_name: str, detail: str, call: str = ""):
        self.status = Status(status) if status is not None and status in Status._value2member_map_ else status
        self.status_name = status_name
        self.detail = detail
        self.call = call
        where = f"{call}: " if call else ""
        super().__init__(f"{where}{status_name}: {detail}" if detail else f"{where}{status_name}")


# ---- loading ------------------------------------------------------------------------------------------

_PKG_DIR = Path(__file__).resolve().parent
# python/moejit -> the repository root, when the package is imported from a source checkout.
_SOURCE_ROOT = _PKG_DIR.parent.parent


def library_candidates() -> List[str]:
    """The paths tried, in order: $MOEJIT_LIBRARY; libmoejit.so* next to this package;
    ctypes.util.find_library("moejit"); the source tree's build-dev/ and build/ (when imported
    from a checkout); the soname "libmoejit.so.0" (the loader's search path)."""
    out: List[str] = []
    env = os.environ.get("MOEJIT_LIBRARY")
    if env:
        out.append(env)
    # libmoejit.so first, then the soname, then the fully versioned file.
    for name in sorted(glob.glob(str(_PKG_DIR / "libmoejit.so*")), key=len):
        out.append(name)
    found = ctypes.util.find_library("moejit")
    if found:
        out.append(found)
    if (_SOURCE_ROOT / "include" / "moejit.h").is_file():
        for build in ("build-dev", "build"):
            lib = _SOURCE_ROOT / build / "libmoejit.so"
            if lib.exists():
                out.append(str(lib))
    out.append("libmoejit.so.0")
    return out


def nvrtc_folders() -> List[str]:
    """The folders of pip-installed NVRTC, for the library's last place to look
    ($MOEJIT_NVRTC_SEARCH): the nvidia-cuda-nvrtc wheels' (nvidia/cu13/lib, nvidia/cuda_nvrtc/lib,
    found beside whatever else is installed under the nvidia namespace), then torch's lib folder.
    Nothing is imported: the folders are found from the import system's specs."""
    out: List[str] = []
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        spec = None
    for root in list(spec.submodule_search_locations or []) if spec else []:
        for lib in sorted(glob.glob(os.path.join(root, "*", "lib"))):
            if glob.glob(os.path.join(lib, "libnvrtc.so*")):
                out.append(lib)
    try:
        torch = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        torch = None
    if torch and torch.submodule_search_locations:
        lib = os.path.join(list(torch.submodule_search_locations)[0], "lib")
        if glob.glob(os.path.join(lib, "libnvrtc.so*")):
            out.append(lib)
    return out


def _offer_nvrtc() -> None:
    """Appends nvrtc_folders() to $MOEJIT_NVRTC_SEARCH, which the library reads when it first
    needs NVRTC, after $MOEJIT_NVRTC, $CUDA_HOME, /usr/local/cuda and the loader's path."""
    have = [p for p in os.environ.get("MOEJIT_NVRTC_SEARCH", "").split(":") if p]
    more = [p for p in nvrtc_folders() if p not in have]
    if more:
        os.environ["MOEJIT_NVRTC_SEARCH"] = ":".join(have + more)


class _Fn:
    """A prototype: name, result type, argument types."""

    def __init__(self, name: str, restype: object, argtypes: Sequence[object]):
        self.name, self.restype, self.argtypes = name, restype, list(argtypes)


_VP = ctypes.c_void_p
_PROTOTYPES = [
    # the sized inits (0.4): they fill at most the size given, this binding's sizeof
    _Fn("moejit_ctx_options_init_sized", None, [ctypes.POINTER(CtxOptions), ctypes.c_size_t]),
    _Fn("moejit_layer_desc_init_sized", None, [ctypes.POINTER(LayerDesc), ctypes.c_size_t]),
    _Fn("moejit_forward_args_init_sized", None, [ctypes.POINTER(ForwardArgs), ctypes.c_size_t]),
    _Fn("moejit_create", ctypes.c_int, [ctypes.POINTER(_VP), ctypes.POINTER(CtxOptions)]),
    _Fn("moejit_destroy", None, [_VP]),
    _Fn("moejit_plan_create", ctypes.c_int, [_VP, ctypes.POINTER(LayerDesc), ctypes.POINTER(_VP)]),
    _Fn("moejit_plan_destroy", None, [_VP]),
    _Fn("moejit_workspace_size", ctypes.c_int, [_VP, ctypes.c_int64, ctypes.POINTER(ctypes.c_size_t)]),
    _Fn("moejit_forward", ctypes.c_int, [_VP, ctypes.POINTER(ForwardArgs), _VP, ctypes.c_size_t, _VP]),
    _Fn("moejit_forward_check", ctypes.c_int, [_VP, _VP, _VP, ctypes.POINTER(ctypes.c_int64)]),
    _Fn("moejit_status_name", ctypes.c_char_p, [ctypes.c_int]),
    _Fn("moejit_status_string", ctypes.c_char_p, [ctypes.c_int]),
    _Fn("moejit_last_error", ctypes.c_char_p, [_VP]),
    _Fn("moejit_version", ctypes.c_int, []),
    _Fn("moejit_version_string", ctypes.c_char_p, []),
]

_INIT_FNS = {
    "moejit_ctx_options": "moejit_ctx_options_init_sized",
    "moejit_layer_desc": "moejit_layer_desc_init_sized",
    "moejit_forward_args": "moejit_forward_args_init_sized",
}


def _text(b: Optional[bytes]) -> str:
    return b.decode("utf-8", "replace") if b else ""


class Library:
    """The loaded libmoejit: prototypes set, struct sizes and version checked against this binding."""

    def __init__(self, path: str):
        self.path = path
        _offer_nvrtc()
        self.dll = ctypes.CDLL(path)
        for p in _PROTOTYPES:
            fn = getattr(self.dll, p.name)  # AttributeError: an older library, reported by the caller
            fn.restype = p.restype
            fn.argtypes = p.argtypes
        self.version = int(self.dll.moejit_version())
        self.version_string = _text(self.dll.moejit_version_string())
        self._check_struct_sizes()

    def _check_struct_sizes(self) -> None:
        """Reads the struct_size each *_init writes (into an oversized scratch buffer, so that a
        newer, larger struct cannot overrun a mirror). moejit_create accepts any prefix of its
        options (the ABI rule), so the options may differ in size; moejit_plan_create and
        moejit_forward demand their struct's exact size."""
        self.sizes = {}
        for cname, mirror in STRUCTS.items():
            size = ctypes.c_size_t.from_buffer(self._init_scratch(cname)).value
            self.sizes[cname] = size
            if size != ctypes.sizeof(mirror) and cname != "moejit_ctx_options":
                raise MoejitError(
                    None,
                    "ABI mismatch",
                    f"{self.path} ({self.version_string}) has {cname} of {size} bytes; this binding "
                    f"mirrors {ctypes.sizeof(mirror)} bytes (moejit.h {ABI_VERSION // 10000}."
                    f"{ABI_VERSION // 100 % 100}.{ABI_VERSION % 100}): use a matching binding",
                    "load_library",
                )

    def _init_scratch(self, cname: str) -> ctypes.Array:
        """The library's defaults for the struct, as far as this binding's mirror reaches (a newer
        library fills that much; an older one its own, smaller size), in a scratch buffer."""
        scratch = (ctypes.c_uint8 * 4096)()
        mirror = STRUCTS[cname]
        getattr(self.dll, _INIT_FNS[cname])(ctypes.cast(scratch, ctypes.POINTER(mirror)),
                                            ctypes.sizeof(mirror))
        return scratch

    def _init(self, cname: str) -> ctypes.Structure:
        """A mirror initialised by the library's *_init, struct_size = the common prefix."""
        mirror = STRUCTS[cname]
        out = mirror()
        common = min(ctypes.sizeof(mirror), self.sizes[cname])
        ctypes.memmove(ctypes.addressof(out), self._init_scratch(cname), common)
        out.struct_size = common
        return out

    def status_name(self, status: int) -> str:
        """"MOEJIT_ERR_INVALID_ARG" for 1."""
        return _text(self.dll.moejit_status_name(int(status)))

    def status_string(self, status: int) -> str:
        """"invalid argument" for 1."""
        return _text(self.dll.moejit_status_string(int(status)))

    def error(self, status: int, detail: str, call: str) -> MoejitError:
        """A MoejitError for a non-OK status."""
        return MoejitError(status, self.status_name(status), detail or self.status_string(status), call)

    def ctx_options(self) -> CtxOptions:
        """moejit_ctx_options with the library's defaults; struct_size is the prefix both know
        (fields past it, such as cache_dir with an older library, must stay NULL)."""
        return self._init("moejit_ctx_options")

    def layer_desc(self) -> LayerDesc:
        """A moejit_layer_desc with the library's defaults (moejit_layer_desc_init)."""
        return self._init("moejit_layer_desc")

    def forward_args(self) -> ForwardArgs:
        """A zeroed moejit_forward_args with struct_size set (moejit_forward_args_init)."""
        return self._init("moejit_forward_args")

    def create_context(self, device: int = 0, offline_arch: Optional[str] = None) -> "Context":
        """A moejit_ctx on CUDA device `device` (the driver's ordinal, as torch's index), or,
        with offline_arch ("sm_90a"), one that compiles for that target and loads nothing.
        Raises MoejitError (MOEJIT_ERR_NO_DEVICE without a GPU) with what the library logged."""
        return Context(self, device, offline_arch)


_lib: Optional[Library] = None
_lib_lock = threading.Lock()


def load_library() -> Library:
    """The process's Library, loaded on first call from the first of library_candidates() that
    loads. Raises MoejitError (status None) listing every path tried and why it failed."""
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        tried: List[Tuple[str, str]] = []
        for path in library_candidates():
            try:
                _lib = Library(path)
                _log.debug("moejit: loaded %s (%s)", path, _lib.version_string)
                return _lib
            except MoejitError:
                raise
            except (OSError, AttributeError) as e:
                tried.append((path, str(e)))
        lines = "; ".join(f"{p}: {why}" for p, why in tried)
        hint = ""
        if any("liblua" in why for _, why in tried):
            hint = " (libmoejit needs liblua5.4.so.0: install liblua5.4-0 or add its folder to " \
                   "LD_LIBRARY_PATH, as tests/device.sh does)"
        raise MoejitError(
            None,
            "library not found",
            f"could not load libmoejit; set MOEJIT_LIBRARY to the path of libmoejit.so{hint}. "
            f"Tried: {lines}",
            "load_library",
        )


# ---- handles ------------------------------------------------------------------------------------------

_LOG_LEVELS = {LogLevel.DEBUG: logging.DEBUG, LogLevel.INFO: logging.INFO, LogLevel.WARN: logging.WARNING}


class Context:
    """Owns a moejit_ctx. The library's log callback goes to the "moejit" logger (the library's
    DEBUG lines at DEBUG) and keeps the last message, which is the only detail there is when
    moejit_create itself fails. Not thread-safe: the caller serialises plan creation."""

    def __init__(self, lib: Library, device: int, offline_arch: Optional[str]):
        self.lib = lib
        self.device = device
        self.offline_arch = offline_arch
        self.last_log = ""
        # The callback object must live as long as the C context that holds its address.
        self._log_fn = LOG_FN(self._on_log)
        self._arch = offline_arch.encode() if offline_arch else None
        opts = lib.ctx_options()
        opts.device = int(device)
        opts.offline_arch = self._arch
        opts.log = self._log_fn
        handle = ctypes.c_void_p()
        st = lib.dll.moejit_create(ctypes.byref(handle), ctypes.byref(opts))
        if st != Status.OK:
            raise lib.error(st, self.last_log, f"moejit_create(device={device}"
                            + (f", offline_arch={offline_arch!r})" if offline_arch else ")"))
        self.handle: Optional[int] = handle.value

    def _on_log(self, _user: Optional[int], level: int, message: Optional[bytes]) -> None:
        text = _text(message)
        self.last_log = text
        _log.log(_LOG_LEVELS.get(level, logging.WARNING), "moejit: %s", text)

    def last_error(self) -> str:
        """moejit_last_error: the detail of the last failure on this context."""
        return _text(self.lib.dll.moejit_last_error(self.handle))

    def fail(self, status: int, call: str) -> MoejitError:
        """The MoejitError for a failed call on this context."""
        return self.lib.error(status, self.last_error(), call)

    def create_plan(self, desc: LayerDesc) -> "Plan":
        """moejit_plan_create: renders, compiles (NVRTC, may take seconds) and loads the layer's
        kernels. Raises MoejitError naming the bad field of desc."""
        handle = ctypes.c_void_p()
        st = self.lib.dll.moejit_plan_create(self.handle, ctypes.byref(desc), ctypes.byref(handle))
        if st != Status.OK:
            raise self.fail(st, "moejit_plan_create")
        return Plan(self, handle.value, desc)

    def close(self) -> None:
        """moejit_destroy. Every plan of the context must be closed first."""
        if self.handle:
            self.lib.dll.moejit_destroy(self.handle)
            self.handle = None


class Plan:
    """Owns a moejit_plan (immutable: forwards may run from many threads and streams)."""

    def __init__(self, ctx: Context, handle: Optional[int], desc: LayerDesc):
        self.ctx = ctx
        self.handle = handle
        self.desc = LayerDesc.from_buffer_copy(desc)
        self.max_tokens = int(desc.max_tokens)

    def workspace_size(self, tokens: int) -> int:
        """Bytes of workspace (256-byte aligned) a forward of `tokens` tokens needs."""
        n = ctypes.c_size_t()
        st = self.ctx.lib.dll.moejit_workspace_size(self.handle, int(tokens), ctypes.byref(n))
        if st != Status.OK:
            raise self.ctx.fail(st, "moejit_workspace_size")
        return int(n.value)

    def forward(self, args: ForwardArgs, workspace: int, workspace_bytes: int, stream: int) -> None:
        """moejit_forward: launches only (graph-capturable). Raises MoejitError."""
        st = self.ctx.lib.dll.moejit_forward(self.handle, ctypes.byref(args), workspace,
                                             workspace_bytes, stream)
        if st != Status.OK:
            raise self.ctx.fail(st, "moejit_forward")

    def check(self, workspace: int, stream: int) -> int:
        """moejit_forward_check: blocks on `stream`; raises MoejitError (MOEJIT_ERR_BAD_EXPERT_ID)
        when the last forward on this workspace saw expert ids outside [0, E). Returns 0."""
        bad = ctypes.c_int64(0)
        st = self.ctx.lib.dll.moejit_forward_check(self.handle, workspace, stream, ctypes.byref(bad))
        if st != Status.OK:
            raise self.ctx.fail(st, "moejit_forward_check")
        return int(bad.value)

    def close(self) -> None:
        """moejit_plan_destroy. No kernel of the plan may still be queued or captured in a graph."""
        if self.handle:
            self.ctx.lib.dll.moejit_plan_destroy(self.handle)
            self.handle = None


def describe(desc: LayerDesc) -> str:
    """A one-line summary of a desc, for messages and logs."""
    return (f"H={desc.hidden} I={desc.intermediate} E={desc.experts} K={desc.top_k} "
            f"{DType(desc.dtype).name.lower()} ids={DType(desc.ids_dtype).name.lower()} "
            f"weights={DType(desc.weights_dtype).name.lower()} {Routing(desc.routing).name.lower()} "
            f"bias_f32={desc.bias_f32} exact_f32={desc.exact_f32} max_tokens={desc.max_tokens} "
            f"weight_format={WeightFormat(desc.weight_format).name.lower()} "
            f"activation={_name(Activation, desc.activation)} "
            f"gate_up_layout={_name(GateUpLayout, desc.gate_up_layout)} "
            f"no_bias={desc.no_bias} batch_invariant={desc.batch_invariant}")


def _name(kind: type, value: int) -> str:
    """A member's lower-case name, or the raw value when it is none (a bad desc's message)."""
    return kind(value).name.lower() if value in kind._value2member_map_ else str(value)

