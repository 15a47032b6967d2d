/* tuner.c: the autotuner (see tuner.h). */
#include "tools/tuner.h"

#include "base/half.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FLUSH_BYTES ((size_t)256 << 20) /* over the L2 of any current GPU */

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_float(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

/* Candidates worth timing at this token count: tiles no taller than needed for the rows an expert
 * gets on average (a taller tile only pads), and tiles of up to 64 rows always (the 64-row wgmma
 * tiles stream decode weights well although most of their rows are empty). */
static int worth_timing(const mj_gemm_config *c, const moejit_layer_desc *d, int64_t tokens) {
  int64_t avg = (tokens * d->top_k + d->experts - 1) / d->experts;
  int64_t cap = 64;
  while (cap < 2 * avg && cap < 256)
    cap *= 2;
  return c->bm <= cap && (c->splits < 2 || tokens * d->top_k <= MJ_SPLIT_SLOTS);
}

/* Median time of one forward with configuration cfg; L2 flushed before each run. */
static moejit_status time_config(moejit_plan *plan, const moejit_forward_args *a,
                                 const mj_synth_layer *L, int cfg, int repeat, CUdeviceptr flush,
                                 CUevent ev[2], float *median, mj_err *err) {
  moejit_status st = MOEJIT_OK;
  mj_cu *cu = &plan->ctx->cu;
  float ms[64];
  if (repeat > 64)
    repeat = 64;
  void *ws = (void *)(uintptr_t)L->workspace;
  for (int i = -1; i < repeat; i++) {
    MJ_CU(cu, MemsetD32Async(flush, (unsigned)i, FLUSH_BYTES / 4, NULL), err);
    MJ_CU(cu, EventRecord(ev[0], NULL), err);
    if ((st = mj_rt_forward_with(plan, a, ws, L->workspace_bytes, NULL, cfg)) != MOEJIT_OK)
      return mj_errf(err, st, "forward with %s: %s", plan->configs[cfg].name,
                     moejit_last_error(plan->ctx));
    MJ_CU(cu, EventRecord(ev[1], NULL), err);
    MJ_CU(cu, EventSynchronize(ev[1]), err);
    if (i >= 0)
      MJ_CU(cu, EventElapsedTime(&ms[i], ev[0], ev[1]), err);
  }
  qsort(ms, (size_t)repeat, sizeof ms[0], cmp_float);
  *median = ms[repeat / 2];
fail:
  return st;
}

moejit_status mj_tune_run(moejit_ctx *ctx, const moejit_layer_desc *desc, const mj_tune_options *o,
                          mj_tune_result *results, mj_err *err) {
  moejit_status st = MOEJIT_OK;
  moejit_plan *plan = NULL;
  mj_synth syn = {0};
  mj_synth_layer L = {0};
  mj_gemm_config space[MJ_MAX_GEMM_CONFIGS];
  /* at[i]: space[i]'s index into the plan's configurations (a split the layer cannot take is
   * split fewer ways there, and may coincide with another candidate) */
  int usable[MJ_MAX_GEMM_CONFIGS], at[MJ_MAX_GEMM_CONFIGS];
  CUdeviceptr flush = 0;
  CUevent ev[2] = {NULL, NULL};
  mj_record *recs = NULL;
  int pushed = 0, nrecs = 0, repeat = o->repeat > 0 ? o->repeat : 5;
  if (ctx->offline)
    return mj_errf(err, MOEJIT_ERR_NO_DEVICE, "tuning needs a GPU (the context is offline)");
  if (o->ntokens < 1 || o->ntokens > MJ_TUNE_MAX_TOKENS)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "tokens: %d counts given, expected 1..%d",
                   o->ntokens, MJ_TUNE_MAX_TOKENS);
  moejit_layer_desc d = *desc;
  d.max_tokens = 1;
  for (int i = 0; i < o->ntokens; i++) {
    if (o->tokens[i] < 1)
      return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "tokens[%d]=%lld: expected >= 1", i,
                     (long long)o->tokens[i]);
    if (o->tokens[i] > d.max_tokens)
      d.max_tokens = o->tokens[i];
  }

  /* The heuristic's table first, so its picks are timed on the same footing. */
  int nheur = 0, n = 0;
  /* wgmma kernels where the plan can take them: sm_90a and a fused 16-bit layer */
  const char *arch = d.unfused ? "" : ctx->arch;
  const mj_gemm_config *heur = mj_tune_gemm_configs_for(mj_rt_math(&d), arch, &nheur);
  for (int i = 0; i < nheur; i++)
    space[n++] = heur[i];
  mj_gemm_config extra[MJ_MAX_GEMM_CONFIGS];
  int nextra = mj_tune_search_space(mj_rt_math(&d), d.dtype, arch, (size_t)ctx->smem_optin, extra,
                                    MJ_MAX_GEMM_CONFIGS);
  for (int i = 0; i < nextra && n < MJ_MAX_GEMM_CONFIGS; i++) {
    int dup = 0;
    for (int j = 0; j < n && !dup; j++)
      dup = !strcmp(space[j].name, extra[i].name);
    if (!dup)
      space[n++] = extra[i];
  }
  if (o->progress)
    o->progress(o->user, "compile", 0, 2 * n + 2, "compiling the candidates");
  if ((st = mj_rt_plan_create_with(ctx, &d, space, n, &plan)) != MOEJIT_OK) {
    mj_errf(err, st, "compiling the candidates: %s", moejit_last_error(ctx));
    goto done;
  }
  if (o->progress)
    o->progress(o->user, "compile", 2 * n + 2, 2 * n + 2, "compiled");
  mj_cu *cu = &ctx->cu;
  MJ_CU(cu, CtxPushCurrent(ctx->cuctx), err);
  pushed = 1;
  /* Candidates that spill to local memory are dropped, and one that the plan holds as an earlier
   * candidate is timed once. */
  for (int i = 0; i < n; i++) {
    int local1 = 0, local2 = 0;
    if ((at[i] = mj_rt_config_index(plan, &space[i])) < 0) {
      st = mj_errf(err, MOEJIT_ERR_INTERNAL, "candidate %s is missing from its plan", space[i].name);
      goto done;
    }
    MJ_CU(cu, FuncGetAttribute(&local1, MJ_CU_FUNC_LOCAL_SIZE_BYTES, plan->gemm1[at[i]].fn), err);
    MJ_CU(cu, FuncGetAttribute(&local2, MJ_CU_FUNC_LOCAL_SIZE_BYTES, plan->gemm2[at[i]].fn), err);
    usable[i] = local1 == 0 && local2 == 0;
    for (int j = 0; j < i && usable[i]; j++)
      usable[i] = at[j] != at[i];
  }
  if ((st = mj_synth_open(ctx, &syn, err)) != MOEJIT_OK ||
      (st = mj_synth_layer_create(&syn, plan, d.max_tokens, o->seed, &L, err)) != MOEJIT_OK)
    goto done;
  MJ_CU(cu, MemAlloc(&flush, FLUSH_BYTES), err);
  MJ_CU(cu, EventCreate(&ev[0], 0), err);
  MJ_CU(cu, EventCreate(&ev[1], 0), err);

  int total = 0, done_steps = 0;
  for (int t = 0; t < o->ntokens; t++)
    for (int i = 0; i < n; i++)
      total += usable[i] && worth_timing(&space[i], &d, o->tokens[t]);
  double start = now();
  for (int t = 0; t < o->ntokens; t++) {
    int64_t T = o->tokens[t];
    mj_tune_result *r = &results[t];
    memset(r, 0, sizeof *r);
    r->tokens = T;
    moejit_forward_args a;
    mj_synth_layer_args(&L, &a);
    a.tokens = T;
    int hidx = mj_tune_pick(heur, nheur, (int64_t)1 << mj_rt_bucket(T), d.top_k, d.experts);
    int best = -1;
    float best_ms = 0.0f;
    for (int i = 0; i < n; i++) {
      int timed = i == hidx || (usable[i] && worth_timing(&space[i], &d, T));
      if (!timed)
        continue;
      if (o->budget_s > 0 && now() - start > o->budget_s && i != hidx && best >= 0)
        continue; /* out of budget: keep the best so far, still time the heuristic's pick */
      float ms = 0.0f;
      if ((st = time_config(plan, &a, &L, at[i], repeat, flush, ev, &ms, err)) != MOEJIT_OK)
        goto done;
      r->candidates++;
      if (i == hidx) {
        memcpy(r->heuristic, space[i].name, sizeof r->heuristic);
        r->heuristic_ms = ms;
      }
      if (usable[i] && (best < 0 || ms < best_ms)) {
        best = i;
        best_ms = ms;
      }
      if (o->progress && usable[i] && worth_timing(&space[i], &d, T)) {
        char what[64];
        snprintf(what, sizeof what, "%.40s %.4f ms", space[i].name, ms);
        o->progress(o->user, "time", ++done_steps, total, what);
      }
    }
    if (best < 0) {
      st = mj_errf(err, MOEJIT_ERR_INTERNAL, "no candidate could be timed for %lld tokens",
                   (long long)T);
      goto done;
    }
    memcpy(r->config, space[best].name, sizeof r->config);
    r->ms = best_ms;
    /* The winner's output, checked against the reference by the caller. */
    if (o->check) {
      MJ_CU(cu, MemsetD8(L.y, 0xFF, (size_t)(T * d.hidden) * mj_dtype_size(d.dtype)), err);
      if ((st = mj_rt_forward_with(plan, &a, (void *)(uintptr_t)L.workspace, L.workspace_bytes,
                                   NULL, at[best])) != MOEJIT_OK)
        goto done;
      MJ_CU(cu, CtxSynchronize(), err);
      mj_synth_layer view = L;
      view.tokens = T;
      r->checked = o->check(o->user, &syn, &view, &r->rel_error) == 0 ? 1 : -1;
    }
  }
  if (o->write_records && ctx->records_path[0]) {
    recs = calloc((size_t)o->ntokens, sizeof *recs);
    if (!recs) {
      st = mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory");
      goto done;
    }
    for (int t = 0; t < o->ntokens; t++) {
      if (o->check && results[t].checked != 1)
        continue; /* a winner that failed its check is not recorded */
      mj_rt_record_key(ctx, &d, results[t].tokens, &recs[nrecs]);
      snprintf(recs[nrecs].config, sizeof recs[nrecs].config, "%s", results[t].config);
      recs[nrecs].ms = results[t].ms;
      recs[nrecs].heuristic_ms = results[t].heuristic_ms;
      nrecs++;
    }
    if (nrecs > 0)
      st = mj_tune_records_merge(ctx->records_path, recs, nrecs, ctx->log, ctx->log_user, err);
  }
done:
fail:
  if (ev[0])
    ctx->cu.EventDestroy(ev[0]);
  if (ev[1])
    ctx->cu.EventDestroy(ev[1]);
  if (flush)
    ctx->cu.MemFree(flush);
  if (L.host_ids)
    mj_synth_layer_destroy(&syn, &L);
  mj_synth_close(&syn);
  if (pushed) {
    CUcontext popped;
    ctx->cu.CtxPopCurrent(&popped);
  }
  moejit_plan_destroy(plan);
  free(recs);
  return st;
}
