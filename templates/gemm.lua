-- gemm.lua: one grouped GEMM of the layer for one tile configuration.
-- Spec: dtype ("f32"|"f16"|"bf16"), bias ("f32" or the dtype), math ("mma": f16/bf16 tensor
-- cores; "tf32": f32 on TF32 tensor cores; "ffma": exact f32; "gv": weights streamed into registers
-- and fp32 FFMA, any dtype, for tiles of at most 8 rows), mode ("gate_up"|"down"), n, k (the
-- GEMM's N and K), top_k, alpha, limit, weight_on_input (0/1), bm, bn, bk, stages, and wm, wn (warps
-- along M and N, tensor-core paths) or tm, tn (outputs per thread, FFMA); gv takes neither, runs
-- 128 threads, reads stages as its loads in flight a thread (2..16) and bk only as the split-K
-- step. bias, math and
-- weight_on_input are optional: the dtype, its exact path (mma or ffma), 0.
-- splits (optional, default 1; above 1 with mode down only): split-K into that many partial
-- y_slot arrays, gridDim.z = splits, and the kernel takes a second argument, the distance in
-- floats between two of them (see gemm.cuh); combine, rendered with the same splits, sums them.
-- pdl (optional, 0/1, default 0): griddepcontrol.wait and launch_dependents at the kernel's start
-- on sm_90+. Left at their defaults, splits and pdl leave the source as it was without them.
-- self_route (optional, "i32"|"i64", the caller's id type; GEMM1 with pdl 1 only) with experts (the
-- ids' range): a forward of few slots may work out its tiles from the caller's ids and start before
-- routing ends (gemm.cuh, MJ_GEMM_SELF_ROUTE).
local prelude = require("prelude")

-- gate_up: GEMM1 with bias and SwiGLU; gate_up_raw: GEMM1 with bias only (unfused plans);
-- down: GEMM2 with bias and the routing weight.
local modes = { gate_up = 1, down = 2, gate_up_raw = 3 }
-- Which dtypes each math path takes, and its PATH number in gemm.cuh.
local maths = {
  mma = { path = 1, dtypes = { f16 = true, bf16 = true }, kstep = 16 },
  tf32 = { path = 2, dtypes = { f32 = true }, kstep = 8 },
  ffma = { path = 0, dtypes = { f32 = true }, kstep = 1 },
  gv = { path = 3, dtypes = { f32 = true, f16 = true, bf16 = true }, kstep = 1 },
}
local kStreamThreads = 128  -- gemm.cuh's path 3: column pieces x row lanes

return function(spec)
  local dt = prelude.dtype(spec.dtype)
  local bias = prelude.dtype(spec.bias or spec.dtype)
  -- math defaults to the dtype's exact path: tensor cores for f16/bf16, FFMA for f32
  local math_ = maths[spec.math or (dt.mma and "mma" or "ffma")]
  if not math_ then
    error("spec.math must be mma, tf32, ffma or gv, got " .. tostring(spec.math))
  end
  if not math_.dtypes[spec.dtype] then
    error(string.format("math %s does not take dtype %s", tostring(spec.math), spec.dtype))
  end
  local mode = modes[spec.mode]
  if not mode then
    error("spec.mode must be gate_up, gate_up_raw or down, got " .. tostring(spec.mode))
  end
  local n = prelude.need_int(spec, "n", 8)
  local k = prelude.need_int(spec, "k", 8)
  if n % 8 ~= 0 or k % 8 ~= 0 then error(string.format("n=%d and k=%d must be multiples of 8", n, k)) end
  local bm = prelude.need_int(spec, "bm", 1, 256)
  local bn = prelude.need_int(spec, "bn", 8, 256)
  local bk = prelude.need_int(spec, "bk", 8, 128)
  local stages = prelude.need_int(spec, "stages", 2, math_.path == 3 and 16 or 8)
  local splits = spec.splits == nil and 1 or prelude.need_int(spec, "splits", 1, 64)
  local defines = { "#define MJ_GEMM_PATH " .. math_.path }
  if splits > 1 then
    if mode ~= modes.down then
      error(string.format("spec.splits=%d needs mode down (only GEMM2's partial sums are summed "
        .. "by combine), got mode %s", splits, spec.mode))
    end
    -- gemm.cuh's split length: ceil(k / splits) rounded up to whole bk steps
    local kc = ((k + splits - 1) // splits + bk - 1) // bk * bk
    if (splits - 1) * kc >= k then
      error(string.format("spec.splits=%d leaves split %d empty: k=%d in steps of bk=%d gives "
        .. "%d per split", splits, splits - 1, k, bk, kc))
    end
    defines[#defines + 1] = "#define MJ_GEMM_SPLITS " .. splits
  end
  local pdl = prelude.pdl_define(spec)
  defines[#defines + 1] = pdl
  local route_experts
  if spec.self_route ~= nil then
    local id_type = prelude.id_types[spec.self_route]
    if not id_type then
      error("spec.self_route must be i32 or i64, got " .. tostring(spec.self_route))
    end
    if mode == modes.down or not pdl then
      error("spec.self_route needs a GEMM1 mode (gate_up, gate_up_raw) and pdl 1")
    end
    route_experts = prelude.need_int(spec, "experts", 1, 1024)
    defines[#defines + 1] = "#define MJ_GEMM_SELF_ROUTE 1"
    defines[#defines + 1] = "typedef " .. id_type .. " RouteIdT;"
  end
  local consts = {
    { "kMode", "int", mode },
    { "kN", "int", n },
    { "kK", "int", k },
    { "kTopK", "int", prelude.need_int(spec, "top_k", 1, 32) },
    { "kAlpha", "float", spec.alpha },
    { "kLimit", "float", spec.limit },
    { "kWeightOnInput", "bool", (spec.weight_on_input or 0) == 1 },
    { "kBM", "int", bm },
    { "kBN", "int", bn },
    { "kBK", "int", bk },
    { "kStages", "int", stages },
  }
  if route_experts then consts[#consts + 1] = { "kRouteExperts", "int", route_experts } end
  local threads
  if math_.path == 3 then
    local pieces = bn // (16 // dt.bytes)
    if bm > 8 or bn % (16 // dt.bytes) ~= 0 or kStreamThreads % pieces ~= 0 then
      error(string.format("gv tile %dx%d: at most 8 rows, and %d threads must split into whole "
        .. "16-byte column pieces of %d columns", bm, bn, kStreamThreads, bn))
    end
    threads = kStreamThreads
  elseif math_.path ~= 0 then
    local wm, wn = prelude.need_int(spec, "wm", 1, 8), prelude.need_int(spec, "wn", 1, 8)
    if bm % (16 * wm) ~= 0 or bn % (16 * wn) ~= 0 or bk % math_.kstep ~= 0 then
      error(string.format("tile %dx%dx%d does not split into %dx%d warps of 16x16x%d", bm, bn, bk,
        wm, wn, math_.kstep))
    end
    threads = 32 * wm * wn
    consts[#consts + 1] = { "kWM", "int", wm }
    consts[#consts + 1] = { "kWN", "int", wn }
  else
    local tm, tn = prelude.need_int(spec, "tm", 1, 16), prelude.need_int(spec, "tn", 2, 16)
    if bm % tm ~= 0 or bn % tn ~= 0 or tn % 2 ~= 0 then
      error(string.format("tile %dx%d does not split into %dx%d per thread", bm, bn, tm, tn))
    end
    threads = (bm // tm) * (bn // tn)
    consts[#consts + 1] = { "kTM", "int", tm }
    consts[#consts + 1] = { "kTN", "int", tn }
  end
  if threads > 1024 or threads % 32 ~= 0 then
    error(string.format("the tile needs %d threads (a multiple of 32, at most 1024)", threads))
  end
  consts[#consts + 1] = { "kThreads", "int", threads }
  return table.concat({
    prelude.header("gemm", spec),
    "typedef " .. dt.ctype .. " T;",
    "typedef " .. bias.ctype .. " BiasT;",
    table.concat(defines, "\n"),
    prelude.constants(consts),
    '#include "gemm.cuh"',
    "",
  }, "\n")
end
