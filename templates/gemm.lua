-- gemm.lua: one grouped GEMM of the layer for one tile configuration (gemm.cuh), sm_80+.
-- Spec: dtype ("f32"|"f16"|"bf16"), bias (optional: "f32", the dtype, or "none"), math ("mma": f16/bf16
-- tensor cores; "tf32": f32 on TF32 tensor cores; "ffma": exact f32; "stream": weights streamed
-- into registers and fp32 FFMA, any dtype, for tiles of at most 8 rows; optional: the dtype's exact
-- path), stage ("gemm1"|"gemm2"), activation (gemm1, optional: a gated activation of prelude.lua's
-- table, "swiglu" the default, or "none", which leaves GEMM1's output before the activation for the
-- activation kernel), no_mul (gemm1, optional 0/1: GEMM1 gives I outputs, not 2I), hidden, intermediate
-- (the layer's H and I: GEMM1 is [H] -> [2I], GEMM2 [I] -> [H]), top_k, alpha, limit,
-- weight_on_input (0/1, optional), bm, bn, bk, stages, and wm, wn (warps along M and N, tensor-core
-- paths) or tm, tn (outputs per thread, FFMA); the streamed path takes neither, runs 128 threads,
-- reads stages as its loads in flight a thread (2..16) and bk only as the split-K step.
-- splits (optional, gemm2 only): split-K into at most that many partial y_slot arrays,
-- gridDim.z = splits; fewer when K leaves a split empty (the contract says how many); combine,
-- rendered with the same splits, sums them.
-- pdl (optional, 0/1, default 0): griddepcontrol.wait and launch_dependents at the kernel's start
-- on sm_90+.
-- self_route (optional, "i32"|"i64", the caller's id type; gemm1 with pdl 1 only) with experts (the
-- ids' range): a forward of few slots may work out its tiles from the caller's ids and start before
-- routing ends (gemm.cuh, MJ_GEMM_SELF_ROUTE).
-- weights (optional): "mxfp4" for MXFP4 expert weights (the checkpoint's blocks and e8m0 scales,
-- gemm.cuh's MJ_GEMM_MXFP4), with math mma or stream and dtype f16 or bf16; hidden and
-- intermediate multiples of 32; on the mma path bk a multiple of 32 (the streamed path splits K in
-- whole 32-weight blocks, whatever bk).
-- Contract: moejit_gemm, grid (tiles, ceil(cols / tile_cols), splits); self-routed (self_route),
-- forwards of at most max_slots slots.
local prelude = require("prelude")

-- gemm.cuh's kMode: 1 GEMM1 with bias and a gated activation (kAct); 3 GEMM1 with bias alone
-- (activation "none": unfused plans, and those whose activation runs in a kernel of its own);
-- 2 GEMM2 with bias and the routing weight.
-- Which dtypes each math path takes, and its MJ_GEMM_PATH in gemm.cuh.
local maths = {
  mma = { path = "MJ_PATH_MMA", dtypes = { f16 = true, bf16 = true }, kstep = 16 },
  tf32 = { path = "MJ_PATH_TF32", dtypes = { f32 = true }, kstep = 8 },
  ffma = { path = "MJ_PATH_FFMA", dtypes = { f32 = true }, kstep = 1 },
  stream = { path = "MJ_PATH_STREAM", dtypes = { f32 = true, f16 = true, bf16 = true }, kstep = 1 },
}
local kStreamThreads = 128 -- the streamed path: column pieces x row lanes

-- The kernel's parameters, by the names the runtime binds (gemm.cuh's signature).
local params = { "a", "w", "bias", "scales", "row_slot", "row_weight", "tiles", "num_tiles", "out",
  "slab_major", "own_ids", "own_slots", "split_stride" }

-- K elements of one split: whole bk steps, so a split's last step never reads into the next one.
local function split_len(k, splits, bk)
  return ((k + splits - 1) // splits + bk - 1) // bk * bk
end

return function(spec)
  local dt = prelude.dtype(spec.dtype)
  local bias, has_bias = prelude.bias(spec)
  -- math defaults to the dtype's exact path: tensor cores for f16/bf16, FFMA for f32
  local math_name = spec.math or (dt.mma and "mma" or "ffma")
  local math_ = maths[math_name]
  if not math_ then
    error("spec.math must be mma, tf32, ffma or stream, got " .. tostring(spec.math))
  end
  if not math_.dtypes[spec.dtype] then
    error(string.format("math %s does not take dtype %s", math_name, spec.dtype))
  end
  local stream = math_name == "stream"
  local gemm = prelude.gemm_shape(spec)
  local mxfp4 = spec.weights ~= nil
  if mxfp4 then
    if spec.weights ~= "mxfp4" then
      error("spec.weights must be mxfp4 (or absent: weights in the dtype), got "
        .. tostring(spec.weights))
    end
    if math_name ~= "mma" and not stream then
      error("MXFP4 weights take math mma or stream, got " .. math_name)
    end
    if not dt.mma then error("MXFP4 weights take dtype f16 or bf16, got " .. spec.dtype) end
    if gemm.n % 32 ~= 0 or gemm.k % 32 ~= 0 then
      error(string.format("MXFP4 weights need hidden and intermediate multiples of 32 "
        .. "(%d x %d here)", gemm.k, gemm.n))
    end
  end
  local mode, act = 2, 0
  if gemm.stage == 1 then
    local name = spec.activation or "swiglu"
    if name == "none" then
      mode = 3
    else
      local a = prelude.activation(name)
      if not a.gated or spec.no_mul == 1 then
        error(string.format("spec.activation=%s: a GEMM fuses gated activations only; one "
          .. "without mul runs in the activation kernel (activation none here)", name))
      end
      mode, act = 1, a.id
    end
  end
  local n, k = gemm.n, gemm.k
  local bm = prelude.need_int(spec, "bm", 1, 256)
  local bn = prelude.need_int(spec, "bn", 8, 256)
  local bk = prelude.need_int(spec, "bk", 8, 128)
  local stages = prelude.need_int(spec, "stages", 2, stream and 16 or 8)
  if mxfp4 and not stream and bk % 32 ~= 0 then
    error(string.format("MXFP4 weights: bk=%d is not a multiple of 32 (a scale block)", bk))
  end
  -- the split-K step: whole 32-weight blocks for MXFP4's streamed path
  local kstep = (mxfp4 and stream) and 32 or bk
  local splits = spec.splits == nil and 1 or prelude.need_int(spec, "splits", 1, 64)
  if splits > 1 and mode ~= 2 then
    error(string.format("spec.splits=%d needs stage gemm2 (only GEMM2's partial sums are summed "
      .. "by combine)", splits))
  end
  while splits > 1 and (splits - 1) * split_len(k, splits, kstep) >= k do splits = splits - 1 end
  local ksplit = splits > 1 and split_len(k, splits, kstep) or k
  local defines = { "#define MJ_GEMM_PATH " .. math_.path }
  if mxfp4 then defines[#defines + 1] = "#define MJ_GEMM_MXFP4 1" end
  if splits > 1 then defines[#defines + 1] = "#define MJ_GEMM_SPLITS " .. splits end
  local pdl = prelude.pdl_define(spec)
  defines[#defines + 1] = pdl
  local route_experts
  if spec.self_route ~= nil then
    local id_type = prelude.id_types[spec.self_route]
    if not id_type then
      error("spec.self_route must be i32 or i64, got " .. tostring(spec.self_route))
    end
    if mode == 2 or not pdl then
      error("spec.self_route needs stage gemm1 and pdl 1")
    end
    route_experts = prelude.need_int(spec, "experts", 1, 1024)
    defines[#defines + 1] = "#define MJ_GEMM_SELF_ROUTE 1"
    defines[#defines + 1] = "typedef " .. id_type .. " RouteIdT;"
  end
  local consts = {
    { "kMode", "int", mode },
    { "kAct", "int", act },
    { "kHasBias", "bool", has_bias },
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
  if splits > 1 then consts[#consts + 1] = { "kKSplit", "int", ksplit } end
  if route_experts then consts[#consts + 1] = { "kRouteExperts", "int", route_experts } end
  local threads
  local vec = 16 // dt.bytes
  if stream and mxfp4 then
    if bm > 8 or kStreamThreads % bn ~= 0 then
      error(string.format("MXFP4 stream tile %dx%d: at most 8 rows, and %d threads must split "
        .. "into whole columns", bm, bn, kStreamThreads))
    end
    threads = kStreamThreads
  elseif stream then
    local pieces = bn // vec
    if bm > 8 or bn % vec ~= 0 or kStreamThreads % pieces ~= 0 then
      error(string.format("stream tile %dx%d: at most 8 rows, and %d threads must split into "
        .. "whole 16-byte column pieces of %d columns", bm, bn, kStreamThreads, bn))
    end
    threads = kStreamThreads
  elseif math_name ~= "ffma" then
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
  -- dynamic: the stage ring of padded A and B tiles (the streamed path keeps its weights in
  -- registers); static: the tile's A rows and tile, and the streamed path's lane sums
  local smem = stream and 0 or stages * (bm * (bk + vec) + bk * (bn + vec)) * dt.bytes
  local static_smem = 4 * bm + 16
  if stream and mxfp4 then
    -- dynamic: the tile's A rows over its K range; static: the column sums
    smem = bm * ksplit * dt.bytes
    static_smem = static_smem + bm * bn * 4
  elseif stream then
    static_smem = static_smem + (threads // (bn // vec)) * bm * (bn + 1) * 4
  elseif mxfp4 then
    -- the ring of A tiles and raw weight blocks (rows of bk / 2 bytes, padded by 16), the decoded
    -- stage (n-major, bk + vec a row) and the tile's scales over all of K (bn x k / 32 bytes)
    smem = stages * (bm * (bk + vec) * dt.bytes + bn * (bk // 2 + 16)) + bn * (bk + vec) * dt.bytes
      + bn * (k // 32)
  end
  consts[#consts + 1] = { "kThreads", "int", threads }
  consts[#consts + 1] = { "kSmemBytes", "int", smem }
  return table.concat({
    prelude.header("gemm", spec),
    "typedef " .. dt.ctype .. " T;",
    "typedef " .. bias.ctype .. " BiasT;",
    table.concat(defines, "\n"),
    prelude.constants(consts),
    '#include "gemm.cuh"',
    "",
  }, "\n"), { {
    entry = "moejit_gemm", threads = threads, smem = smem, static_smem = static_smem,
    tile_rows = bm, cols = n, depth = k, tile_cols = bn, splits = splits, params = params,
    max_slots = route_experts and 32 or nil, -- a self-routed tile list: a warp reads the ids
  } }
end
