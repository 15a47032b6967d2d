// route.cuh: routing as a deterministic counting sort, all on the GPU, no host round trip.
// Needs from the including template: kExperts (local experts), kGlobalExperts (ids' range),
// kMapped (ids go through expert_map), kCapped (capacity mode), kTopK, kDense, IdT, WeightT, the
// block sizes of its launch contract (kChunk slots a count or scatter block, kTopkThreads,
// kScanThreads, kScatterThreads, kSmallThreads) and kSmallSlots, and with MJ_ROUTE_LOGITS: LogitT,
// UserIdT, UserWeightT. MJ_PDL (optional, 0 or 1).
//
// Two ways to the same result: count + scan + scatter (any number of slots, three launches), or
// moejit_route_small (one block, one launch, at most kSmallSlots slots: the decode regime).
//
// Slots are the flattened positions s = t * kTopK + k. A slot's id g must lie in [0, kGlobalExperts)
// (else it is counted in flags[0] and contributes nothing); its local expert is e = expert_map[g]
// when kMapped (e < 0: another rank's expert, no row, no flag), else g. The slots of one expert end
// up contiguous, in increasing s, at rows [expert_offsets[e], expert_offsets[e + 1]) of the sorted
// order; with kCapped an expert keeps its first `capacity` slots (in s order) and drops the rest.
// The tile list cuts each expert's rows into tiles of tile_rows rows: {expert, row_begin, row_end,
// first}, with `first` the index of that expert's first tile (a kernel that walks one expert's
// tiles starts there).
// A slot without a row gets slot_row = -1.
// The kernels that write the tile list (scan, small) also zero ready[kExperts]: the count of each
// expert's GEMM1 items whose h rows are stored, which the wgmma GEMMs of small batches use to chain
// GEMM2's items to GEMM1's (wgmma.cuh, kChain).
//
// Every kernel also takes `device_tokens` and `token_base`: with device_tokens == NULL it routes
// all its slots; else only the slots of this launch's first *device_tokens - token_base tokens
// (clamped to [0, tokens]): the
// others get no row and no flag, whatever their ids, as if they were another rank's. That is the
// forward's device-side token count (moejit_forward_args.device_tokens); token_base is the first
// token of the chunk a launch routes.
#pragma once

#ifndef MJ_PDL
#define MJ_PDL 0  // the template defines it as 1 for programmatic dependent launch
#endif

// The tokens of this launch that are routed (see above), of `tokens`.
__device__ __forceinline__ int mj_live_tokens(const int *device_tokens, int token_base,
                                              int tokens) {
  if (!device_tokens) return tokens;
  const long long n = (long long)*device_tokens - token_base;
  return n < 0 ? 0 : n < tokens ? (int)n : tokens;
}
// The same in slots, of a launch's nslots = tokens * kTopK: the first slots are the first tokens'.
__device__ __forceinline__ int mj_live_slots(const int *device_tokens, int token_base, int nslots) {
  return mj_live_tokens(device_tokens, token_base, nslots / kTopK) * kTopK;
}

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
// route_ids, route_weights: [tokens, kTopK] (int32, f32) in the workspace; topk_ids /
// routing_weights: the same, in the caller's types, when not NULL.
template <typename UserId, typename UserW>
__device__ __forceinline__ void mj_topk_softmax(const LogitT *__restrict__ router_logits, int t,
                                                int lane, int *route_ids, float *route_weights,
                                                UserId *topk_ids, UserW *routing_weights) {
  const LogitT *row = router_logits + (mj_i64)t * kGlobalExperts;
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
      route_ids[s] = picks[k];
      route_weights[s] = w;
      if (topk_ids) topk_ids[s] = (UserId)picks[k];
      if (routing_weights) routing_weights[s] = mj_from_f32<UserW>(w);
    }
  }
}

// grid = ceil(tokens / (kTopkThreads / 32)), block = kTopkThreads: one warp per token.
extern "C" __global__ void __launch_bounds__(kTopkThreads) moejit_route_topk(
    const LogitT *__restrict__ router_logits, int tokens, int *__restrict__ route_ids,
    float *__restrict__ route_weights, UserIdT *topk_ids, UserWeightT *routing_weights,
    const int *device_tokens,
    int token_base) {
  mj_pdl_begin<MJ_PDL>();
  const int t = blockIdx.x * (kTopkThreads / 32) + (threadIdx.x >> 5);  // a warp a token
  if (t >= mj_live_tokens(device_tokens, token_base, tokens)) return;
  mj_topk_softmax(router_logits, t, threadIdx.x & 31, route_ids, route_weights, topk_ids,
                  routing_weights);
}
#endif

// Per chunk of kChunk slots: how many go to each expert, and (last entry) how many have a bad id.
// grid = nchunks, block = kChunk threads. chunk_counts: [nchunks, kExperts + 1]
extern "C" __global__ void __launch_bounds__(kChunk) moejit_route_count(
    const IdT *__restrict__ ids, const int *__restrict__ expert_map, int nslots,
    int *__restrict__ chunk_counts, const int *device_tokens, int token_base) {
  mj_pdl_begin<MJ_PDL>();
  __shared__ int count[kExperts + 1];
  for (int e = threadIdx.x; e <= kExperts; e += blockDim.x) count[e] = 0;
  __syncthreads();
  int s = blockIdx.x * kChunk + threadIdx.x;
  if (s < mj_live_slots(device_tokens, token_base, nslots)) {
    int e = mj_route_expert(ids, expert_map, s);
    if (e >= 0) atomicAdd(&count[e], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e <= kExperts; e += blockDim.x)
    chunk_counts[(mj_i64)blockIdx.x * (kExperts + 1) + e] = count[e];
}

// One block: expert totals (capped), offsets, each chunk's rank base per expert, the tile list.
// chunk_base: [nchunks, kExperts] (slots of that expert in earlier chunks); expert_offsets:
// [kExperts + 1]; tiles: {expert, row_begin, row_end, index of the expert's first tile}.
extern "C" __global__ void __launch_bounds__(kScanThreads) moejit_route_scan(
    const int *__restrict__ chunk_counts, int nchunks, int tile_rows, int capacity,
    int *__restrict__ chunk_base, int *__restrict__ expert_offsets, mj_int4 *__restrict__ tiles,
    int *__restrict__ num_tiles, int *__restrict__ flags, int accumulate, int *__restrict__ ready) {
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
      ntiles += (kept + tile_rows - 1) / tile_rows;
    }
    off[kExperts] = rows;
    tile0[kExperts] = ntiles;
    *num_tiles = ntiles;
    flags[0] = total[kExperts] + (accumulate ? flags[0] : 0);  // later chunks add up
  }
  __syncthreads();
  for (int e = threadIdx.x; e <= kExperts; e += blockDim.x) expert_offsets[e] = off[e];
  for (int e = threadIdx.x; e < kExperts; e += blockDim.x) ready[e] = 0;
  for (int e = threadIdx.x; e < kExperts; e += blockDim.x) {
    for (int t = tile0[e]; t < tile0[e + 1]; ++t) {
      int begin = off[e] + (t - tile0[e]) * tile_rows;
      int end = min(begin + tile_rows, off[e + 1]);
      tiles[t] = mj_int4{e, begin, end, tile0[e]};
    }
  }
}

// One warp per chunk walks its slots in order, 32 at a time; lanes naming the same expert take
// consecutive ranks by their lane order, so the sort is stable and the result reproducible.
// grid = nchunks, block = 32. row_slot, row_weight: [rows] by row; slot_row: [nslots] by slot.
extern "C" __global__ void __launch_bounds__(kScatterThreads) moejit_route_scatter(
    const IdT *__restrict__ ids, const int *__restrict__ expert_map,
    const WeightT *__restrict__ weights, int nslots, int capacity, const int *__restrict__ chunk_base,
    const int *__restrict__ expert_offsets, int *__restrict__ row_slot, int *__restrict__ slot_row,
    float *__restrict__ row_weight, const int *device_tokens, int token_base) {
  mj_pdl_begin<MJ_PDL>();
  const int nlive = mj_live_slots(device_tokens, token_base, nslots);
  __shared__ int next[kExperts];
  const int lane = threadIdx.x;
  for (int e = lane; e < kExperts; e += 32) next[e] = chunk_base[(mj_i64)blockIdx.x * kExperts + e];
  __syncwarp();
  const int first = blockIdx.x * kChunk;
  for (int step = 0; step < kChunk; step += 32) {
    int s = first + step + lane;
    bool active = s < nslots;
    int e = s < nlive ? mj_route_expert(ids, expert_map, s) : -1;
    bool local = e >= 0 && e < kExperts;
    int key = local ? e : -1;
    unsigned peers = __match_any_sync(0xffffffffu, key);
    int rank = local ? next[e] + __popc(peers & ((1u << lane) - 1u)) : 0;
    bool kept = local && (!kCapped || rank < capacity);
    if (kept) {
      int row = expert_offsets[e] + rank;
      row_slot[row] = s;
      slot_row[s] = row;
      mj_i64 widx = kDense ? (mj_i64)(s / kTopK) * kGlobalExperts + mj_load_id(ids, s) : (mj_i64)s;
      row_weight[row] = mj_to_f32(weights[widx]);
    } else if (active) {
      slot_row[s] = -1;
    }
    __syncwarp();
    if (local && lane == __ffs(peers) - 1) next[e] += __popc(peers);
    __syncwarp();
  }
}

// ---- one launch for small batches --------------------------------------------------------------
//
// moejit_route_small does what count, scan and scatter do together, in one block of 1024 threads,
// for nslots <= kSmallSlots, as a counting sort. Warp w takes slots [64 w, 64 w + 64): lane l the
// slot 64 w + l, then 64 w + 32 + l. A slot's rank among its expert's slots (in increasing s) is
// the count of that expert's slots in the warps before (a per-warp count table in shared memory)
// plus those before it in its own warp (__match_any_sync: the lanes with the same expert). The
// per-expert row and tile offsets are one block-wide scan. Nothing depends on timing: the result
// is the same on every run.

static constexpr int kSmallWarps = kSmallThreads / 32;
static_assert(kSmallSlots == 2 * kSmallThreads, "two slots for each thread");
static_assert(kScatterThreads == 32, "scatter is one warp a chunk");
static constexpr int kCountLd = (kExperts + 3) / 4 * 4;  // a warp's row of the count table, bytes
static_assert(kExperts <= kSmallThreads, "the scan gives each expert a thread");

// The body of the small routing kernels, for ids and weights already readable (the caller's, or the
// workspace copies written by this block's own top-k: hence no __restrict__ on them).
// blockDim.x must be kSmallThreads and nslots at most kSmallSlots; slots from nlive on have no row.
__device__ __forceinline__ void mj_route_small(
    const IdT *ids, const int *__restrict__ expert_map, const WeightT *weights, int nslots,
    int nlive, int tile_rows, int capacity, int *__restrict__ expert_offsets,
    mj_int4 *__restrict__ tiles, int *__restrict__ num_tiles, int *__restrict__ flags,
    int *__restrict__ row_slot, int *__restrict__ slot_row, float *__restrict__ row_weight,
    int *__restrict__ ready) {
  // count[w * kCountLd + e]: expert e's slots in warp w, at most 64, so a byte each
  __shared__ __align__(16) unsigned char count[kSmallWarps * kCountLd];
  __shared__ int row0[kExperts];
  __shared__ int warp_sum[kSmallWarps];
  __shared__ int bad;
  if (nslots > kSmallSlots) __trap();  // an internal invariant: the host picks it only below
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  for (int i = tid; i < kSmallWarps * kCountLd / 4; i += kSmallThreads) ((int *)count)[i] = 0;
  if (tid == 0) bad = 0;
  __syncthreads();

  // Each of the thread's two slots: its expert (kExperts for a bad id, -1 for no row) and its rank
  // among the warp's slots of that expert; the lowest lane of each group writes the group's count.
  // The routing weights are read here too, so their loads overlap the sort rather than follow it.
  const unsigned below = (1u << lane) - 1;
  int s[2], e[2], rank[2];
  bool row[2];  // the slot has a row: a good id of a local expert
  float wt[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    s[i] = 64 * warp + 32 * i + lane;
    e[i] = s[i] < nlive ? mj_route_expert(ids, expert_map, s[i]) : -1;
    row[i] = e[i] >= 0 && e[i] < kExperts;
    wt[i] = 0.0f;
    if (row[i]) {  // only a good id indexes dense weights
      const mj_i64 widx = kDense ? (mj_i64)(s[i] / kTopK) * kGlobalExperts + mj_load_id(ids, s[i])
                                 : (mj_i64)s[i];
      wt[i] = mj_to_f32(weights[widx]);
    }
  }
  const int nbad = __popc(__ballot_sync(0xffffffffu, e[0] == kExperts)) +
                   __popc(__ballot_sync(0xffffffffu, e[1] == kExperts));
  if (lane == 0 && nbad) atomicAdd(&bad, nbad);  // a sum of integers: the order does not matter
  unsigned char *mine = count + warp * kCountLd;
  const unsigned peers0 = __match_any_sync(0xffffffffu, e[0]);
  rank[0] = __popc(peers0 & below);
  if (row[0] && rank[0] == 0) mine[e[0]] = (unsigned char)__popc(peers0);
  __syncwarp();
  const int before = row[1] ? mine[e[1]] : 0;  // the first half's slots of the second's expert
  __syncwarp();
  const unsigned peers1 = __match_any_sync(0xffffffffu, e[1]);
  rank[1] = before + __popc(peers1 & below);
  if (row[1] && __popc(peers1 & below) == 0) mine[e[1]] = (unsigned char)(before + __popc(peers1));
  __syncthreads();
#pragma unroll
  for (int i = 0; i < 2; ++i)
    if (row[i])
#pragma unroll 4
      for (int w = 0; w < warp; ++w) rank[i] += count[w * kCountLd + e[i]];

  // Thread x: expert x's kept rows and tiles, packed as kept << 16 | tiles (at most kSmallSlots
  // rows and kSmallSlots + kExperts tiles in all, so neither field overflows), scanned over the
  // experts: an exclusive prefix gives the expert's first row and first tile.
  const int x = tid;
  int kept = 0, ntiles = 0;
  if (x < kExperts) {
#pragma unroll 8
    for (int w = 0; w < kSmallWarps; ++w) kept += count[w * kCountLd + x];
    if (kCapped) kept = min(kept, capacity);
    ntiles = (kept + tile_rows - 1) / tile_rows;
  }
  const int packed = kept << 16 | ntiles;
  int incl = packed;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    int v = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += v;
  }
  if (lane == 31) warp_sum[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int v = warp_sum[lane];
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      int u = __shfl_up_sync(0xffffffffu, v, off);
      if (lane >= off) v += u;
    }
    warp_sum[lane] = v;
  }
  __syncthreads();
  const int excl = incl - packed + (warp > 0 ? warp_sum[warp - 1] : 0);
  const int total = warp_sum[kSmallWarps - 1];
  if (x < kExperts) {
    const int r0 = excl >> 16, t0 = excl & 0xffff;
    row0[x] = r0;
    expert_offsets[x] = r0;
    ready[x] = 0;
    for (int t = 0; t < ntiles; ++t)
      tiles[t0 + t] = mj_int4{x, r0 + t * tile_rows, min(r0 + (t + 1) * tile_rows, r0 + kept), t0};
  }
  if (tid == 0) {
    expert_offsets[kExperts] = total >> 16;
    *num_tiles = total & 0xffff;
    flags[0] = bad;
  }
  __syncthreads();

  // Each slot: a row when its expert keeps it, else slot_row -1.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    if (s[i] >= nslots) continue;
    if (row[i] && (!kCapped || rank[i] < capacity)) {
      const int r = row0[e[i]] + rank[i];
      row_slot[r] = s[i];
      slot_row[s[i]] = r;
      row_weight[r] = wt[i];
    } else {
      slot_row[s[i]] = -1;
    }
  }
}

// One launch of routing for nslots <= kSmallSlots (tokens * kTopK): the same outputs as count,
// scan and scatter (expert_offsets, tiles, num_tiles, flags[0], row_slot, slot_row, row_weight), and
// no chunk_counts or chunk_base. grid = 1, block = kSmallThreads (1024), no dynamic shared memory.
// With logits routing, ids and weights are the workspace's int32 / f32 copies, as for scatter.
extern "C" __global__ void __launch_bounds__(kSmallThreads) moejit_route_small(
    const IdT *__restrict__ ids, const int *__restrict__ expert_map,
    const WeightT *__restrict__ weights, int nslots, int tile_rows, int capacity,
    int *__restrict__ expert_offsets, mj_int4 *__restrict__ tiles, int *__restrict__ num_tiles,
    int *__restrict__ flags, int *__restrict__ row_slot, int *__restrict__ slot_row,
    float *__restrict__ row_weight, const int *device_tokens, int token_base,
    int *__restrict__ ready) {
  mj_pdl_begin<MJ_PDL>();
  mj_route_small(ids, expert_map, weights, nslots,
                 mj_live_slots(device_tokens, token_base, nslots), tile_rows, capacity,
                 expert_offsets, tiles, num_tiles, flags, row_slot, slot_row, row_weight, ready);
}

#if MJ_ROUTE_LOGITS
// Logits routing in one launch: moejit_route_topk's work (warp w takes tokens w, w + 32, ...), then,
// after a barrier that makes those writes visible to the block, moejit_route_small on the
// workspace copies. tokens * kTopK <= kSmallSlots. grid = 1, block = kSmallThreads (1024).
extern "C" __global__ void __launch_bounds__(kSmallThreads) moejit_route_small_logits(
    const LogitT *__restrict__ router_logits, int tokens, int *route_ids, float *route_weights,
    UserIdT *topk_ids, UserWeightT *routing_weights, const int *__restrict__ expert_map,
    int tile_rows, int capacity,
    int *__restrict__ expert_offsets, mj_int4 *__restrict__ tiles, int *__restrict__ num_tiles,
    int *__restrict__ flags, int *__restrict__ row_slot, int *__restrict__ slot_row,
    float *__restrict__ row_weight, const int *device_tokens, int token_base,
    int *__restrict__ ready) {
  mj_pdl_begin<MJ_PDL>();
  const int nslots = tokens * kTopK, ntok = mj_live_tokens(device_tokens, token_base, tokens);
  if (nslots > kSmallSlots) __trap();  // before any write; the host never launches it so
  for (int t = threadIdx.x >> 5; t < ntok; t += kSmallThreads / 32)
    mj_topk_softmax(router_logits, t, threadIdx.x & 31, route_ids, route_weights, topk_ids,
                    routing_weights);
  __syncthreads();
  mj_route_small(route_ids, expert_map, route_weights, nslots, ntok * kTopK, tile_rows, capacity,
                 expert_offsets, tiles, num_tiles, flags, row_slot, slot_row, row_weight, ready);
}
#endif
