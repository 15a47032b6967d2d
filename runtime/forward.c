/* forward.c: moejit_forward, moejit_forward_stages and moejit_forward_check. Validates the
 * arguments, picks the GEMM configuration for the token count, and runs the stages in order on the
 * caller's stream, each a function below over one set of values (the caller's pointers and the
 * workspace's): route -> gather (wgmma plans) -> GEMM1 -> activation (unfused plans) -> GEMM2 ->
 * combine. Each stage's kernels launch from their family's file. No allocation, synchronisation,
 * host round trip or compilation happens here. */
#include <stdint.h>
#include <string.h>

#include "base/half.h"
#include "runtime/internal.h"

#define DPTR(p) ((CUdeviceptr)(uintptr_t)(p))

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
  int mxfp4 = d->weight_format == MOEJIT_WEIGHTS_MXFP4;
  if (!mxfp4 && (a->gate_up_proj_scales || a->down_proj_scales))
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "args->%s is set but desc->weight_format is not MOEJIT_WEIGHTS_MXFP4",
                   a->gate_up_proj_scales ? "gate_up_proj_scales" : "down_proj_scales");
  if (d->no_bias && (a->gate_up_proj_bias || a->down_proj_bias))
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "args->%s is set but desc->no_bias=1",
                   a->gate_up_proj_bias ? "gate_up_proj_bias" : "down_proj_bias");
  if (a->tokens == 0) /* nothing runs, but an optional workspace gets its flags cleared */
    return workspace && (uintptr_t)workspace % 256 != 0
               ? mj_errf(err, MOEJIT_ERR_INVALID_ARG, "workspace=%p is not 256-byte aligned",
                         workspace)
               : MOEJIT_OK;
  size_t act = mj_dtype_size(d->dtype), bias = d->bias_f32 ? 4 : act;
  /* The GEMMs copy 16-byte vectors of x and of the weights. */
  if ((st = check_ptr("x", a->x, 16, err)) ||
      (st = check_ptr("gate_up_proj", a->gate_up_proj, 16, err)) ||
      (st = check_ptr("down_proj", a->down_proj, 16, err)) || (st = check_ptr("y", a->y, act, err)))
    return st;
  /* the wgmma epilogue reads a column pair's biases in one load */
  if (!d->no_bias && ((st = check_ptr("gate_up_proj_bias", a->gate_up_proj_bias, 2 * bias, err)) ||
                      (st = check_ptr("down_proj_bias", a->down_proj_bias, 2 * bias, err))))
    return st;
  /* MXFP4: a GEMM tile copies its rows' scales in 16-byte pieces */
  if (mxfp4 && ((st = check_ptr("gate_up_proj_scales", a->gate_up_proj_scales, 16, err)) ||
                (st = check_ptr("down_proj_scales", a->down_proj_scales, 16, err))))
    return st;
  size_t ids = mj_dtype_size(d->ids_dtype), weights = mj_dtype_size(d->weights_dtype);
  if (logits) {
    if ((st = check_ptr("router_logits", a->router_logits, mj_dtype_size(d->logits_dtype), err)))
      return st;
    /* optional outputs */
    if (a->topk_ids && (st = check_ptr("topk_ids", a->topk_ids, ids, err)))
      return st;
    if (a->routing_weights && (st = check_ptr("routing_weights", a->routing_weights, weights, err)))
      return st;
  } else if ((st = check_ptr("topk_ids", a->topk_ids, ids, err)) ||
             (st = check_ptr("routing_weights", a->routing_weights, weights, err))) {
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

/* One chunk of a forward: its values, layout and configuration, and how its stages launch. */
typedef struct chunk {
  const moejit_forward_args *args;
  mj_values v;
  mj_layout l;
  int cfg, wgmma;
  int pdl;    /* programmatic dependent launch for each kernel but the forward's first */
  int wg_pdl; /* ... for the wgmma GEMMs and what follows them */
  unsigned stages;
} chunk;

static moejit_status stage_route(const moejit_plan *plan, chunk *c, int accumulate, CUstream s,
                                 mj_err *err) {
  return mj_rt_route(plan, &c->v, &c->l, accumulate, s, c->pdl, err);
}

static moejit_status stage_gemm1(const moejit_plan *plan, chunk *c, CUstream s, mj_err *err) {
  moejit_status st;
  if (!c->wgmma) /* GEMM1 of few slots may route itself, where nothing else needs routing first */
    return mj_rt_gemm(plan, c->cfg, MOEJIT_STAGE_GEMM1, &c->v, &c->l,
                      c->pdl && !c->args->device_tokens, s, c->pdl, err);
  /* the x rows in sorted order, which GEMM1 reads by TMA as GEMM2 reads h */
  if ((st = mj_rt_gather(plan, &c->v, s, c->pdl, err)))
    return st;
  return mj_rt_wgmma(plan, c->cfg, MOEJIT_STAGE_GEMM1, &c->v, &c->l, 0, s, c->wg_pdl, err);
}

static moejit_status stage_gemm2(const moejit_plan *plan, chunk *c, CUstream s, mj_err *err) {
  if (!c->wgmma)
    return mj_rt_gemm(plan, c->cfg, MOEJIT_STAGE_GEMM2, &c->v, &c->l, 0, s, c->pdl, err);
  /* A chained configuration's GEMM2, launched right after its GEMM1 under programmatic dependent
   * launch, waits for its own expert's h rather than for all of GEMM1 (wgmma.cuh, kChain).
   * Otherwise it waits for GEMM1 as a whole (griddepcontrol.wait, or the stream's order), as GEMM1
   * may have run in an earlier call. Chained, GEMM2 never waits for GEMM1 as a whole, so the
   * combine's wait covers GEMM1 only through h: a kernel after it that read anything else GEMM1
   * writes would need a wait of its own. */
  int chained = c->wg_pdl && plan->configs[c->cfg].chain && (c->stages & MOEJIT_STAGE_GEMM1);
  return mj_rt_wgmma(plan, c->cfg, MOEJIT_STAGE_GEMM2, &c->v, &c->l, chained, s, c->wg_pdl, err);
}

static moejit_status stage_combine(const moejit_plan *plan, chunk *c, CUstream s, mj_err *err) {
  const mj_kernel *k = plan->configs[c->cfg].splits > 1 ? &plan->combine_split : &plan->combine;
  return mj_rt_combine(plan, k, &c->v, s, c->wgmma ? c->wg_pdl : c->pdl, err);
}

/* One forward of a->tokens (at most MJ_CHUNK_TOKENS) tokens, the chunk of the caller's forward
 * from token t0 on; a later chunk (t0 > 0) adds its bad ids to the flags rather than resetting
 * them. */
static moejit_status run_chunk(const moejit_plan *plan, const moejit_forward_args *a,
                               CUdeviceptr ws, CUstream stream, int cfg, unsigned stages,
                               int64_t t0, mj_err *err) {
  moejit_status st = MOEJIT_OK;
  const moejit_layer_desc *d = &plan->desc;
  const mj_gemm_config *config = &plan->configs[cfg];
  chunk c;
  memset(&c, 0, sizeof c);
  c.args = a;
  c.cfg = cfg;
  c.stages = stages;
  mj_rt_layout(plan, a->tokens, &c.l);
  if (config->splits > 1 && c.l.nslots > MJ_SPLIT_SLOTS)
    return mj_errf(err, MOEJIT_ERR_UNSUPPORTED,
                   "configuration %s splits GEMM2 along K and takes at most %d slots, got %lld",
                   config->name, MJ_SPLIT_SLOTS, (long long)c.l.nslots);
  mj_values *v = &c.v;
  v->x = DPTR(a->x);
  v->topk_ids = DPTR(a->topk_ids);
  v->routing_weights = DPTR(a->routing_weights);
  v->router_logits = DPTR(a->router_logits);
  v->expert_map = DPTR(a->expert_map);
  v->device_tokens = DPTR(a->device_tokens);
  v->y = DPTR(a->y);
  v->gate_up_proj = DPTR(a->gate_up_proj);
  v->gate_up_proj_bias = DPTR(a->gate_up_proj_bias);
  v->down_proj = DPTR(a->down_proj);
  v->down_proj_bias = DPTR(a->down_proj_bias);
  v->gate_up_proj_scales = DPTR(a->gate_up_proj_scales);
  v->down_proj_scales = DPTR(a->down_proj_scales);
#define MJ_WS_(field) v->field = ws + c.l.field
  MJ_WS_(flags);
  MJ_WS_(num_tiles);
  MJ_WS_(expert_offsets);
  MJ_WS_(ready);
  MJ_WS_(chunk_counts);
  MJ_WS_(chunk_base);
  MJ_WS_(tiles);
  MJ_WS_(row_slot);
  MJ_WS_(slot_row);
  MJ_WS_(row_weight);
  MJ_WS_(route_ids);
  MJ_WS_(route_weights);
  MJ_WS_(gate_up);
  MJ_WS_(x_sorted);
  MJ_WS_(h);
  MJ_WS_(y_slot);
#undef MJ_WS_
  v->tokens = (int)a->tokens;
  v->nslots = (int)c.l.nslots;
  v->nchunks = (int)c.l.nchunks;
  v->tile_rows = plan->gemm1[cfg].meta.tile_rows; /* routing cuts the GEMMs' tiles */
  v->capacity = d->expert_capacity > 0 ? (int)d->expert_capacity : 0;
  v->token_base = (int)t0; /* the device-side token count, read by every routing kernel */
  v->split_stride = c.l.split_stride;
  /* Programmatic dependent launch for each kernel of a whole forward but its first, which follows
   * the caller's work; a staged forward leaves the caller room for kernels of its own in between,
   * and those need not wait for ours (nor ours for them) with griddepcontrol. */
  c.pdl = plan->pdl && stages == MOEJIT_STAGE_ALL;
  c.wgmma = config->kind == MJ_GEMM_WGMMA;
  /* The wgmma GEMMs start early with 64-row tiles only: with 128-row tiles an early start
   * staggers the persistent blocks (docs/experiments.md#pdl). Their modules are built with pdl
   * all the same: GEMM1's launch_dependents lets GEMM2's blocks in as GEMM1's leave. */
  c.wg_pdl = c.pdl && c.wgmma && config->bm == 64;
  if ((stages & MOEJIT_STAGE_ROUTE) && (st = stage_route(plan, &c, t0 > 0, stream, err)))
    return st;
  if ((stages & MOEJIT_STAGE_GEMM1) && (st = stage_gemm1(plan, &c, stream, err)))
    return st;
  /* An unfused plan's activation is a stage of its own; a plan that runs it as its own launch for
   * its layout or activation runs it with GEMM1, as a fused plan's GEMM1 applies it. */
  if (mj_rt_split_activation(d) &&
      (stages & (d->unfused ? MOEJIT_STAGE_ACTIVATION : MOEJIT_STAGE_GEMM1)) &&
      (st = mj_rt_activation(plan, v, &c.l, stream, c.pdl, err)))
    return st;
  if ((stages & MOEJIT_STAGE_GEMM2) && (st = stage_gemm2(plan, &c, stream, err)))
    return st;
  if (stages & MOEJIT_STAGE_COMBINE)
    st = stage_combine(plan, &c, stream, err);
  return st;
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
  if (a->field)                                                                                    \
  a->field = (char *)a->field + (size_t)t0 * (size_t)(bytes_per_token)
  MJ_ADVANCE_(x, d->hidden * act);
  MJ_ADVANCE_(y, d->hidden * act);
  MJ_ADVANCE_(topk_ids, d->top_k * mj_dtype_size(d->ids_dtype));
  MJ_ADVANCE_(routing_weights, per_weights * mj_dtype_size(d->weights_dtype));
  MJ_ADVANCE_(router_logits, scored * mj_dtype_size(d->logits_dtype));
#undef MJ_ADVANCE_
}

/* The sizes moejit_forward_args has had: 0.1's ended before device_tokens. */
static const size_t args_sizes[] = {offsetof(moejit_forward_args, device_tokens),
                                    offsetof(moejit_forward_args, gate_up_proj_scales),
                                    sizeof(moejit_forward_args)};

static moejit_status forward(moejit_plan *plan, const moejit_forward_args *args, void *workspace,
                             size_t workspace_bytes, CUstream stream, int cfg, unsigned stages) {
  mj_err err;
  moejit_status st;
  int pushed = 0;
  if (!plan)
    return MOEJIT_ERR_INVALID_ARG;
  moejit_ctx *ctx = plan->ctx;
  if (ctx->offline)
    return mj_rt_fail(ctx,
                      mj_errf(&err, MOEJIT_ERR_NO_DEVICE,
                              "the plan was compiled offline for %s; there is no device to run on",
                              ctx->arch),
                      &err);
  moejit_forward_args full;
  moejit_forward_args_init(&full);
  if (!args)
    return mj_rt_fail(ctx, mj_errf(&err, MOEJIT_ERR_INVALID_ARG, "args is NULL"), &err);
  if (mj_rt_upgrade(args, args->struct_size, args_sizes, 3, &full, sizeof full) != 0)
    return mj_rt_fail(ctx,
                      mj_errf(&err, MOEJIT_ERR_INVALID_ARG,
                              "args->struct_size=%zu, expected %zu, %zu or %zu (call "
                              "moejit_forward_args_init)",
                              args->struct_size, sizeof full, args_sizes[1], args_sizes[0]),
                      &err);
  args = &full;
  if ((st = check_args(plan, args, workspace, workspace_bytes, &err)) != MOEJIT_OK)
    return mj_rt_fail(ctx, st, &err);
  if (args->tokens == 0 && !workspace)
    return MOEJIT_OK;
  /* Past MJ_CHUNK_TOKENS the forward runs chunk by chunk over one workspace: the layer works token
   * by token, so each chunk is a whole forward of its tokens; the bad-id count adds up. */
  if (args->tokens > MJ_CHUNK_TOKENS && stages != MOEJIT_STAGE_ALL)
    return mj_rt_fail(ctx,
                      mj_errf(&err, MOEJIT_ERR_UNSUPPORTED,
                              "stages=0x%x: a staged forward takes at most %d tokens, got %lld",
                              stages, MJ_CHUNK_TOKENS, (long long)args->tokens),
                      &err);
  if ((st = mj_rt_enter(ctx, &pushed, &err)) != MOEJIT_OK)
    return mj_rt_fail(ctx, st, &err);
  if (args->tokens == 0) { /* nothing to run; the flags must not speak of an earlier forward */
    CUresult r = ctx->cu.MemsetD32Async(DPTR(workspace), 0, 4, stream);
    if (r != MJ_CU_SUCCESS)
      st = mj_rt_cu_fail(&ctx->cu, r, "MemsetD32Async", __FILE__, __LINE__, &err);
  }
  for (int64_t t0 = 0; t0 < args->tokens && st == MOEJIT_OK; t0 += MJ_CHUNK_TOKENS) {
    moejit_forward_args a;
    chunk_args(&plan->desc, args, t0, &a);
    st = run_chunk(plan, &a, DPTR(workspace), stream,
                   cfg >= 0 ? cfg : mj_rt_pick(plan, a.tokens, NULL), stages, t0, &err);
  }
  mj_rt_leave(ctx, pushed);
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

moejit_status mj_rt_forward_with(moejit_plan *plan, const moejit_forward_args *args,
                                 void *workspace, size_t workspace_bytes, CUstream stream,
                                 int config) {
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
  if ((st = mj_rt_enter(ctx, &pushed, &err)) != MOEJIT_OK)
    return mj_rt_fail(ctx, st, &err);
  MJ_CU(&ctx->cu, MemcpyDtoHAsync(flags, DPTR(workspace), sizeof flags, stream), &err);
  MJ_CU(&ctx->cu, StreamSynchronize(stream), &err);
  mj_rt_leave(ctx, pushed);
  pushed = 0;
  if (bad_slots)
    *bad_slots = flags[0];
  if (flags[0] != 0)
    return mj_rt_fail(
        ctx,
        mj_errf(&err, MOEJIT_ERR_BAD_EXPERT_ID,
                "%d slot(s) named an expert outside [0, %lld); they contributed nothing", flags[0],
                (long long)plan->desc.experts),
        &err);
  return MOEJIT_OK;
fail:
  mj_rt_leave(ctx, pushed);
  return mj_rt_fail(ctx, st, &err);
}
