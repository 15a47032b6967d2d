-- synth.lua: kernels that fill device buffers with reproducible random values, for synthetic
-- layers (tests, `moejit run`, the tuner). Spec: none.
-- Contract: moejit_fill_<dtype> (floats uniform in [lo, hi)), moejit_fill_normal_<dtype> (floats
-- from a normal distribution of that mean and sigma) and moejit_fill_u8 (bytes in [lo, hi], for
-- MXFP4 blocks and scales), grid-stride over n elements: per_block a block, at most max_blocks.
local prelude = require("prelude")

local fill = [[
extern "C" __global__ void moejit_fill_%s(%s *__restrict__ out, mj_i64 n, float lo, float hi,
                                          mj_u64 seed) {
  for (mj_i64 i = blockIdx.x * (mj_i64)blockDim.x + threadIdx.x; i < n;
       i += (mj_i64)gridDim.x * blockDim.x)
    out[i] = mj_from_f32<%s>(lo + (hi - lo) * mj_uniform(seed, (mj_u64)i));
}
]]

local fill_normal = [[
extern "C" __global__ void moejit_fill_normal_%s(%s *__restrict__ out, mj_i64 n, float mean,
                                                 float sigma, mj_u64 seed) {
  for (mj_i64 i = blockIdx.x * (mj_i64)blockDim.x + threadIdx.x; i < n;
       i += (mj_i64)gridDim.x * blockDim.x)
    out[i] = mj_from_f32<%s>(mean + sigma * mj_normal(seed, (mj_u64)i));
}
]]

local fill_u8 = [[
extern "C" __global__ void moejit_fill_u8(unsigned char *__restrict__ out, mj_i64 n, mj_u32 lo,
                                          mj_u32 hi, mj_u64 seed) {
  for (mj_i64 i = blockIdx.x * (mj_i64)blockDim.x + threadIdx.x; i < n;
       i += (mj_i64)gridDim.x * blockDim.x)
    out[i] = mj_uniform_byte(seed, (mj_u64)i, lo, hi);
}
]]

return function(spec)
  local out = { prelude.header("synth", spec), '#include "synth.cuh"' }
  local kernels = {}
  for _, name in ipairs({ "f32", "f16", "bf16" }) do
    local ctype = prelude.dtype(name).ctype
    out[#out + 1] = string.format(fill, name, ctype, ctype)
    kernels[#kernels + 1] = { entry = "moejit_fill_" .. name, threads = 256, per_block = 256,
      max_blocks = 65536, params = { "out", "n", "lo", "hi", "seed" } }
  end
  for _, name in ipairs({ "f32", "f16", "bf16" }) do
    local ctype = prelude.dtype(name).ctype
    out[#out + 1] = string.format(fill_normal, name, ctype, ctype)
    kernels[#kernels + 1] = { entry = "moejit_fill_normal_" .. name, threads = 256,
      per_block = 256, max_blocks = 65536, params = { "out", "n", "mean", "sigma", "seed" } }
  end
  out[#out + 1] = fill_u8
  kernels[#kernels + 1] = { entry = "moejit_fill_u8", threads = 256, per_block = 256,
    max_blocks = 65536, params = { "out", "n", "lo", "hi", "seed" } }
  return table.concat(out, "\n"), kernels
end
