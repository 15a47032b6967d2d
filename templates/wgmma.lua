-- wgmma.lua: one grouped GEMM of the layer on Hopper (sm_90a): a persistent, warp-specialised
-- kernel where one producer thread loads tiles with the bulk tensor copy engine (TMA) into a ring
-- of shared-memory stages and 64-row consumer warpgroups multiply them with wgmma.
-- Spec: dtype ("f16"|"bf16"), bias (optional: "f32" or the dtype), mode ("gate_up"|"down"), n, k
-- (the GEMM's N and K), top_k, alpha, limit, weight_on_input (0/1, optional), bm (64|128: one or
-- two consumer warpgroups), bn (64..256, a multiple of 16; weights come in 64-column boxes),
-- stages, group_m (m-tiles of one expert that share each weight slab while it is in L2; optional,
-- 24), ctas (blocks resident per SM: 1, or 2 with bm=64 so one block's epilogue overlaps the
-- other's MMAs; optional, 1), pingpong (1 with bm=128: the two consumer warpgroups take whole
-- items in turn, so one's epilogue overlaps the other's MMAs; optional, 0), pdl (optional, 0/1,
-- default 0: programmatic dependent launch, the weights' first stages loaded before the wait),
-- a_rows (optional, default bm: rows of one TMA box of A, a multiple of 8 that divides bm; a tile
-- loads only the boxes that hold its rows, the host's tensor map has boxes of that many rows),
-- chain (optional, 0/1, default 0: GEMM1 counts each expert's finished items and GEMM2, launched
-- after it under programmatic dependent launch, waits for its items' experts alone).
-- The gate_up module also holds moejit_gather, the permuted copy of x that GEMM1 reads by TMA.
local prelude = require("prelude")

local modes = { gate_up = 1, down = 2 }
local instr = { f16 = "f16", bf16 = "bf16" }

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
  local bias = prelude.dtype(spec.bias or spec.dtype)
  local mode = modes[spec.mode]
  if not mode then error("spec.mode must be gate_up or down, got " .. tostring(spec.mode)) end
  local n = prelude.need_int(spec, "n", 8)
  local k = prelude.need_int(spec, "k", 8)
  if n % 8 ~= 0 or k % 8 ~= 0 then error(string.format("n=%d and k=%d must be multiples of 8", n, k)) end
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
  local a_rows = spec.a_rows or bm
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
  return table.concat({
    prelude.header("wgmma", spec),
    "typedef " .. dt.ctype .. " T;",
    "typedef " .. bias.ctype .. " BiasT;",
    prelude.constants({
      { "kMode", "int", mode },
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
    }),
    "#define MJ_WGMMA_GATHER " .. (mode == 1 and "1" or "0") .. (pdl and "\n" .. pdl or ""),
    wgmma_fn(bn, ab),
    '#include "wgmma.cuh"',
    "",
  }, "\n")
end
