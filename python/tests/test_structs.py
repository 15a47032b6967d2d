"""test_structs.py: the ctypes mirrors against include/moejit.h, and the library's C paths that need
no GPU. Runs without torch.

The layout tests compile a small C program with gcc (-I include/) that prints sizeof and offsetof
of every mirrored field and the values of the enums; they skip without gcc or the header. The
library tests skip when libmoejit cannot be loaded; the offline plan also needs NVRTC.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Tuple

import pytest

from moejit import _capi
from moejit._capi import Activation, DType, GateUpLayout, LogLevel, MoejitError, Routing, Status, \
    WeightFormat

_REPO = Path(__file__).resolve().parents[2]
_INCLUDE = Path(os.environ.get("MOEJIT_INCLUDE_DIR", _REPO / "include"))
_ENUMS = (("MOEJIT_", DType), ("MOEJIT_ROUTING_", Routing), ("MOEJIT_LOG_", LogLevel),
          ("MOEJIT_WEIGHTS_", WeightFormat), ("MOEJIT_ACT_", Activation),
          ("MOEJIT_GATE_UP_", GateUpLayout))
# C names that are not the enum's prefix + the member's name
_C_NAMES = {GateUpLayout.UP_GATE_HALVES: "MOEJIT_UP_GATE_HALVES"}
_ENUM_TYPES = ("moejit_dtype", "moejit_routing", "moejit_log_level", "moejit_status",
               "moejit_weight_format", "moejit_activation", "moejit_gate_up_layout")


def _c_name(prefix: str, member: object) -> str:
    return _C_NAMES.get(member, f"{prefix}{member.name}")


def _c_program() -> str:
    """Prints `size <struct> <bytes>`, `field <struct>.<field> <offset> <bytes>` and
    `enum <NAME> <value>` lines."""
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "moejit.h"', "int main(void) {"]
    for cname, mirror in _capi.STRUCTS.items():
        lines.append(f'  printf("size {cname} %zu\\n", sizeof({cname}));')
        for field, _ in mirror._fields_:
            lines.append(f'  printf("field {cname}.{field} %zu %zu\\n", offsetof({cname}, {field}), '
                         f"sizeof((({cname} *)0)->{field}));")
    for prefix, enum in _ENUMS:
        for member in enum:
            c = _c_name(prefix, member)
            lines.append(f'  printf("enum {c} %d\\n", (int){c});')
    for cname in _ENUM_TYPES:
        lines.append(f'  printf("size {cname} %zu\\n", sizeof({cname}));')
    lines.append('#define PRINT_STATUS(name, value, message) printf("status " #name " %d\\n", value);')
    lines.append("  MOEJIT_STATUS_LIST(PRINT_STATUS)")
    lines.append('  printf("version %d\\n", MOEJIT_VERSION_MAJOR * 10000 + MOEJIT_VERSION_MINOR * 100 + '
                 "MOEJIT_VERSION_PATCH);")
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def header_facts(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Tuple[int, ...]]:
    """{"size moejit_layer_desc": (96,), "field moejit_layer_desc.hidden": (8, 8), ...}."""
    gcc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if not gcc:
        pytest.skip("no C compiler (gcc / cc) to read the header's layout")
    if not (_INCLUDE / "moejit.h").is_file():
        pytest.skip(f"moejit.h not found under {_INCLUDE} (set MOEJIT_INCLUDE_DIR)")
    tmp = tmp_path_factory.mktemp("layout")
    src, exe = tmp / "layout.c", tmp / "layout"
    src.write_text(_c_program())
    subprocess.run([gcc, "-std=c11", "-Wall", "-Werror", f"-I{_INCLUDE}", str(src), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    facts: Dict[str, Tuple[int, ...]] = {}
    for line in out.splitlines():
        kind, *rest = line.split()
        if kind == "version":
            facts[kind] = (int(rest[0]),)
        else:
            facts[f"{kind} {rest[0]}"] = tuple(int(v) for v in rest[1:])
    return facts


@pytest.mark.parametrize("cname", sorted(_capi.STRUCTS))
def test_struct_size_matches_header(header_facts: Dict[str, Tuple[int, ...]], cname: str) -> None:
    assert ctypes.sizeof(_capi.STRUCTS[cname]) == header_facts[f"size {cname}"][0]


def test_mxfp4_fields_are_mirrored(header_facts: Dict[str, Tuple[int, ...]]) -> None:
    """The MXFP4 fields by name: desc.weight_format after unfused, the scales after device_tokens
    (the C layout of the rest is the generic test's)."""
    desc, args = _capi.LayerDesc, _capi.ForwardArgs
    assert "weight_format" in dict(desc._fields_)
    assert desc.weight_format.offset == header_facts["field moejit_layer_desc.weight_format"][0]
    assert desc.weight_format.offset > desc.unfused.offset
    for field in ("gate_up_proj_scales", "down_proj_scales"):
        offset, size = header_facts[f"field moejit_forward_args.{field}"]
        assert (getattr(args, field).offset, ctypes.sizeof(ctypes.c_void_p)) == (offset, size)
    assert args.device_tokens.offset < args.gate_up_proj_scales.offset < args.down_proj_scales.offset
    assert ctypes.sizeof(args) == args.down_proj_scales.offset + ctypes.sizeof(ctypes.c_void_p)


def test_layer_fields_are_mirrored(header_facts: Dict[str, Tuple[int, ...]]) -> None:
    """batch_invariant, activation, gate_up_layout and no_bias by name, C ints, after
    weight_format and in the header's order, ending the struct."""
    desc = _capi.LayerDesc
    names = ("weight_format", "batch_invariant", "activation", "gate_up_layout", "no_bias")
    offsets = []
    for field in names:
        offset, size = header_facts[f"field moejit_layer_desc.{field}"]
        assert (getattr(desc, field).offset, ctypes.sizeof(ctypes.c_int)) == (offset, size), field
        offsets.append(offset)
    assert offsets == sorted(offsets)
    assert [f for f, _ in desc._fields_][-len(names):] == list(names)


@pytest.mark.parametrize("cname", sorted(_capi.STRUCTS))
def test_field_offsets_match_header(header_facts: Dict[str, Tuple[int, ...]], cname: str) -> None:
    mirror = _capi.STRUCTS[cname]
    for field, ctype in mirror._fields_:
        offset, size = header_facts[f"field {cname}.{field}"]
        assert getattr(mirror, field).offset == offset, f"{cname}.{field} offset"
        assert ctypes.sizeof(ctype) == size, f"{cname}.{field} size"


def test_enums_match_header(header_facts: Dict[str, Tuple[int, ...]]) -> None:
    for prefix, enum in _ENUMS:
        for member in enum:
            assert header_facts[f"enum {_c_name(prefix, member)}"] == (int(member),)
    for cname in _ENUM_TYPES:
        assert header_facts[f"size {cname}"] == (ctypes.sizeof(ctypes.c_int),), f"{cname} is a C int"


def test_status_table_matches_header(header_facts: Dict[str, Tuple[int, ...]]) -> None:
    in_header = {k.split()[1]: v[0] for k, v in header_facts.items() if k.startswith("status ")}
    assert in_header == {f"MOEJIT_{s.name}": int(s) for s in Status}


def test_abi_version_matches_header(header_facts: Dict[str, Tuple[int, ...]]) -> None:
    assert header_facts["version"] == (_capi.ABI_VERSION,)


# ---- the library, without a GPU ----------------------------------------------------------------------








def test_library_version_and_struct_sizes(lib: _capi.Library) -> None:
    # load_library already refused a struct_size mismatch; the version must be the header's.
    assert lib.version // 100 == _capi.ABI_VERSION // 100
    assert lib.layer_desc().struct_size == ctypes.sizeof(_capi.LayerDesc)
    assert lib.forward_args().struct_size == ctypes.sizeof(_capi.ForwardArgs)


def test_layer_desc_defaults(lib: _capi.Library) -> None:
    d = lib.layer_desc()
    assert (d.dtype, d.ids_dtype, d.weights_dtype, d.routing) == (DType.BF16, DType.I32, DType.F32,
                                                                   Routing.TOPK)
    assert d.alpha == pytest.approx(1.702) and d.limit == 7.0
    assert (d.expert_capacity, d.global_experts, d.apply_router_weight_on_input) == (0, 0, 0)
    assert (d.logits_dtype, d.bias_f32, d.exact_f32) == (DType.F32, 0, 0)
    assert d.weight_format == WeightFormat.DENSE
    assert (d.activation, d.gate_up_layout) == (Activation.SWIGLU_OAI, GateUpLayout.INTERLEAVED)
    assert (d.no_bias, d.batch_invariant) == (0, 0)
    args = lib.forward_args()
    assert (args.gate_up_proj_scales, args.down_proj_scales) == (None, None)


def test_status_names(lib: _capi.Library) -> None:
    for s in Status:
        assert lib.status_name(s) == f"MOEJIT_{s.name}"


def test_bad_offline_arch_reports_the_logged_detail(lib: _capi.Library) -> None:
    with pytest.raises(MoejitError) as info:
        lib.create_context(offline_arch="sm_7")
    assert info.value.status == Status.ERR_INVALID_ARG
    assert info.value.status_name == "MOEJIT_ERR_INVALID_ARG"
    assert "offline_arch" in str(info.value)


def test_context_without_gpu_says_why(lib: _capi.Library) -> None:
    try:
        ctx = lib.create_context(0)
    except MoejitError as e:
        assert e.status in (Status.ERR_NO_DEVICE, Status.ERR_UNSUPPORTED, Status.ERR_CUDA)
        assert e.detail, "the reason logged by moejit_create should be in the error"
    else:  # a machine with a GPU
        ctx.close()


def _small_desc(lib: _capi.Library, **fields: int) -> _capi.LayerDesc:
    d = lib.layer_desc()
    d.hidden, d.intermediate, d.experts, d.top_k, d.max_tokens = 64, 96, 5, 2, 1024
    for name, value in fields.items():
        setattr(d, name, value)
    return d


def test_bad_desc_names_the_field(lib: _capi.Library) -> None:
    ctx = lib.create_context(offline_arch="sm_90a")
    try:
        with pytest.raises(MoejitError) as info:
            ctx.create_plan(_small_desc(lib, hidden=4100))
        assert info.value.status == Status.ERR_INVALID_ARG
        assert "hidden=4100" in info.value.detail
        with pytest.raises(MoejitError) as info:
            ctx.create_plan(_small_desc(lib, routing=7))
        assert info.value.status == Status.ERR_INVALID_ARG
        assert "routing=7" in info.value.detail
        with pytest.raises(MoejitError) as info:
            ctx.create_plan(_small_desc(lib, weight_format=5))
        assert "weight_format=5" in info.value.detail
        for field, bad in (("activation", 8), ("gate_up_layout", 3), ("no_bias", 2),
                           ("batch_invariant", 2)):
            with pytest.raises(MoejitError) as info:
                ctx.create_plan(_small_desc(lib, **{field: bad}))
            assert info.value.status == Status.ERR_INVALID_ARG
            assert f"{field}={bad}" in info.value.detail
        with pytest.raises(MoejitError) as info:  # no biases have no dtype to be f32
            ctx.create_plan(_small_desc(lib, no_bias=1, bias_f32=1))
        assert "no_bias" in info.value.detail
        # MXFP4 weights: f32 activations and H or I not a multiple of 32 are refused by the library
        with pytest.raises(MoejitError) as info:
            ctx.create_plan(_small_desc(lib, weight_format=int(WeightFormat.MXFP4),
                                        dtype=int(DType.F32)))
        assert "MXFP4" in info.value.detail and "dtype" in info.value.detail
        with pytest.raises(MoejitError) as info:
            ctx.create_plan(_small_desc(lib, weight_format=int(WeightFormat.MXFP4), intermediate=72))
        assert "multiples of 32" in info.value.detail
    finally:
        ctx.close()


def test_offline_plan(lib: _capi.Library) -> None:
    """Compiles a small layer for sm_90a (NVRTC, no GPU); forwards then report no device."""
    ctx = lib.create_context(offline_arch="sm_90a")
    plan = None
    try:
        try:
            plan = ctx.create_plan(_small_desc(lib, dtype=int(DType.F16), routing=int(Routing.DENSE)))
        except MoejitError as e:
            if e.status == Status.ERR_NO_COMPILER:
                pytest.skip(f"no NVRTC: {e}")
            raise
        n = plan.workspace_size(100)
        assert n > 0 and n % 256 == 0
        assert plan.workspace_size(0) <= n
        with pytest.raises(MoejitError) as info:
            plan.workspace_size(2048)  # above max_tokens
        assert "max_tokens" in info.value.detail
        args = lib.forward_args()
        args.tokens = 1
        with pytest.raises(MoejitError) as info:
            plan.forward(args, 0, 0, 0)
        assert info.value.status == Status.ERR_NO_DEVICE
    finally:
        if plan is not None:
            plan.close()
        ctx.close()


def test_offline_mxfp4_plan(lib: _capi.Library) -> None:
    """An MXFP4 layer (H = 64, I = 96) compiles for sm_90a; the desc's plan keeps the format."""
    ctx = lib.create_context(offline_arch="sm_90a")
    plan = None
    try:
        try:
            plan = ctx.create_plan(_small_desc(lib, weight_format=int(WeightFormat.MXFP4)))
        except MoejitError as e:
            if e.status == Status.ERR_NO_COMPILER:
                pytest.skip(f"no NVRTC: {e}")
            raise
        assert plan.desc.weight_format == WeightFormat.MXFP4
        assert "weight_format=mxfp4" in _capi.describe(plan.desc)
        assert plan.workspace_size(100) > 0
    finally:
        if plan is not None:
            plan.close()
        ctx.close()
