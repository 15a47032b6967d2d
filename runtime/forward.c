/* forward.c: moejit_forward and moejit_forward_check. Validates the arguments, picks the GEMM
 * configuration for the token count and launches route -> GEMM1 -> GEMM2 -> combine on the caller's
 * stream. No allocation, synchronisation, host round trip or compilation happens here. */
#include <stdint.h>
#include <string.h>

#include "base/half.h"
#include "runtime/internal.h"

typedef struct gemm_params { /* gemm.cuh's GemmParams, field for field */
  CUdeviceptr a, w, bias, sorted_slot, slot_weight, tiles, num_tiles, out;
  int slab_major;
  CUdeviceptr own_ids;
  int own_slots;
} gemm_params;

/* moejit_forward_args of version 0.1, before device_tokens: still accepted */
#define MJ_ARGS_V1_SIZE offsetof(moejit_forward_args, device_tokens)

typedef struct wgmma_params { /* wgmma.cuh's WgParams, field for field */
  CUdeviceptr bias, sorted_slot, slot_weight, tiles, num_tiles, expert_off, out, ready;
  int wait_ready;
} wgmma_params;


static moejit_status check_ptr(const char *name, const void *p, size_t align, mj_err *err) {
  if (!p)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "args->%s is NULL", name);
  if ((uintptr_t)p % align != 0)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "args->%s=%p is not %zu-byte aligned", name, p,
                   align);
  return MOEJIT_OK;
}

static moejit_status check_args(const moejit_plan *plan, const moejit_forward_args *a,
                                const void *workspace, size_t workspace_bytes, mj_err *err) {
  const moejit_layer_desc *d = &plan->desc;
  moejit_status st;
  if (!a)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "args is NULL");
  if (a->struct_size != sizeof *a)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "args->struct_size=%zu, expected %zu or %zu (call moejit_forward_args_init)",
                   a->struct_size, sizeof *a, MJ_ARGS_V1_SIZE);
  if (a->tokens < 0 || a->tokens > d->max_tokens)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "args->tokens=%lld is outside [0, max_tokens=%lld]",
                   (long long)a->tokens, (long long)d->max_tokens);
  int logits = d->routing == MOEJIT_ROUTING_LOGITS;
  if (!logits && a->router_logits)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "args->router_logits is set but desc->routing is not MOEJIT_ROUTING_LOGITS");
  if (d->global_experts == 0 && a->expert_map)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "args->expert_map is set but desc->global_experts=0");
  if (a->tokens == 0) /* nothing runs, but an optional workspace gets its flags cleared */
    return workspace && (uintptr_t)workspace % 256 != 0
               ? mj_errf(err, MOEJIT_ERR_INVALID_ARG, "workspace=%p is not 256-byte aligned",
                         workspace)
               : MOEJIT_OK;
  size_t act = mj_dtype_size(d->dtype), bias = d->bias_f32 ? 4 : act;
  /* The GEMMs copy 16-byte vectors of x and of the weights. */
  if ((st = check_ptr("x", a->x, 16, err)) || (st = check_ptr("gate_up_proj", a->gate_up_proj, 16, err)) ||
      (st = check_ptr("down_proj", a->down_proj, 16, err)) ||
      (st = check_ptr("gate_up_proj_bias", a->gate_up_proj_bias, bias, err)) ||
      (st = check_ptr("down_proj_bias", a->down_proj_bias, bias, err)) ||
      (st = check_ptr("y", a->y, act, err)))
    return st;
  if (logits) {
    if ((st = check_ptr("router_logits", a->router_logits, mj_dtype_size(d->logits_dtype), err)))
      return st;
    /* optional outputs */
    if (a->topk_ids && (st = check_ptr("topk_ids", a->topk_ids, mj_dtype_size(d->ids_dtype), err)))
      return st;
    if (a->routing_weights &&
        (st = check_ptr("routing_weights", a->routing_weights, mj_dtype_size(d->weights_dtype), err)))
      return st;
  } else if ((st = check_ptr("topk_ids", a->topk_ids, mj_dtype_size(d->ids_dtype), err)) ||
             (st = check_ptr("routing_weights", a->routing_weights, mj_dtype_size(d->weights_dtype),
                             err))) {
    return st;
  }
  if (d->global_experts > 0 && (st = check_ptr("expert_map", a->expert_map, 4, err)))
    return st;
  if (a->device_tokens && (st = check_ptr("device_tokens", a->device_tokens, 4, err)))
    return st;
  if (!workspace)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "workspace is NULL");
  if ((uintptr_t)workspace % 256 != 0)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "workspace=%p is not 256-byte aligned", workspace);
  mj_layout l;
  mj_rt_layout(plan, a->tokens, &l);
  if (workspace_bytes < l.total)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "workspace_bytes=%zu is below the %zu bytes %lld tokens need "
                   "(moejit_workspace_size)",
                   workspace_bytes, l.total, (long long)a->tokens);
  return MOEJIT_OK;
}

#define DPTR(p) ((CUdeviceptr)(uintptr_t)(p))

int mj_rt_pick(const moejit_plan *plan, int64_t tokens, int *tuned) {
  if (tokens > MJ_CHUNK_TOKENS) /* such forwards run as chunks of this many */
    tokens = MJ_CHUNK_TOKENS;
  for (int i = 0; i < plan->nexact; i++)
    if (plan->exact_tokens[i] == tokens) {
      if (tuned)
        *tuned = 1;
      return plan->exact_pick[i];
    }
  if (tuned)
    *tuned = plan->tuned[mj_rt_bucket(tokens)];
  return plan->pick[mj_rt_bucket(tokens)];
}

/* One launch of kernel k. pdl: with programmatic stream serialisation, so that k's blocks may
 * start while the kernel before it in the stream still runs (each kernel of the forward built with
 * pdl=1 begins with griddepcontrol.wait and launch_dependents; see mj_pdl_begin). */
static moejit_status launch_kernel(moejit_plan *plan, const mj_kernel *k, unsigned gx, unsigned gy,
                                   unsigned gz, CUstream stream, void **args, int pdl, mj_err *err) {
  moejit_status st = MOEJIT_OK;
  mj_cu *cu = &plan->ctx->cu;
  if (!pdl) {
    MJ_CU(cu,
          LaunchKernel(k->fn, gx, gy, gz, (unsigned)k->threads, 1, 1, (unsigned)k->smem, stream,
                       args, NULL),
          err);
    return st;
  }
  mj_launch_attr attr;
  memset(&attr, 0, sizeof attr);
  attr.id = MJ_CU_LAUNCH_ATTR_PDL;
  attr.v.value = 1;
  const mj_launch_config config = {
      {gx, gy, gz}, {(unsigned)k->threads, 1, 1}, (unsigned)k->smem, stream, &attr, 1};
  MJ_CU(cu, LaunchKernelEx(&config, k->fn, args, NULL), err);
fail:
  return st;
}

/* A tensor map over 16-bit elements, 128-byte swizzled boxes (box[0] = 64 elements = 128 bytes),
 * rows of dims[0] elements; strides[i] is dimension i + 1's, in bytes. */
static moejit_status encode_tmap(mj_cu *cu, mj_tmap *m, int dtype, CUdeviceptr p, unsigned rank,
                                 const unsigned long long *dims, const unsigned long long *strides,
                                 const unsigned *box, mj_err *err) {
  moejit_status st = MOEJIT_OK;
  static const unsigned estr[3] = {1, 1, 1};
  MJ_CU(cu,
        TensorMapEncodeTiled(m, dtype, rank, (void *)(uintptr_t)p, dims, strides, box, estr, 0,
                             MJ_CU_TMAP_SWIZZLE_128B, MJ_CU_TMAP_L2_256B, 0),
        err);
fail:
  return st;
}

/* One wgmma GEMM: a = the rows it multiplies ([nslots, k]), w = the experts' weights [E, k, n]. */
static moejit_status launch_wgmma(moejit_plan *plan, const mj_kernel *kern, const mj_gemm_config *c,
                                  const mj_layout *l, CUdeviceptr a, CUdeviceptr w, int64_t n,
                                  int64_t k, wgmma_params *params, CUstream stream, int pdl,
                                  mj_err *err) {
  moejit_status st;
  mj_cu *cu = &plan->ctx->cu;
  int dtype = plan->desc.dtype == MOEJIT_BF16 ? MJ_CU_TMAP_BFLOAT16 : MJ_CU_TMAP_FLOAT16;
  /* A: the rows [nslots, k], boxes of 64 x a_rows (wgmma.cuh's A operand, kARows). B: the
   * experts' weights [experts, k, n] in boxes of 64 x 64 x 1, three dimensions so that k and n
   * tails read zeros rather than the next expert's rows. */
  mj_tmap ta, tb;
  const unsigned long long a_dims[2] = {(unsigned long long)k, (unsigned long long)l->nslots},
                           a_strides[1] = {(unsigned long long)k * 2},
                           b_dims[3] = {(unsigned long long)n, (unsigned long long)k,
                                        (unsigned long long)plan->desc.experts},
                           b_strides[2] = {(unsigned long long)n * 2, (unsigned long long)(n * k) * 2};
  const unsigned a_box[2] = {64, (unsigned)mj_tune_wgmma_a_rows(c)}, b_box[3] = {64, 64, 1};
  if ((st = encode_tmap(cu, &ta, dtype, a, 2, a_dims, a_strides, a_box, err)) != MOEJIT_OK ||
      (st = encode_tmap(cu, &tb, dtype, w, 3, b_dims, b_strides, b_box, err)) != MOEJIT_OK)
    return st;
  /* persistent: c->ctas blocks per SM, or fewer when the worst-case tile list is shorter */
  int64_t items = l->max_tiles * ((n + c->bn - 1) / c->bn), slots = (int64_t)c->ctas * plan->ctx->sm_count;
  unsigned grid = (unsigned)(items < slots ? items : slots);
  void *args[] = {&ta, &tb, params};
  return launch_kernel(plan, kern, grid, 1, 1, stream, args, pdl, err);
}

/* gemm.cuh's block order for a GEMM of n columns: slab-major once its blocks fill the GPU more than
 * twice over (one token with GPT-OSS shapes stays below that, where the order was measured to make
 * no difference or to cost up to 5 %). */
static int slab_major(const moejit_plan *plan, const mj_layout *l, int64_t n,
                      const mj_gemm_config *c, int splits) {
  return l->max_tiles * ((n + c->bn - 1) / c->bn) * splits > 2 * (int64_t)plan->ctx->sm_count;
}

/* One forward of a->tokens (at most MJ_CHUNK_TOKENS) tokens, the chunk of the caller's forward
 * from token t0 on; a later chunk (t0 > 0) adds its bad ids to the flags rather than resetting
 * them. */
static moejit_status launch(moejit_plan *plan, const moejit_forward_args *a, CUdeviceptr ws,
                            CUstream stream, int cfg, unsigned stages, int64_t t0, mj_err *err) {
  moejit_status st = MOEJIT_OK;
  const moejit_layer_desc *d = &plan->desc;
  mj_layout l;
  mj_rt_layout(plan, a->tokens, &l);
  const mj_gemm_config *c = &plan->configs[cfg];
  int nslots = (int)l.nslots, nchunks = (int)l.nchunks, block_m = c->bm;
  unsigned max_tiles = (unsigned)l.max_tiles;
  /* the mma.sync and streamed GEMMs' grid: a tile holds one slot at least, so a forward of few
   * slots has fewer tiles than the workspace's worst case (one token: 4 of 8 at one-row tiles) */
  unsigned grid_tiles = (unsigned)nslots < max_tiles ? (unsigned)nslots : max_tiles;
  CUdeviceptr ids = DPTR(a->topk_ids), weights = DPTR(a->routing_weights),
              map = DPTR(a->expert_map);
  CUdeviceptr flags = ws + l.flags, num_tiles = ws + l.num_tiles, expert_off = ws + l.expert_off,
              ready = ws + l.ready,
              chunk_counts = ws + l.chunk_counts, chunk_base = ws + l.chunk_base,
              tiles = ws + l.tiles, sorted_slot = ws + l.sorted_slot, slot_pos = ws + l.slot_pos,
              slot_weight = ws + l.slot_weight, h = ws + l.h, y_slot = ws + l.y_slot;
  int capacity = d->expert_capacity > 0 ? (int)d->expert_capacity : 0, accumulate = t0 > 0;
  /* the device-side token count, which every routing kernel reads (route.cuh) */
  CUdeviceptr live = DPTR(a->device_tokens);
  int live_base = (int)t0;
  /* Programmatic dependent launch for each kernel of a whole forward but its first, which follows
   * the caller's work; a staged forward leaves the caller room for kernels of its own in between,
   * and those need not wait for ours (nor ours for them) with griddepcontrol. */
  int pdl = plan->pdl && stages == MOEJIT_STAGE_ALL;

  if ((stages & MOEJIT_STAGE_ROUTE) && l.nslots <= plan->small_slots && !accumulate) {
    /* few slots: count, scan and scatter (and top-k) in one block, one launch */
    CUdeviceptr logits = DPTR(a->router_logits), ids_ws = ws + l.route_ids, w_ws = ws + l.route_w;
    int tokens = (int)a->tokens;
    void *logits_args[] = {&logits,   &tokens,    &ids_ws,      &w_ws,     &ids,
                           &weights,  &map,       &block_m,     &capacity, &expert_off,
                           &tiles,    &num_tiles, &flags,       &sorted_slot, &slot_pos,
                           &slot_weight, &live, &live_base, &ready};
    void *args[] = {&ids,        &map,        &weights, &nslots,    &block_m,
                    &capacity,   &expert_off, &tiles,   &num_tiles, &flags,
                    &sorted_slot, &slot_pos,  &slot_weight, &live, &live_base, &ready};
    if ((st = launch_kernel(plan, &plan->small, 1, 1, 1, stream,
                            d->routing == MOEJIT_ROUTING_LOGITS ? logits_args : args, 0, err)))
      goto fail;
  } else if (stages & MOEJIT_STAGE_ROUTE) {
    if (d->routing == MOEJIT_ROUTING_LOGITS) {
      /* top-k and softmax of the logits into the workspace, which the rest of routing reads;
       * the caller's ids and weights get copies when given */
      CUdeviceptr logits = DPTR(a->router_logits), user_ids = ids, user_w = weights;
      int tokens = (int)a->tokens;
      ids = ws + l.route_ids;
      weights = ws + l.route_w;
      void *topk_args[] = {&logits, &tokens, &ids, &weights, &user_ids, &user_w, &live, &live_base};
      if ((st = launch_kernel(plan, &plan->topk, (unsigned)((tokens + 3) / 4), 1, 1, stream,
                              topk_args, 0, err)))
        goto fail;
    }
    void *count_args[] = {&ids, &map, &nslots, &chunk_counts, &live, &live_base};
    if ((st = launch_kernel(plan, &plan->count, (unsigned)nchunks, 1, 1, stream, count_args,
                            pdl && d->routing == MOEJIT_ROUTING_LOGITS, err)))
      goto fail;
    void *scan_args[] = {&chunk_counts, &nchunks,   &block_m,   &capacity, &chunk_base,
                         &expert_off,   &tiles,     &num_tiles, &flags,    &accumulate,
                         &ready};
    if ((st = launch_kernel(plan, &plan->scan, 1, 1, 1, stream, scan_args, pdl, err)))
      goto fail;
    void *scatter_args[] = {&ids,        &map,        &weights,     &nslots,   &capacity,
                            &chunk_base, &expert_off, &sorted_slot, &slot_pos, &slot_weight,
                            &live,       &live_base};
    if ((st = launch_kernel(plan, &plan->scatter, (unsigned)nchunks, 1, 1, stream, scatter_args,
                            pdl, err)))
      goto fail;
  }
  if (c->splits > 1 && l.nslots > MJ_SPLIT_SLOTS)
    return mj_errf(err, MOEJIT_ERR_UNSUPPORTED,
                   "configuration %s splits GEMM2 along K and takes at most %d slots, got %lld",
                   c->name, MJ_SPLIT_SLOTS, (long long)l.nslots);
  int wg = c->kind == MJ_GEMM_WGMMA;
  /* The wgmma GEMMs under programmatic dependent launch: with 64-row tiles only, the
   * weight-streaming regime, where each loads the weights of its first stages before its wait (GEMM1
   * under the gather, GEMM2 under GEMM1's tail, which took 0.5-2.4 % off forwards of 8 to 512
   * tokens on the H100, GEMM1 0.1-0.6 % more). With 128-row tiles the early start cost prefill
   * forwards 1 % (GEMM2) to 7 % (GEMM1): the persistent blocks then start staggered instead of in
   * step. Their modules are built with pdl all the same: GEMM1's launch_dependents is what lets
   * GEMM2's blocks in as GEMM1's leave, rather than once all of them have. */
  int wg_pdl = pdl && wg && c->bm == 64;
  if ((stages & MOEJIT_STAGE_GEMM1) && wg) {
    /* x rows in sorted order, so GEMM1 reads its A tiles by TMA like GEMM2 reads h */
    CUdeviceptr x = DPTR(a->x), x_sorted = ws + l.x_sorted;
    int tokens = (int)a->tokens;
    void *gather_args[] = {&x, &slot_pos, &tokens, &x_sorted};
    int64_t chunks = (int64_t)tokens * (d->hidden / 8); /* a thread per 16 bytes of x */
    if ((st = launch_kernel(plan, &plan->gather, (unsigned)((chunks + 255) / 256), 1, 1, stream,
                            gather_args, pdl, err)))
      goto fail;
    wgmma_params p1 = {DPTR(a->gate_up_proj_bias), sorted_slot, slot_weight, tiles, num_tiles,
                       expert_off, h, ready, 0};
    if ((st = launch_wgmma(plan, &plan->gemm1[cfg], c, &l, x_sorted, DPTR(a->gate_up_proj),
                           2 * d->intermediate, d->hidden, &p1, stream, wg_pdl, err)) != MOEJIT_OK)
      goto fail;
  } else if (stages & MOEJIT_STAGE_GEMM1) {
    /* Few slots: GEMM1's blocks, launched as routing starts, work out their tiles from the
     * caller's ids and start at once (gemm.cuh, MJ_GEMM_SELF_ROUTE), or, where an expert has more
     * slots than a tile has rows, take routing's: at most grid_tiles tiles either way. A
     * device-side token count leaves the ids' routing to the routing kernel. */
    int own = pdl && mj_rt_can_self_route(d, c) && !a->device_tokens && nslots <= 32;
    gemm_params g1 = {DPTR(a->x), DPTR(a->gate_up_proj), DPTR(a->gate_up_proj_bias), sorted_slot,
                      slot_weight, tiles, num_tiles, d->unfused ? ws + l.gate_up : h,
                      slab_major(plan, &l, 2 * d->intermediate, c, 1), ids, own ? nslots : 0};
    void *g1_args[] = {&g1};
    if ((st = launch_kernel(plan, &plan->gemm1[cfg], grid_tiles,
                            (unsigned)((2 * d->intermediate + c->bn - 1) / c->bn), 1, stream, g1_args,
                            pdl, err)))
      goto fail;
  }
  if ((stages & MOEJIT_STAGE_ACTIVATION) && d->unfused) {
    CUdeviceptr gu = ws + l.gate_up;
    int64_t blocks = (l.nslots * d->intermediate + 255) / 256;
    void *act_args[] = {&gu, &expert_off, &h};
    if ((st = launch_kernel(plan, &plan->activation, (unsigned)(blocks < 65536 ? blocks : 65536), 1,
                            1, stream, act_args, pdl, err)))
      goto fail;
  }
  if ((stages & MOEJIT_STAGE_GEMM2) && wg) {
    /* A chained configuration's GEMM2, launched right after its GEMM1 under programmatic
     * dependent launch: each item waits for its own expert's h rather than for all of GEMM1
     * (wgmma.cuh, kChain). Otherwise it waits for GEMM1 as a whole (griddepcontrol.wait, or the
     * stream's order), as GEMM1 may have run in an earlier call. Chained, GEMM2 never waits for
     * GEMM1 as a whole, so the combine's wait covers GEMM1 only through h: a kernel after it that
     * read anything else GEMM1 writes would need a wait of its own. */
    int chained = wg_pdl && c->chain && (stages & MOEJIT_STAGE_GEMM1);
    wgmma_params p2 = {DPTR(a->down_proj_bias), sorted_slot, slot_weight, tiles, num_tiles,
                       expert_off, y_slot, ready, chained};
    if ((st = launch_wgmma(plan, &plan->gemm2[cfg], c, &l, h, DPTR(a->down_proj), d->hidden,
                           d->intermediate, &p2, stream, wg_pdl, err)) != MOEJIT_OK)
      goto fail;
  } else if (stages & MOEJIT_STAGE_GEMM2) {
    gemm_params g2 = {h, DPTR(a->down_proj), DPTR(a->down_proj_bias), sorted_slot,
                      slot_weight, tiles, num_tiles, y_slot,
                      slab_major(plan, &l, d->hidden, c, c->splits > 1 ? c->splits : 1), 0, 0};
    /* split along K: blockIdx.z takes a slice of K and writes its own partial y_slot (a kernel
     * without splits reads only its first parameter) */
    long long split_stride = (long long)l.nslots * d->hidden;
    void *g2_args[] = {&g2, &split_stride};
    unsigned splits = c->splits > 1 ? (unsigned)c->splits : 1;
    if ((st = launch_kernel(plan, &plan->gemm2[cfg], grid_tiles,
                            (unsigned)((d->hidden + c->bn - 1) / c->bn), splits, stream, g2_args, pdl,
                            err)))
      goto fail;
  }
  if (stages & MOEJIT_STAGE_COMBINE) {
    CUdeviceptr y = DPTR(a->y);
    long long split_stride = (long long)l.nslots * d->hidden;
    void *combine_args[] = {&y_slot, &slot_pos, &y, &split_stride};
    const mj_kernel *k = c->splits > 1 ? &plan->combine_split : &plan->combine;
    if ((st = launch_kernel(plan, k, (unsigned)a->tokens, (unsigned)((d->hidden + 1023) / 1024), 1,
                            stream, combine_args, wg ? wg_pdl : pdl, err)))
      goto fail;
  }
fail:
  return st;
}

/* Makes the plan's context current for the calls in between, if it is not already. */
static moejit_status enter(moejit_ctx *ctx, int *pushed, mj_err *err) {
  moejit_status st = MOEJIT_OK;
  CUcontext cur = NULL;
  *pushed = 0;
  MJ_CU(&ctx->cu, CtxGetCurrent(&cur), err);
  if (cur != ctx->cuctx) {
    MJ_CU(&ctx->cu, CtxPushCurrent(ctx->cuctx), err);
    *pushed = 1;
  }
fail:
  return st;
}

static void leave(moejit_ctx *ctx, int pushed) {
  CUcontext popped;
  if (pushed)
    ctx->cu.CtxPopCurrent(&popped);
}

/* The arguments of the chunk of tokens [t0, t0 + MJ_CHUNK_TOKENS): every per-token pointer moved
 * to its row t0. */
static void chunk_args(const moejit_layer_desc *d, const moejit_forward_args *args, int64_t t0,
                       moejit_forward_args *a) {
  int64_t scored = d->global_experts ? d->global_experts : d->experts;
  int64_t per_weights = d->routing == MOEJIT_ROUTING_DENSE ? scored : d->top_k;
  size_t act = mj_dtype_size(d->dtype);
  *a = *args;
  a->tokens = args->tokens - t0 < MJ_CHUNK_TOKENS ? args->tokens - t0 : MJ_CHUNK_TOKENS;
  if (t0 == 0)
    return;
#define MJ_ADVANCE_(field, bytes_per_token)                                                        \
  if (a->field)                                                                                   \
  a->field = (char *)a->field + (size_t)t0 * (size_t)(bytes_per_token)
  MJ_ADVANCE_(x, d->hidden * act);
  MJ_ADVANCE_(y, d->hidden * act);
  MJ_ADVANCE_(topk_ids, d->top_k * mj_dtype_size(d->ids_dtype));
  MJ_ADVANCE_(routing_weights, per_weights * mj_dtype_size(d->weights_dtype));
  MJ_ADVANCE_(router_logits, scored * mj_dtype_size(d->logits_dtype));
#undef MJ_ADVANCE_
}

static moejit_status forward(moejit_plan *plan, const moejit_forward_args *args, void *workspace,
                             size_t workspace_bytes, CUstream stream, int cfg, unsigned stages) {
  mj_err err;
  moejit_status st;
  int pushed = 0;
  if (!plan)
    return MOEJIT_ERR_INVALID_ARG;
  moejit_forward_args full; /* a caller built against 0.1's header, without device_tokens */
  if (args && args->struct_size == MJ_ARGS_V1_SIZE) {
    memset(&full, 0, sizeof full);
    memcpy(&full, args, MJ_ARGS_V1_SIZE);
    full.struct_size = sizeof full;
    args = &full;
  }
  moejit_ctx *ctx = plan->ctx;
  if (ctx->offline)
    return mj_rt_fail(ctx,
                      mj_errf(&err, MOEJIT_ERR_NO_DEVICE,
                              "the plan was compiled offline for %s; there is no device to run on",
                              ctx->arch),
                      &err);
  if ((st = check_args(plan, args, workspace, workspace_bytes, &err)) != MOEJIT_OK)
    return mj_rt_fail(ctx, st, &err);
  if (args->tokens == 0 && !workspace)
    return MOEJIT_OK;
  if ((st = enter(ctx, &pushed, &err)) != MOEJIT_OK)
    return mj_rt_fail(ctx, st, &err);
  if (args->tokens == 0) { /* nothing to run; the flags must not speak of an earlier forward */
    CUresult r = ctx->cu.MemsetD32Async(DPTR(workspace), 0, 4, stream);
    leave(ctx, pushed);
    return r == MJ_CU_SUCCESS
               ? MOEJIT_OK
               : mj_rt_fail(ctx, mj_rt_cu_fail(&ctx->cu, r, "MemsetD32Async", __FILE__, __LINE__, &err),
                            &err);
  }
  /* Past MJ_CHUNK_TOKENS the forward runs chunk by chunk over one workspace: the layer works token
   * by token, so each chunk is a whole forward of its tokens; the bad-id count adds up. */
  if (args->tokens > MJ_CHUNK_TOKENS && stages != MOEJIT_STAGE_ALL) {
    leave(ctx, pushed);
    return mj_rt_fail(ctx,
                      mj_errf(&err, MOEJIT_ERR_UNSUPPORTED,
                              "stages=0x%x: a staged forward takes at most %d tokens, got %lld",
                              stages, MJ_CHUNK_TOKENS, (long long)args->tokens),
                      &err);
  }
  for (int64_t t0 = 0; t0 < args->tokens && st == MOEJIT_OK; t0 += MJ_CHUNK_TOKENS) {
    moejit_forward_args a;
    chunk_args(&plan->desc, args, t0, &a);
    st = launch(plan, &a, DPTR(workspace), stream, cfg >= 0 ? cfg : mj_rt_pick(plan, a.tokens, NULL), stages,
                t0, &err);
  }
  leave(ctx, pushed);
  return st == MOEJIT_OK ? st : mj_rt_fail(ctx, st, &err);
}

moejit_status moejit_forward(moejit_plan *plan, const moejit_forward_args *args, void *workspace,
                             size_t workspace_bytes, CUstream stream) {
  return forward(plan, args, workspace, workspace_bytes, stream, -1, MOEJIT_STAGE_ALL);
}

moejit_status moejit_forward_stages(moejit_plan *plan, const moejit_forward_args *args,
                                    void *workspace, size_t workspace_bytes, CUstream stream,
                                    unsigned stages) {
  mj_err err;
  if (plan && (stages == 0 || (stages & ~(unsigned)MOEJIT_STAGE_ALL)))
    return mj_rt_fail(plan->ctx,
                      mj_errf(&err, MOEJIT_ERR_INVALID_ARG,
                              "stages=0x%x is not a non-empty set of moejit_stage bits", stages),
                      &err);
  return forward(plan, args, workspace, workspace_bytes, stream, -1, stages);
}

moejit_status mj_rt_forward_with(moejit_plan *plan, const moejit_forward_args *args, void *workspace,
                                 size_t workspace_bytes, CUstream stream, int config) {
  if (plan && (config < 0 || config >= plan->ngemm))
    return MOEJIT_ERR_INVALID_ARG;
  return forward(plan, args, workspace, workspace_bytes, stream, config, MOEJIT_STAGE_ALL);
}

moejit_status moejit_forward_check(moejit_plan *plan, const void *workspace, CUstream stream,
                                   int64_t *bad_slots) {
  mj_err err;
  moejit_status st;
  int pushed = 0;
  int flags[4] = {0, 0, 0, 0};
  if (!plan)
    return MOEJIT_ERR_INVALID_ARG;
  moejit_ctx *ctx = plan->ctx;
  if (bad_slots)
    *bad_slots = 0;
  if (ctx->offline)
    return mj_rt_fail(ctx, mj_errf(&err, MOEJIT_ERR_NO_DEVICE, "offline plan: no device"), &err);
  if (!workspace)
    return mj_rt_fail(ctx, mj_errf(&err, MOEJIT_ERR_INVALID_ARG, "workspace is NULL"), &err);
  if ((st = enter(ctx, &pushed, &err)) != MOEJIT_OK)
    return mj_rt_fail(ctx, st, &err);
  MJ_CU(&ctx->cu, MemcpyDtoHAsync(flags, DPTR(workspace), sizeof flags, stream), &err);
  MJ_CU(&ctx->cu, StreamSynchronize(stream), &err);
  leave(ctx, pushed);
  pushed = 0;
  if (bad_slots)
    *bad_slots = flags[0];
  if (flags[0] != 0)
    return mj_rt_fail(ctx,
                      mj_errf(&err, MOEJIT_ERR_BAD_EXPERT_ID,
                              "%d slot(s) named an expert outside [0, %lld); they contributed nothing",
                              flags[0], (long long)plan->desc.experts),
                      &err);
  return MOEJIT_OK;
fail:
  leave(ctx, pushed);
  return mj_rt_fail(ctx, st, &err);
}
