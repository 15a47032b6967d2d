/* tuner.c: the autotuner (see tuner.h), in four steps: the candidates (the heuristic's table and
 * the search space, those whose kernels fit the device), the spill filter (candidates whose GEMMs
 * use local memory are dropped), timing each token count, and recording the winners. */
#include "tools/tuner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/half.h"
#include "tools/timing.h"

#define FLUSH_BYTES ((size_t)256 << 20) /* over the L2 of any current GPU */

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* One tuning run: the layer, its candidates and the plan that holds them. */
typedef struct tuning {
  moejit_ctx *ctx;
  const mj_tuner_options *o;
  moejit_layer_desc d;
  mj_gemm_config space[MJ_MAX_GEMM_CONFIGS];
  int n;
  mj_gemm_config heur[MJ_MAX_GEMM_CONFIGS];
  int nheur;
  int wgmma; /* whether the plan may take wgmma configurations (the batch-invariant family) */
  moejit_plan *plan;
  int at[MJ_MAX_GEMM_CONFIGS];     /* space[i]'s index into the plan's configurations */
  int usable[MJ_MAX_GEMM_CONFIGS]; /* 0: it spills, or the plan holds it as an earlier candidate */
  mj_synth syn;
  mj_synth_layer L;
  CUdeviceptr flush;
  double start;
} tuning;

/* Whether a candidate is of the layer's family (the batch-invariant one when the layer asks) and
 * its kernels fit the device, by their launch contracts. */
static int fits(void *user, const mj_gemm_config *c) {
  tuning *t = user;
  return (!t->d.batch_invariant || mj_tune_invariant(c, t->wgmma)) &&
         mj_rt_config_fits(t->ctx, &t->d, c);
}

/* The heuristic's table first, so its picks are timed on the same footing, then the search space,
 * both of the layer's math path (mj_rt_math: MXFP4 weights take the MXFP4 table and space, whose
 * streamed tiles are named as any stream_ tile): the wgmma kernels where the plan can take them
 * (sm_90a and a 16-bit layer with dense weights whose activation the GEMM fuses: not unfused, gate
 * and up interleaved, gated; mj_rt_split_activation). A batch-invariant layer times only its
 * family, as its plan takes only those. Candidates are compared by name only, and the records are
 * keyed by the layer's math, not by what a name parses as. */
static void candidates(tuning *t) {
  moejit_device_info info;
  moejit_device_info_init(&info);
  moejit_device_info_get(t->ctx, &info);
  const char *arch = mj_rt_split_activation(&t->d) ? "" : info.arch;
  mj_math math = mj_rt_math(&t->d);
  mj_gemm_config extra[MJ_MAX_GEMM_CONFIGS];
  t->wgmma = math == MJ_MATH_MMA && mj_tune_arch_wgmma(arch);
  t->nheur = mj_tune_heuristic(math, arch, t->heur, MJ_MAX_GEMM_CONFIGS);
  if (t->d.batch_invariant) { /* the table's entries of the family, as the plan keeps them */
    int kept = 0;
    for (int i = 0; i < t->nheur; i++)
      if (mj_tune_invariant(&t->heur[i], t->wgmma))
        t->heur[kept++] = t->heur[i];
    t->nheur = kept;
  }
  t->n = 0;
  for (int i = 0; i < t->nheur; i++)
    t->space[t->n++] = t->heur[i];
  int nextra = mj_tune_search_space(math, arch, fits, t, extra, MJ_MAX_GEMM_CONFIGS);
  for (int i = 0; i < nextra && t->n < MJ_MAX_GEMM_CONFIGS; i++) {
    int dup = 0;
    for (int j = 0; j < t->n && !dup; j++)
      dup = !strcmp(t->space[j].name, extra[i].name);
    if (!dup)
      t->space[t->n++] = extra[i];
  }
}

/* Candidates whose GEMMs spill to local memory are dropped, and one that the plan holds as an
 * earlier candidate is timed once. */
static moejit_status drop_spills(tuning *t, mj_err *err) {
  moejit_status st = MOEJIT_OK;
  const mj_cu *cu = mj_rt_driver(t->ctx);
  for (int i = 0; i < t->n; i++) {
    int local1 = 0, local2 = 0;
    if (t->at[i] < 0)
      return mj_errf(err, MOEJIT_ERR_INTERNAL, "candidate %s is missing from its plan",
                     t->space[i].name);
    MJ_CU(cu,
          FuncGetAttribute(&local1, MJ_CU_FUNC_LOCAL_SIZE_BYTES,
                           mj_rt_plan_gemm(t->plan, t->at[i], MOEJIT_STAGE_GEMM1)->fn),
          err);
    MJ_CU(cu,
          FuncGetAttribute(&local2, MJ_CU_FUNC_LOCAL_SIZE_BYTES,
                           mj_rt_plan_gemm(t->plan, t->at[i], MOEJIT_STAGE_GEMM2)->fn),
          err);
    t->usable[i] = local1 == 0 && local2 == 0;
    for (int j = 0; j < i && t->usable[i]; j++)
      t->usable[i] = t->at[j] != t->at[i];
  }
fail:
  return st;
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

/* The forward of one candidate that mj_timing_run times, after an L2 flush. */
typedef struct timed_forward {
  tuning *t;
  moejit_forward_args a;
  int cfg, flushes;
} timed_forward;

static moejit_status flush_l2(void *user, CUstream stream, mj_err *err) {
  timed_forward *f = user;
  moejit_status st = MOEJIT_OK;
  MJ_CU(mj_rt_driver(f->t->ctx),
        MemsetD32Async(f->t->flush, (unsigned)f->flushes++, FLUSH_BYTES / 4, stream), err);
fail:
  return st;
}

static moejit_status forward(void *user, CUstream stream, mj_err *err) {
  timed_forward *f = user;
  const mj_synth_layer *L = &f->t->L;
  moejit_status st = mj_rt_forward_with(f->t->plan, &f->a, (void *)(uintptr_t)L->workspace,
                                        L->workspace_bytes, stream, f->cfg);
  if (st != MOEJIT_OK)
    return mj_errf(err, st, "forward with %s: %s", mj_rt_plan_config(f->t->plan, f->cfg)->name,
                   moejit_last_error(f->t->ctx));
  return MOEJIT_OK;
}

/* Times the candidates for one token count into r and has the winner checked. */
static moejit_status time_count(tuning *t, int64_t T, int repeat, int *done_steps, int total,
                                mj_tuner_result *r, mj_err *err) {
  moejit_status st = MOEJIT_OK;
  const mj_tuner_options *o = t->o;
  const moejit_layer_desc *d = &t->d;
  memset(r, 0, sizeof *r);
  r->tokens = T;
  timed_forward f = {t, {0}, 0, 0};
  mj_synth_layer_args(&t->L, &f.a);
  f.a.tokens = T;
  int hidx = mj_tune_pick(t->heur, t->nheur, (int64_t)1 << mj_rt_bucket(T), d->top_k, d->experts);
  int best = -1;
  float best_ms = 0.0f, ms[64];
  if (repeat > 64)
    repeat = 64;
  for (int i = 0; i < t->n; i++) {
    int worth = t->usable[i] && worth_timing(&t->space[i], d, T);
    if (i != hidx && !worth)
      continue;
    if (o->budget_s > 0 && now() - t->start > o->budget_s && i != hidx && best >= 0)
      continue; /* out of budget: keep the best so far, still time the heuristic's pick */
    f.cfg = t->at[i];
    const mj_timing timed = {1, repeat, forward, flush_l2, &f};
    if ((st = mj_timing_run(t->ctx, NULL, &timed, ms, err)) != MOEJIT_OK)
      return st;
    float m = (float)mj_timing_median(ms, repeat);
    r->candidates++;
    if (i == hidx) {
      memcpy(r->heuristic, t->space[i].name, sizeof r->heuristic);
      r->heuristic_ms = m;
    }
    if (t->usable[i] && (best < 0 || m < best_ms)) {
      best = i;
      best_ms = m;
    }
    if (o->progress && worth) {
      char what[64];
      snprintf(what, sizeof what, "%.40s %.4f ms", t->space[i].name, m);
      o->progress(o->user, "time", ++*done_steps, total, what);
    }
  }
  if (best < 0)
    return mj_errf(err, MOEJIT_ERR_INTERNAL, "no candidate could be timed for %lld tokens",
                   (long long)T);
  memcpy(r->config, t->space[best].name, sizeof r->config);
  r->ms = best_ms;
  if (!o->check)
    return MOEJIT_OK;
  /* The winner's output, on a poisoned y, checked against the reference by the caller. */
  const mj_cu *cu = mj_rt_driver(t->ctx);
  int pushed = 0;
  if ((st = mj_rt_enter(t->ctx, &pushed, err)) != MOEJIT_OK)
    return st;
  MJ_CU(cu, MemsetD8(t->L.y, 0xFF, (size_t)(T * d->hidden) * mj_dtype_size(d->dtype)), err);
  f.cfg = t->at[best];
  if ((st = forward(&f, NULL, err)) != MOEJIT_OK)
    goto fail;
  MJ_CU(cu, CtxSynchronize(), err);
  mj_synth_layer view = t->L;
  view.tokens = T;
  r->checked = o->check(o->user, &t->syn, &view, &r->rel_error) == 0 ? 1 : -1;
fail:
  mj_rt_leave(t->ctx, pushed);
  return st;
}

/* Merges the winners that passed their check into the context's records. */
static moejit_status record(tuning *t, const mj_tuner_result *results, mj_err *err) {
  const char *path = mj_rt_records_path(t->ctx);
  int nrecs = 0;
  if (!t->o->write_records || !path[0])
    return MOEJIT_OK;
  mj_record *recs = calloc((size_t)t->o->ntokens, sizeof *recs);
  if (!recs)
    return mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory");
  for (int i = 0; i < t->o->ntokens; i++) {
    if (t->o->check && results[i].checked != 1)
      continue; /* a winner that failed its check is not recorded */
    mj_rt_record_key(t->ctx, &t->d, results[i].tokens, &recs[nrecs]);
    snprintf(recs[nrecs].config, sizeof recs[nrecs].config, "%s", results[i].config);
    recs[nrecs].ms = results[i].ms;
    recs[nrecs].heuristic_ms = results[i].heuristic_ms;
    nrecs++;
  }
  moejit_log_fn log;
  void *log_user;
  mj_rt_logger(t->ctx, &log, &log_user);
  moejit_status st =
      nrecs > 0 ? mj_tune_records_merge(path, recs, nrecs, log, log_user, err) : MOEJIT_OK;
  free(recs);
  return st;
}

moejit_status mj_tuner_run(moejit_ctx *ctx, const moejit_layer_desc *desc,
                           const mj_tuner_options *o, mj_tuner_result *results, mj_err *err) {
  moejit_status st = MOEJIT_OK;
  int pushed = 0, repeat = o->repeat > 0 ? o->repeat : 5;
  moejit_device_info info;
  moejit_device_info_init(&info);
  if (moejit_device_info_get(ctx, &info) != MOEJIT_OK || info.offline)
    return mj_errf(err, MOEJIT_ERR_NO_DEVICE, "tuning needs a GPU (the context is offline)");
  if (o->ntokens < 1 || o->ntokens > MJ_TUNER_MAX_TOKENS)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "tokens: %d counts given, expected 1..%d",
                   o->ntokens, MJ_TUNER_MAX_TOKENS);
  tuning *t = calloc(1, sizeof *t);
  if (!t)
    return mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory");
  t->ctx = ctx;
  t->o = o;
  t->d = *desc;
  t->d.max_tokens = 1;
  for (int i = 0; i < o->ntokens; i++) {
    if (o->tokens[i] < 1) {
      st = mj_errf(err, MOEJIT_ERR_INVALID_ARG, "tokens[%d]=%lld: expected >= 1", i,
                   (long long)o->tokens[i]);
      goto done;
    }
    if (o->tokens[i] > t->d.max_tokens)
      t->d.max_tokens = o->tokens[i];
  }
  candidates(t);
  if (o->progress)
    o->progress(o->user, "compile", 0, 2 * t->n + 2, "compiling the candidates");
  if ((st = mj_rt_plan_create_with(ctx, &t->d, t->space, t->n, &t->plan, t->at)) != MOEJIT_OK) {
    mj_errf(err, st, "compiling the candidates: %s", moejit_last_error(ctx));
    goto done;
  }
  if (o->progress)
    o->progress(o->user, "compile", 2 * t->n + 2, 2 * t->n + 2, "compiled");
  if ((st = mj_rt_enter(ctx, &pushed, err)) != MOEJIT_OK || (st = drop_spills(t, err)) ||
      (st = mj_synth_open(ctx, &t->syn, err)) != MOEJIT_OK ||
      (st = mj_synth_layer_create(&t->syn, t->plan, t->d.max_tokens, o->seed, &t->L, err)))
    goto done;
  const mj_cu *cu = mj_rt_driver(ctx);
  MJ_CU(cu, MemAlloc(&t->flush, FLUSH_BYTES), err);
  int total = 0, done_steps = 0;
  for (int i = 0; i < o->ntokens; i++)
    for (int j = 0; j < t->n; j++)
      total += t->usable[j] && worth_timing(&t->space[j], &t->d, o->tokens[i]);
  t->start = now();
  for (int i = 0; i < o->ntokens && st == MOEJIT_OK; i++)
    st = time_count(t, o->tokens[i], repeat, &done_steps, total, &results[i], err);
  if (st == MOEJIT_OK)
    st = record(t, results, err);
done:
fail:
  if (t->flush)
    mj_rt_driver(ctx)->MemFree(t->flush);
  if (t->L.host_ids)
    mj_synth_layer_destroy(&t->syn, &t->L);
  mj_synth_close(&t->syn);
  mj_rt_leave(ctx, pushed);
  moejit_plan_destroy(t->plan);
  free(t);
  return st;
}
