// combine.cuh: y[t] = sum over k = 0..kTopK-1, in that order, of y_slot[t * kTopK + k], in fp32,
// cast to T. Slots with no row (expert id out of range) are skipped. Fixed order: reproducible.
// Needs: T, kHidden, kTopK, kThreads (the block, 4 columns a thread).
// grid = (tokens, ceil(kHidden / (4 * kThreads))), block = kThreads.
// With MJ_COMBINE_SPLITS = kSplits > 1 (GEMM2 split over K), a slot's row is the sum of its kSplits
// partials y_slot + z * split_stride, z = 0, 1, ... in that order, before it joins the sum over k:
// y[t] = sum_k (sum_z y_slot_z[t * kTopK + k]). MJ_PDL (optional): see mj_pdl_begin.
#pragma once

#ifndef MJ_PDL
#define MJ_PDL 0  // the template defines it as 1 for programmatic dependent launch
#endif
static_assert(kHidden % 4 == 0, "hidden must be a multiple of 4");

#ifndef MJ_COMBINE_SPLITS
#define MJ_COMBINE_SPLITS 1
#endif
static constexpr int kSplits = MJ_COMBINE_SPLITS;

struct alignas(16) mj_float4 { float x, y, z, w; };

// split_stride (read with kSplits > 1 only): floats between two partial y_slot arrays, a multiple
// of 4 (16-byte loads).
extern "C" __global__ void __launch_bounds__(kThreads) moejit_combine(
    const float *__restrict__ y_slot, const int *__restrict__ slot_row, T *__restrict__ y,
    long long split_stride) {
  mj_pdl_begin<MJ_PDL>();
  const int t = blockIdx.x;
  const int c = (blockIdx.y * kThreads + threadIdx.x) * 4;
  if (c >= kHidden) return;
  mj_float4 acc = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 4
  for (int k = 0; k < kTopK; ++k) {
    mj_i64 s = (mj_i64)t * kTopK + k;
    if (slot_row[s] < 0) continue;
    mj_float4 v = *(const mj_float4 *)(y_slot + s * kHidden + c);
#if MJ_COMBINE_SPLITS > 1
#pragma unroll
    for (int z = 1; z < kSplits; ++z) {
      mj_float4 u = *(const mj_float4 *)(y_slot + z * split_stride + s * kHidden + c);
      v.x += u.x;
      v.y += u.y;
      v.z += u.z;
      v.w += u.w;
    }
#endif
    acc.x += v.x;
    acc.y += v.y;
    acc.z += v.z;
    acc.w += v.w;
  }
  T *out = y + (mj_i64)t * kHidden + c;
  out[0] = mj_from_f32<T>(acc.x);
  out[1] = mj_from_f32<T>(acc.y);
  out[2] = mj_from_f32<T>(acc.z);
  out[3] = mj_from_f32<T>(acc.w);
}

#if MJ_COMBINE_ACTIVATION
// The activation as a launch of its own (unfused plans; gate and up in halves; activations without
// mul): h[row, j] = act(gate, up) of GEMM1's output row gate_up[row] ([rows, 2I], gate j and up j
// at 2j and 2j + 1 (kLayout 0), j and I + j (1) or I + j and j (2)), or act(gate_up[row, j]) of a
// [rows, I] row without mul (!kGated), for the rows routing produced (expert_offsets[kExperts] of
// them), grid-stride. Needs: kIntermediate, kExperts, kAlpha, kLimit, kAct, kGated, kLayout.
// block = kThreads.
extern "C" __global__ void __launch_bounds__(kThreads) moejit_activation(
    const T *__restrict__ gate_up, const int *__restrict__ expert_offsets, T *__restrict__ h) {
  mj_pdl_begin<MJ_PDL>();
  const mj_i64 rows = expert_offsets[kExperts];
  for (mj_i64 i = blockIdx.x * (mj_i64)blockDim.x + threadIdx.x; i < rows * kIntermediate;
       i += (mj_i64)gridDim.x * blockDim.x) {
    if (!kGated) {
      h[i] = mj_from_f32<T>(mj_activate1<kGated ? MJ_ACT_SILU : kAct>(mj_to_f32(gate_up[i])));
      continue;
    }
    const mj_i64 row = i / kIntermediate, j = i % kIntermediate;
    const T *g = gate_up + row * 2 * kIntermediate;
    const mj_i64 at_gate = kLayout == 0 ? 2 * j : kLayout == 1 ? j : kIntermediate + j;
    const mj_i64 at_up = kLayout == 0 ? 2 * j + 1 : kLayout == 1 ? kIntermediate + j : j;
    h[i] = mj_from_f32<T>(mj_activate<kGated ? kAct : MJ_ACT_SWIGLU_OAI>(
        mj_to_f32(g[at_gate]), mj_to_f32(g[at_up]), kAlpha, kLimit));
  }
}
#endif
