// gemm.cuh: the grouped GEMMs of the layer on a device-side tile list. Four paths, all sm_80+,
// MJ_GEMM_PATH one of: MJ_PATH_MMA, mma.sync m16n8k16 for f16/bf16; MJ_PATH_TF32, mma.sync m16n8k8
// on TF32 for f32; MJ_PATH_FFMA, exact fp32 FFMA for f32; MJ_PATH_STREAM, streamed FFMA for tiles
// of a few rows (below).
// Needs from the including template: T, BiasT, kMode, kAct (kMode 1's gated activation, prelude.cuh),
// kHasBias (false: no bias is read), kN, kK, kTopK, kAlpha, kLimit, kWeightOnInput,
// kBM, kBN, kBK, kStages, kThreads, kSmemBytes (the dynamic shared memory of its launch contract)
// and kWM, kWN (tensor-core paths) or kTM, kTN (FFMA); with MJ_GEMM_SPLITS, kKSplit.
//
// The streamed path: for decode tiles of at most kBM (a few) rows, whose GEMMs are a read of the
// weights and little math. No shared-memory ring: each thread loads 16-byte pieces of weight rows
// straight into registers with non-caching loads, kStages of them at a time (a batch), the next
// batch in flight while it multiplies the last one, and keeps kBM x kVec fp32 sums. The block's
// kThreads threads are kBN / kVec column pieces times kLanes row lanes, lane l taking rows k = l,
// l + kLanes, ...; shared memory sums the lanes at the end. The A values (x or h, a few rows) come
// with each batch from global memory through L1. kBK only sets the split-K length.
//
// kMode 1 (gate_up): out = h [rows, kN / 2] in T, h = act(A[row] @ W[e] + b[e]) with A rows
//   gathered from x by token = row_slot[row] / kTopK; with kWeightOnInput the product is scaled by
//   weight[row] first (the same as scaling x[token], as the GEMM is linear in it).
// kMode 3 (gate_up_raw, unfused plans): out = gu [rows, kN] in T, A[row] @ W[e] + b[e] (scaled as
//   kMode 1 with kWeightOnInput), the activation left to moejit_activation.
// kMode 2 (down): out = y_slot [slots, kN] in f32, y_slot[slot] = (A[row] @ W[e] + b[e]) * weight[row]
//   (weight 1 with kWeightOnInput) with A = h in row order and slot = row_slot[row].
// Tile i of the list covers rows [row_begin, row_end) of one expert, in kBN-column slabs. Grid
// (tiles, ceil(kN / kBN), splits), tiles = min(slots, max_tiles) (a tile holds a slot at least);
// block (x, y) works on tile x and slab y, or with slab_major (the host's choice when the blocks
// fill the GPU more than twice over) on tile l / slabs and slab l % slabs, l = x + tiles * y, so
// that the blocks the GPU issues together (x fastest) read whole rows of one expert's weights
// rather than one slab each of many experts' (docs/experiments.md#slab-major).
// A tile beyond *num_tiles exits at once (the grid is sized for the worst case).
//
// Split-K (kMode 2 only, MJ_GEMM_SPLITS = kSplits > 1): grid.z = kSplits. Block z sums K range
// [z * kKSplit, min(kK, (z + 1) * kKSplit)) (kKSplit whole kBK steps, none of the splits empty)
// and writes y_slot_z[slot] = (partial + (z == 0 ? b[e] : 0)) * weight[row] at
// out + z * split_stride (floats); combine adds the kSplits partials of a slot in z order. Decode
// batches have few rows per expert, so the K loop is what one block does for long; splitting it
// puts more blocks on the same weights to reach the memory bandwidth.
// MJ_PDL (optional): programmatic dependent launch, see mj_pdl_begin.
//
// MJ_GEMM_MXFP4 (optional; mma and streamed paths, T f16 or bf16): the weights are MXFP4 as the
// gpt-oss checkpoints hold them: w is the blocks [experts, kN, kK / 32, 16] (bytes; one row per
// output, K contiguous) and scales [experts, kN, kK / 32] one e8m0 byte a block (mxfp4.cuh). A
// weight is code x 2^(s - 127), rounded to T, decoded in the kernel; no dense copy exists. The mma
// path copies the raw blocks into its ring by cp.async and, each K step, decodes the stage into
// one n-major tile of T that ldmatrix (not transposed) reads as the B fragments; the tile's scales
// over all of K come in with the first stage. The streamed path gives each thread one output
// column and every kLanes-th block of its row (16-byte loads, kStages in flight), the A rows of
// the tile's K range in shared memory; the kLanes partial sums of a column are added by shuffles
// in a fixed order.
//
// MJ_GEMM_SELF_ROUTE (optional, GEMM1 under MJ_PDL; needs RouteIdT and kRouteExperts): with
// p.own_slots > 0 a block works out its own tile from the caller's ids (p.own_ids, that many
// slots) instead of reading routing's, and starts on its weights at once, while routing still runs.
// The host sets it only where routing's tile list is a function of the ids alone that the block can
// compute: at most 32 slots (a warp reads them); ids that name the experts directly (no expert map,
// no capacity, no device-side token count) and no routing weight read by GEMM1. Where each expert
// has at most kBM of the slots, it gets one tile, and tile i is the expert with the i-th smallest
// distinct id in [0, kRouteExperts) among the slots, its rows follow the valid slots of smaller
// ids, and its slots come in increasing order; otherwise (ids repeated within a token, kBM small)
// every block takes routing's tile list after all, which the grid (min(slots, max_tiles) tiles)
// covers as well. A self-routed block waits for routing (griddepcontrol.wait) halfway through its K
// loop, before it lets the next kernel start: GEMM2 reads routing's tile list before its own wait.
// A forward of one token thus reads weights from its first microsecond on, where it otherwise
// waited for routing, then for the tile count, the tile and the rows, one load after the other.
#pragma once

#define MJ_PATH_FFMA 0
#define MJ_PATH_MMA 1
#define MJ_PATH_TF32 2
#define MJ_PATH_STREAM 3

#ifndef MJ_PDL
#define MJ_PDL 0  // the template defines it as 1 for programmatic dependent launch
#endif

#ifndef MJ_GEMM_SPLITS
#define MJ_GEMM_SPLITS 1
#endif
#ifndef MJ_GEMM_SELF_ROUTE
#define MJ_GEMM_SELF_ROUTE 0
#endif
#ifndef MJ_GEMM_MXFP4
#define MJ_GEMM_MXFP4 0
#endif
#if MJ_GEMM_MXFP4
#include "mxfp4.cuh"
typedef unsigned char WeightT;  // the blocks, 16 bytes a 32-weight block
static constexpr int kKB = kK / 32;  // scale blocks along K, a row
static_assert(kK % 32 == 0 && kN % 32 == 0, "MXFP4: whole 32-weight blocks");
#else
typedef T WeightT;
#endif
// One expert's weights, in WeightT elements.
static constexpr mj_i64 kExpertWeights = MJ_GEMM_MXFP4 ? (mj_i64)kN * kK / 2 : (mj_i64)kN * kK;
// The kernel's parameters, gathered for the functions below.
struct GemmParams {
  const T *a;               // kMode 1: x [tokens, kK]; kMode 2: h [rows, kK]
  const WeightT *w;         // [experts, kK, kN]; MXFP4: the blocks [experts, kN, kK / 32, 16]
  const BiasT *bias;        // [experts, kN]
  const unsigned char *scales;  // MXFP4: [experts, kN, kK / 32]; else unread
  const int *row_slot;   // [rows]
  const float *row_weight; // [rows]
  const mj_int4 *tiles;     // [max_tiles]
  const int *num_tiles;     // [1]
  void *out;
  int slab_major;           // the order blocks take tiles and slabs in (above)
  const void *own_ids;      // MJ_GEMM_SELF_ROUTE: the caller's ids [own_slots], else unread
  int own_slots;            // 0, or at most 32: see MJ_GEMM_SELF_ROUTE
};

static constexpr int kSplits = MJ_GEMM_SPLITS;
static_assert(kSplits == 1 || kMode == 2, "split-K is for GEMM2 (mode down) only");
#if MJ_GEMM_SPLITS == 1
static constexpr int kKSplit = kK;
#endif
// The K step a split is made of: kBK, or a 32-weight block on MXFP4's streamed path (whose kBK
// means nothing).
static constexpr int kSplitStep = MJ_GEMM_MXFP4 && MJ_GEMM_PATH == MJ_PATH_STREAM ? 32 : kBK;
static_assert(((kSplits - 1) * kKSplit < kK && kSplits * kKSplit >= kK &&
               kKSplit % kSplitStep == 0) ||
                  kSplits == 1,
              "splits of whole K steps cover K, and none is empty");

static constexpr int kVec = 16 / (int)sizeof(T);  // elements per 16-byte copy
static constexpr int kLdA = kBK + kVec;          // padded rows: conflict-free ldmatrix
static constexpr int kLdB = kBN + kVec;
static constexpr int kLdBd = kBK + kVec;  // MXFP4's decoded stage: row n holds its kBK weights
static_assert(kN % 8 == 0 && kK % 8 == 0, "N and K must be multiples of 8");
static_assert((MJ_GEMM_PATH == MJ_PATH_STREAM || kBK % kVec == 0) && kBN % kVec == 0,
              "tile edges must hold whole 16-byte copies");
#if MJ_GEMM_MXFP4 && MJ_GEMM_PATH == MJ_PATH_MMA
static constexpr int kLdRaw = kBK / 2 + 16;  // bytes a row of a stage's raw blocks, padded
static_assert(kBK % 32 == 0, "MXFP4: K steps of whole blocks");
static_assert(kStages * (kBM * kLdA * (int)sizeof(T) + kBN * kLdRaw) + kBN * kLdBd * (int)sizeof(T) +
                      kBN * kKB <=
                  kSmemBytes,
              "the ring, the decoded stage and the scales fit the launch contract's shared memory");
#elif MJ_GEMM_MXFP4
static_assert(MJ_GEMM_PATH == MJ_PATH_STREAM, "MXFP4 weights: the mma and streamed paths");
static_assert(kKSplit % 32 == 0 || kSplits == 1, "MXFP4: splits of whole blocks");
static_assert(kBM * kKSplit * (int)sizeof(T) <= kSmemBytes,
              "the tile's A rows fit the launch contract's shared memory");
#else
static_assert(MJ_GEMM_PATH == MJ_PATH_STREAM ||
                  kStages * (kBM * kLdA + kBK * kLdB) * (int)sizeof(T) <= kSmemBytes,
              "the stage ring fits the dynamic shared memory of the launch contract");
#endif

struct alignas(8) mj_float2 { float x, y; };
struct alignas(16) mj_smem16 { unsigned char b[16]; };  // dynamic shared memory, 16-byte aligned

// One stage's A rows (gathered by a_row; -1: zeros), as 16-byte cp.async.
__device__ __forceinline__ void load_a(T *As, const T *__restrict__ a, const int *a_row, int k0) {
  constexpr int kAChunks = kBM * kBK / kVec;
  for (int c = threadIdx.x; c < kAChunks; c += kThreads) {
    int r = c / (kBK / kVec), col = (c % (kBK / kVec)) * kVec;
    int src = a_row[r];
    bool ok = src >= 0 && k0 + col < kK;
    mj_cp_async16(As + r * kLdA + col, ok ? a + (mj_i64)src * kK + k0 + col : a, ok ? 16 : 0);
  }
}

// One stage's kBK x kBN weight tile (zeros past the K and N edges), as 16-byte cp.async.
__device__ __forceinline__ void load_b(T *Bs, const T *__restrict__ w, int k0, int n0) {
  constexpr int kBChunks = kBK * kBN / kVec;
  for (int c = threadIdx.x; c < kBChunks; c += kThreads) {
    int r = c / (kBN / kVec), col = (c % (kBN / kVec)) * kVec;
    bool ok = k0 + r < kK && n0 + col < kN;
    mj_cp_async16(Bs + r * kLdB + col, ok ? w + (mj_i64)(k0 + r) * kN + n0 + col : w, ok ? 16 : 0);
  }
}

// One output pair (columns col, col + 1 of the tile, col even) of tile row `row`.
__device__ __forceinline__ void emit(const GemmParams &p, int e, int r0, int r1, int n0, int row,
                                     int col, float v0, float v1) {
  int r = r0 + row, c = n0 + col;
  if (r >= r1 || c >= kN) return;
  const BiasT *b = p.bias + (kHasBias ? (mj_i64)e * kN : 0);
  if (kMode != 2 && kWeightOnInput) {
    float wt = p.row_weight[r];
    v0 *= wt;
    v1 *= wt;
  }
  if (kHasBias && (kSplits == 1 || blockIdx.z == 0)) {  // split-K: the bias once, in the first
    v0 += mj_to_f32(b[c]);
    v1 += mj_to_f32(b[c + 1]);
  }
  if (kMode == 1) {
    ((T *)p.out)[(mj_i64)r * (kN / 2) + c / 2] =
        mj_from_f32<T>(mj_activate<kAct>(v0, v1, kAlpha, kLimit));
  } else if (kMode == 3) {
    T *o = (T *)p.out + (mj_i64)r * kN + c;
    o[0] = mj_from_f32<T>(v0);
    o[1] = mj_from_f32<T>(v1);
  } else {
    float wt = kWeightOnInput ? 1.0f : p.row_weight[r];
    *(mj_float2 *)((float *)p.out + (mj_i64)p.row_slot[r] * kN + c) = mj_float2{v0 * wt, v1 * wt};
  }
}

#if MJ_GEMM_PATH == MJ_PATH_MMA || MJ_GEMM_PATH == MJ_PATH_TF32
static constexpr int kWTM = kBM / kWM, kWTN = kBN / kWN;  // one warp's tile
static constexpr int kMT = kWTM / 16, kNT = kWTN / 8;
static_assert(kWTM % 16 == 0 && kWTN % 16 == 0, "warp tiles are multiples of 16 x 16");
static_assert(kWM * kWN * 32 == kThreads, "one warp per warp tile");

struct Acc { float v[kMT][kNT][4]; };
#endif

#if MJ_GEMM_PATH == MJ_PATH_MMA
static_assert(kBK % 16 == 0, "m16n8k16 steps");

// acc += the A stage x a B stage: the dense weights' k-major [kBK][kLdB] tile (ldmatrix .trans)
// or, kNMajor, MXFP4's decoded n-major [kBN][kLdBd] tile (ldmatrix as is). Either way the x4's
// r[0], r[1] are b0, b1 of n tile 2 np and r[2], r[3] those of n tile 2 np + 1.
template <bool kNMajor>
__device__ __forceinline__ void compute_stage_b(Acc &acc, const T *As, const T *Bs) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = warp / kWN, wn = warp % kWN;
#pragma unroll
  for (int ks = 0; ks < kBK; ks += 16) {
    mj_u32 af[kMT][4], bf[kNT][2];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
      mj_ldmatrix_x4(af[mt], As + (wm * kWTM + mt * 16 + (lane & 15)) * kLdA + ks + (lane >> 4) * 8);
#pragma unroll
    for (int np = 0; np < kNT / 2; ++np) {
      mj_u32 r[4];
      if (kNMajor)  // matrix i: n block i / 2, k block i % 2
        mj_ldmatrix_x4(r, Bs + (wn * kWTN + np * 16 + ((lane >> 4) & 1) * 8 + (lane & 7)) * kLdBd +
                              ks + ((lane >> 3) & 1) * 8);
      else  // matrix i: k block i % 2, n block i / 2
        mj_ldmatrix_x4_trans(r, Bs + (ks + (lane & 7) + ((lane >> 3) & 1) * 8) * kLdB + wn * kWTN +
                                    np * 16 + (lane >> 4) * 8);
      bf[2 * np][0] = r[0];
      bf[2 * np][1] = r[1];
      bf[2 * np + 1][0] = r[2];
      bf[2 * np + 1][1] = r[3];
    }
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) mj_mma_16816(acc.v[mt][nt], af[mt], bf[nt][0], bf[nt][1], T{});
  }
}

__device__ __forceinline__ void compute_stage(Acc &acc, const T *As, const T *Bs) {
  compute_stage_b<false>(acc, As, Bs);
}

#if MJ_GEMM_MXFP4
// One stage's raw weight blocks: kBN rows (outputs) of kBK / 2 bytes from column n0 and K step
// k0, as 16-byte cp.async (zeros past kN and kK).
__device__ __forceinline__ void load_raw(unsigned char *raw, const WeightT *__restrict__ w, int k0,
                                         int n0) {
  constexpr int kChunks = kBN * (kBK / 32);
  for (int c = threadIdx.x; c < kChunks; c += kThreads) {
    int r = c / (kBK / 32), b = c % (kBK / 32);
    bool ok = n0 + r < kN && k0 + b * 32 < kK;
    mj_cp_async16(raw + r * kLdRaw + b * 16, ok ? w + (mj_i64)(n0 + r) * (kK / 2) + (k0 / 2 + b * 16) : w,
                  ok ? 16 : 0);
  }
}

// The tile's scales: rows [n0, n0 + kBN) within kN, all kKB blocks of each, as 16-byte cp.async.
// The range is contiguous and 16-byte aligned: kN, kBN and n0 are multiples of 16 and the forward
// checks the pointer.
__device__ __forceinline__ void load_scales(unsigned char *sc, const unsigned char *__restrict__ s,
                                            int n0) {
  const int chunks = min(kBN, kN - n0) * kKB / 16;
  for (int c = threadIdx.x; c < chunks; c += kThreads)
    mj_cp_async16(sc + c * 16, s + (mj_i64)n0 * kKB + c * 16, 16);
}

// Decodes a raw stage (K step k0) into the n-major tile bd (zeros past kN and kK): a thread a
// 32-weight block at a time, 16 bytes in and 64 out.
__device__ __forceinline__ void decode_stage(T *bd, const unsigned char *raw,
                                             const unsigned char *sc, int k0, int n0) {
  constexpr int kTasks = kBN * (kBK / 32);
  for (int c = threadIdx.x; c < kTasks; c += kThreads) {
    const int r = c / (kBK / 32), b = c % (kBK / 32), kb = k0 / 32 + b;
    union { uint4 u[4]; T v[32]; } out;
    if (n0 + r < kN && kb < kKB) {
      const uint4 q = *(const uint4 *)(raw + r * kLdRaw + b * 16);
      const mj_u32 words[4] = {q.x, q.y, q.z, q.w};
      const float scale = mj_e8m0(sc[r * kKB + kb]);
#pragma unroll
      for (int j = 0; j < 32; ++j)
        out.v[j] = mj_from_f32<T>(mj_e2m1(words[j / 8] >> (4 * (j % 8))) * scale);
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) out.u[i] = make_uint4(0u, 0u, 0u, 0u);
    }
    uint4 *dst = (uint4 *)(bd + r * kLdBd + b * 32);
#pragma unroll
    for (int i = 0; i < 4; ++i) dst[i] = out.u[i];
  }
}

#endif
#elif MJ_GEMM_PATH == MJ_PATH_TF32
static_assert(kBK % 8 == 0, "m16n8k8 steps");

// TF32 fragments read straight from shared memory (ldmatrix moves 16-bit elements only):
// A: a0 (g, t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4); B: b0 (k = t, n = g), b1 (t + 4, g);
// g = lane / 4, t = lane % 4.
__device__ __forceinline__ void compute_stage(Acc &acc, const T *As, const T *Bs) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = warp / kWN, wn = warp % kWN, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int ks = 0; ks < kBK; ks += 8) {
    mj_u32 af[kMT][4], bf[kNT][2];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      const float *a = As + (wm * kWTM + mt * 16 + g) * kLdA + ks + t;
      af[mt][0] = mj_tf32(a[0]);
      af[mt][1] = mj_tf32(a[8 * kLdA]);
      af[mt][2] = mj_tf32(a[4]);
      af[mt][3] = mj_tf32(a[8 * kLdA + 4]);
    }
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      const float *b = Bs + (ks + t) * kLdB + wn * kWTN + nt * 8 + g;
      bf[nt][0] = mj_tf32(b[0]);
      bf[nt][1] = mj_tf32(b[4 * kLdB]);
    }
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) mj_mma_1688_tf32(acc.v[mt][nt], af[mt], bf[nt][0], bf[nt][1]);
  }
}
#endif

#if MJ_GEMM_PATH == MJ_PATH_STREAM && MJ_GEMM_MXFP4
static constexpr int kLanes = kThreads / kBN;  // threads along K a column, adjacent in the warp
static constexpr int kBatch = kStages;         // loads in flight a thread, a batch
static_assert(kThreads % kBN == 0 && kLanes >= 1 && kLanes <= 32 && (kLanes & (kLanes - 1)) == 0,
              "MXFP4 streamed tiles: a power-of-two count of threads a column, within a warp");
static_assert(kBM <= 8, "the streamed path keeps kBM sums a thread");

// One batch a thread: blocks kb0, kb0 + kLanes, ... of its column's row, and their scale bytes.
struct mj_fp4_batch {
  uint4 w[kBatch];
  unsigned s[kBatch];
};

// A decoded weight rounded to T, as the mma path's decode stores it (a no-op for bf16, whose
// range and precision hold every MXFP4 weight).
__device__ __forceinline__ float mj_round_weight(float v, mj_bf16) { return v; }
__device__ __forceinline__ float mj_round_weight(float v, mj_f16) {
  return mj_to_f32(mj_from_f32<mj_f16>(v));
}

__device__ __forceinline__ void fp4_load(mj_fp4_batch &b, const WeightT *wrow,
                                         const unsigned char *srow, int kb0, int kb_end,
                                         bool col_ok) {
#pragma unroll
  for (int u = 0; u < kBatch; ++u) {
    const int kb = kb0 + u * kLanes;
    if (col_ok && kb < kb_end) {
      b.w[u] = mj_ld_stream16(wrow + (mj_i64)kb * 16);
      b.s[u] = srow[kb];
    } else {
      b.w[u] = make_uint4(0u, 0u, 0u, 0u);
      b.s[u] = 0u;
    }
  }
}

// acc += batch b's blocks times the A rows in xs ([kBM][kKSplit], from the split's first block);
// kbr0: the batch's first block, counted from the split's; blocks at or past nkb are skipped.
__device__ __forceinline__ void fp4_fma(float (&acc)[kBM], const mj_fp4_batch &b, const T *xs,
                                        int kbr0, int nkb) {
#pragma unroll
  for (int u = 0; u < kBatch; ++u) {
    const int kbr = kbr0 + u * kLanes;
    if (kbr >= nkb) continue;
    const float scale = mj_e8m0(b.s[u]);
    const mj_u32 words[4] = {b.w[u].x, b.w[u].y, b.w[u].z, b.w[u].w};
    float wv[32];
#pragma unroll
    for (int j = 0; j < 32; ++j)
      wv[j] = mj_round_weight(mj_e2m1(words[j / 8] >> (4 * (j % 8))) * scale, T{});
#pragma unroll
    for (int m = 0; m < kBM; ++m) {
      union { uint4 u[4]; T v[32]; } xv;
      const uint4 *x = (const uint4 *)(xs + m * kKSplit + kbr * 32);
#pragma unroll
      for (int i = 0; i < 4; ++i) xv.u[i] = x[i];
#pragma unroll
      for (int j = 0; j < 32; ++j) acc[m] = fmaf(mj_to_f32(xv.v[j]), wv[j], acc[m]);
    }
  }
}

// The sums of K range [k_begin, k_end) (whole blocks) for this thread's column, one a tile row.
// Under kEarly (GEMM2 under PDL) the first two batches of weights are loaded before the wait for
// GEMM1, which this function then makes; with own (a self-routed GEMM1) it makes routing's wait
// halfway. Two batches in turn: one in flight while the other is multiplied.
template <bool kEarly>
__device__ __forceinline__ void stream_tile_fp4(float (&acc)[kBM], const T *__restrict__ a,
                                                const WeightT *__restrict__ w,
                                                const unsigned char *__restrict__ sc,
                                                const int *a_row, int k_begin, int k_end, int n0,
                                                bool own) {
  extern __shared__ mj_smem16 smem[];
  T *xs = (T *)smem;  // the tile's A rows over the split: [kBM][kKSplit]
  const int col = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const bool col_ok = n0 + col < kN;
  const WeightT *wrow = w + (mj_i64)(col_ok ? n0 + col : 0) * (kK / 2);
  const unsigned char *srow = sc + (mj_i64)(col_ok ? n0 + col : 0) * kKB;
  const int kb_begin = k_begin / 32, kb_end = k_end / 32, nkb = kb_end - kb_begin;
  constexpr int kStep = kLanes * kBatch;
  const int batches = (nkb + kStep - 1) / kStep;
  const int kb0 = kb_begin + lane;  // this thread's first block
  mj_fp4_batch even, odd;
  fp4_load(even, wrow, srow, kb0, kb_end, col_ok);
  if (kEarly && batches > 1) fp4_load(odd, wrow, srow, kb0 + kStep, kb_end, col_ok);
  if (kEarly) mj_pdl_begin<MJ_PDL>();
  __syncthreads();  // a_row is written
  constexpr int kRowChunks = kKSplit / kVec;
  for (int c = threadIdx.x; c < kBM * kRowChunks; c += kThreads) {
    const int m = c / kRowChunks, k = (c % kRowChunks) * kVec;
    const int src = a_row[m];
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
    if (src >= 0 && k_begin + k < k_end) v = *(const uint4 *)(a + (mj_i64)src * kK + k_begin + k);
    *(uint4 *)(xs + m * kKSplit + k) = v;
  }
  __syncthreads();
#pragma unroll
  for (int m = 0; m < kBM; ++m) acc[m] = 0.0f;
  const int half = batches / 2;
  for (int b = 0; b < batches; b += 2) {
    if (b + 1 < batches && (!kEarly || b > 0))
      fp4_load(odd, wrow, srow, kb0 + (b + 1) * kStep, kb_end, col_ok);
    if (own && b == (half & ~1)) mj_pdl_begin<MJ_PDL>();  // routing's end, for the next kernel
    fp4_fma(acc, even, xs, lane + b * kStep, nkb);
    if (b + 1 >= batches) break;
    if (b + 2 < batches) fp4_load(even, wrow, srow, kb0 + (b + 2) * kStep, kb_end, col_ok);
    fp4_fma(acc, odd, xs, lane + (b + 1) * kStep, nkb);
  }
}

// Adds each column's kLanes partial sums (shuffles, a fixed order) and writes the tile's outputs.
__device__ __forceinline__ void stream_epilogue_fp4(const float (&acc)[kBM], const GemmParams &p,
                                                    int e, int r0, int r1, int n0) {
  __shared__ float red[kBM][kBN];
  const int col = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
#pragma unroll
  for (int m = 0; m < kBM; ++m) {
    float v = acc[m];
#pragma unroll
    for (int off = kLanes / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0) red[m][col] = v;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kBM * kBN / 2; i += kThreads) {
    const int m = i / (kBN / 2), c = i % (kBN / 2) * 2;
    if (r0 + m >= r1) continue;
    emit(p, e, r0, r1, n0, m, c, red[m][c], red[m][c + 1]);
  }
}
#elif MJ_GEMM_PATH == MJ_PATH_STREAM
static constexpr int kPieces = kBN / kVec;         // 16-byte column pieces of a slab
static constexpr int kLanes = kThreads / kPieces;  // row lanes
static constexpr int kBatch = kStages;             // loads in flight a thread, a batch
static_assert(kThreads % kPieces == 0 && kLanes >= 1, "threads are column pieces x row lanes");
static_assert(kBM <= 8, "the streamed path keeps kBM x kVec sums a thread");

union mj_piece { uint4 u; T v[kVec]; };

// One batch a thread: rows k0, k0 + kLanes, ..., kBatch of them, of its weight piece and the A
// values of those rows (zeros past k_end, kN or the tile's rows).
struct mj_batch {
  mj_piece w[kBatch];
  T a[kBatch][kBM];
};

__device__ __forceinline__ void stream_weights(mj_batch &b, const T *w, int k0, int k_end,
                                               bool col_ok) {
#pragma unroll
  for (int u = 0; u < kBatch; ++u) {
    const int k = k0 + u * kLanes;
    if (col_ok && k < k_end)
      b.w[u].u = mj_ld_stream16(w + (mj_i64)k * kN);
    else
      b.w[u].u = make_uint4(0u, 0u, 0u, 0u);
  }
}

__device__ __forceinline__ void stream_a(mj_batch &b, const T *const (&arow)[kBM], int k0,
                                         int k_end) {
#pragma unroll
  for (int u = 0; u < kBatch; ++u) {
    const int k = k0 + u * kLanes;
#pragma unroll
    for (int m = 0; m < kBM; ++m) b.a[u][m] = arow[m] && k < k_end ? arow[m][k] : T{};
  }
}

// acc += batch b's products.
__device__ __forceinline__ void stream_fma(float (&acc)[kBM][kVec], const mj_batch &b) {
#pragma unroll
  for (int u = 0; u < kBatch; ++u) {
    float wv[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) wv[j] = mj_to_f32(b.w[u].v[j]);
#pragma unroll
    for (int m = 0; m < kBM; ++m) {
      const float av = mj_to_f32(b.a[u][m]);
#pragma unroll
      for (int j = 0; j < kVec; ++j) acc[m][j] = fmaf(av, wv[j], acc[m][j]);
    }
  }
}

// The sums of rows [k_begin, k_end) of the tile's slab. a_row: the tile's A rows (-1: none). Under
// kEarly (GEMM2 under PDL) the first two batches of weights are loaded before the wait for GEMM1,
// which this function then makes; with own (a self-routed GEMM1) it makes routing's wait halfway.
// Each batch's loads (weights and A values) are in flight while the one before is multiplied: two
// batches in turn, so that no register waits for a load only to be copied.
template <bool kEarly>
__device__ __forceinline__ void stream_tile(float (&acc)[kBM][kVec], const T *__restrict__ a,
                                            const T *__restrict__ w, const int *a_row, int k_begin,
                                            int k_end, int n0, bool own) {
  const int piece = threadIdx.x % kPieces, lane = threadIdx.x / kPieces;
  const int col = n0 + piece * kVec;
  const bool col_ok = col < kN;
  w += col;
  constexpr int kStep = kLanes * kBatch;
  const int batches = (k_end - k_begin + kStep - 1) / kStep;
  const int k0 = k_begin + lane;  // this thread's first row
  mj_batch even, odd;
  stream_weights(even, w, k0, k_end, col_ok);
  if (kEarly && batches > 1) stream_weights(odd, w, k0 + kStep, k_end, col_ok);
  if (kEarly) mj_pdl_begin<MJ_PDL>();
  __syncthreads();  // a_row is written
  const T *arow[kBM];
#pragma unroll
  for (int m = 0; m < kBM; ++m) arow[m] = a_row[m] >= 0 ? a + (mj_i64)a_row[m] * kK : nullptr;
  stream_a(even, arow, k0, k_end);
  if (kEarly && batches > 1) stream_a(odd, arow, k0 + kStep, k_end);
#pragma unroll
  for (int m = 0; m < kBM; ++m)
#pragma unroll
    for (int j = 0; j < kVec; ++j) acc[m][j] = 0.0f;
  const int half = batches / 2;
  for (int b = 0; b < batches; b += 2) {
    if (b + 1 < batches && (!kEarly || b > 0)) {
      stream_weights(odd, w, k0 + (b + 1) * kStep, k_end, col_ok);
      stream_a(odd, arow, k0 + (b + 1) * kStep, k_end);
    }
    if (own && b == (half & ~1)) mj_pdl_begin<MJ_PDL>();  // routing's end, for the next kernel
    stream_fma(acc, even);
    if (b + 1 >= batches) break;
    if (b + 2 < batches) {
      stream_weights(even, w, k0 + (b + 2) * kStep, k_end, col_ok);
      stream_a(even, arow, k0 + (b + 2) * kStep, k_end);
    }
    stream_fma(acc, odd);
  }
}

// Sums the row lanes through shared memory and writes the tile's outputs.
__device__ __forceinline__ void stream_epilogue(const float (&acc)[kBM][kVec], const GemmParams &p,
                                                int e, int r0, int r1, int n0) {
  __shared__ float red[kLanes][kBM][kBN + 1];
  const int piece = threadIdx.x % kPieces, lane = threadIdx.x / kPieces;
#pragma unroll
  for (int m = 0; m < kBM; ++m)
#pragma unroll
    for (int j = 0; j < kVec; ++j) red[lane][m][piece * kVec + j] = acc[m][j];
  __syncthreads();
  for (int i = threadIdx.x; i < kBM * kBN / 2; i += kThreads) {
    const int m = i / (kBN / 2), c = i % (kBN / 2) * 2;
    if (r0 + m >= r1) continue;
    float v0 = 0.0f, v1 = 0.0f;
#pragma unroll 4
    for (int l = 0; l < kLanes; ++l) {
      v0 += red[l][m][c];
      v1 += red[l][m][c + 1];
    }
    emit(p, e, r0, r1, n0, m, c, v0, v1);
  }
}
#elif MJ_GEMM_PATH != MJ_PATH_FFMA
__device__ __forceinline__ void epilogue(const Acc &acc, const GemmParams &p, int e, int r0, int r1,
                                         int n0) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = warp / kWN, wn = warp % kWN;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int half = 0; half < 2; ++half)
        emit(p, e, r0, r1, n0, wm * kWTM + mt * 16 + (lane >> 2) + half * 8,
             wn * kWTN + nt * 8 + (lane & 3) * 2, acc.v[mt][nt][2 * half], acc.v[mt][nt][2 * half + 1]);
}
#else
static constexpr int kTX = kBN / kTN, kTY = kBM / kTM;  // thread grid over the tile
static_assert(kTX * kTY == kThreads && kTN % 2 == 0, "each thread owns kTM x kTN outputs");

struct Acc { float v[kTM][kTN]; };

__device__ __forceinline__ void compute_stage(Acc &acc, const T *As, const T *Bs) {
  const int tx = threadIdx.x % kTX, ty = threadIdx.x / kTX;
#pragma unroll
  for (int k = 0; k < kBK; ++k) {
    float a[kTM], b[kTN];
#pragma unroll
    for (int i = 0; i < kTM; ++i) a[i] = mj_to_f32(As[(ty * kTM + i) * kLdA + k]);
#pragma unroll
    for (int j = 0; j < kTN; ++j) b[j] = mj_to_f32(Bs[k * kLdB + tx * kTN + j]);
#pragma unroll
    for (int i = 0; i < kTM; ++i)
#pragma unroll
      for (int j = 0; j < kTN; ++j) acc.v[i][j] = fmaf(a[i], b[j], acc.v[i][j]);
  }
}

__device__ __forceinline__ void epilogue(const Acc &acc, const GemmParams &p, int e, int r0, int r1,
                                         int n0) {
  const int tx = threadIdx.x % kTX, ty = threadIdx.x / kTX;
#pragma unroll
  for (int i = 0; i < kTM; ++i)
#pragma unroll
    for (int j = 0; j < kTN; j += 2)
      emit(p, e, r0, r1, n0, ty * kTM + i, tx * kTN + j, acc.v[i][j], acc.v[i][j + 1]);
}
#endif

#if MJ_GEMM_SELF_ROUTE
static_assert(kMode != 2, "routing from the ids is GEMM1's");
// Tile tile_i from the caller's ids (MJ_GEMM_SELF_ROUTE): {expert, first row, end row, 0}, or
// expert -1 when the ids name fewer experts, or -2 when an expert has more than kBM slots (the
// block then takes routing's tile); a_row gets the tile's token rows (-1 past its end).
// Warp 0 reads the ids; every thread gets the answer.
__device__ __forceinline__ mj_int4 own_tile(const GemmParams &p, int tile_i, int *a_row) {
  __shared__ mj_int4 tile;
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    const unsigned below = (1u << lane) - 1u;
    const mj_i64 g = lane < p.own_slots ? (mj_i64)((const RouteIdT *)p.own_ids)[lane] : -1;
    const bool valid = g >= 0 && g < kRouteExperts;
    const unsigned peers = __match_any_sync(0xffffffffu, valid ? g : (mj_i64)-1);
    const bool first = valid && (peers & below) == 0;  // an expert's lowest slot
    int rank = 0, rows_before = 0;  // distinct valid ids below g; valid slots with ids below g
    for (int j = 0; j < p.own_slots; ++j) {
      const mj_i64 gj = __shfl_sync(0xffffffffu, g, j);
      const int vj = __shfl_sync(0xffffffffu, (int)valid, j);
      const int fj = __shfl_sync(0xffffffffu, (int)first, j);
      rank += fj && gj < g;
      rows_before += vj && gj < g;
    }
    // an expert of more than kBM slots (ids repeated within a token) needs routing's tiles
    const bool fits = __all_sync(0xffffffffu, !valid || __popc(peers) <= kBM);
    for (int i = lane; i < kBM; i += 32) a_row[i] = -1;
    __syncwarp();
    const unsigned owner = __ballot_sync(0xffffffffu, fits && first && rank == tile_i);
    const mj_i64 e = owner ? __shfl_sync(0xffffffffu, g, __ffs(owner) - 1) : -1;
    if (valid && g == e) a_row[__popc(peers & below)] = lane / kTopK;
    if (lane == (owner ? __ffs(owner) - 1 : 0))
      tile = owner ? mj_int4{(int)e, rows_before, rows_before + __popc(peers), 0}
                   : mj_int4{fits ? -1 : -2, 0, 0, 0};
  }
  __syncthreads();
  return tile;
}
#endif

// grid = (tiles, ceil(kN / kBN), kSplits). split_stride (read with kSplits > 1 only): floats
// between two partial y_slot arrays, at least slots * kN and a multiple of 4 (combine reads them
// in 16-byte vectors).
extern "C" __global__ void __launch_bounds__(kThreads) moejit_gemm(
    const T *a, const WeightT *w, const BiasT *bias, const unsigned char *scales,
    const int *row_slot, const float *row_weight, const mj_int4 *tiles, const int *num_tiles,
    void *out, int slab_major, const void *own_ids, int own_slots, long long split_stride) {
  const GemmParams p = {a, w, bias, scales, row_slot, row_weight, tiles, num_tiles,
                        kSplits > 1 ? (void *)((float *)out + (mj_i64)blockIdx.z * split_stride)
                                    : out,
                        slab_major, own_ids, own_slots};
  const int k_begin = kSplits > 1 ? blockIdx.z * kKSplit : 0;
  const int ktiles = (min(kK, k_begin + kKSplit) - k_begin + kBK - 1) / kBK;
  // GEMM2 under programmatic dependent launch starts while GEMM1 still runs: its tile list (from
  // routing, which finished before GEMM1's blocks passed their own wait) and its weights (the
  // caller's) are safe to read at once, so the first stages of weights stream in before the wait
  // and HBM stays busy across the change of kernel. Only h, GEMM1's output, waits.
  // A block with no tile still waits before it exits: were all of GEMM2 to end without waiting,
  // the kernels after it could start while GEMM1 still reads the workspace.
  constexpr bool kEarly = MJ_PDL && kMode == 2;
  const int l = blockIdx.x + gridDim.x * blockIdx.y;
  const int tile_i = p.slab_major ? l / gridDim.y : blockIdx.x;
  const int n0 = (p.slab_major ? l % gridDim.y : blockIdx.y) * kBN;
  __shared__ int a_row[kBM];
  bool own = MJ_GEMM_SELF_ROUTE && p.own_slots > 0;  // the tile from the ids (above)
  mj_int4 tile;
#if MJ_GEMM_SELF_ROUTE
  if (own) {
    tile = own_tile(p, tile_i, a_row);
    own = tile.x != -2;
    // routing's tile after all: every thread has read own_tile's answer (in shared memory, which
    // a wide load may read beside a_row) before a_row is written again
    if (!own) __syncthreads();
    if (own && (tile.x < 0 || n0 >= kN)) {
      mj_pdl_begin<MJ_PDL>();
      return;
    }
  }
#endif
  if (!own) {
    if (!kEarly) mj_pdl_begin<MJ_PDL>();
    // The tile count and the tile: both loads in flight at once (tile_i < gridDim.x or, slab-major,
    // < max_tiles: inside the list, if beyond its live part).
    const int ntiles = *p.num_tiles;
    tile = p.tiles[tile_i];
    if (tile_i >= ntiles || n0 >= kN) {
      if (kEarly) mj_pdl_begin<MJ_PDL>();
      return;
    }
  }
  const int e = tile.x, r0 = tile.y, r1 = tile.z;
  // routing's tile: its A rows (a self-routed tile has them from own_tile); read after a barrier
  if (!own)
    for (int i = threadIdx.x; i < kBM; i += kThreads) {
      int r = r0 + i;
      a_row[i] = r < r1 ? (kMode != 2 ? p.row_slot[r] / kTopK : r) : -1;
    }
#if MJ_GEMM_PATH == MJ_PATH_STREAM && MJ_GEMM_MXFP4
  (void)ktiles;
  float acc[kBM];
  stream_tile_fp4<kEarly>(acc, p.a, p.w + (mj_i64)e * kExpertWeights, p.scales + (mj_i64)e * kN * kKB,
                          a_row, k_begin, min(kK, k_begin + kKSplit), n0, own);
  stream_epilogue_fp4(acc, p, e, r0, r1, n0);
#elif MJ_GEMM_PATH == MJ_PATH_STREAM
  (void)ktiles;
  float acc[kBM][kVec];
  stream_tile<kEarly>(acc, p.a, p.w + (mj_i64)e * kExpertWeights, a_row, k_begin,
                      min(kK, k_begin + kKSplit), n0, own);
  stream_epilogue(acc, p, e, r0, r1, n0);
#else
  extern __shared__ mj_smem16 smem[];
  T *As = (T *)smem;
  const WeightT *w_e = p.w + (mj_i64)e * kExpertWeights;  // the expert's weights
#if MJ_GEMM_MXFP4
  // the ring's raw blocks, the decoded stage and the tile's scales follow the A tiles
  unsigned char *Raw = (unsigned char *)(As + kStages * kBM * kLdA);
  T *Bd = (T *)(Raw + kStages * kBN * kLdRaw);
  unsigned char *Sc = (unsigned char *)(Bd + kBN * kLdBd);
  auto load_w = [&](int s, int k0) { load_raw(Raw + s * kBN * kLdRaw, w_e, k0, n0); };
  load_scales(Sc, p.scales + (mj_i64)e * kN * kKB, n0);  // the caller's: safe before any wait
#else
  T *Bs = As + kStages * kBM * kLdA;
  auto load_w = [&](int s, int k0) { load_b(Bs + s * kBK * kLdB, w_e, k0, n0); };
#endif
  if (kEarly) {
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s)
      if (s < ktiles) load_w(s, k_begin + s * kBK);
    mj_pdl_begin<MJ_PDL>();
  }
  if (!own) __syncthreads();  // a_row is written
  // One cp.async group per stage; under kEarly the first group also holds the weights loaded above.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < ktiles) {
      load_a(As + s * kBM * kLdA, p.a, a_row, k_begin + s * kBK);
      if (!kEarly) load_w(s, k_begin + s * kBK);
    }
    mj_cp_async_commit();
  }
  Acc acc = {};
  for (int kt = 0; kt < ktiles; ++kt) {
    mj_cp_async_wait<kStages - 2>();
    __syncthreads();
    int pf = kt + kStages - 1;
    if (pf < ktiles) {
      int s = pf % kStages;
      load_a(As + s * kBM * kLdA, p.a, a_row, k_begin + pf * kBK);
      load_w(s, k_begin + pf * kBK);
    }
    mj_cp_async_commit();
    if (own && kt == ktiles / 2) mj_pdl_begin<MJ_PDL>();  // routing's end, for the next kernel
    int s = kt % kStages;
#if MJ_GEMM_MXFP4
    // every warp is past the last step's MMAs (the barrier above), so the decoded tile is free
    decode_stage(Bd, Raw + s * kBN * kLdRaw, Sc, k_begin + kt * kBK, n0);
    __syncthreads();
    compute_stage_b<true>(acc, As + s * kBM * kLdA, Bd);
#else
    compute_stage(acc, As + s * kBM * kLdA, Bs + s * kBK * kLdB);
#endif
  }
  epilogue(acc, p, e, r0, r1, n0);
#endif
}
