/* plan.c: plans. Validates the layer, renders every kernel from its template, compiles them with
 * NVRTC in parallel threads, loads the modules and sizes the workspace. Everything expensive happens
 * here, so moejit_forward only launches. Uses gen/ and tune/heuristic. */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/internal.h"

#define ALIGN256(x) (((x) + 255) & ~(size_t)255)

moejit_status mj_rt_check_desc(const moejit_layer_desc *d, mj_err *err) {
  if (!d)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "desc is NULL");
  /* the sizes this header has had, each ending at a field appended later */
  static const size_t sizes[] = {MJ_DESC_MIN_SIZE, offsetof(moejit_layer_desc, bias_f32),
                                 offsetof(moejit_layer_desc, exact_f32),
                                 offsetof(moejit_layer_desc, unfused), sizeof(moejit_layer_desc)};
  int known = 0;
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
    known |= d->struct_size == sizes[i];
  if (!known)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "desc->struct_size=%zu is not the size of any version of moejit_layer_desc "
                   "(this one: %zu; call moejit_layer_desc_init)",
                   d->struct_size, sizeof *d);
  moejit_layer_desc full; /* the fields a shorter struct lacks, at their defaults */
  moejit_layer_desc_init(&full);
  memcpy(&full, d, d->struct_size);
  d = &full;
  const struct {
    const char *name;
    int64_t v, lo, hi, multiple;
  } ints[] = {
      {"hidden", d->hidden, 8, 1 << 20, 8},
      {"intermediate", d->intermediate, 8, 1 << 20, 8},
      {"experts", d->experts, 1, 1024, 1},
      {"top_k", d->top_k, 1, 32, 1},
      {"max_tokens", d->max_tokens, 1, INT32_MAX / 32, 1},
  };
  for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
    if (ints[i].v < ints[i].lo || ints[i].v > ints[i].hi)
      return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "desc->%s=%lld is outside [%lld, %lld]",
                     ints[i].name, (long long)ints[i].v, (long long)ints[i].lo,
                     (long long)ints[i].hi);
    if (ints[i].v % ints[i].multiple != 0)
      return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "desc->%s=%lld is not a multiple of %lld",
                     ints[i].name, (long long)ints[i].v, (long long)ints[i].multiple);
  }
  if (d->max_tokens * d->top_k > INT32_MAX - 4096) /* row indices are 32-bit on the GPU */
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "desc->max_tokens=%lld times top_k=%lld exceeds %d slots",
                   (long long)d->max_tokens, (long long)d->top_k, INT32_MAX - 4096);
  if (d->dtype != MOEJIT_F32 && d->dtype != MOEJIT_F16 && d->dtype != MOEJIT_BF16)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "desc->dtype=%d is not MOEJIT_F32, F16 or BF16",
                   (int)d->dtype);
  if (d->ids_dtype != MOEJIT_I32 && d->ids_dtype != MOEJIT_I64)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "desc->ids_dtype=%d is not MOEJIT_I32 or I64",
                   (int)d->ids_dtype);
  if (d->weights_dtype != MOEJIT_F32 && d->weights_dtype != MOEJIT_F16 &&
      d->weights_dtype != MOEJIT_BF16)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "desc->weights_dtype=%d is not MOEJIT_F32, F16 or BF16", (int)d->weights_dtype);
  if (d->routing != MOEJIT_ROUTING_TOPK && d->routing != MOEJIT_ROUTING_DENSE &&
      d->routing != MOEJIT_ROUTING_LOGITS)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "desc->routing=%d is not a moejit_routing",
                   (int)d->routing);
  if (!isfinite(d->alpha) || !isfinite(d->limit) || d->limit <= 0.0f)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "desc->alpha=%g and desc->limit=%g must be finite, limit > 0", d->alpha,
                   d->limit);
  if (d->expert_capacity < 0 || d->expert_capacity > INT32_MAX)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "desc->expert_capacity=%lld is outside [0, %d] (0 = dropless)",
                   (long long)d->expert_capacity, INT32_MAX);
  if (d->global_experts != 0 && (d->global_experts < d->experts || d->global_experts > 1024))
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "desc->global_experts=%lld is outside [experts=%lld, 1024] (0 = no expert map)",
                   (long long)d->global_experts, (long long)d->experts);
  int64_t scored = d->global_experts ? d->global_experts : d->experts;
  if (d->routing == MOEJIT_ROUTING_LOGITS) {
    if (d->logits_dtype != MOEJIT_F32 && d->logits_dtype != MOEJIT_F16 &&
        d->logits_dtype != MOEJIT_BF16)
      return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                     "desc->logits_dtype=%d is not MOEJIT_F32, F16 or BF16", (int)d->logits_dtype);
    if (d->top_k > scored)
      return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                     "desc->top_k=%lld exceeds the %lld experts the router logits score",
                     (long long)d->top_k, (long long)scored);
  }
  if (d->bias_f32 != 0 && d->bias_f32 != 1)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "desc->bias_f32=%d is not 0 or 1", d->bias_f32);
  if (d->exact_f32 != 0 && d->exact_f32 != 1)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "desc->exact_f32=%d is not 0 or 1", d->exact_f32);
  if (d->unfused != 0 && d->unfused != 1)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "desc->unfused=%d is not 0 or 1", d->unfused);
  if (d->apply_router_weight_on_input != 0 && d->apply_router_weight_on_input != 1)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "desc->apply_router_weight_on_input=%d is not 0 or 1",
                   d->apply_router_weight_on_input);
  return MOEJIT_OK;
}

/* The spec of each module of a layer; see the template headers for the keys. */
static void route_spec(const moejit_layer_desc *d, mj_spec *s) {
  static const char *const forms[] = {"topk", "dense", "logits"};
  memset(s, 0, sizeof *s);
  mj_spec_int(s, "experts", d->experts);
  mj_spec_int(s, "global_experts", d->global_experts ? d->global_experts : d->experts);
  mj_spec_int(s, "mapped", d->global_experts > 0);
  mj_spec_int(s, "capped", d->expert_capacity > 0);
  mj_spec_int(s, "top_k", d->top_k);
  mj_spec_int(s, "chunk", MJ_ROUTE_CHUNK);
  mj_spec_str(s, "ids", mj_rt_dtype_name(d->ids_dtype));
  mj_spec_str(s, "weights", mj_rt_dtype_name(d->weights_dtype));
  mj_spec_str(s, "routing", forms[d->routing]);
  if (d->routing == MOEJIT_ROUTING_LOGITS)
    mj_spec_str(s, "logits", mj_rt_dtype_name(d->logits_dtype));
  mj_spec_int(s, "pdl", 1); /* griddepcontrol on sm_90+, for launches with plan->pdl */
}

static void combine_spec(const moejit_layer_desc *d, mj_spec *s) {
  memset(s, 0, sizeof *s);
  mj_spec_str(s, "dtype", mj_rt_dtype_name(d->dtype));
  mj_spec_int(s, "hidden", d->hidden);
  mj_spec_int(s, "top_k", d->top_k);
  mj_spec_int(s, "pdl", 1);
  if (d->unfused) { /* the activation kernel joins the module */
    mj_spec_int(s, "intermediate", d->intermediate);
    mj_spec_int(s, "experts", d->experts);
    mj_spec_num(s, "alpha", d->alpha);
    mj_spec_num(s, "limit", d->limit);
  }
}

mj_math mj_rt_math(const moejit_layer_desc *d) { return mj_tune_math(d->dtype, d->exact_f32); }

int mj_rt_can_self_route(const moejit_layer_desc *d, const mj_gemm_config *c) {
  return c->kind != MJ_GEMM_WGMMA && d->routing != MOEJIT_ROUTING_LOGITS &&
         d->global_experts == 0 && d->expert_capacity == 0 && !d->apply_router_weight_on_input;
}

static void gemm_spec(const moejit_layer_desc *d, const mj_gemm_config *c, int mode, mj_spec *s) {
  mj_math math = mj_rt_math(d);
  int tc = math != MJ_MATH_FFMA, wg = c->kind == MJ_GEMM_WGMMA, gv = c->kind == MJ_GEMM_STREAM;
  memset(s, 0, sizeof *s);
  mj_spec_str(s, "dtype", mj_rt_dtype_name(d->dtype));
  mj_spec_str(s, "bias", mj_rt_dtype_name(d->bias_f32 ? MOEJIT_F32 : d->dtype));
  if (!wg)
    mj_spec_str(s, "math", gv ? "gv" : mj_tune_math_name(math));
  mj_spec_str(s, "mode", mode == 2 ? "down" : d->unfused ? "gate_up_raw" : "gate_up");
  mj_spec_int(s, "n", mode == 1 ? 2 * d->intermediate : d->hidden);
  mj_spec_int(s, "k", mode == 1 ? d->hidden : d->intermediate);
  mj_spec_int(s, "top_k", d->top_k);
  mj_spec_num(s, "alpha", d->alpha);
  mj_spec_num(s, "limit", d->limit);
  mj_spec_int(s, "weight_on_input", d->apply_router_weight_on_input);
  mj_spec_int(s, "bm", c->bm);
  mj_spec_int(s, "bn", c->bn);
  if (!wg)
    mj_spec_int(s, "bk", c->bk);
  mj_spec_int(s, "stages", c->stages);
  if (wg)
    mj_spec_int(s, "ctas", c->ctas);
  if (wg && c->pingpong)
    mj_spec_int(s, "pingpong", 1);
  if (wg)
    mj_spec_int(s, "a_rows", mj_tune_wgmma_a_rows(c));
  if (wg && c->chain)
    mj_spec_int(s, "chain", 1);
  if (mode == 2 && c->splits > 1)
    mj_spec_int(s, "splits", c->splits);
  if (!wg && !gv) {
    mj_spec_int(s, tc ? "wm" : "tm", tc ? c->wm : c->tm);
    mj_spec_int(s, tc ? "wn" : "tn", tc ? c->wn : c->tn);
  }
  mj_spec_int(s, "pdl", 1);
  if (mode == 1 && mj_rt_can_self_route(d, c)) { /* forward.c decides per call */
    mj_spec_str(s, "self_route", mj_rt_dtype_name(d->ids_dtype));
    mj_spec_int(s, "experts", d->experts);
  }
}

void mj_rt_modules_free(mj_module_src *mods, int n) {
  if (!mods)
    return;
  for (int i = 0; i < n; i++) {
    free(mods[i].source);
    mj_cubin_free(&mods[i].cubin);
  }
  free(mods);
}

typedef struct compile_job {
  moejit_ctx *ctx;
  mj_module_src *mods;
  int n, next, flags;
  const char *arch;
  pthread_mutex_t lock;
  moejit_status st;
  mj_err *err;
} compile_job;

/* One module: from the cache when its key is there (the ptxas report asks for a real compile),
 * else NVRTC, then published to the cache. */
static moejit_status compile_one(compile_job *job, mj_module_src *m, mj_err *err) {
  moejit_ctx *ctx = job->ctx;
  int use_cache = !(job->flags & MJ_COMPILE_PTXAS_VERBOSE);
  uint8_t key[16];
  if (use_cache) {
    char options[256];
    int nh = 0;
    const mj_gen_file *headers = mj_gen_headers(ctx->gen, &nh);
    mj_gen_compile_options(job->arch, job->flags, options, sizeof options);
    mj_tune_cache_key(m->source, headers, nh, options, ctx->nv.major, ctx->nv.minor, job->arch, key);
    if (mj_tune_cache_acquire(ctx->cache, key, &m->cubin.data, &m->cubin.size)) {
      m->cubin.log = calloc(1, 1);
      return m->cubin.log ? MOEJIT_OK : mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory");
    }
  }
  moejit_status st = mj_gen_compile(&ctx->nv, ctx->gen, m->source, m->name, job->arch, job->flags,
                                    &m->cubin, err);
  pthread_mutex_lock(&job->lock);
  ctx->compiles++;
  pthread_mutex_unlock(&job->lock);
  if (use_cache) {
    if (st == MOEJIT_OK)
      mj_tune_cache_put(ctx->cache, key, m->cubin.data, m->cubin.size);
    else
      mj_tune_cache_abandon(ctx->cache, key);
  }
  return st;
}

static void *compile_worker(void *arg) {
  compile_job *job = arg;
  mj_err *local = malloc(sizeof *local);
  for (;;) {
    pthread_mutex_lock(&job->lock);
    int i = job->st == MOEJIT_OK && local ? job->next++ : job->n;
    pthread_mutex_unlock(&job->lock);
    if (i >= job->n)
      break;
    moejit_status st = compile_one(job, &job->mods[i], local);
    if (st != MOEJIT_OK) {
      pthread_mutex_lock(&job->lock);
      if (job->st == MOEJIT_OK) {
        job->st = st;
        memcpy(job->err->msg, local->msg, sizeof local->msg);
      }
      pthread_mutex_unlock(&job->lock);
    }
  }
  if (!local) {
    pthread_mutex_lock(&job->lock);
    if (job->st == MOEJIT_OK)
      job->st = mj_errf(job->err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory in a compile thread");
    pthread_mutex_unlock(&job->lock);
  }
  free(local);
  return NULL;
}

/* Compiles every module, in as many threads as there are processors (NVRTC is thread-safe across
 * programs). */
static moejit_status compile_all(moejit_ctx *ctx, mj_module_src *mods, int n, const char *arch,
                                 int flags, mj_err *err) {
  compile_job job = {ctx, mods, n, 0, flags, arch, PTHREAD_MUTEX_INITIALIZER, MOEJIT_OK, err};
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  int nthreads = (int)(ncpu < 1 ? 1 : ncpu > n ? n : ncpu);
  pthread_t threads[2 + 2 * MJ_MAX_GEMM_CONFIGS];
  int started = 0;
  for (int i = 1; i < nthreads; i++)
    if (pthread_create(&threads[started], NULL, compile_worker, &job) == 0)
      started++;
  compile_worker(&job);
  for (int i = 0; i < started; i++)
    pthread_join(threads[i], NULL);
  pthread_mutex_destroy(&job.lock);
  return job.st;
}

moejit_status mj_rt_render_modules(moejit_ctx *ctx, const moejit_layer_desc *d,
                                   const mj_gemm_config *cfg, int ncfg, mj_module_src **out,
                                   int *nout, mj_err *err) {
  moejit_status st = MOEJIT_OK;
  int splits = 1; /* the split count of the configurations that split GEMM2 (one per plan) */
  for (int i = 0; i < ncfg; i++)
    if (cfg[i].splits > 1)
      splits = cfg[i].splits;
  int n = 2 + 2 * ncfg + (splits > 1);
  *out = NULL;
  *nout = 0;
  mj_module_src *mods = calloc((size_t)n, sizeof *mods);
  if (!mods)
    return mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory");
  mods[0].template_name = "route";
  snprintf(mods[0].name, sizeof mods[0].name, "route");
  route_spec(d, &mods[0].spec);
  mods[1].template_name = "combine";
  snprintf(mods[1].name, sizeof mods[1].name, "combine");
  combine_spec(d, &mods[1].spec);
  for (int i = 0; i < ncfg; i++)
    for (int mode = 1; mode <= 2; mode++) {
      mj_module_src *m = &mods[2 + 2 * i + (mode - 1)];
      m->template_name = cfg[i].kind == MJ_GEMM_WGMMA ? "wgmma" : "gemm";
      snprintf(m->name, sizeof m->name, "gemm%d_%s", mode, cfg[i].name);
      gemm_spec(d, &cfg[i], mode, &m->spec);
    }
  if (splits > 1) { /* last: the combine that sums the split partials */
    mj_module_src *m = &mods[n - 1];
    m->template_name = "combine";
    snprintf(m->name, sizeof m->name, "combine_z%d", splits);
    combine_spec(d, &m->spec);
    mj_spec_int(&m->spec, "splits", splits);
  }
  for (int i = 0; i < ncfg && st == MOEJIT_OK; i++)
    if (cfg[i].splits > 1 && cfg[i].splits != splits)
      st = mj_errf(err, MOEJIT_ERR_UNSUPPORTED,
                   "configurations %s and others split GEMM2 %d and %d ways; a plan takes one count",
                   cfg[i].name, cfg[i].splits, splits);
  for (int i = 0; i < n && st == MOEJIT_OK; i++)
    st = mj_gen_render(ctx->gen, mods[i].template_name, &mods[i].spec, &mods[i].source, err);
  if (st != MOEJIT_OK) {
    mj_rt_modules_free(mods, n);
    return st;
  }
  *out = mods;
  *nout = n;
  return MOEJIT_OK;
}

moejit_status mj_rt_build_modules(moejit_ctx *ctx, const moejit_layer_desc *d,
                                  const mj_gemm_config *configs, int nconfigs, const char *arch,
                                  int flags, mj_module_src **out, int *nout, mj_err *err) {
  moejit_status st;
  if (!ctx->nv.lib && (st = mj_gen_nvrtc_load(&ctx->nv, err)) != MOEJIT_OK)
    return st;
  if ((st = mj_rt_render_modules(ctx, d, configs, nconfigs, out, nout, err)) != MOEJIT_OK)
    return st;
  if ((st = compile_all(ctx, *out, *nout, arch, flags, err)) != MOEJIT_OK) {
    mj_rt_modules_free(*out, *nout);
    *out = NULL;
    *nout = 0;
  }
  return st;
}

void mj_rt_layout(const moejit_plan *plan, int64_t tokens, mj_layout *l) {
  const moejit_layer_desc *d = &plan->desc;
  size_t act = d->dtype == MOEJIT_F32 ? 4 : 2;
  memset(l, 0, sizeof *l);
  if (tokens > MJ_CHUNK_TOKENS) /* longer forwards run in chunks that reuse the workspace */
    tokens = MJ_CHUNK_TOKENS;
  l->nslots = tokens * d->top_k;
  l->nchunks = (l->nslots + MJ_ROUTE_CHUNK - 1) / MJ_ROUTE_CHUNK;
  l->max_tiles = (l->nslots + plan->min_bm - 1) / plan->min_bm +
                 (l->nslots < d->experts ? l->nslots : d->experts);
  size_t at = 0;
#define MJ_PLACE_(field, bytes)                                                                    \
  l->field = at;                                                                                  \
  at = ALIGN256(at + (size_t)(bytes))
  MJ_PLACE_(flags, 4 * sizeof(int));
  MJ_PLACE_(num_tiles, sizeof(int));
  MJ_PLACE_(expert_off, (size_t)(d->experts + 1) * sizeof(int));
  MJ_PLACE_(ready, (size_t)d->experts * sizeof(int));
  MJ_PLACE_(chunk_counts, (size_t)l->nchunks * (size_t)(d->experts + 1) * sizeof(int));
  MJ_PLACE_(chunk_base, (size_t)l->nchunks * (size_t)d->experts * sizeof(int));
  MJ_PLACE_(tiles, (size_t)l->max_tiles * 4 * sizeof(int));
  MJ_PLACE_(sorted_slot, (size_t)l->nslots * sizeof(int));
  MJ_PLACE_(slot_pos, (size_t)l->nslots * sizeof(int));
  MJ_PLACE_(slot_weight, (size_t)l->nslots * sizeof(float));
  MJ_PLACE_(route_ids, d->routing == MOEJIT_ROUTING_LOGITS ? (size_t)l->nslots * sizeof(int) : 0);
  MJ_PLACE_(route_w, d->routing == MOEJIT_ROUTING_LOGITS ? (size_t)l->nslots * sizeof(float) : 0);
  MJ_PLACE_(gate_up, d->unfused ? (size_t)l->nslots * (size_t)(2 * d->intermediate) * act : 0);
  MJ_PLACE_(x_sorted, plan->wgmma ? (size_t)l->nslots * (size_t)d->hidden * act : 0);
  MJ_PLACE_(h, (size_t)l->nslots * (size_t)d->intermediate * act);
  int64_t split_slots = l->nslots < MJ_SPLIT_SLOTS ? l->nslots : MJ_SPLIT_SLOTS;
  MJ_PLACE_(y_slot, (size_t)(l->nslots + (plan->splits - 1) * split_slots) * (size_t)d->hidden *
                        sizeof(float));
#undef MJ_PLACE_
  l->total = at;
}

void moejit_workspace_view_init(moejit_workspace_view *view) {
  memset(view, 0, sizeof *view);
  view->struct_size = sizeof *view;
}

moejit_status moejit_workspace_view_get(const moejit_plan *plan, int64_t tokens,
                                        moejit_workspace_view *view) {
  mj_err err;
  if (!plan)
    return MOEJIT_ERR_INVALID_ARG;
  if (!view || view->struct_size != sizeof *view)
    return mj_rt_fail(plan->ctx,
                      mj_errf(&err, MOEJIT_ERR_INVALID_ARG,
                              "view is NULL or its struct_size is not %zu (call "
                              "moejit_workspace_view_init)",
                              sizeof *view),
                      &err);
  if (tokens < 0 || tokens > plan->desc.max_tokens)
    return mj_rt_fail(plan->ctx,
                      mj_errf(&err, MOEJIT_ERR_INVALID_ARG,
                              "tokens=%lld is outside [0, desc->max_tokens=%lld]",
                              (long long)tokens, (long long)plan->desc.max_tokens),
                      &err);
  mj_layout l;
  mj_rt_layout(plan, tokens, &l);
  view->expert_offsets = l.expert_off;
  view->row_slot = l.sorted_slot;
  view->slot_row = l.slot_pos;
  view->row_weight = l.slot_weight;
  view->gate_up = plan->desc.unfused ? l.gate_up : (size_t)-1;
  view->h = l.h;
  view->y_slot = l.y_slot;
  return MOEJIT_OK;
}

moejit_status moejit_workspace_size(const moejit_plan *plan, int64_t max_tokens, size_t *bytes) {
  if (!plan || !bytes)
    return MOEJIT_ERR_INVALID_ARG;
  if (max_tokens < 0 || max_tokens > plan->desc.max_tokens) {
    mj_err err;
    mj_errf(&err, MOEJIT_ERR_INVALID_ARG, "max_tokens=%lld is outside [0, desc->max_tokens=%lld]",
            (long long)max_tokens, (long long)plan->desc.max_tokens);
    return mj_rt_fail(plan->ctx, MOEJIT_ERR_INVALID_ARG, &err);
  }
  mj_layout l;
  mj_rt_layout(plan, max_tokens, &l);
  *bytes = l.total;
  return MOEJIT_OK;
}

/* Loads a module and looks up its kernels (the context must be current). */
static moejit_status load_module(moejit_plan *plan, const mj_module_src *m, mj_kernel *const *kernels,
                                 int nk, mj_err *err) {
  moejit_status st = MOEJIT_OK;
  moejit_ctx *ctx = plan->ctx;
  mj_cu *cu = &ctx->cu;
  CUmodule mod = NULL;
  MJ_CU(cu, ModuleLoadData(&mod, m->cubin.data), err);
  plan->modules[plan->nmodules++] = mod;
  for (int i = 0; i < nk; i++) {
    mj_kernel *k = kernels[i];
    MJ_CU(cu, ModuleGetFunction(&k->fn, mod, k->entry), err);
    if (k->smem > ctx->smem_optin) {
      st = mj_errf(err, MOEJIT_ERR_UNSUPPORTED,
                   "kernel %s needs %d bytes of shared memory; %s allows %d", m->name, k->smem,
                   ctx->device_name, ctx->smem_optin);
      goto fail;
    }
    if (k->smem > 48 * 1024)
      MJ_CU(cu, FuncSetAttribute(k->fn, MJ_CU_FUNC_MAX_DYNAMIC_SHARED, k->smem), err);
  }
fail:
  return st;
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
  snprintf(r->dtype, sizeof r->dtype, "%s", mj_rt_dtype_name(d->dtype));
  /* the math path is part of the key: an f32 layer's TF32 and exact records differ */
  snprintf(r->kernel, sizeof r->kernel, "gemm_%s", mj_tune_math_name(mj_rt_math(d)));
  r->bucket = bucket;
  snprintf(r->version, sizeof r->version, "%s", moejit_version_string());
}

/* Compiles (through the cache) and loads the plan's modules for plan->configs. */
static moejit_status build(moejit_plan *plan, mj_err *err) {
  moejit_status st;
  moejit_ctx *ctx = plan->ctx;
  const moejit_layer_desc *desc = &plan->desc;
  mj_module_src *mods = NULL;
  int nmods = 0, pushed = 0;
  plan->min_bm = INT_MAX;
  for (int i = 0; i < plan->ngemm; i++)
    if (plan->configs[i].bm < plan->min_bm)
      plan->min_bm = plan->configs[i].bm;
  if ((st = mj_rt_build_modules(ctx, desc, plan->configs, plan->ngemm, ctx->arch, 0, &mods, &nmods,
                                err)) != MOEJIT_OK)
    goto fail;
  plan->topk = (mj_kernel){"moejit_route_topk", NULL, NULL, 128, 0};
  plan->count = (mj_kernel){"moejit_route_count", NULL, NULL, MJ_ROUTE_CHUNK, 0};
  plan->scan = (mj_kernel){"moejit_route_scan", NULL, NULL, 256, 0};
  plan->scatter = (mj_kernel){"moejit_route_scatter", NULL, NULL, 32, 0};
  plan->small_slots = MJ_SMALL_SLOTS;
  plan->small = (mj_kernel){desc->routing == MOEJIT_ROUTING_LOGITS ? "moejit_route_small_logits"
                                                                   : "moejit_route_small",
                            NULL, NULL, 1024, 0};
  plan->combine = (mj_kernel){"moejit_combine", NULL, NULL, 256, 0};
  plan->activation = (mj_kernel){"moejit_activation", NULL, NULL, 256, 0};
  plan->gather = (mj_kernel){"moejit_gather", NULL, NULL, 256, 0};
  plan->combine_split = (mj_kernel){"moejit_combine", NULL, NULL, 256, 0};
  int gather_module = -1; /* the first wgmma GEMM1 module, which holds moejit_gather */
  for (int i = 0; i < plan->ngemm; i++) {
    int wg = plan->configs[i].kind == MJ_GEMM_WGMMA;
    int threads = mj_tune_gemm_threads(&plan->configs[i], plan->math);
    int smem = (int)mj_tune_gemm_smem(&plan->configs[i], desc->dtype);
    plan->gemm1[i] = (mj_kernel){wg ? "moejit_wgmma" : "moejit_gemm", NULL, NULL, threads, smem};
    plan->gemm2[i] = plan->gemm1[i];
    if (wg && gather_module < 0)
      gather_module = i;
  }
  if (!ctx->offline) {
    mj_cu *cu = &ctx->cu;
    MJ_CU(cu, CtxPushCurrent(ctx->cuctx), err);
    pushed = 1;
    mj_kernel *route[] = {&plan->count, &plan->scan, &plan->scatter, &plan->small, &plan->topk};
    mj_kernel *combine[] = {&plan->combine, &plan->activation};
    int nroute = desc->routing == MOEJIT_ROUTING_LOGITS ? 5 : 4;
    if ((st = load_module(plan, &mods[0], route, nroute, err)) != MOEJIT_OK ||
        (st = load_module(plan, &mods[1], combine, desc->unfused ? 2 : 1, err)) != MOEJIT_OK)
      goto fail;
    for (int i = 0; i < plan->ngemm; i++) {
      mj_kernel *g1[] = {&plan->gemm1[i], &plan->gather}, *g2[] = {&plan->gemm2[i]};
      if ((st = load_module(plan, &mods[2 + 2 * i], g1, i == gather_module ? 2 : 1, err)) !=
              MOEJIT_OK ||
          (st = load_module(plan, &mods[3 + 2 * i], g2, 1, err)) != MOEJIT_OK)
        goto fail;
    }
    mj_kernel *split_combine[] = {&plan->combine_split};
    if (plan->splits > 1 &&
        (st = load_module(plan, &mods[nmods - 1], split_combine, 1, err)) != MOEJIT_OK)
      goto fail;
  }
fail:
  if (pushed) {
    CUcontext popped;
    ctx->cu.CtxPopCurrent(&popped);
  }
  mj_rt_modules_free(mods, nmods);
  return st;
}

/* The configuration as this layer runs it: a split of GEMM2 along K shrinks to what the layer's K
 * (intermediate) allows, every split getting whole bk steps, and is renamed. */
static void fit_config(const moejit_plan *plan, const mj_gemm_config *given, mj_gemm_config *c) {
  int64_t k = plan->desc.intermediate;
  *c = *given;
  while (c->splits > 1 &&
         (c->splits - 1) * (((k + c->splits - 1) / c->splits + c->bk - 1) / c->bk * c->bk) >= k)
    c->splits--;
  if (c->splits != given->splits)
    mj_tune_config_name(c, plan->math);
}

static int find_config(const moejit_plan *plan, const char *name) {
  for (int i = 0; i < plan->ngemm; i++)
    if (!strcmp(plan->configs[i].name, name))
      return i;
  return -1;
}

int mj_rt_config_index(const moejit_plan *plan, const mj_gemm_config *given) {
  mj_gemm_config c;
  fit_config(plan, given, &c);
  return find_config(plan, c.name);
}

/* Adds a configuration, fitted to the layer, once; returns its index, or -1 when the plan is full. */
static int add_config(moejit_plan *plan, const mj_gemm_config *given) {
  mj_gemm_config c;
  fit_config(plan, given, &c);
  int i = find_config(plan, c.name);
  if (i >= 0 || plan->ngemm == MJ_MAX_GEMM_CONFIGS)
    return i;
  plan->configs[plan->ngemm] = c;
  return plan->ngemm++;
}

/* Reads the tuning records that match this plan and points buckets (and exact counts) at their
 * configurations; the others take the heuristic's pick. */
static void apply_records(moejit_plan *plan) {
  moejit_ctx *ctx = plan->ctx;
  const moejit_layer_desc *d = &plan->desc;
  int nheur = 0;
  const char *arch = plan->wgmma ? ctx->arch : "";
  const mj_gemm_config *heur = mj_tune_gemm_configs_for(plan->math, arch, &nheur);
  /* the plan's index of each table entry: a configuration the table names twice (for two ranges
   * of rows) is in the plan once */
  int at[MJ_MAX_GEMM_CONFIGS];
  if (nheur > MJ_MAX_GEMM_CONFIGS) /* never with today's tables; then no add_config can fail */
    nheur = MJ_MAX_GEMM_CONFIGS;
  for (int i = 0; i < nheur; i++)
    at[i] = add_config(plan, &heur[i]);
  for (int b = 0; b < MJ_BUCKETS; b++) {
    int i = mj_tune_pick(heur, nheur, (int64_t)1 << b, d->top_k, d->experts);
    /* a GEMM2 split along K takes at most MJ_SPLIT_SLOTS slots: the next entry serves beyond */
    while (heur[i].splits > 1 && ((int64_t)1 << b) * d->top_k > MJ_SPLIT_SLOTS && i + 1 < nheur)
      i++;
    plan->pick[b] = at[i];
  }
  if (!ctx->records_path[0])
    return;
  mj_record *recs = NULL, want;
  int n = 0;
  mj_err lerr;
  if (mj_tune_records_load(ctx->records_path, &recs, &n, ctx->log, ctx->log_user, &lerr) !=
      MOEJIT_OK) { /* damage is a miss: the heuristic serves */
    mj_rt_log(ctx, MOEJIT_LOG_WARN, "%s; using the heuristic", lerr.msg);
    return;
  }
  /* A record may name only a configuration of the search space (or the heuristic's), and one
   * that fits this device's shared memory. */
  mj_gemm_config space[MJ_MAX_GEMM_CONFIGS];
  size_t smem_limit = ctx->offline ? (size_t)227 * 1024 : (size_t)ctx->smem_optin;
  int nspace =
      mj_tune_search_space(plan->math, d->dtype, arch, smem_limit, space, MJ_MAX_GEMM_CONFIGS);
  for (int i = 0; i < n; i++) {
    mj_rt_record_key(ctx, d, recs[i].bucket, &want);
    if (ctx->offline)
      want.sms = recs[i].sms; /* an offline plan takes records for any SM count of its arch */
    if (!mj_tune_record_same_key(&recs[i], &want))
      continue;
    const mj_gemm_config *c = NULL;
    for (int j = 0; j < nspace && !c; j++)
      if (!strcmp(space[j].name, recs[i].config))
        c = &space[j];
    for (int j = 0; j < nheur && !c; j++)
      if (!strcmp(heur[j].name, recs[i].config))
        c = &heur[j];
    if (!c) {
      mj_rt_log(ctx, MOEJIT_LOG_WARN,
                "%s: the record for %lld tokens names '%s', not a %s configuration that fits this "
                "device; ignored",
                ctx->records_path, (long long)recs[i].bucket, recs[i].config,
                mj_tune_math_name(plan->math));
      continue;
    }
    int idx = add_config(plan, c);
    if (idx < 0)
      break;
    int64_t t = recs[i].bucket;
    if (c->splits > 1 && t * d->top_k > MJ_SPLIT_SLOTS) {
      mj_rt_log(ctx, MOEJIT_LOG_WARN,
                "%s: the record for %lld tokens names '%s', which splits GEMM2 and takes at most "
                "%d slots; ignored",
                ctx->records_path, (long long)t, c->name, MJ_SPLIT_SLOTS);
      continue;
    }
    if ((t & (t - 1)) == 0) {
      plan->pick[mj_rt_bucket(t)] = idx;
      plan->tuned[mj_rt_bucket(t)] = 1;
    } else if (plan->nexact < MJ_MAX_EXACT) {
      plan->exact_tokens[plan->nexact] = t;
      plan->exact_pick[plan->nexact++] = idx;
    }
  }
  free(recs);
  return;
}

static moejit_status plan_create(moejit_ctx *ctx, const moejit_layer_desc *desc,
                                 const mj_gemm_config *configs, int nconfigs, moejit_plan **out) {
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
  /* A caller built against an older header passes a shorter struct: the fields it lacks take
   * their defaults. */
  moejit_layer_desc_init(&plan->desc);
  memcpy(&plan->desc, desc, desc->struct_size);
  plan->desc.struct_size = sizeof plan->desc;
  desc = &plan->desc;
  plan->math = mj_rt_math(desc);
  plan->wgmma = plan->math == MJ_MATH_MMA && !desc->unfused && mj_tune_arch_wgmma(ctx->arch);
  const char *pdl_env = getenv("MOEJIT_PDL");
  plan->pdl = !ctx->offline && ctx->cc_major >= 9 && !(pdl_env && !strcmp(pdl_env, "0"));
  if (configs) {
    for (int i = 0; i < nconfigs && i < MJ_MAX_GEMM_CONFIGS; i++) {
      if (configs[i].kind == MJ_GEMM_WGMMA && !plan->wgmma) {
        st = mj_errf(err, MOEJIT_ERR_UNSUPPORTED,
                     "configuration %s needs sm_90a and a fused f16/bf16 layer", configs[i].name);
        goto fail;
      }
      add_config(plan, &configs[i]);
    }
  } else {
    apply_records(plan);
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
  mj_rt_log(ctx, MOEJIT_LOG_INFO, "plan: H=%lld I=%lld E=%lld K=%lld %s, %d GEMM configurations for %s",
            (long long)desc->hidden, (long long)desc->intermediate, (long long)desc->experts,
            (long long)desc->top_k, mj_rt_dtype_name(desc->dtype), plan->ngemm, ctx->arch);
  *out = plan;
  return MOEJIT_OK;
fail:
  moejit_plan_destroy(plan);
  return mj_rt_fail(ctx, st, err);
}

moejit_status moejit_plan_create(moejit_ctx *ctx, const moejit_layer_desc *desc,
                                 moejit_plan **out) {
  return plan_create(ctx, desc, NULL, 0, out);
}

moejit_status mj_rt_plan_create_with(moejit_ctx *ctx, const moejit_layer_desc *desc,
                                     const mj_gemm_config *configs, int nconfigs,
                                     moejit_plan **out) {
  if (nconfigs < 1 || nconfigs > MJ_MAX_GEMM_CONFIGS)
    return MOEJIT_ERR_INVALID_ARG;
  return plan_create(ctx, desc, configs, nconfigs, out);
}

void moejit_plan_destroy(moejit_plan *plan) {
  if (!plan)
    return;
  moejit_ctx *ctx = plan->ctx;
  if (plan->nmodules && ctx->cu.lib) {
    CUcontext popped;
    int pushed = ctx->cu.CtxPushCurrent(ctx->cuctx) == MJ_CU_SUCCESS;
    for (int i = 0; i < plan->nmodules; i++)
      ctx->cu.ModuleUnload(plan->modules[i]);
    if (pushed)
      ctx->cu.CtxPopCurrent(&popped);
  }
  free(plan);
}
