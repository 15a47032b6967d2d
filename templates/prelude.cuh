// prelude.cuh: types, conversions and PTX helpers shared by every moejit kernel.
// Needs no toolkit header: the 16-bit float types are plain structs converted with inline PTX.
#pragma once

typedef unsigned short mj_u16;
typedef unsigned int mj_u32;
typedef long long mj_i64;
typedef unsigned long long mj_u64;

struct mj_bf16 { mj_u16 bits; };
struct mj_f16 { mj_u16 bits; };
struct mj_int4 { int x, y, z, w; };

__device__ __forceinline__ float mj_to_f32(float v) { return v; }
__device__ __forceinline__ float mj_to_f32(mj_bf16 v) { return __uint_as_float((mj_u32)v.bits << 16); }
__device__ __forceinline__ float mj_to_f32(mj_f16 v) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
  return f;
}

template <typename T> __device__ __forceinline__ T mj_from_f32(float v);
template <> __device__ __forceinline__ float mj_from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ mj_bf16 mj_from_f32<mj_bf16>(float v) {
  mj_bf16 r;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.bits) : "f"(v));
  return r;
}
template <> __device__ __forceinline__ mj_f16 mj_from_f32<mj_f16>(float v) {
  mj_f16 r;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(v));
  return r;
}

// Expert ids may be int32 or int64; both compare as 64-bit.
__device__ __forceinline__ mj_i64 mj_load_id(const int *p, mj_i64 i) { return p[i]; }
__device__ __forceinline__ mj_i64 mj_load_id(const mj_i64 *p, mj_i64 i) { return p[i]; }

__device__ __forceinline__ mj_u32 mj_smem_addr(const void *p) {
  return (mj_u32)__cvta_generic_to_shared(p);
}

// 16-byte asynchronous copy global -> shared; src_bytes = 0 fills the 16 bytes with zeros.
__device__ __forceinline__ void mj_cp_async16(void *smem, const void *gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
               :: "r"(mj_smem_addr(smem)), "l"(gmem), "r"(src_bytes));
}
// 16-byte load of data read once (weights): through the non-coherent path, not kept in L1.
__device__ __forceinline__ uint4 mj_ld_stream16(const void *gmem) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(gmem));
  return r;
}
__device__ __forceinline__ void mj_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void mj_cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" :: "n"(N));
}

__device__ __forceinline__ void mj_ldmatrix_x4(mj_u32 (&r)[4], const void *smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(mj_smem_addr(smem)));
}
__device__ __forceinline__ void mj_ldmatrix_x4_trans(mj_u32 (&r)[4], const void *smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(mj_smem_addr(smem)));
}

// D += A * B, m16n8k16, fp32 accumulators; A row-major, B column-major fragments.
__device__ __forceinline__ void mj_mma_16816(float (&d)[4], const mj_u32 (&a)[4], mj_u32 b0, mj_u32 b1,
                                             mj_bf16) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
               "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mj_mma_16816(float (&d)[4], const mj_u32 (&a)[4], mj_u32 b0, mj_u32 b1,
                                             mj_f16) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
               "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// f32 -> tf32 (round to nearest, ties away), as the m16n8k8 tf32 mma reads it.
__device__ __forceinline__ mj_u32 mj_tf32(float f) {
  mj_u32 r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(f));
  return r;
}

// D += A * B, m16n8k8 on TF32, fp32 accumulators.
__device__ __forceinline__ void mj_mma_1688_tf32(float (&d)[4], const mj_u32 (&a)[4], mj_u32 b0,
                                                 mj_u32 b1) {
  asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
               "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The GPT-OSS gated activation: gate clamped above, up clamped both ways, (up + 1) * gate * sigmoid.
__device__ __forceinline__ float mj_swiglu(float gate, float up, float alpha, float limit) {
  gate = fminf(gate, limit);
  up = fminf(fmaxf(up, -limit), limit);
  return (up + 1.0f) * gate / (1.0f + expf(-alpha * gate));
}

// The layer's activations by moejit_activation's values (moejit.h has the formulas, after vLLM's
// MoEActivation), in fp32. kAct is a template constant: one branch is compiled.
#define MJ_ACT_SWIGLU_OAI 0
#define MJ_ACT_SILU_MUL 1
#define MJ_ACT_GELU_MUL 2
#define MJ_ACT_GELU_TANH_MUL 3
#define MJ_ACT_SWIGLU_STEP 4
#define MJ_ACT_SILU 5
#define MJ_ACT_GELU 6
#define MJ_ACT_RELU2 7

__device__ __forceinline__ float mj_silu(float v) { return v / (1.0f + expf(-v)); }
__device__ __forceinline__ float mj_gelu(float v) {
  return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
}
__device__ __forceinline__ float mj_gelu_tanh(float v) {
  return 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
}

// A gated activation of (gate, up).
template <int kAct>
__device__ __forceinline__ float mj_activate(float gate, float up, float alpha, float limit) {
  static_assert(kAct >= MJ_ACT_SWIGLU_OAI && kAct <= MJ_ACT_SWIGLU_STEP, "a gated activation");
  if (kAct == MJ_ACT_SWIGLU_OAI) return mj_swiglu(gate, up, alpha, limit);
  if (kAct == MJ_ACT_SILU_MUL) return mj_silu(gate) * up;
  if (kAct == MJ_ACT_GELU_MUL) return mj_gelu(gate) * up;
  if (kAct == MJ_ACT_GELU_TANH_MUL) return mj_gelu_tanh(gate) * up;
  return fminf(mj_silu(gate), limit) * fminf(fmaxf(up, -limit), limit);  // SWIGLU_STEP
}

// An activation without mul, of one value.
template <int kAct> __device__ __forceinline__ float mj_activate1(float v) {
  static_assert(kAct >= MJ_ACT_SILU && kAct <= MJ_ACT_RELU2, "an activation without mul");
  if (kAct == MJ_ACT_SILU) return mj_silu(v);
  if (kAct == MJ_ACT_GELU) return mj_gelu(v);
  const float r = fmaxf(v, 0.0f);  // RELU2
  return r * r;
}

// Programmatic dependent launch (sm_90+), on when the kernel file's MJ_PDL is 1: wait until the
// grid before this one in the stream has finished and its writes are visible, then let the next
// grid start its launch, so that its blocks are resident and waiting when this one ends instead of a
// launch gap later. Every read of what an earlier kernel wrote comes after this call. Without the
// launch attribute on the host side both instructions return at once; below sm_90 this is empty.
// mj_pdl_trigger is the second half alone: the next grid may start its launch, with no wait (a
// kernel that orders its reads of an earlier kernel's writes itself).
template <int kOn> __device__ __forceinline__ void mj_pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (kOn) asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
template <int kOn> __device__ __forceinline__ void mj_pdl_begin() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (kOn) asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
  mj_pdl_trigger<kOn>();
}
