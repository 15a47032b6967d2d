// wgmma.cuh: the grouped GEMMs of the layer on sm_90a: persistent, warp-specialised, TMA + wgmma.
// Needs from the including template: T, BiasT, kMode, kAct (kMode 1's gated activation), kHasBias
// (false: biases are zeros, none read), kN, kK, kTopK, kAlpha, kLimit, kWeightOnInput,
// kBM, kBN, kARows, kStages, kGroupM, kCtas, kPingPong, kChain, mj_wgmma (one m64 x kBN x k16
// step) and its launch contract's kThreads and kSmemBytes (and kGatherThreads with kMode 1).
//
// The work: for every tile of the device-side tile list (expert e, rows [r0, r1) of the sorted
// order, at most kBM of them) and every kBN-wide column slab n0, out[rows, n0..] = A[rows] @ W[e].
// A is x_sorted [rows, kK] (kMode 1: the rows of x in sorted order, written by moejit_gather) or
// h [rows, kK] (kMode 2), read by TMA through tensor map tmap_a (2D: {kK, row capacity}) in boxes of
// kARows rows, only those that hold the tile's rows (the stage's rows past them keep whatever an
// earlier load left there: they meet only accumulator rows that are never stored); W[e] is
// read through tmap_b (3D: {kN, kK, experts}) in 64-column boxes, so K and N tails, the columns of
// a last box past kBN (a slab need not be whole boxes) and rows past the last are zeros.
// kMode 1 (gate_up): h[r, c / 2] = act(acc[c] + b[c], acc[c + 1] + b[c + 1]) in T, the product
//   scaled by weight[r] first with kWeightOnInput; staged through shared memory, 16-byte stores.
// kMode 2 (down): y_slot[row_slot[r], c] = (acc + b) * weight[r] in f32 (weight 1 with
//   kWeightOnInput), staged through shared memory a part of the slab at a time, 16-byte stores.
//
// Block: one producer warpgroup (thread 0 issues every TMA) and kBM / 64 consumer warpgroups, which
// share each item (64 rows each) or, with kPingPong (kBM = 128), take whole items in turn.
// Grid: persistent, one block per SM, walking work items i = blockIdx.x, + g, ... (BlockItems).
// Items are ordered expert by expert; within an expert, groups of at most kGroupM m-tiles (as few
// groups as that allows, of sizes that differ by one at most) take the column slabs in turn, so the
// group's A rows stay in L2 while each weight slab is read from HBM once per group; and the blocks
// at work at one time read neighbouring slabs of the same k rows.
// MJ_PDL (optional): programmatic dependent launch. The producer loads the weights of its first
// kStages k blocks before griddepcontrol.wait, as they and the tile list (from routing, which
// finished before the kernel ahead of this one passed its own wait) are safe to read while the
// kernel ahead still runs; only A (x_sorted from moejit_gather, h from GEMM1) waits.
// kChain (the weight-streaming regime): GEMM1 counts each expert's finished items in p.ready
// (zeroed by routing); GEMM2 launched with p.wait_ready (right after GEMM1, under MJ_PDL) then
// skips griddepcontrol.wait and loads an item's A once its expert's count is complete. Its items
// thus stream their weights while GEMM1's last items, of other experts, still run: the tail of a
// GEMM whose items do not fill its last round, where most SMs would otherwise wait.
//
// MJ_WGMMA_MXFP4 (optional): the weights are MXFP4 as the gpt-oss checkpoints hold them (w: blocks
// [experts, kN, kK / 32, 16] bytes, scales [experts, kN, kK / 32] e8m0; mxfp4.cuh), not a tensor
// map: the producer warpgroup's warps 2 and 3 (kDecoders threads) walk the block's items as thread
// 0 does and, for each k block, wait for its stage to be free, decode the slab's weights into it in
// the layout TMA gives (64-column boxes of 64 k rows, 128-byte rows with their 16-byte chunks
// swizzled by k % 8; zeros past kN and kK), fence the generic proxy's writes for the async one and
// arrive on the stage's full barrier, which thread 0's A copy completes. The decoders make no PDL
// wait: they read the caller's weights and routing's tile list (which thread 0 reads before its
// wait too), never what the kernel ahead writes. No stage is filled ahead of the ring (no
// load_early). Slow yet: 64 threads, loads used at once, the producer's 40 registers.
#pragma once

#ifndef MJ_PDL
#define MJ_PDL 0  // the template defines it as 1 for programmatic dependent launch
#endif
#ifndef MJ_WGMMA_MXFP4
#define MJ_WGMMA_MXFP4 0
#endif
#if MJ_WGMMA_MXFP4
#include "mxfp4.cuh"
#endif
static constexpr int kDecoders = MJ_WGMMA_MXFP4 ? 64 : 0;  // producer threads 64 .. 127

struct alignas(64) mj_tmap { mj_u64 opaque[16]; };
struct alignas(16) mj_v16 { mj_u32 v[4]; };
struct alignas(8) mj_f32x2 { float x, y; };

// The kernel's parameters but the tensor maps, gathered for the functions below.
struct WgParams {
  const BiasT *bias;        // [experts, kN]
  const int *row_slot;   // [rows]
  const float *row_weight; // [rows]
  const mj_int4 *tiles;     // [max_tiles]: {expert, row_begin, row_end, the expert's first tile}
  const int *num_tiles;     // [1]
  const int *expert_offsets;    // [experts + 1]
  void *out;
  int *ready;               // [experts]: GEMM1 items done per expert (kChain)
  int wait_ready;           // GEMM2: wait on ready rather than on the kernel ahead (kChain)
};

static constexpr int kBK = 64;                      // one 128-byte swizzle row of 16-bit elements
static constexpr int kConsumers = kBM / 64;         // consumer warpgroups, 64 rows each
static_assert(kThreads == 128 * (1 + kConsumers), "a producer warpgroup and the consumers");
static constexpr int kNT = (kN + kBN - 1) / kBN;    // column slabs
static constexpr int kKT = (kK + kBK - 1) / kBK;    // k blocks
static constexpr int kABytes = kBM * kBK * 2;
static constexpr int kABoxBytes = kARows * kBK * 2;  // one TMA box of A
static constexpr int kBBoxes = (kBN + 63) / 64;     // 64-column TMA boxes of a weight slab
static constexpr int kBBytes = kBK * 64 * 2 * kBBoxes;
static constexpr int kAcc = kBN / 2;                // accumulators per consumer thread
static constexpr int kStageLd = kBN / 2 + 8;        // kMode 1 staging row (T), padded by 16 bytes
// kMode 2 stages its f32 rows in kParts parts of kJPart 8-column steps each, few enough columns
// that a part's row takes no more room than a kMode 1 row (4 parts when kBN / 8 is a multiple of
// 4; else 5 do, as kBN >= 64). Each warp stages 16 rows; mj_tune_gemm_smem counts kMode 1's.
static constexpr int kJ = kBN / 8;                  // 8-column steps of the accumulator layout
static constexpr int kParts = kJ % 4 == 0 ? 4 : 5;
static constexpr int kJPart = (kJ + kParts - 1) / kParts;
static constexpr int kStageLdF = 8 * kJPart + 4;    // kMode 2 staging row (f32), padded by 16 bytes
static constexpr int kWarpStage = 16 * kStageLd * 2;
static_assert(kStageLdF * 4 <= kStageLd * 2, "a kMode 2 part fits a kMode 1 staging row");
static_assert(sizeof(T) == 2, "wgmma takes 16-bit operands");
static_assert(kN % 8 == 0 && kK % 8 == 0, "N and K must be multiples of 8");
static_assert(kBN % 16 == 0 && kBN <= 256, "a slab is a multiple of 16 columns, at most 256");
static_assert(kARows % 8 == 0 && kBM % kARows == 0, "A boxes are whole 8-row swizzle groups of a tile");

// ---- mbarriers, TMA and wgmma (PTX) -------------------------------------------------------------

__device__ __forceinline__ void mj_mbar_init(mj_u64 *bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" :: "r"(mj_smem_addr(bar)), "r"(count));
}
__device__ __forceinline__ void mj_mbar_expect_tx(mj_u64 *bar, int bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n"
               :: "r"(mj_smem_addr(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mj_mbar_arrive(mj_u64 *bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" :: "r"(mj_smem_addr(bar)) : "memory");
}
// Waits until the phase of the given parity has completed.
__device__ __forceinline__ void mj_mbar_wait(mj_u64 *bar, unsigned parity) {
  unsigned done;
  do {
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                 "selp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done) : "r"(mj_smem_addr(bar)), "r"(parity) : "memory");
  } while (!done);
}

__device__ __forceinline__ void mj_tma_2d(void *dst, const mj_tmap *map, int c0, int c1, mj_u64 *bar) {
  asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes "
               "[%0], [%1, {%2, %3}], [%4];\n"
               :: "r"(mj_smem_addr(dst)), "l"(map), "r"(c0), "r"(c1), "r"(mj_smem_addr(bar))
               : "memory");
}
__device__ __forceinline__ void mj_tma_3d(void *dst, const mj_tmap *map, int c0, int c1, int c2,
                                          mj_u64 *bar) {
  asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes "
               "[%0], [%1, {%2, %3, %4}], [%5];\n"
               :: "r"(mj_smem_addr(dst)), "l"(map), "r"(c0), "r"(c1), "r"(c2),
                  "r"(mj_smem_addr(bar))
               : "memory");
}

// A shared-memory matrix descriptor, 128-byte swizzle. K-major A: rows of 128 bytes, 8-row groups
// 1024 bytes apart (sbo). N-major B: 64-column boxes lbo bytes apart, 8-row k groups 1024 apart.
__device__ __forceinline__ mj_u64 mj_desc(mj_u32 addr, mj_u32 lbo, mj_u32 sbo) {
  return (mj_u64)((addr & 0x3FFFF) >> 4) | ((mj_u64)(lbo >> 4) << 16) |
         ((mj_u64)(sbo >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void mj_wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void mj_wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void mj_wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" :: "n"(N) : "memory");
}
// Keeps the compiler from moving accumulator reads or writes across the asynchronous MMAs.
__device__ __forceinline__ void mj_fence_acc(float (&d)[kAcc]) {
#pragma unroll
  for (int i = 0; i < kAcc; ++i) asm volatile("" : "+f"(d[i]) :: "memory");
}

// ---- the work list ------------------------------------------------------------------------------

// How many blocks take items: all of them, but with 64-row tiles (the weight-streaming regime of
// small batches) and items for two rounds, only as many as share them evenly: else a second round
// that some blocks ran while the others had left read the weights at a fraction of HBM's rate.
// With more rounds the last is a smaller part of the time (docs/experiments.md#item-blocks).
__device__ __forceinline__ int item_blocks(int items) {
  const int g = gridDim.x;
  if (kBM != 64 || items <= g || items > 2 * g) return g;
  return (items + 1) / 2;
}

// This block's items, the list the producer and every consumer walk: item j is blockIdx.x + j g,
// g = item_blocks(items), of count (none for a block from g or items on).
struct BlockItems {
  int first, step, count;
  __device__ __forceinline__ explicit BlockItems(int items)
      : first(blockIdx.x), step(item_blocks(items)) {
    count = first < min(step, items) ? (items - 1 - first) / step + 1 : 0;
  }
  __device__ __forceinline__ int operator[](int j) const { return first + j * step; }
};

struct Item { int e, r0, r1, n0; };

__device__ __forceinline__ Item decode_item(const WgParams &p, int i) {
  const mj_int4 tile = p.tiles[i / kNT];     // a tile of the item's expert (items go expert by expert)
  const int e = tile.x, first = tile.w;
  const int count = (p.expert_offsets[e + 1] - p.expert_offsets[e] + kBM - 1) / kBM;
  const int j = i - first * kNT;              // the item within its expert
  // ng groups: the first count % ng of gs + 1 m-tiles, the others of gs: groups of kGroupM and a
  // remainder would read the expert's weights again for what may be a single m-tile
  // (docs/experiments.md#group-m).
  const int ng = (count + kGroupM - 1) / kGroupM;
  const int gs = count / ng, big = count % ng, big_items = big * (gs + 1) * kNT;
  const int gm = j < big_items ? gs + 1 : gs;
  const int g = j < big_items ? j / (gm * kNT) : big + (j - big_items) / (gm * kNT);
  const int t0 = g * gs + min(g, big);        // the group's first m-tile
  const int jj = j - t0 * kNT;                // the item within its group
  const mj_int4 mt = p.tiles[first + t0 + jj % gm];
  return Item{e, mt.y, mt.z, (jj / gm) * kBN};
}

// ---- chaining GEMM2's items to GEMM1's (kChain) -----------------------------------------------

// GEMM1's items reach the count through a thread of the producer warpgroup (the counter), so that
// the consumers never wait on a fence at the GPU's scope (docs/experiments.md#chain).
// done[0..1] ("stored") and done[2..3] ("counted") are mbarriers:
// the threads that stored the block's item j arrive on stored[j % 2] (release at the block's scope)
// after fence.proxy.async (GEMM2 reads h by TMA, the async proxy; it fences on its side too);
// the counter waits for that phase (acquire), adds the item to its expert's count behind
// fence.acq_rel.gpu (cumulative: it covers the stores the wait has shown it) and arrives on
// counted[j % 2], which the consumers wait for before they arrive on that barrier for item j + 2.
__device__ __forceinline__ void item_stored(int j, mj_u64 *done) {
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
  if (j >= 2) mj_mbar_wait(&done[2 + (j & 1)], ((j >> 1) - 1) & 1);
  mj_mbar_arrive(&done[j & 1]);
}

__device__ __forceinline__ void count_items(const WgParams &p, int items, mj_u64 *done) {
  const BlockItems mine(items);
  for (int j = 0; j < mine.count; ++j) {
    const int e = p.tiles[mine[j] / kNT].x;
    mj_mbar_wait(&done[j & 1], (j >> 1) & 1);
    asm volatile("fence.acq_rel.gpu;\n"
                 "red.relaxed.gpu.global.add.s32 [%0], 1;\n" :: "l"(p.ready + e) : "memory");
    mj_mbar_arrive(&done[2 + (j & 1)]);
  }
}

// GEMM2's producer, before the first A load of an item of expert e: waits until GEMM1 has stored
// all of e's h rows (its tiles times GEMM1's column slabs, 2 kK columns in kBN-wide slabs), then
// orders its TMA reads (the async proxy) after what it has seen.
__device__ __forceinline__ void wait_expert(const WgParams &p, int e) {
  constexpr int kNT1 = (2 * kK + kBN - 1) / kBN;
  const int need = (p.expert_offsets[e + 1] - p.expert_offsets[e] + kBM - 1) / kBM * kNT1;
  for (;;) {
    int done;
    asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n"
                 : "=r"(done) : "l"(p.ready + e) : "memory");
    if (done >= need) break;
    __nanosleep(100);
  }
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
}

// ---- epilogues ----------------------------------------------------------------------------------

// The biases of this lane's columns of an item's slab, loaded with its Rows before the main loop,
// so that the epilogue never waits on a global load (docs/experiments.md#bias-preload): pair[j]
// holds columns n0 + 8 j + 2 (lane % 4) and the next one (one 4- or 8-byte load), zeros past kN.
struct alignas(2 * sizeof(BiasT)) BiasPair { BiasT x, y; };
struct SlabBias { BiasPair pair[kJ]; };

__device__ __forceinline__ SlabBias load_bias(const WgParams &p, const Item &it) {
  const int lane = threadIdx.x & 31;
  const BiasT *b = p.bias + (kHasBias ? (mj_i64)it.e * kN : 0);
  SlabBias out;
#pragma unroll
  for (int j = 0; j < kJ; ++j) {
    const int c = it.n0 + 8 * j + 2 * (lane & 3);
    out.pair[j] = kHasBias && c < kN ? *(const BiasPair *)(b + c) : BiasPair{};  // zeros: none
  }
  return out;
}

__device__ __forceinline__ mj_f32x2 bias_f32(const SlabBias &bias, int j) {
  return mj_f32x2{mj_to_f32(bias.pair[j].x), mj_to_f32(bias.pair[j].y)};
}

// mj_swiglu with the fast exponential and division (ex2.approx, rcp.approx), for 16-bit outputs:
// their error is far below one unit of a bf16 or f16 h. A large negative gate sends the exponential
// to infinity and the quotient to 0, the limit.
__device__ __forceinline__ float swiglu_fast(float gate, float up) {
  gate = fminf(gate, kLimit);
  up = fminf(fmaxf(up, -kLimit), kLimit);
  return __fdividef((up + 1.0f) * gate, 1.0f + __expf(-kAlpha * gate));
}

// kMode 1's gated activation (kAct): SwiGLU-OAI the fast way, the others as prelude.cuh has them.
__device__ __forceinline__ float activate(float gate, float up) {
  return kAct == MJ_ACT_SWIGLU_OAI ? swiglu_fast(gate, up)
                                   : mj_activate<kAct>(gate, up, kAlpha, kLimit);
}

// What the epilogue needs of the routing for this lane's rows, read before the item's main loop so
// that its loads are done by the time the accumulators are: the factor of each of its two rows,
// the routing weight where this GEMM applies it (kMode 1 with kWeightOnInput, kMode 2 without;
// 0 past the item's last row) and 1 elsewhere; and, kMode 2, lane l < 16 of a warp: the slot of
// the warp's row l.
struct Rows { float wt[2]; int slot; };
static constexpr bool kApplyWeight = (kMode == 1) == kWeightOnInput;

__device__ __forceinline__ Rows load_rows(const WgParams &p, const Item &it, int mb) {
  const int lane = threadIdx.x & 31, w = (threadIdx.x >> 5) & 3;
  const int rbase = it.r0 + mb * 64 + w * 16;
  Rows rows;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = rbase + (lane >> 2) + 8 * h;
    rows.wt[h] = !kApplyWeight ? 1.0f : r < it.r1 ? p.row_weight[r] : 0.0f;
  }
  rows.slot = kMode == 2 && lane < 16 && rbase + lane < it.r1 ? p.row_slot[rbase + lane] : -1;
  return rows;
}

// acc[4 j + 2 h + q]: row 16 w + lane / 4 + 8 h of the warpgroup's 64, column 8 j + 2 (lane % 4) + q.
// stage: this warp's staging buffer (kWarpStage bytes); mb: which 64 rows of the item acc holds.
__device__ __forceinline__ void epilogue(const WgParams &p, const Item &it, int mb, float (&acc)[kAcc],
                                         const Rows &rows, const SlabBias &bias,
                                         unsigned char *stage) {
  const int lane = threadIdx.x & 31, w = (threadIdx.x >> 5) & 3;
  const float *wt = rows.wt;
  if (kMode == 1) {
    T *s = (T *)stage;  // this warp's 16 rows
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      const mj_f32x2 b = bias_f32(bias, j);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float v0 = acc[4 * j + 2 * h] * wt[h], v1 = acc[4 * j + 2 * h + 1] * wt[h];
        s[((lane >> 2) + 8 * h) * kStageLd + 4 * j + (lane & 3)] =
            mj_from_f32<T>(activate(v0 + b.x, v1 + b.y));
      }
    }
    __syncwarp();
    constexpr int kChunks = kBN / 16;  // 16-byte chunks per staged row (kBN / 2 elements)
    const int rbase = it.r0 + mb * 64 + w * 16;
#pragma unroll
    for (int idx = lane; idx < 16 * kChunks; idx += 32) {
      const int rr = idx / kChunks, cc = (idx % kChunks) * 8;
      const int r = rbase + rr, c = it.n0 / 2 + cc;
      if (r < it.r1 && c < kN / 2)
        *(mj_v16 *)((T *)p.out + (mj_i64)r * (kN / 2) + c) = *(const mj_v16 *)(s + rr * kStageLd + cc);
    }
    __syncwarp();
  } else {
    // A row's outputs go to y_slot[slot] at scattered slots: stored straight from the accumulator
    // layout, one store instruction would touch 8 rows for 32 bytes each. Staged, a part of the
    // slab at a time, each store covers 16 bytes a lane of two or three whole rows.
    float *s = (float *)stage;  // this warp's 16 rows
#pragma unroll
    for (int part = 0; part < kParts; ++part) {
      const int j0 = part * kJPart, nj = kJ - j0 < kJPart ? kJ - j0 : kJPart;
      if (nj <= 0) break;
#pragma unroll
      for (int jj = 0; jj < nj; ++jj) {
        const mj_f32x2 b = bias_f32(bias, j0 + jj);
#pragma unroll
        for (int h = 0; h < 2; ++h)
          *(mj_f32x2 *)(s + ((lane >> 2) + 8 * h) * kStageLdF + 8 * jj + 2 * (lane & 3)) =
              mj_f32x2{(acc[4 * (j0 + jj) + 2 * h] + b.x) * wt[h],
                       (acc[4 * (j0 + jj) + 2 * h + 1] + b.y) * wt[h]};
      }
      __syncwarp();
      constexpr int kChunks = 2 * kJPart;  // 16-byte chunks per staged row: kJPart rounds of 32
#pragma unroll
      for (int idx = lane; idx < 16 * kChunks; idx += 32) {
        const int rr = idx / kChunks, cc = (idx % kChunks) * 4;
        const int slot = __shfl_sync(0xffffffffu, rows.slot, rr);
        const int c = it.n0 + 8 * j0 + cc;
        if (slot >= 0 && cc < 8 * nj && c < kN)
          *(mj_v16 *)((float *)p.out + (mj_i64)slot * kN + c) =
              *(const mj_v16 *)(s + rr * kStageLdF + cc);
      }
      __syncwarp();
    }
  }
}

// ---- the kernel ---------------------------------------------------------------------------------

// One k block of MMAs on ring stage s into acc (the 64 rows of the stage's A from row m0 on).
__device__ __forceinline__ void mma_block(float (&acc)[kAcc], const unsigned char *smem_a,
                                          const unsigned char *smem_b, int s, int m0, bool first) {
  const mj_u32 a = mj_smem_addr(smem_a + s * kABytes + m0 * 128);
  const mj_u32 b = mj_smem_addr(smem_b + s * kBBytes);
#pragma unroll
  for (int ks = 0; ks < kBK / 16; ++ks)
    mj_wgmma(acc, mj_desc(a + ks * 32, 16, 1024), mj_desc(b + ks * 2048, kBK * 128, 1024),
             !first || ks > 0);
}

// The ring position of the q-th k block the producer loads: stage and phase parity.
struct RingPos {
  int s;
  unsigned phase;
  __device__ __forceinline__ explicit RingPos(unsigned q) : s(q % kStages), phase((q / kStages) & 1) {}
  __device__ __forceinline__ void next() {
    if (++s == kStages) {
      s = 0;
      phase ^= 1;
    }
  }
};

// The item whose first k block ring position pos holds, as the producer wrote it beside the stage
// (ring_items[s]) before it armed the stage's full barrier: read once that barrier's phase is done
// (main_loop's own wait then passes at once), not decoded again from the tile list, three
// dependent global loads (docs/experiments.md#ring-items). consume_pingpong decodes it under the
// other consumer's main loop.
__device__ __forceinline__ Item stage_item(mj_u64 *full, const Item *ring_items, const RingPos &pos) {
  mj_mbar_wait(&full[pos.s], pos.phase);
  return ring_items[pos.s];
}

// The main loop of one item: every k block of MMAs into acc, kM 64-row accumulators on rows
// [m0, m0 + 64 kM) of the stage's A, each stage released once the k block after it has been issued
// and the one before has completed. Returns the last stage, still held: finish_item releases it.
template <int kM>
__device__ __forceinline__ int main_loop(float (&acc)[kM][kAcc], int m0, const unsigned char *smem_a,
                                         const unsigned char *smem_b, mj_u64 *full, mj_u64 *empty,
                                         RingPos &pos) {
  const int lane = threadIdx.x & 31;
  int prev = -1;
  for (int kb = 0; kb < kKT; ++kb) {
    mj_mbar_wait(&full[pos.s], pos.phase);
#pragma unroll
    for (int m = 0; m < kM; ++m) mj_fence_acc(acc[m]);
    mj_wgmma_fence();
#pragma unroll
    for (int m = 0; m < kM; ++m) mma_block(acc[m], smem_a, smem_b, pos.s, m0 + 64 * m, kb == 0);
    mj_wgmma_commit();
#pragma unroll
    for (int m = 0; m < kM; ++m) mj_fence_acc(acc[m]);
    mj_wgmma_wait<1>();  // the previous k block's MMAs are done: its stage can be refilled
    if (prev >= 0 && lane == 0) mj_mbar_arrive(&empty[prev]);
    prev = pos.s;
    pos.next();
  }
  return prev;
}

// Waits for the item's last MMAs and releases their stage; the accumulators are then final.
template <int kM>
__device__ __forceinline__ void finish_item(float (&acc)[kM][kAcc], mj_u64 *empty, int last) {
  mj_wgmma_wait<0>();
#pragma unroll
  for (int m = 0; m < kM; ++m) mj_fence_acc(acc[m]);
  if ((threadIdx.x & 31) == 0) mj_mbar_arrive(&empty[last]);
}

// Cooperative consumers: consumer warpgroup cw multiplies rows [64 cw, 64 cw + 64) of every item.
__device__ __forceinline__ void consume_together(const WgParams &p, int items, int cw,
                                                 const unsigned char *smem_a,
                                                 const unsigned char *smem_b, mj_u64 *full,
                                                 mj_u64 *empty, mj_u64 *done,
                                                 const Item *ring_items, unsigned char *stage) {
  RingPos pos(0);
  float acc[1][kAcc];
  const BlockItems mine(items);
  for (int j = 0; j < mine.count; ++j) {
    const Item it = stage_item(full, ring_items, pos);
    const Rows rows = load_rows(p, it, cw);
    const SlabBias bias = load_bias(p, it);
    finish_item(acc, empty, main_loop(acc, cw * 64, smem_a, smem_b, full, empty, pos));
    epilogue(p, it, cw, acc[0], rows, bias, stage);
    if (kChain && kMode == 1) item_stored(j, done);
  }
}

__device__ __forceinline__ void named_sync(int id) {
  asm volatile("bar.sync %0, 256;\n" :: "r"(id) : "memory");
}
__device__ __forceinline__ void named_arrive(int id) {
  asm volatile("bar.arrive %0, 256;\n" :: "r"(id) : "memory");
}

// Ping-pong consumers: consumer c takes the block's items j = c, c + 2, ... whole (all kBM = 128
// rows, as two 64-row accumulators), so that one consumer's epilogue runs under the other's MMAs.
// Their main loops take turns: consumer c starts one after named barrier 1 + c, which the other
// arrives at when it has issued its last k block. The ring's stages are thus taken in the order
// the producer fills them, which the parity waits need (a consumer waiting two phases ahead
// would pass at once).
__device__ __forceinline__ void consume_pingpong(const WgParams &p, int items, int c,
                                                 const unsigned char *smem_a,
                                                 const unsigned char *smem_b, mj_u64 *full,
                                                 mj_u64 *empty, mj_u64 *done,
                                                 unsigned char *stage) {
  const BlockItems mine(items);
  float acc[2][kAcc];
  for (int j = c; j < mine.count; j += 2) {
    // Decoded from the tile list, with its rows and bias loaded, while the other consumer's main
    // loop runs: ring_items would make this wait for the item's first stage after named_sync
    // (docs/experiments.md#pingpong).
    const Item it = decode_item(p, mine[j]);
    const Rows rows0 = load_rows(p, it, 0), rows1 = load_rows(p, it, 1);
    const SlabBias bias = load_bias(p, it);
    if (j > 0) named_sync(1 + c);
    RingPos pos((unsigned)j * kKT);
    const int last = main_loop(acc, 0, smem_a, smem_b, full, empty, pos);
    named_arrive(2 - c);  // the other consumer's main loop may start
    finish_item(acc, empty, last);
    epilogue(p, it, 0, acc[0], rows0, bias, stage);
    epilogue(p, it, 1, acc[1], rows1, bias, stage);
    if (kChain && kMode == 1) item_stored(j, done);
  }
  // The consumer that did not take the block's last item answers the other's last arrival.
  if (mine.count > 0 && (mine.count - 1) % 2 != c) named_sync(1 + c);
}

// The bytes of A that item it loads per k block: the boxes that hold its rows.
__device__ __forceinline__ int a_bytes(const Item &it) {
  return (it.r1 - it.r0 + kARows - 1) / kARows * kABoxBytes;
}

// The A boxes of item it's k block kb into ring stage s.
__device__ __forceinline__ void load_a(const mj_tmap *tmap_a, unsigned char *smem_a, int s,
                                       const Item &it, int kb, mj_u64 *full) {
  for (int r = 0; r < it.r1 - it.r0; r += kARows)
    mj_tma_2d(smem_a + s * kABytes + r * 128, tmap_a, kb * kBK, it.r0 + r, &full[s]);
}

// The weight boxes of item it's k block kb into ring stage s.
__device__ __forceinline__ void load_b(const mj_tmap *tmap_b, unsigned char *smem_b, int s,
                                       const Item &it, int kb, mj_u64 *full) {
#pragma unroll
  for (int j = 0; j < kBBoxes; ++j)
    mj_tma_3d(smem_b + s * kBBytes + j * kBK * 128, tmap_b, it.n0 + 64 * j, kb * kBK, it.e, &full[s]);
}

// The weights of the block's first k blocks, up to one per stage, into fresh stages 0, 1, ...,
// each stage's full barrier told to expect its A too; returns how many.
__device__ __forceinline__ int load_early(const WgParams &p, int items, const mj_tmap *tmap_b,
                                          unsigned char *smem_b, mj_u64 *full, Item *ring_items) {
  int q = 0;
  const BlockItems mine(items);
  for (int j = 0; j < mine.count && q < kStages; ++j) {
    const Item it = decode_item(p, mine[j]);
    for (int kb = 0; kb < kKT && q < kStages; ++kb, ++q) {
      if (kb == 0) ring_items[q] = it;
      mj_mbar_expect_tx(&full[q], a_bytes(it) + kBBytes);
      load_b(tmap_b, smem_b, q, it, kb, full);
    }
  }
  return q;
}

#if MJ_WGMMA_MXFP4
static_assert(kK % 32 == 0 && kN % 32 == 0, "MXFP4: whole 32-weight blocks");
static constexpr int kKB = kK / 32;  // scale blocks along K, a row

// One k block (kb) of item it's weight slab into ring stage s, decoded from MXFP4 by decoder d of
// kDecoders: tasks of 8 columns x 8 k rows, each 8 four-byte loads (a column's 8 weights) and one
// scale a column, then 8 swizzled 16-byte stores (a k row's 8 columns, one 16-byte chunk).
__device__ __forceinline__ void decode_b(unsigned char *smem_b, int s, const Item &it, int kb,
                                         const unsigned char *__restrict__ w,
                                         const unsigned char *__restrict__ scales, int d) {
  constexpr int kTasks = kBN / 8 * (kBK / 8);  // column groups x 8-row k pieces
  unsigned char *stage = smem_b + s * kBBytes;
  for (int t = d; t < kTasks; t += kDecoders) {
    const int g = t / (kBK / 8), q = t % (kBK / 8);  // columns 8 g .., k rows 8 q ..
    const int k0 = kb * kBK + q * 8;                 // the piece's first k (whole: 32 | kK)
    mj_u32 code[8];
    float scale[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int n = it.n0 + 8 * g + i;
      const bool ok = n < kN && k0 < kK;
      const mj_i64 row = (mj_i64)it.e * kN + (ok ? n : 0);
      code[i] = ok ? *(const mj_u32 *)(w + row * (kK / 2) + k0 / 2) : 0u;
      scale[i] = ok ? mj_e8m0(scales[row * kKB + k0 / 32]) : 0.0f;
    }
    const int box = (8 * g) / 64, chunk = g % 8;
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
      // the rows in an order rotated by q: the 8 lanes of a quarter warp (one g, q = 0 .. 7) then
      // store to 8 different swizzled chunks, not all to one (an 8-way bank conflict)
      const int kr = (kk + q) & 7, k = q * 8 + kr;  // the row within the k block
      mj_u32 out[4];
#pragma unroll
      for (int i = 0; i < 8; i += 2) {
        const T lo = mj_from_f32<T>(mj_e2m1(code[i] >> (4 * kr)) * scale[i]);
        const T hi = mj_from_f32<T>(mj_e2m1(code[i + 1] >> (4 * kr)) * scale[i + 1]);
        out[i / 2] = (mj_u32)lo.bits | ((mj_u32)hi.bits << 16);
      }
      *(uint4 *)(stage + box * kBK * 128 + k * 128 + ((chunk ^ (k & 7)) * 16)) =
          make_uint4(out[0], out[1], out[2], out[3]);
    }
  }
}

// A decoder's walk: the block's items and k blocks in thread 0's order, each stage decoded once
// it is free, then published to the consumers (their wgmma reads it through the async proxy).
__device__ __forceinline__ void decode_items(const WgParams &p, int items, unsigned char *smem_b,
                                             mj_u64 *full, mj_u64 *empty,
                                             const unsigned char *w, const unsigned char *scales) {
  const int d = threadIdx.x - (128 - kDecoders);
  RingPos pos(0);
  const BlockItems mine(items);
  for (int j = 0; j < mine.count; ++j) {
    const Item it = decode_item(p, mine[j]);
    for (int kb = 0; kb < kKT; ++kb) {
      mj_mbar_wait(&empty[pos.s], pos.phase ^ 1);  // a fresh barrier counts as released
      decode_b(smem_b, pos.s, it, kb, w, scales, d);
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      mj_mbar_arrive(&full[pos.s]);
      pos.next();
    }
  }
}
#endif

// Registers: the producer warpgroup gives back all but 40 a thread to the consumers (setmaxnreg):
// 232 each for two consumers in one block, 216 for one consumer in each of two blocks.
static constexpr int kConsumerRegs = kConsumers == 2 ? 232 : kCtas == 2 ? 216 : 0;

// The stage ring, the staging of the consumer warps' output and the slack to align the ring.
static_assert(kStages * (kABytes + kBBytes) + kConsumers * 4 * kWarpStage + 1024 <= kSmemBytes,
              "the dynamic shared memory of the launch contract holds the block's layout");

extern "C" __global__ void __launch_bounds__(kThreads, kCtas)
moejit_wgmma(const __grid_constant__ mj_tmap tmap_a, const __grid_constant__ mj_tmap tmap_b,
             const BiasT *bias, const int *row_slot, const float *row_weight,
             const mj_int4 *tiles, const int *num_tiles, const int *expert_offsets, void *out,
             int *ready, int wait_ready, const unsigned char *w, const unsigned char *scales) {
  const WgParams p = {bias,           row_slot, row_weight, tiles,     num_tiles,
                      expert_offsets, out,      ready,      wait_ready};
  extern __shared__ unsigned char smem_raw[];
  __shared__ __align__(8) mj_u64 full[kStages], empty[kStages], done[4];
  __shared__ Item ring_items[kStages];  // the item of a stage that holds an item's first k block
                                        // (for consume_together)
  // Swizzled TMA boxes want 1024-byte alignment; kSmemBytes holds 1024 bytes of slack.
  unsigned char *base = smem_raw + ((1024 - (mj_smem_addr(smem_raw) & 1023)) & 1023);
  unsigned char *smem_a = base;
  unsigned char *smem_b = base + kStages * kABytes;
  unsigned char *stage_out = smem_b + kStages * kBBytes;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mj_mbar_init(&full[s], 1 + kDecoders);  // thread 0's A copy, and each decoder
      mj_mbar_init(&empty[s], kPingPong ? 4 : kConsumers * 4);
    }
    // an item's storing threads (chained GEMM1): its consumer warpgroups; the counter thread
    for (int i = 0; i < 4; ++i)
      mj_mbar_init(&done[i], i < 2 ? (kPingPong ? 128 : 128 * kConsumers) : 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  const int items = *p.num_tiles * kNT;
  const int wg = threadIdx.x / 128;
  if (wg == 0) {
    if (kConsumerRegs) asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    if (threadIdx.x == 0) {
      asm volatile("prefetch.tensormap [%0];\n" :: "l"(&tmap_a) : "memory");
      if (!MJ_WGMMA_MXFP4) asm volatile("prefetch.tensormap [%0];\n" :: "l"(&tmap_b) : "memory");
      // Under MJ_PDL the weights of the first `early` k blocks (fresh stages 0, 1, ...: no empty
      // wait) go out before the wait, their A after it.
      const int early =
          MJ_PDL && !MJ_WGMMA_MXFP4 ? load_early(p, items, &tmap_b, smem_b, full, ring_items) : 0;
      // chained: each item waits for its own expert's h (wait_ready) instead of the whole GEMM1
      const bool chained = kChain && kMode == 2 && p.wait_ready;
      if (chained)
        mj_pdl_trigger<1>();
      else
        mj_pdl_begin<MJ_PDL>();
      RingPos pos(0);
      int q = 0, ready_e = -1;  // ready_e: the last expert seen ready
      const BlockItems mine(items);
      for (int j = 0; j < mine.count; ++j) {
        const Item it = decode_item(p, mine[j]);
        for (int kb = 0; kb < kKT; ++kb, ++q) {
          const int s = pos.s;
          if (q >= early) {
            mj_mbar_wait(&empty[s], pos.phase ^ 1);  // a fresh barrier counts as released
            if (kb == 0) ring_items[s] = it;         // (load_early wrote those of its stages)
            if (MJ_WGMMA_MXFP4) {  // the decoders write the weights
              mj_mbar_expect_tx(&full[s], a_bytes(it));
            } else {
              mj_mbar_expect_tx(&full[s], a_bytes(it) + kBBytes);
              load_b(&tmap_b, smem_b, s, it, kb, full);
            }
          }
          if (chained && kb == 0 && it.e != ready_e) {
            wait_expert(p, it.e);
            ready_e = it.e;
          }
          load_a(&tmap_a, smem_a, s, it, kb, full);
          pos.next();
        }
      }
    } else if (kChain && kMode == 1 && threadIdx.x == 32) {
      count_items(p, items, done);
    }
#if MJ_WGMMA_MXFP4
    else if (threadIdx.x >= 128 - kDecoders) {
      decode_items(p, items, smem_b, full, empty, w, scales);
    }
#else
    (void)w, (void)scales;  // MXFP4 weights only
#endif
  } else {
    if (kConsumerRegs) asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" :: "n"(kConsumerRegs));
    unsigned char *stage = stage_out + ((wg - 1) * 4 + ((threadIdx.x >> 5) & 3)) * kWarpStage;
    if (kPingPong)
      consume_pingpong(p, items, wg - 1, smem_a, smem_b, full, empty, done, stage);
    else
      consume_together(p, items, wg - 1, smem_a, smem_b, full, empty, done, ring_items, stage);
  }
}

#if MJ_WGMMA_GATHER
// The permuted copy GEMM1 reads: x_sorted[slot_row[t * kTopK + k]] = x[t] for each of the token's
// slots that has a row. One thread per 16 bytes of x: it loads them, then stores them kTopK times,
// so that every load of a small batch is in flight at once (docs/experiments.md#gather).
// grid = ceil(tokens * kK / 8 / kGatherThreads), block = kGatherThreads. Under programmatic
// dependent launch (the forward's own choice; without it the wait returns at once) it starts while
// routing runs: x, the caller's, is read before the wait, slot_row after it.
extern "C" __global__ void __launch_bounds__(kGatherThreads) moejit_gather(
    const T *__restrict__ x, const int *__restrict__ slot_row, int tokens,
    T *__restrict__ x_sorted) {
  constexpr int kChunks = kK / 8;  // 16-byte chunks of a row
  const mj_i64 i = (mj_i64)blockIdx.x * kGatherThreads + threadIdx.x;
  const int t = (int)(i / kChunks), c = (int)(i % kChunks);
  mj_v16 v;
  if (t < tokens) v = ((const mj_v16 *)(x + (mj_i64)t * kK))[c];
  mj_pdl_begin<1>();
  if (t >= tokens) return;
#pragma unroll
  for (int k = 0; k < kTopK; ++k) {
    const int row = slot_row[(mj_i64)t * kTopK + k];
    if (row >= 0) ((mj_v16 *)(x_sorted + (mj_i64)row * kK))[c] = v;
  }
}
#endif
