/* plan.c: a plan's life. Checks the layer, gathers its GEMM configurations (the tuning records
 * where they exist, else the heuristic's table), has build.c render, compile and load every kernel,
 * and picks a configuration per token bucket. Everything expensive happens here, so
 * moejit_forward only launches. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "base/half.h"
#include "runtime/internal.h"

mj_math mj_rt_math(const moejit_layer_desc *d) {
  return mj_tune_math(d->dtype, d->exact_f32, d->weight_format);
}

int mj_rt_bucket(int64_t tokens) {
  int b = 0;
  while (b < MJ_BUCKETS - 1 && ((int64_t)1 << b) < tokens)
    b++;
  return b;
}

void mj_rt_record_key(const moejit_ctx *ctx, const moejit_layer_desc *d, int64_t bucket,
                      mj_record *r) {
  memset(r, 0, sizeof *r);
  snprintf(r->arch, sizeof r->arch, "%s", ctx->arch);
  r->sms = ctx->sm_count;
  r->hidden = d->hidden;
  r->intermediate = d->intermediate;
  r->experts = d->experts;
  r->top_k = d->top_k;
  snprintf(r->dtype, sizeof r->dtype, "%s", mj_dtype_name(d->dtype));
  /* the math path is part of the key: an f32 layer's TF32 and exact records differ */
  /* The math path, then each choice that changes GEMM1's shape or the tile families a plan may
   * take, so that the records of one layer never serve another: the activation (without mul,
   * GEMM1 has I outputs; gated, its epilogue differs), gate and up in halves and unfused plans (no
   * wgmma), batch invariance (one family). The default layer's key is "gemm_<math>". */
  static const char *const layouts[] = {"", "_halves", "_up_gate"};
  snprintf(r->kernel, sizeof r->kernel, "gemm_%s%s%s%s%s%s", mj_tune_math_name(mj_rt_math(d)),
           d->activation != MOEJIT_ACT_SWIGLU_OAI ? "_" : "",
           d->activation != MOEJIT_ACT_SWIGLU_OAI ? mj_rt_activation_name(d->activation) : "",
           mj_rt_gate_up_cols(d) == 2 * d->intermediate ? layouts[d->gate_up_layout] : "",
           d->unfused ? "_unfused" : "", d->batch_invariant ? "_bi" : "");
  r->bucket = bucket;
  snprintf(r->version, sizeof r->version, "%s", moejit_version_string());
}

const mj_gemm_config *mj_rt_plan_config(const moejit_plan *plan, int i) {
  return &plan->configs[i];
}
int mj_rt_plan_configs(const moejit_plan *plan) { return plan->ngemm; }
int mj_rt_plan_modules(const moejit_plan *plan) { return plan->nmodules; }
const moejit_layer_desc *mj_rt_plan_desc(const moejit_plan *plan) { return &plan->desc; }
const mj_kernel *mj_rt_plan_gemm(const moejit_plan *plan, int i, moejit_stage stage) {
  return stage == MOEJIT_STAGE_GEMM1 ? &plan->gemm1[i] : &plan->gemm2[i];
}

/* ---- configurations -------------------------------------------------------------------------- */

/* Whether a batch-invariant plan's family is the wgmma tiles: dense f16/bf16 layers that may take
 * them (MXFP4 ones keep to mma.sync, the tiles their table has). */
static int invariant_wgmma(const moejit_plan *plan) {
  return plan->wgmma && plan->math == MJ_MATH_MMA;
}

/* The configuration as this layer runs it: a GEMM2 split along K takes as many parts as the
 * layer's K (intermediate) allows, which its template's contract says, and is renamed. */
static moejit_status fit_config(const moejit_plan *plan, const mj_gemm_config *given,
                                mj_gemm_config *c, mj_err *err) {
  *c = *given;
  if (given->splits < 2)
    return MOEJIT_OK;
  mj_module_src m;
  memset(&m, 0, sizeof m);
  mj_rt_gemm_spec(&plan->desc, given, MOEJIT_STAGE_GEMM2, &m.spec);
  moejit_status st = mj_gen_render(plan->ctx->gen, "gemm", &m.spec, &m.source, &m.meta, err);
  free(m.source);
  if (st != MOEJIT_OK)
    return st;
  c->splits = m.meta.kernel[0].splits;
  if (c->splits != given->splits)
    mj_tune_config_name(c, plan->math);
  return MOEJIT_OK;
}

/* Adds a configuration, fitted to the layer, once: *at gets its index, or -1 when the plan is
 * full. */
static moejit_status add_config(moejit_plan *plan, const mj_gemm_config *given, int *at,
                                mj_err *err) {
  mj_gemm_config c;
  moejit_status st = fit_config(plan, given, &c, err);
  *at = -1;
  if (st != MOEJIT_OK)
    return st;
  for (int i = 0; i < plan->ngemm && *at < 0; i++)
    if (!strcmp(plan->configs[i].name, c.name))
      *at = i;
  if (*at < 0 && plan->ngemm < MJ_MAX_GEMM_CONFIGS) {
    plan->configs[plan->ngemm] = c;
    *at = plan->ngemm++;
  }
  return MOEJIT_OK;
}

/* The configuration a record names, from the search space or the heuristic's table; NULL when it
 * names neither. */
static const mj_gemm_config *record_config(const char *name, const mj_gemm_config *space,
                                           int nspace, const mj_gemm_config *heur, int nheur) {
  for (int j = 0; j < nspace; j++)
    if (!strcmp(space[j].name, name))
      return &space[j];
  for (int j = 0; j < nheur; j++)
    if (!strcmp(heur[j].name, name))
      return &heur[j];
  return NULL;
}

/* Points buckets (and exact counts) at the configurations the tuning records that match this plan
 * name; the others keep the heuristic's pick. */
static moejit_status apply_records(moejit_plan *plan, const mj_gemm_config *heur, int nheur,
                                   mj_err *err) {
  moejit_ctx *ctx = plan->ctx;
  const moejit_layer_desc *d = &plan->desc;
  moejit_status st = MOEJIT_OK;
  mj_record *recs = NULL, want;
  int n = 0;
  mj_err lerr;
  if (!ctx->records_path[0])
    return MOEJIT_OK;
  if (mj_tune_records_load(ctx->records_path, &recs, &n, ctx->log, ctx->log_user, &lerr) !=
      MOEJIT_OK) { /* damage is a miss: the heuristic serves */
    mj_rt_log(ctx, MOEJIT_LOG_WARN, "%s; using the heuristic", lerr.msg);
    return MOEJIT_OK;
  }
  mj_gemm_config space[2 * MJ_MAX_GEMM_CONFIGS]; /* all of it: the records' are checked below */
  int nspace = mj_tune_search_space(plan->math, plan->wgmma ? ctx->arch : "", NULL, NULL, space,
                                    2 * MJ_MAX_GEMM_CONFIGS);
  for (int i = 0; i < n && st == MOEJIT_OK; i++) {
    mj_rt_record_key(ctx, d, recs[i].bucket, &want);
    if (ctx->offline)
      want.sms = recs[i].sms; /* an offline plan takes records for any SM count of its arch */
    if (!mj_tune_record_same_key(&recs[i], &want))
      continue;
    /* A record may name only a configuration of the search space (or the heuristic's), and one
     * that fits this device. */
    const mj_gemm_config *c = record_config(recs[i].config, space, nspace, heur, nheur);
    if (c && d->batch_invariant && !mj_tune_invariant(c, invariant_wgmma(plan))) {
      mj_rt_log(ctx, MOEJIT_LOG_WARN,
                "%s: the record for %lld tokens names '%s', which is not of the batch-invariant "
                "family; ignored",
                ctx->records_path, (long long)recs[i].bucket, recs[i].config);
      continue;
    }
    if (!c || !mj_rt_config_fits(ctx, d, c)) {
      mj_rt_log(ctx, MOEJIT_LOG_WARN, "%s: the record for %lld tokens names '%s', %s; ignored",
                ctx->records_path, (long long)recs[i].bucket, recs[i].config,
                c ? "whose kernels do not fit this device"
                  : "which is no configuration of its math");
      continue;
    }
    int64_t t = recs[i].bucket;
    if (c->splits > 1 && t > MJ_SPLIT_SLOTS / d->top_k) { /* t * top_k slots, unmultiplied */
      mj_rt_log(ctx, MOEJIT_LOG_WARN,
                "%s: the record for %lld tokens names '%s', which splits GEMM2 and takes at most "
                "%d slots; ignored",
                ctx->records_path, (long long)t, c->name, MJ_SPLIT_SLOTS);
      continue;
    }
    int idx;
    if ((st = add_config(plan, c, &idx, err)) != MOEJIT_OK || idx < 0)
      break;
    if ((t & (t - 1)) == 0) {
      plan->pick[mj_rt_bucket(t)] = idx;
      plan->tuned[mj_rt_bucket(t)] = 1;
    } else if (plan->nexact < MJ_MAX_EXACT) {
      plan->exact_tokens[plan->nexact] = t;
      plan->exact_pick[plan->nexact++] = idx;
    }
  }
  free(recs);
  return st;
}

/* The heuristic's configurations, and its pick for each bucket; then the records'. */
static moejit_status pick_configs(moejit_plan *plan, mj_err *err) {
  const moejit_layer_desc *d = &plan->desc;
  mj_gemm_config heur[MJ_MAX_GEMM_CONFIGS];
  int nheur =
      mj_tune_heuristic(plan->math, plan->wgmma ? plan->ctx->arch : "", heur, MJ_MAX_GEMM_CONFIGS);
  if (d->batch_invariant) { /* the table's entries of the family; the next one takes each range */
    int kept = 0;
    for (int i = 0; i < nheur; i++)
      if (mj_tune_invariant(&heur[i], invariant_wgmma(plan)))
        heur[kept++] = heur[i];
    nheur = kept;
  }
  /* the plan's index of each table entry: a configuration the table names twice (for two ranges
   * of rows) is in the plan once */
  int at[MJ_MAX_GEMM_CONFIGS];
  moejit_status st;
  for (int i = 0; i < nheur; i++)
    if ((st = add_config(plan, &heur[i], &at[i], err)) != MOEJIT_OK)
      return st;
  for (int b = 0; b < MJ_BUCKETS; b++) {
    int i = mj_tune_pick(heur, nheur, (int64_t)1 << b, d->top_k, d->experts);
    /* a GEMM2 split along K takes at most MJ_SPLIT_SLOTS slots: the next entry serves beyond */
    while (heur[i].splits > 1 && ((int64_t)1 << b) * d->top_k > MJ_SPLIT_SLOTS && i + 1 < nheur)
      i++;
    plan->pick[b] = at[i];
  }
  return apply_records(plan, heur, nheur, err);
}

/* ---- modules --------------------------------------------------------------------------------- */

/* Loads a module's kernels into the plan (entries NULL-terminated, k[i] for entries[i]), their
 * parameters bound to the forward's values. */
static moejit_status load(moejit_plan *plan, const mj_module_src *m, const char *const *entries,
                          mj_kernel *const *k, mj_err *err) {
  CUmodule mod = NULL;
  moejit_status st = mj_rt_load_module(plan->ctx, m, entries, k, &mod, err);
  if (mod)
    plan->modules[plan->nmodules++] = mod;
  for (int i = 0; entries[i] && st == MOEJIT_OK; i++) /* parameters from the forward's values */
    st = mj_rt_bind(k[i], err);
  return st;
}

/* Compiles (through the cache) and loads the plan's modules for plan->configs. */
static moejit_status build(moejit_plan *plan, mj_err *err) {
  moejit_status st;
  moejit_ctx *ctx = plan->ctx;
  const moejit_layer_desc *d = &plan->desc;
  mj_module_src *mods = NULL;
  int nmods = 0, pushed = 0;
  if ((st = mj_rt_build_modules(ctx, d, plan->configs, plan->ngemm, ctx->arch, 0, &mods, &nmods,
                                err)) != MOEJIT_OK)
    goto fail;
  if (!ctx->offline && (st = mj_rt_enter(ctx, &pushed, err)) != MOEJIT_OK)
    goto fail;
  int logits = d->routing == MOEJIT_ROUTING_LOGITS;
  mj_route_kernels *r = &plan->route;
  const char *route[] = {logits ? "moejit_route_small_logits" : "moejit_route_small",
                         "moejit_route_count",
                         "moejit_route_scan",
                         "moejit_route_scatter",
                         logits ? "moejit_route_topk" : NULL,
                         NULL};
  mj_kernel *route_k[] = {&r->small, &r->count, &r->scan, &r->scatter, &r->topk};
  const char *combine[] = {"moejit_combine", mj_rt_split_activation(d) ? "moejit_activation" : NULL,
                           NULL};
  mj_kernel *combine_k[] = {&plan->combine, &plan->activation};
  if ((st = load(plan, &mods[0], route, route_k, err)) != MOEJIT_OK ||
      (st = load(plan, &mods[1], combine, combine_k, err)) != MOEJIT_OK)
    goto fail;
  int gathered = 0; /* the first wgmma GEMM1 module's moejit_gather serves every configuration */
  for (int i = 0; i < plan->ngemm; i++) {
    int wg = plan->configs[i].kind == MJ_GEMM_WGMMA;
    const char *entry = wg ? "moejit_wgmma" : "moejit_gemm";
    const char *g1[] = {entry, wg && !gathered ? "moejit_gather" : NULL, NULL},
               *g2[] = {entry, NULL};
    mj_kernel *g1_k[] = {&plan->gemm1[i], &plan->gather}, *g2_k[] = {&plan->gemm2[i]};
    if ((st = load(plan, &mods[2 + 2 * i], g1, g1_k, err)) != MOEJIT_OK ||
        (st = load(plan, &mods[3 + 2 * i], g2, g2_k, err)) != MOEJIT_OK)
      goto fail;
    gathered |= wg;
  }
  /* the shortest tile of the GEMMs' contracts sizes the workspace's tile list */
  plan->min_bm = INT_MAX;
  for (int i = 0; i < plan->ngemm; i++)
    if (plan->gemm1[i].meta.tile_rows < plan->min_bm)
      plan->min_bm = plan->gemm1[i].meta.tile_rows;
  const char *split_combine[] = {"moejit_combine", NULL};
  mj_kernel *split_combine_k[] = {&plan->combine_split};
  if (plan->splits > 1 &&
      (st = load(plan, &mods[nmods - 1], split_combine, split_combine_k, err)) != MOEJIT_OK)
    goto fail;
fail:
  mj_rt_leave(ctx, pushed);
  mj_rt_modules_free(mods, nmods);
  return st;
}

/* ---- the plan -------------------------------------------------------------------------------- */

static moejit_status plan_create(moejit_ctx *ctx, const moejit_layer_desc *desc,
                                 const mj_gemm_config *configs, int nconfigs, moejit_plan **out,
                                 int *at) {
  moejit_status st;
  mj_err *err;
  moejit_plan *plan = NULL;
  if (!ctx)
    return MOEJIT_ERR_INVALID_ARG;
  err = &ctx->err;
  if (!out)
    return mj_rt_fail(ctx, mj_errf(err, MOEJIT_ERR_INVALID_ARG, "plan is NULL"), err);
  *out = NULL;
  if ((st = mj_rt_check_desc(desc, err)) != MOEJIT_OK)
    return mj_rt_fail(ctx, st, err);
  plan = calloc(1, sizeof *plan);
  if (!plan)
    return mj_rt_fail(ctx, mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory"), err);
  plan->ctx = ctx;
  mj_rt_desc_full(desc, &plan->desc, err); /* checked above */
  desc = &plan->desc;
  plan->math = mj_rt_math(desc);
  /* whether the plan may take wgmma configurations: sm_90a and a fused f16/bf16 layer */
  /* MXFP4 layers take wgmma configurations only when named (records, lists): their table has
   * none (mj_tune_heuristic), and their batch-invariant family is mma.sync's (invariant_family) */
  plan->wgmma = (plan->math == MJ_MATH_MMA || plan->math == MJ_MATH_MXFP4) &&
                !mj_rt_split_activation(desc) && mj_tune_arch_wgmma(ctx->arch);
  plan->pdl = !ctx->offline && ctx->cc_major >= 9 && !ctx->pdl_off;
  if (configs) {
    for (int i = 0; i < nconfigs && i < MJ_MAX_GEMM_CONFIGS; i++) {
      int idx;
      if (configs[i].kind == MJ_GEMM_WGMMA && !plan->wgmma) {
        st = mj_errf(err, MOEJIT_ERR_UNSUPPORTED,
                     "configuration %s needs sm_90a and a fused f16/bf16 layer", configs[i].name);
        goto fail;
      }
      if (desc->batch_invariant && !mj_tune_invariant(&configs[i], invariant_wgmma(plan))) {
        st = mj_errf(err, MOEJIT_ERR_UNSUPPORTED,
                     "configuration %s is not of the batch-invariant family (%s tiles, no "
                     "streamed tile, no split GEMM2)",
                     configs[i].name, invariant_wgmma(plan) ? "wgmma" : "mma.sync/FFMA");
        goto fail;
      }
      if ((st = add_config(plan, &configs[i], &idx, err)) != MOEJIT_OK)
        goto fail;
      if (at)
        at[i] = idx;
    }
  } else if ((st = pick_configs(plan, err)) != MOEJIT_OK) {
    goto fail;
  }
  plan->wgmma = 0; /* from here on: whether any configuration is a wgmma one (x_sorted, gather) */
  plan->splits = 1;
  for (int i = 0; i < plan->ngemm; i++) {
    plan->wgmma |= plan->configs[i].kind == MJ_GEMM_WGMMA;
    if (plan->configs[i].splits > 1)
      plan->splits = plan->configs[i].splits;
  }
  if ((st = build(plan, err)) != MOEJIT_OK)
    goto fail;
  mj_rt_log(ctx, MOEJIT_LOG_INFO,
            "plan: H=%lld I=%lld E=%lld K=%lld %s, %d GEMM configurations for %s",
            (long long)desc->hidden, (long long)desc->intermediate, (long long)desc->experts,
            (long long)desc->top_k, mj_dtype_name(desc->dtype), plan->ngemm, ctx->arch);
  *out = plan;
  return MOEJIT_OK;
fail:
  moejit_plan_destroy(plan);
  return mj_rt_fail(ctx, st, err);
}

moejit_status moejit_plan_create(moejit_ctx *ctx, const moejit_layer_desc *desc,
                                 moejit_plan **out) {
  return plan_create(ctx, desc, NULL, 0, out, NULL);
}

moejit_status mj_rt_plan_create_with(moejit_ctx *ctx, const moejit_layer_desc *desc,
                                     const mj_gemm_config *configs, int nconfigs, moejit_plan **out,
                                     int *at) {
  if (nconfigs < 1 || nconfigs > MJ_MAX_GEMM_CONFIGS)
    return MOEJIT_ERR_INVALID_ARG;
  return plan_create(ctx, desc, configs, nconfigs, out, at);
}

void moejit_plan_destroy(moejit_plan *plan) {
  if (!plan)
    return;
  moejit_ctx *ctx = plan->ctx;
  if (plan->nmodules && ctx->cu.lib) { /* unloaded even if the context cannot be made current */
    int pushed = 0;
    mj_err err;
    mj_rt_enter(ctx, &pushed, &err);
    for (int i = 0; i < plan->nmodules; i++)
      ctx->cu.ModuleUnload(plan->modules[i]);
    mj_rt_leave(ctx, pushed);
  }
  free(plan);
}
