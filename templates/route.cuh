// route.cuh: routing as a deterministic counting sort, all on the GPU, no host round trip.
// Needs from the including template: kExperts, kTopK, kChunk, kDense, IdT, WeightT.
//
// Slots are the flattened positions s = t * kTopK + k. The slots of one expert end up contiguous, in
// increasing s, at rows [expert_off[e], expert_off[e + 1]) of the sorted order; the tile list cuts
// each expert's rows into tiles of block_m rows. A slot whose id is outside [0, kExperts) gets
// slot_pos = -1, takes no row, and is counted in flags[0].
#pragma once

// Per chunk of kChunk slots: how many go to each expert, and (last entry) how many are out of range.
// grid = nchunks, block = kChunk threads. chunk_counts: [nchunks, kExperts + 1]
extern "C" __global__ void __launch_bounds__(kChunk) moejit_route_count(
    const IdT *__restrict__ ids, int nslots, int *__restrict__ chunk_counts) {
  __shared__ int count[kExperts + 1];
  for (int e = threadIdx.x; e <= kExperts; e += blockDim.x) count[e] = 0;
  __syncthreads();
  int s = blockIdx.x * kChunk + threadIdx.x;
  if (s < nslots) {
    mj_i64 e = mj_load_id(ids, s);
    atomicAdd(&count[(e >= 0 && e < kExperts) ? (int)e : kExperts], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e <= kExperts; e += blockDim.x)
    chunk_counts[(mj_i64)blockIdx.x * (kExperts + 1) + e] = count[e];
}

// One block: expert totals and offsets, each chunk's first row per expert, the tile list.
// chunk_base: [nchunks, kExperts]; expert_off: [kExperts + 1]; tiles: {expert, row_begin, row_end, 0}
extern "C" __global__ void __launch_bounds__(256) moejit_route_scan(
    const int *__restrict__ chunk_counts, int nchunks, int block_m, int *__restrict__ chunk_base,
    int *__restrict__ expert_off, mj_int4 *__restrict__ tiles, int *__restrict__ num_tiles,
    int *__restrict__ flags) {
  __shared__ int total[kExperts + 1];
  __shared__ int off[kExperts + 1];
  __shared__ int tile0[kExperts + 1];
  for (int e = threadIdx.x; e <= kExperts; e += blockDim.x) {
    int run = 0;
    for (int c = 0; c < nchunks; ++c) run += chunk_counts[(mj_i64)c * (kExperts + 1) + e];
    total[e] = run;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int rows = 0, ntiles = 0;
    for (int e = 0; e < kExperts; ++e) {
      off[e] = rows;
      tile0[e] = ntiles;
      rows += total[e];
      ntiles += (total[e] + block_m - 1) / block_m;
    }
    off[kExperts] = rows;
    tile0[kExperts] = ntiles;
    *num_tiles = ntiles;
    flags[0] = total[kExperts];
  }
  __syncthreads();
  for (int e = threadIdx.x; e <= kExperts; e += blockDim.x) expert_off[e] = off[e];
  for (int e = threadIdx.x; e < kExperts; e += blockDim.x) {
    int run = off[e];
    for (int c = 0; c < nchunks; ++c) {
      chunk_base[(mj_i64)c * kExperts + e] = run;
      run += chunk_counts[(mj_i64)c * (kExperts + 1) + e];
    }
    for (int t = tile0[e]; t < tile0[e + 1]; ++t) {
      int begin = off[e] + (t - tile0[e]) * block_m;
      int end = min(begin + block_m, off[e + 1]);
      tiles[t] = mj_int4{e, begin, end, 0};
    }
  }
}

// One warp per chunk walks its slots in order, 32 at a time; lanes naming the same expert take
// consecutive rows by their lane order, so the sort is stable and the result reproducible.
// grid = nchunks, block = 32. sorted_slot, slot_weight: [nslots] by row; slot_pos: [nslots] by slot.
extern "C" __global__ void __launch_bounds__(32) moejit_route_scatter(
    const IdT *__restrict__ ids, const WeightT *__restrict__ weights, int nslots,
    const int *__restrict__ chunk_base, int *__restrict__ sorted_slot, int *__restrict__ slot_pos,
    float *__restrict__ slot_weight) {
  __shared__ int next[kExperts];
  const int lane = threadIdx.x;
  for (int e = lane; e < kExperts; e += 32) next[e] = chunk_base[(mj_i64)blockIdx.x * kExperts + e];
  __syncwarp();
  const int first = blockIdx.x * kChunk;
  for (int step = 0; step < kChunk; step += 32) {
    int s = first + step + lane;
    bool active = s < nslots;
    mj_i64 id = active ? mj_load_id(ids, s) : -1;
    bool valid = active && id >= 0 && id < kExperts;
    int e = valid ? (int)id : -1;
    unsigned peers = __match_any_sync(0xffffffffu, e);
    int rank = __popc(peers & ((1u << lane) - 1u));
    if (valid) {
      int row = next[e] + rank;
      sorted_slot[row] = s;
      slot_pos[s] = row;
      mj_i64 widx = kDense ? (mj_i64)(s / kTopK) * kExperts + e : (mj_i64)s;
      slot_weight[row] = mj_to_f32(weights[widx]);
    } else if (active) {
      slot_pos[s] = -1;
    }
    __syncwarp();
    if (valid && lane == __ffs(peers) - 1) next[e] += __popc(peers);
    __syncwarp();
  }
}
