-- wgmma.lua: one grouped GEMM of the layer on Hopper (sm_90a): a persistent, warp-specialised
-- kernel where one producer thread loads tiles with the bulk tensor copy engine (TMA) into a ring
-- of shared-memory stages and 64-row consumer warpgroups multiply them with wgmma.
-- Spec: dtype ("f16"|"bf16"), bias (optional: "f32" or the dtype), stage ("gemm1"|"gemm2"),
-- hidden, intermediate (the layer's H and I, from which the GEMM's N and K follow: see
-- prelude.gemm_shape), top_k, alpha, limit, weight_on_input (0/1, optional), bm (64|128: one or
-- two consumer warpgroups), bn (64..256, a multiple of 16; weights come in 64-column boxes),
-- stages, group_m (m-tiles of one expert that share each weight slab while it is in L2; optional,
-- 24), ctas (blocks resident per SM: 1, or 2 with bm=64 so one block's epilogue overlaps the
-- other's MMAs; optional, 1), pingpong (1 with bm=128: the two consumer warpgroups take whole
-- items in turn, so one's epilogue overlaps the other's MMAs; optional, 0), pdl (optional, 0/1,
-- default 0: programmatic dependent launch, the weights' first stages loaded before the wait),
-- a_rows (optional, default 8 with bm=64, else bm: rows of one TMA box of A, a multiple of 8 that
-- divides bm; a tile loads only the boxes that hold its rows, so the tiles of one or two rows that
-- small batches make read 8 rows of A a k block rather than 64; the contract's box_rows),
-- chain (optional, 0/1, default 0: GEMM1 counts each expert's finished items and GEMM2, launched
-- after it under programmatic dependent launch, waits for its items' experts alone).
-- weights (optional): "mxfp4", the checkpoint's MXFP4 blocks and scales (wgmma.cuh's
-- MJ_WGMMA_MXFP4): producer warps 2 and 3 decode them into the weight stages TMA would have
-- filled, from w and scales (the kernel's last parameters, unread otherwise), with no weight
-- tensor map.
-- The gemm1 module also holds moejit_gather, the permuted copy of x that GEMM1 reads by TMA.
-- Contract: moejit_wgmma, a persistent grid of at most blocks_per_sm blocks an SM over
-- tiles x ceil(cols / tile_cols) items, its A read through TMA boxes of box_rows rows;
-- moejit_gather, per_block of the tokens x cols 16-byte chunks of x a block.
local prelude = require("prelude")

local instr = { f16 = "f16", bf16 = "bf16" }
local kGatherThreads = 256 -- moejit_gather: a thread a 16-byte chunk of x

-- The kernels' parameters, by the names the runtime binds (wgmma.cuh's signatures).
local params = { "tmap_a", "tmap_b", "bias", "row_slot", "row_weight", "tiles", "num_tiles",
  "expert_offsets", "out", "ready", "wait_ready", "w", "scales" }
local gather_params = { "x", "slot_row", "tokens", "x_sorted" }

-- Dynamic shared memory (wgmma.cuh's layout): the stage ring of A (bm rows) and B (weights in
-- 64-column boxes, so a slab's stage is whole boxes) k blocks of 64, GEMM1's output staging (16
-- rows of bn / 2 + 8 elements a consumer warp) and 1024 bytes to align the ring; and the static
-- part: full, empty and done barriers, a ring item a stage.
local function smem_bytes(bm, bn, stages, elem)
  local staging = (bm // 64) * 4 * 16 * (bn // 2 + 8) * elem
  local b_cols = (bn + 63) // 64 * 64
  return stages * (bm + b_cols) * 64 * elem + staging + 1024, (2 * stages + 4) * 8 + stages * 16
end

-- D (+)= A * B for one m64nBNk16 step: A K-major and B N-major (transposed) in shared memory, both
-- 128-byte swizzled; scale_d = 0 starts a new sum. The accumulator list is as long as the tile is
-- wide, so the asm statement is written here rather than by hand.
local function wgmma_fn(bn, ab)
  local acc = bn // 2
  local regs, outs = {}, {}
  for i = 0, acc - 1 do
    regs[#regs + 1] = "%" .. i
    outs[#outs + 1] = '"+f"(d[' .. i .. '])'
  end
  return table.concat({
    "__device__ __forceinline__ void mj_wgmma(float (&d)[" .. acc .. "], mj_u64 da, mj_u64 db, int scale_d) {",
    '  asm volatile("{\\n.reg .pred p;\\nsetp.ne.b32 p, %' .. (acc + 2) .. ', 0;\\n"',
    '    "wgmma.mma_async.sync.aligned.m64n' .. bn .. "k16.f32." .. ab .. "." .. ab .. ' "',
    '    "{' .. table.concat(regs, ", ") .. '}, %' .. acc .. ", %" .. (acc + 1) .. ', p, 1, 1, 0, 1;\\n}\\n"',
    "    : " .. table.concat(outs, ", "),
    '    : "l"(da), "l"(db), "r"(scale_d));',
    "}",
    "",
  }, "\n")
end

return function(spec)
  local ab = instr[spec.dtype]
  if not ab then error("spec.dtype must be f16 or bf16 for wgmma, got " .. tostring(spec.dtype)) end
  local dt = prelude.dtype(spec.dtype)
  local bias, has_bias = prelude.bias(spec)
  local gemm = prelude.gemm_shape(spec)
  local mode, n, k = gemm.stage, gemm.n, gemm.k
  local mxfp4 = spec.weights ~= nil
  if mxfp4 and (spec.weights ~= "mxfp4" or n % 32 ~= 0 or k % 32 ~= 0) then
    error(string.format("spec.weights=%s: wgmma takes mxfp4 weights (N %d and K %d multiples of "
      .. "32) or none", tostring(spec.weights), n, k))
  end
  local act = 0
  if mode == 1 then
    local a = prelude.activation(spec.activation or "swiglu")
    if not a.gated or spec.no_mul == 1 then
      error("spec.activation: wgmma's GEMM1 applies a gated activation in its epilogue, got "
        .. spec.activation)
    end
    act = a.id
  end
  local bm = prelude.need_int(spec, "bm", 64, 128)
  if bm ~= 64 and bm ~= 128 then error("spec.bm must be 64 or 128, got " .. bm) end
  local bn = prelude.need_int(spec, "bn", 64, 256)
  if bn % 16 ~= 0 then error("spec.bn must be a multiple of 16, got " .. bn) end
  local stages = prelude.need_int(spec, "stages", 2, 16)
  local ctas = spec.ctas or 1
  if ctas ~= 1 and not (ctas == 2 and bm == 64) then
    error("spec.ctas must be 1, or 2 with bm=64, got " .. tostring(ctas))
  end
  local pingpong = spec.pingpong or 0
  if pingpong ~= 0 and not (pingpong == 1 and bm == 128 and ctas == 1) then
    error("spec.pingpong must be 0, or 1 with bm=128 and ctas=1, got " .. tostring(spec.pingpong))
  end
  local a_rows = spec.a_rows or (bm == 64 and 8 or bm)
  if math.type(a_rows) ~= "integer" or a_rows < 8 or a_rows % 8 ~= 0 or bm % a_rows ~= 0 then
    error("spec.a_rows must be a multiple of 8 that divides bm=" .. bm .. ", got " .. tostring(spec.a_rows))
  end
  local chain = spec.chain or 0
  if chain ~= 0 and chain ~= 1 then
    error("spec.chain must be 0 or 1, got " .. tostring(spec.chain))
  end
  local pdl = prelude.pdl_define(spec)
  local group_m = spec.group_m or 24
  if math.type(group_m) ~= "integer" or group_m < 1 then error("spec.group_m must be a positive integer") end
  local threads = 128 * (1 + bm // 64) -- a producer warpgroup and a consumer a 64 rows
  local smem, static_smem = smem_bytes(bm, bn, stages, dt.bytes)
  local kernels = { {
    entry = "moejit_wgmma", threads = threads, smem = smem, static_smem = static_smem,
    tile_rows = bm, cols = n, depth = k, tile_cols = bn, box_rows = a_rows, box_cols = 64,
    blocks_per_sm = ctas,
    params = params,
  } }
  if mode == 1 then
    kernels[2] = { entry = "moejit_gather", threads = kGatherThreads, cols = k // 8,
      per_block = kGatherThreads, params = gather_params }
  end
  return table.concat({
    prelude.header("wgmma", spec),
    "typedef " .. dt.ctype .. " T;",
    "typedef " .. bias.ctype .. " BiasT;",
    prelude.constants({
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
      { "kARows", "int", a_rows },
      { "kStages", "int", stages },
      { "kGroupM", "int", group_m },
      { "kCtas", "int", ctas },
      { "kPingPong", "bool", pingpong == 1 },
      { "kChain", "bool", chain == 1 },
      { "kThreads", "int", threads },
      { "kSmemBytes", "int", smem },
      mode == 1 and { "kGatherThreads", "int", kGatherThreads } or nil,
    }),
    "#define MJ_WGMMA_GATHER " .. (mode == 1 and "1" or "0") .. (pdl and "\n" .. pdl or "")
      .. (mxfp4 and "\n#define MJ_WGMMA_MXFP4 1" or ""),
    wgmma_fn(bn, ab),
    '#include "wgmma.cuh"',
    "",
  }, "\n"), kernels
end
