-- gemm.lua: one grouped GEMM of the layer for one tile configuration.
-- Spec: dtype ("f32"|"f16"|"bf16"), mode ("gate_up"|"down"), n, k (the GEMM's N and K), top_k,
-- alpha, limit, bm, bn, bk, stages, and wm, wn (warps along M and N, tensor-core path) or
-- tm, tn (outputs per thread, FFMA path). f16 and bf16 take the tensor-core path, f32 the FFMA path.
local prelude = require("prelude")

local modes = { gate_up = 1, down = 2 }

return function(spec)
  local dt = prelude.dtype(spec.dtype)
  local mode = modes[spec.mode]
  if not mode then error("spec.mode must be gate_up or down, got " .. tostring(spec.mode)) end
  local n = prelude.need_int(spec, "n", 8)
  local k = prelude.need_int(spec, "k", 8)
  if n % 8 ~= 0 or k % 8 ~= 0 then error(string.format("n=%d and k=%d must be multiples of 8", n, k)) end
  local bm = prelude.need_int(spec, "bm", 1, 256)
  local bn = prelude.need_int(spec, "bn", 8, 256)
  local bk = prelude.need_int(spec, "bk", 8, 128)
  local stages = prelude.need_int(spec, "stages", 2, 8)
  local consts = {
    { "kMode", "int", mode },
    { "kN", "int", n },
    { "kK", "int", k },
    { "kTopK", "int", prelude.need_int(spec, "top_k", 1, 32) },
    { "kAlpha", "float", spec.alpha },
    { "kLimit", "float", spec.limit },
    { "kBM", "int", bm },
    { "kBN", "int", bn },
    { "kBK", "int", bk },
    { "kStages", "int", stages },
  }
  local threads
  if dt.mma then
    local wm, wn = prelude.need_int(spec, "wm", 1, 8), prelude.need_int(spec, "wn", 1, 8)
    if bm % (16 * wm) ~= 0 or bn % (16 * wn) ~= 0 or bk % 16 ~= 0 then
      error(string.format("tile %dx%dx%d does not split into %dx%d warps of 16x16x16", bm, bn, bk, wm, wn))
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
    "#define MJ_GEMM_MMA " .. (dt.mma and "1" or "0"),
    prelude.constants(consts),
    '#include "gemm.cuh"',
    "",
  }, "\n")
end
