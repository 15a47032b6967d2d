// route.cuh: routing as a deterministic counting sort, all on the GPU, no host round trip.
// Needs from the including template: kExperts (local experts), kGlobalExperts (ids' range),
// kMapped (ids go through expert_map), kCapped (capacity mode), kTopK, kChunk, kDense, IdT,
// WeightT, and for kLogits: LogitT.
//
// Slots are the flattened positions s = t * kTopK + k. A slot's id g must lie in [0, kGlobalExperts)
// (else it is counted in flags[0] and contributes nothing); its local expert is e = expert_map[g]
// when kMapped (e < 0: another rank's expert, no row, no flag), else g. The slots of one expert end
// up contiguous, in increasing s, at rows [expert_off[e], expert_off[e + 1]) of the sorted order;
// with kCapped an expert keeps its first `capacity` slots (in s order) and drops the rest. The tile
// list cuts each expert's rows into tiles of block_m rows. A slot without a row gets slot_pos = -1.
#pragma once

// Where slot s goes: its local expert, or kExperts for a bad id, or -1 for no row without a flag.
__device__ __forceinline__ int mj_route_expert(const IdT *__restrict__ ids,
                                               const int *__restrict__ expert_map, int s) {
  mj_i64 g = mj_load_id(ids, s);
  if (g < 0 || g >= kGlobalExperts) return kExperts;
  if (!kMapped) return (int)g;
  int e = expert_map[g];
  return e < 0 ? -1 : (e < kExperts ? e : kExperts);
}

#if MJ_ROUTE_LOGITS
// Top-kTopK of each token's logits (ties: the lower id), then softmax over those K.
// One warp per token; lane l owns ids l, l + 32, ... . grid = ceil(tokens / 4), block = 128.
// ids_out, w_out: [tokens, kTopK] (int32, f32) in the workspace; user_ids / user_w: the same, in the
// caller's types, when not NULL.
template <typename UserId, typename UserW>
__device__ __forceinline__ void mj_topk_softmax(const LogitT *__restrict__ logits, int tokens,
                                                int *__restrict__ ids_out, float *__restrict__ w_out,
                                                UserId *user_ids, UserW *user_w) {
  const int lane = threadIdx.x & 31;
  const int t = blockIdx.x * 4 + (threadIdx.x >> 5);
  if (t >= tokens) return;
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

extern "C" __global__ void __launch_bounds__(128) moejit_route_topk(
    const LogitT *__restrict__ logits, int tokens, int *__restrict__ ids_out,
    float *__restrict__ w_out, UserIdT *user_ids, UserWeightT *user_w) {
  mj_topk_softmax(logits, tokens, ids_out, w_out, user_ids, user_w);
}
#endif

// Per chunk of kChunk slots: how many go to each expert, and (last entry) how many have a bad id.
// grid = nchunks, block = kChunk threads. chunk_counts: [nchunks, kExperts + 1]
extern "C" __global__ void __launch_bounds__(kChunk) moejit_route_count(
    const IdT *__restrict__ ids, const int *__restrict__ expert_map, int nslots,
    int *__restrict__ chunk_counts) {
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
// [kExperts + 1]; tiles: {expert, row_begin, row_end, 0}.
extern "C" __global__ void __launch_bounds__(256) moejit_route_scan(
    const int *__restrict__ chunk_counts, int nchunks, int block_m, int capacity,
    int *__restrict__ chunk_base, int *__restrict__ expert_off, mj_int4 *__restrict__ tiles,
    int *__restrict__ num_tiles, int *__restrict__ flags) {
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
    flags[0] = total[kExperts];
  }
  __syncthreads();
  for (int e = threadIdx.x; e <= kExperts; e += blockDim.x) expert_off[e] = off[e];
  for (int e = threadIdx.x; e < kExperts; e += blockDim.x) {
    for (int t = tile0[e]; t < tile0[e + 1]; ++t) {
      int begin = off[e] + (t - tile0[e]) * block_m;
      int end = min(begin + block_m, off[e + 1]);
      tiles[t] = mj_int4{e, begin, end, 0};
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
