// mxfp4.cuh: MXFP4 weights (e2m1 codes in blocks of 32, one e8m0 scale a block) decoded to f32,
// exactly. Plain C as well as CUDA C++: the CPU suites include it and check every code and scale
// byte against the reference's decoder.
#pragma once

#if defined(__CUDACC__)
#define MJ_FP4_FN __device__ __forceinline__
MJ_FP4_FN float mj_fp4_bits(unsigned u) { return __uint_as_float(u); }
#else
#define MJ_FP4_FN static inline
MJ_FP4_FN float mj_fp4_bits(unsigned u) {
  union { unsigned u; float f; } v;
  v.u = u;
  return v.f;
}
#endif

// 2^(s - 127) for an e8m0 scale byte s; 0 gives 2^-127 (an f32 subnormal), 255 NaN (as the OCP MX
// format defines it).
MJ_FP4_FN float mj_e8m0(unsigned s) {
  return s == 0u ? mj_fp4_bits(0x00400000u) : s == 255u ? mj_fp4_bits(0x7fc00000u)
                                                        : mj_fp4_bits(s << 23);
}

// The e2m1 code in the low 4 bits of c (bit 3 the sign): 0, 0.5, 1, 1.5, 2, 3, 4, 6, and -0 ...
// -6. Its magnitude bits as an f32's two lowest exponent bits and top mantissa bit make
// code x 2^-126 (a subnormal for 0 and 0.5); times 2^126 it is the code, exactly.
MJ_FP4_FN float mj_e2m1(unsigned c) {
  return mj_fp4_bits(((c & 7u) << 22) | ((c & 8u) << 28)) * 0x1p126f;
}
