// route.cuh: routing as a deterministic counting sort, all on the GPU, no host round trip.
// Needs from the including template: kExperts (local experts), kGlobalExperts (ids' range),
// kMapped (ids go through expert_map), kCapped (capacity mode), kTopK, kChunk, kDense, IdT,
// WeightT, and with MJ_ROUTE_LOGITS: LogitT, UserIdT, UserWeightT. MJ_PDL (optional, 0 or 1).
//
// Two ways to the same result: count + scan + scatter (any number of slots, three launches), or
// moejit_route_small (one block, one launch, at most kSmallSlots slots: the decode regime).
//
// Slots are the flattened positions s = t * kTopK + k. A slot's id g must lie in [0, kGlobalExperts)
// (else it is counted in flags[0] and contributes nothing); its local expert is e = expert_map[g]
// when kMapped (e < 0: another rank's expert, no row, no flag), else g. The slots of one expert end
// up contiguous, in increasing s, at rows [expert_off[e], expert_off[e + 1]) of the sorted order;
// with kCapped an expert keeps its first `capacity` slots (in s order) and drops the rest. The tile
// list cuts each expert's rows into tiles of block_m rows: {expert, row_begin, row_end, first}, with
// `first` the index of that expert's first tile (a kernel that walks one expert's tiles starts there).
// A slot without a row gets slot_pos = -1.
#pragma once

#ifndef MJ_PDL
#define MJ_PDL 0  // the template defines it as 1 for programmatic dependent launch
#endif

// Where slot s goes: its local expert, or kExperts for a bad id, or -1 for no row without a flag.
// ids is not __restrict__: moejit_route_small_logits reads ids its own block has just written.
__device__ __forceinline__ int mj_route_expert(const IdT *ids, const int *__restrict__ expert_map,
                                               int s) {
  mj_i64 g = mj_load_id(ids, s);
  if (g < 0 || g >= kGlobalExperts) return kExperts;
  if (!kMapped) return (int)g;
  int e = expert_map[g];
  return e < 0 ? -1 : (e < kExperts ? e : kExperts);
}

#if MJ_ROUTE_LOGITS
// Top-kTopK of token t's logits (ties: the lower id), then softmax over those K. One warp per
// token, all 32 lanes calling; lane l owns ids l, l + 32, ... .
// ids_out, w_out: [tokens, kTopK] (int32, f32) in the workspace; user_ids / user_w: the same, in the
// caller's types, when not NULL.
template <typename UserId, typename UserW>
__device__ __forceinline__ void mj_topk_softmax(const LogitT *__restrict__ logits, int t, int lane,
                                                int *ids_out, float *w_out, UserId *user_ids,
                                                UserW *user_w) {
  const LogitT *row = logits + (mj_i64)t * kGlobalExperts;
  const float inf = __int_as_float(0x7f800000);
  unsigned taken = 0;  // bit j: id lane + 32 j already chosen
  float vals[kTopK];
  int picks[kTopK];
#pragma unroll
  for (int k = 0; k < kTopK; ++k) {
    // Starting from -inf with the lower-id tie-break, -inf logits can be picked too, so every
    // token gets K real ids (K <= kGlobalExperts is checked on the host).
    float best = -inf;
    int best_id = 0x7fffffff;
    for (int j = 0; lane + 32 * j < kGlobalExperts; ++j) {
      float v = mj_to_f32(row[lane + 32 * j]);
      if (v != v) v = -inf;  // NaN ranks with -inf
      if (!((taken >> j) & 1u) && (v > best || (v == best && lane + 32 * j < best_id))) {
        best = v;
        best_id = lane + 32 * j;
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      float ov = __shfl_xor_sync(0xffffffffu, best, off);
      int oi = __shfl_xor_sync(0xffffffffu, best_id, off);
      if (ov > best || (ov == best && oi < best_id)) {
        best = ov;
        best_id = oi;
      }
    }
    if (best_id < kGlobalExperts && (best_id & 31) == lane) taken |= 1u << (best_id >> 5);
    vals[k] = best;
    picks[k] = best_id;
  }
  if (lane == 0) {
    // Softmax over the K. With +inf among them the +inf ones share the weight; when all are -inf
    // they share it equally (the limits of the softmax).
    const float top = vals[0];  // the largest: the first pick
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < kTopK; ++k) {
      float v = top == inf ? (vals[k] == inf ? 1.0f : 0.0f)
                           : top == -inf ? 1.0f : expf(vals[k] - top);
      sum += (vals[k] = v);
    }
#pragma unroll
    for (int k = 0; k < kTopK; ++k) {
      mj_i64 s = (mj_i64)t * kTopK + k;
      float w = vals[k] / sum;
      ids_out[s] = picks[k];
      w_out[s] = w;
      if (user_ids) user_ids[s] = (UserId)picks[k];
      if (user_w) user_w[s] = mj_from_f32<UserW>(w);
    }
  }
}

// grid = ceil(tokens / 4), block = 128: one warp per token.
extern "C" __global__ void __launch_bounds__(128) moejit_route_topk(
    const LogitT *__restrict__ logits, int tokens, int *__restrict__ ids_out,
    float *__restrict__ w_out, UserIdT *user_ids, UserWeightT *user_w) {
  mj_pdl_begin<MJ_PDL>();
  const int t = blockIdx.x * 4 + (threadIdx.x >> 5);
  if (t >= tokens) return;
  mj_topk_softmax(logits, t, threadIdx.x & 31, ids_out, w_out, user_ids, user_w);
}
#endif

// Per chunk of kChunk slots: how many go to each expert, and (last entry) how many have a bad id.
// grid = nchunks, block = kChunk threads. chunk_counts: [nchunks, kExperts + 1]
extern "C" __global__ void __launch_bounds__(kChunk) moejit_route_count(
    const IdT *__restrict__ ids, const int *__restrict__ expert_map, int nslots,
    int *__restrict__ chunk_counts) {
  mj_pdl_begin<MJ_PDL>();
  __shared__ int count[kExperts + 1];
  for (int e = threadIdx.x; e <= kExperts; e += blockDim.x) count[e] = 0;
  __syncthreads();
  int s = blockIdx.x * kChunk + threadIdx.x;
  if (s < nslots) {
    int e = mj_route_expert(ids, expert_map, s);
    if (e >= 0) atomicAdd(&count[e], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e <= kExperts; e += blockDim.x)
    chunk_counts[(mj_i64)blockIdx.x * (kExperts + 1) + e] = count[e];
}

// One block: expert totals (capped), offsets, each chunk's rank base per expert, the tile list.
// chunk_base: [nchunks, kExperts] (slots of that expert in earlier chunks); expert_off:
// [kExperts + 1]; tiles: {expert, row_begin, row_end, index of the expert's first tile}.
extern "C" __global__ void __launch_bounds__(256) moejit_route_scan(
    const int *__restrict__ chunk_counts, int nchunks, int block_m, int capacity,
    int *__restrict__ chunk_base, int *__restrict__ expert_off, mj_int4 *__restrict__ tiles,
    int *__restrict__ num_tiles, int *__restrict__ flags, int accumulate) {
  mj_pdl_begin<MJ_PDL>();
  __shared__ int total[kExperts + 1];
  __shared__ int off[kExperts + 1];
  __shared__ int tile0[kExperts + 1];
  for (int e = threadIdx.x; e <= kExperts; e += blockDim.x) {
    int run = 0;
    for (int c = 0; c < nchunks; ++c) {
      if (e < kExperts) chunk_base[(mj_i64)c * kExperts + e] = run;
      run += chunk_counts[(mj_i64)c * (kExperts + 1) + e];
    }
    total[e] = run;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int rows = 0, ntiles = 0;
    for (int e = 0; e < kExperts; ++e) {
      int kept = kCapped ? min(total[e], capacity) : total[e];
      off[e] = rows;
      tile0[e] = ntiles;
      rows += kept;
      ntiles += (kept + block_m - 1) / block_m;
    }
    off[kExperts] = rows;
    tile0[kExperts] = ntiles;
    *num_tiles = ntiles;
    flags[0] = total[kExperts] + (accumulate ? flags[0] : 0);  // later chunks add up
  }
  __syncthreads();
  for (int e = threadIdx.x; e <= kExperts; e += blockDim.x) expert_off[e] = off[e];
  for (int e = threadIdx.x; e < kExperts; e += blockDim.x) {
    for (int t = tile0[e]; t < tile0[e + 1]; ++t) {
      int begin = off[e] + (t - tile0[e]) * block_m;
      int end = min(begin + block_m, off[e + 1]);
      tiles[t] = mj_int4{e, begin, end, tile0[e]};
    }
  }
}

// One warp per chunk walks its slots in order, 32 at a time; lanes naming the same expert take
// consecutive ranks by their lane order, so the sort is stable and the result reproducible.
// grid = nchunks, block = 32. sorted_slot, slot_weight: [rows] by row; slot_pos: [nslots] by slot.
extern "C" __global__ void __launch_bounds__(32) moejit_route_scatter(
    const IdT *__restrict__ ids, const int *__restrict__ expert_map,
    const WeightT *__restrict__ weights, int nslots, int capacity, const int *__restrict__ chunk_base,
    const int *__restrict__ expert_off, int *__restrict__ sorted_slot, int *__restrict__ slot_pos,
    float *__restrict__ slot_weight) {
  mj_pdl_begin<MJ_PDL>();
  __shared__ int next[kExperts];
  const int lane = threadIdx.x;
  for (int e = lane; e < kExperts; e += 32) next[e] = chunk_base[(mj_i64)blockIdx.x * kExperts + e];
  __syncwarp();
  const int first = blockIdx.x * kChunk;
  for (int step = 0; step < kChunk; step += 32) {
    int s = first + step + lane;
    bool active = s < nslots;
    int e = active ? mj_route_expert(ids, expert_map, s) : -1;
    bool local = e >= 0 && e < kExperts;
    int key = local ? e : -1;
    unsigned peers = __match_any_sync(0xffffffffu, key);
    int rank = local ? next[e] + __popc(peers & ((1u << lane) - 1u)) : 0;
    bool kept = local && (!kCapped || rank < capacity);
    if (kept) {
      int row = expert_off[e] + rank;
      sorted_slot[row] = s;
      slot_pos[s] = row;
      mj_i64 widx = kDense ? (mj_i64)(s / kTopK) * kGlobalExperts + mj_load_id(ids, s) : (mj_i64)s;
      slot_weight[row] = mj_to_f32(weights[widx]);
    } else if (active) {
      slot_pos[s] = -1;
    }
    __syncwarp();
    if (local && lane == __ffs(peers) - 1) next[e] += __popc(peers);
    __syncwarp();
  }
}

// ---- one launch for small batches --------------------------------------------------------------
//
// moejit_route_small does what count, scan and scatter do together, in one block of 1024 threads,
// for nslots <= kSmallSlots. Every slot becomes a key (bucket << kSlotBits | s), bucket = its local
// expert, kExperts for a bad id, kExperts + 1 for no row; the keys are distinct, so sorting them
// (bitonic, two keys per thread in registers, partners across lanes by shuffles, across warps
// through shared memory) lines each expert's slots up in increasing s: a slot's rank in its expert
// is its sorted position less that of the expert's first slot. The per-expert row and tile offsets
// are one block-wide scan. Nothing depends on timing: the result is the same on every run.

static constexpr int kSlotBits = 11;
static constexpr int kSmallSlots = 1 << kSlotBits;  // two keys for each of 1024 threads
static constexpr int kSmallThreads = 1024;
static constexpr int kNoKey = 0x7fffffff;           // padding: after every real key
static_assert(((kExperts + 2) << kSlotBits) < kNoKey, "keys must fit an int");

__device__ __forceinline__ int mj_small_key(const IdT *ids, const int *__restrict__ expert_map,
                                            int s, int nslots) {
  if (s >= nslots) return kNoKey;
  int e = mj_route_expert(ids, expert_map, s);
  return (e < 0 ? kExperts + 1 : e) << kSlotBits | s;
}

// Bitonic compare-exchange of stage (k, j) for the key x at position idx against its partner's y at
// idx ^ j: the pair ascends where (idx & k) == 0, so the lower position keeps the smaller key there
// and the larger one elsewhere; the upper position keeps the other.
__device__ __forceinline__ int mj_bitonic_keep(int x, int y, int idx, int j, int k) {
  return (((idx & j) == 0) == ((idx & k) == 0)) ? min(x, y) : max(x, y);
}

// The sorted keys' bucket boundaries: first[b] and last[b] (exclusive) for a bucket b <= kExperts
// that has slots; both stay 0 for one that has none. sorted: the nslots keys, in shared memory.
__device__ __forceinline__ void mj_small_bounds(const int *sorted, int p, int key, int nslots,
                                                int *first, int *last) {
  if (p >= nslots) return;
  int b = key >> kSlotBits;
  if (b > kExperts) return;
  if (p == 0 || (sorted[p - 1] >> kSlotBits) != b) first[b] = p;
  if (p == nslots - 1 || (sorted[p + 1] >> kSlotBits) != b) last[b] = p + 1;
}

// The body of the small routing kernels, for ids and weights already readable (the caller's, or the
// workspace copies written by this block's own top-k: hence no __restrict__ on them).
// blockDim.x must be kSmallThreads and nslots at most kSmallSlots.
__device__ __forceinline__ void mj_route_small(
    const IdT *ids, const int *__restrict__ expert_map, const WeightT *weights, int nslots,
    int block_m, int capacity, int *__restrict__ expert_off, mj_int4 *__restrict__ tiles,
    int *__restrict__ num_tiles, int *__restrict__ flags, int *__restrict__ sorted_slot,
    int *__restrict__ slot_pos, float *__restrict__ slot_weight) {
  __shared__ int keys[2][kSmallSlots];                 // ping-pong: one barrier per exchange
  __shared__ int first[kExperts + 1], last[kExperts + 1];
  __shared__ int row0[kExperts];
  __shared__ int warp_sum[kSmallThreads / 32];
  if (nslots > kSmallSlots) __trap();  // an internal invariant: the host picks it only below
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  for (int b = tid; b <= kExperts; b += kSmallThreads) first[b] = last[b] = 0;

  // Sort. Thread tid holds the keys at positions p0 = 2 tid and p1 = 2 tid + 1; pairs at distance
  // j = 1 are its own two, j <= 32 are in its warp (lane tid ^ j / 2), larger j go through shared
  // memory. n, the sorted length, is the power of two >= nslots, so 1 to 4 tokens cost a few steps.
  const int p0 = 2 * tid, p1 = p0 + 1;
  int a = mj_small_key(ids, expert_map, p0, nslots), b = mj_small_key(ids, expert_map, p1, nslots);
  int n = 2;
  while (n < nslots) n <<= 1;
  int buf = 0;
  for (int k = 2; k <= n; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      int ya, yb;
      if (j == 1) {
        ya = b;
        yb = a;
      } else if (j <= 32) {
        ya = __shfl_xor_sync(0xffffffffu, a, j >> 1);
        yb = __shfl_xor_sync(0xffffffffu, b, j >> 1);
      } else {
        // keys[buf] was last read two exchanges ago, before the barrier of the last one
        keys[buf][p0] = a;
        keys[buf][p1] = b;
        __syncthreads();
        ya = keys[buf][p0 ^ j];
        yb = keys[buf][p1 ^ j];
        buf ^= 1;
      }
      a = mj_bitonic_keep(a, ya, p0, j, k);
      b = mj_bitonic_keep(b, yb, p1, j, k);
    }
  }
  const int *sorted = keys[buf];
  keys[buf][p0] = a;
  keys[buf][p1] = b;
  __syncthreads();
  mj_small_bounds(sorted, p0, a, nslots, first, last);
  mj_small_bounds(sorted, p1, b, nslots, first, last);
  __syncthreads();

  // Thread e: expert e's kept rows and tiles, packed as kept << 16 | tiles (at most kSmallSlots
  // rows and kSmallSlots + kExperts tiles in all, so neither field overflows), scanned over the
  // experts: an exclusive prefix gives the expert's first row and first tile.
  const int e = tid;
  int kept = 0, ntiles = 0;
  if (e < kExperts) {
    kept = last[e] - first[e];
    if (kCapped) kept = min(kept, capacity);
    ntiles = (kept + block_m - 1) / block_m;
  }
  const int mine = kept << 16 | ntiles;
  int incl = mine;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    int v = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += v;
  }
  if (lane == 31) warp_sum[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int w = warp_sum[lane];
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      int v = __shfl_up_sync(0xffffffffu, w, off);
      if (lane >= off) w += v;
    }
    warp_sum[lane] = w;
  }
  __syncthreads();
  const int excl = incl - mine + (warp > 0 ? warp_sum[warp - 1] : 0);
  const int total = warp_sum[kSmallThreads / 32 - 1];
  if (e < kExperts) {
    const int r0 = excl >> 16, t0 = excl & 0xffff;
    row0[e] = r0;
    expert_off[e] = r0;
    for (int t = 0; t < ntiles; ++t)
      tiles[t0 + t] = mj_int4{e, r0 + t * block_m, min(r0 + (t + 1) * block_m, r0 + kept), t0};
  }
  if (tid == 0) {
    expert_off[kExperts] = total >> 16;
    *num_tiles = total & 0xffff;
    flags[0] = last[kExperts] - first[kExperts];
  }
  __syncthreads();

  // Each thread's two sorted positions: a row when the expert keeps the slot, else slot_pos -1.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int p = p0 + i, key = i == 0 ? a : b;
    if (p >= nslots) break;
    const int bk = key >> kSlotBits, s = key & (kSmallSlots - 1);
    const int rank = bk < kExperts ? p - first[bk] : 0;
    if (bk < kExperts && (!kCapped || rank < capacity)) {
      const int row = row0[bk] + rank;
      sorted_slot[row] = s;
      slot_pos[s] = row;
      mj_i64 widx = kDense ? (mj_i64)(s / kTopK) * kGlobalExperts + mj_load_id(ids, s) : (mj_i64)s;
      slot_weight[row] = mj_to_f32(weights[widx]);
    } else {
      slot_pos[s] = -1;
    }
  }
}

// One launch of routing for nslots <= kSmallSlots (tokens * kTopK): the same outputs as count,
// scan and scatter (expert_off, tiles, num_tiles, flags[0], sorted_slot, slot_pos, slot_weight), and
// no chunk_counts or chunk_base. grid = 1, block = kSmallThreads (1024), no dynamic shared memory.
// With logits routing, ids and weights are the workspace's int32 / f32 copies, as for scatter.
extern "C" __global__ void __launch_bounds__(kSmallThreads) moejit_route_small(
    const IdT *__restrict__ ids, const int *__restrict__ expert_map,
    const WeightT *__restrict__ weights, int nslots, int block_m, int capacity,
    int *__restrict__ expert_off, mj_int4 *__restrict__ tiles, int *__restrict__ num_tiles,
    int *__restrict__ flags, int *__restrict__ sorted_slot, int *__restrict__ slot_pos,
    float *__restrict__ slot_weight) {
  mj_pdl_begin<MJ_PDL>();
  mj_route_small(ids, expert_map, weights, nslots, block_m, capacity, expert_off, tiles, num_tiles,
                 flags, sorted_slot, slot_pos, slot_weight);
}

#if MJ_ROUTE_LOGITS
// Logits routing in one launch: moejit_route_topk's work (warp w takes tokens w, w + 32, ...), then,
// after a barrier that makes those writes visible to the block, moejit_route_small on the
// workspace copies. tokens * kTopK <= kSmallSlots. grid = 1, block = kSmallThreads (1024).
extern "C" __global__ void __launch_bounds__(kSmallThreads) moejit_route_small_logits(
    const LogitT *__restrict__ logits, int tokens, int *ids_out, float *w_out, UserIdT *user_ids,
    UserWeightT *user_w, const int *__restrict__ expert_map, int block_m, int capacity,
    int *__restrict__ expert_off, mj_int4 *__restrict__ tiles, int *__restrict__ num_tiles,
    int *__restrict__ flags, int *__restrict__ sorted_slot, int *__restrict__ slot_pos,
    float *__restrict__ slot_weight) {
  mj_pdl_begin<MJ_PDL>();
  const int nslots = tokens * kTopK;
  if (nslots > kSmallSlots) __trap();  // before any write; the host never launches it so
  for (int t = threadIdx.x >> 5; t < tokens; t += kSmallThreads / 32)
    mj_topk_softmax(logits, t, threadIdx.x & 31, ids_out, w_out, user_ids, user_w);
  __syncthreads();
  mj_route_small(ids_out, expert_map, w_out, nslots, block_m, capacity, expert_off, tiles,
                 num_tiles, flags, sorted_slot, slot_pos, slot_weight);
}
#endif
