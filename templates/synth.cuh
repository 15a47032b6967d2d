// synth.cuh: a counter-based generator (splitmix64 of seed and index): the same value for the same
// (seed, index) on every run and GPU, so synthetic layers are reproducible.
#pragma once

__device__ __forceinline__ mj_u64 mj_hash(mj_u64 seed, mj_u64 i) {
  mj_u64 z = seed * 0x9E3779B97F4A7C15ull + i + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

__device__ __forceinline__ float mj_uniform(mj_u64 seed, mj_u64 i) {
  return (float)(mj_hash(seed, i) >> 40) * (1.0f / 16777216.0f);  // [0, 1)
}

// A draw from the standard normal distribution (Box-Muller: two 24-bit uniforms from the hash's
// top and middle bits, the first in (0, 1) so its log is finite; |value| < 5.9), a function of
// (seed, index) only.
__device__ __forceinline__ float mj_normal(mj_u64 seed, mj_u64 i) {
  mj_u64 h = mj_hash(seed, i);
  float u1 = ((float)(h >> 40) + 0.5f) * (1.0f / 16777216.0f);          // (0, 1)
  float u2 = (float)((h >> 16) & 0xFFFFFFull) * (1.0f / 16777216.0f);  // [0, 1)
  return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
}

// A byte in [lo, hi] (lo <= hi <= 255), for MXFP4 blocks and scales.
__device__ __forceinline__ unsigned char mj_uniform_byte(mj_u64 seed, mj_u64 i, mj_u32 lo,
                                                         mj_u32 hi) {
  return (unsigned char)(lo + (mj_u32)((mj_hash(seed, i) >> 32) % (hi - lo + 1)));
}
