-- bench.lua: the read-only pass `moejit bench` times to measure the HBM bandwidth of its floor:
-- every 16-byte word of a buffer is loaded once and folded into a checksum, so the loads cannot be
-- dropped and nothing but the sum is written. Spec: none.
-- The body stays here rather than in a .cuh: every kernel's cache key hashes all the headers, and a
-- benchmark-only header would change them all.
-- Contract: moejit_bench_read, blocks_per_sm blocks an SM.
local prelude = require("prelude")

local body = [[
// 16 bytes through the non-coherent (read-only) path. Not volatile: the loads of an unrolled
// iteration may all be issued before the first result is used.
__device__ __forceinline__ mj_int4 mj_bench_load16(const mj_int4 *p) {
  mj_int4 r;
  asm("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];\n"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
}

__device__ __forceinline__ mj_u32 mj_bench_fold(mj_int4 v) {
  return (mj_u32)(v.x ^ v.y ^ v.z ^ v.w);
}

// in: [n] 16-byte words; *sum (zeroed by the caller) gets the checksum, so no load can be dropped.
// Grid-stride: kUnroll loads in flight per thread, each warp's loads coalesced.
extern "C" __global__ void moejit_bench_read(const mj_int4 *__restrict__ in, mj_i64 n,
                                             mj_u32 *__restrict__ sum) {
  const mj_i64 stride = (mj_i64)gridDim.x * blockDim.x;
  mj_i64 i = blockIdx.x * (mj_i64)blockDim.x + threadIdx.x;
  mj_u32 acc = 0;
  for (; i + (kUnroll - 1) * stride < n; i += kUnroll * stride) {
    mj_int4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; u++)
      v[u] = mj_bench_load16(in + i + u * stride);
#pragma unroll
    for (int u = 0; u < kUnroll; u++)
      acc += mj_bench_fold(v[u]);
  }
  for (; i < n; i += stride)
    acc += mj_bench_fold(mj_bench_load16(in + i));
  for (int o = 16; o > 0; o >>= 1)
    acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if ((threadIdx.x & 31) == 0)
    atomicAdd(sum, acc);
}
]]

return function(spec)
  return table.concat({
    prelude.header("bench", spec),
    prelude.constants({ { "kUnroll", "int", 4 } }),
    body,
  }, "\n"), { { entry = "moejit_bench_read", threads = 256, blocks_per_sm = 8,
    params = { "in", "n", "sum" } } }
end
