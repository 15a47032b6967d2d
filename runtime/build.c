/* build.c: a plan's modules: every kernel of a layer rendered from its template (source and launch
 * contract), compiled with NVRTC in parallel threads through the cubin cache, and loaded with its
 * kernels bound to the forward's values. Also the one-module path the tools use, and whether a
 * kernel's contract fits the device. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/internal.h"

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

/* A module's cubin without the ptxas report, from the cache or NVRTC (then published to the
 * cache), into *out. */
static moejit_status compile_cached(compile_job *job, const mj_module_src *m, int flags,
                                    mj_cubin *out, mj_err *err) {
  moejit_ctx *ctx = job->ctx;
  uint8_t key[16];
  char options[256];
  int nh = 0;
  const mj_gen_file *headers = mj_gen_headers(ctx->gen, &nh);
  mj_gen_compile_options(job->arch, flags, options, sizeof options);
  mj_tune_cache_key(m->source, headers, nh, options, ctx->nv.major, ctx->nv.minor, job->arch, key);
  memset(out, 0, sizeof *out);
  if (mj_tune_cache_acquire(ctx->cache, key, &out->data, &out->size)) {
    out->log = calloc(1, 1);
    return out->log ? MOEJIT_OK : mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory");
  }
  moejit_status st =
      mj_gen_compile(&ctx->nv, ctx->gen, m->source, m->name, job->arch, flags, out, err);
  pthread_mutex_lock(&job->lock);
  ctx->compiles++;
  pthread_mutex_unlock(&job->lock);
  if (st == MOEJIT_OK)
    mj_tune_cache_put(ctx->cache, key, out->data, out->size);
  else
    mj_tune_cache_abandon(ctx->cache, key);
  return st;
}

/* One module through the cache. The ptxas report (`moejit compile`) asks for a compile of its own,
 * whose cubin differs in bytes from a plan's: the module keeps that one, and the plan's is
 * compiled (or found) through the cache as well, so compiling fills the cache an offline
 * deployment ships. */
static moejit_status compile_one(compile_job *job, mj_module_src *m, mj_err *err) {
  if (!(job->flags & MJ_COMPILE_PTXAS_VERBOSE))
    return compile_cached(job, m, job->flags, &m->cubin, err);
  moejit_ctx *ctx = job->ctx;
  moejit_status st =
      mj_gen_compile(&ctx->nv, ctx->gen, m->source, m->name, job->arch, job->flags, &m->cubin, err);
  pthread_mutex_lock(&job->lock);
  ctx->compiles++;
  pthread_mutex_unlock(&job->lock);
  mj_cubin plain;
  if (st == MOEJIT_OK && mj_tune_cache_dir(ctx->cache) && /* no folder: nothing to fill */
      (st = compile_cached(job, m, job->flags & ~MJ_COMPILE_PTXAS_VERBOSE, &plain, err)) ==
          MOEJIT_OK)
    mj_cubin_free(&plain);
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

/* The template and spec of a configuration's GEMM module for a stage. */
static void gemm_module(const moejit_layer_desc *d, const mj_gemm_config *c, moejit_stage stage,
                        mj_module_src *m) {
  int wg = c->kind == MJ_GEMM_WGMMA;
  m->template_name = wg ? "wgmma" : "gemm";
  snprintf(m->name, sizeof m->name, "gemm%d_%s", stage == MOEJIT_STAGE_GEMM1 ? 1 : 2, c->name);
  if (wg)
    mj_rt_wgmma_spec(d, c, stage, &m->spec);
  else
    mj_rt_gemm_spec(d, c, stage, &m->spec);
}

moejit_status mj_rt_render_modules(moejit_ctx *ctx, const moejit_layer_desc *d,
                                   const mj_gemm_config *cfg, int ncfg, mj_module_src **out,
                                   int *nout, mj_err *err) {
  moejit_status st = MOEJIT_OK;
  int splits = 1; /* the split count of the configurations that split GEMM2 (one per plan) */
  for (int i = 0; i < ncfg; i++)
    if (cfg[i].splits > 1)
      splits = cfg[i].splits;
  for (int i = 0; i < ncfg; i++)
    if (cfg[i].splits > 1 && cfg[i].splits != splits)
      return mj_errf(err, MOEJIT_ERR_UNSUPPORTED,
                     "configurations %s and others split GEMM2 %d and %d ways; a plan takes one "
                     "count",
                     cfg[i].name, cfg[i].splits, splits);
  int n = 2 + 2 * ncfg + (splits > 1);
  *out = NULL;
  *nout = 0;
  mj_module_src *mods = calloc((size_t)n, sizeof *mods);
  if (!mods)
    return mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory");
  mods[0].template_name = "route";
  snprintf(mods[0].name, sizeof mods[0].name, "route");
  mj_rt_route_spec(d, &mods[0].spec);
  mods[1].template_name = "combine";
  snprintf(mods[1].name, sizeof mods[1].name, "combine");
  mj_rt_combine_spec(d, 1, &mods[1].spec);
  for (int i = 0; i < ncfg; i++) {
    gemm_module(d, &cfg[i], MOEJIT_STAGE_GEMM1, &mods[2 + 2 * i]);
    gemm_module(d, &cfg[i], MOEJIT_STAGE_GEMM2, &mods[3 + 2 * i]);
  }
  if (splits > 1) { /* last: the combine that sums the split partials */
    mj_module_src *m = &mods[n - 1];
    m->template_name = "combine";
    snprintf(m->name, sizeof m->name, "combine_z%d", splits);
    mj_rt_combine_spec(d, splits, &m->spec);
  }
  for (int i = 0; i < n && st == MOEJIT_OK; i++)
    st = mj_gen_render(ctx->gen, mods[i].template_name, &mods[i].spec, &mods[i].source,
                       &mods[i].meta, err);
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

moejit_status mj_rt_load_module(moejit_ctx *ctx, const mj_module_src *m, const char *const *entries,
                                mj_kernel *const *k, CUmodule *mod, mj_err *err) {
  moejit_status st = MOEJIT_OK;
  mj_cu *cu = &ctx->cu;
  *mod = NULL;
  if (!ctx->offline)
    MJ_CU(cu, ModuleLoadData(mod, m->cubin.data), err);
  for (int i = 0; entries[i]; i++) {
    const mj_kernel_meta *meta = mj_gen_kernel(&m->meta, entries[i]);
    if (!meta) {
      st = mj_errf(err, MOEJIT_ERR_TEMPLATE, "module %s has no kernel %s in its launch contract",
                   m->name, entries[i]);
      goto fail;
    }
    memset(k[i], 0, sizeof *k[i]);
    k[i]->meta = *meta;
    if (ctx->offline)
      continue;
    int smem = meta->smem;
    if (smem + meta->static_smem > ctx->smem_optin) {
      st = mj_errf(err, MOEJIT_ERR_UNSUPPORTED,
                   "kernel %s of %s needs %d bytes of shared memory; %s allows %d", entries[i],
                   m->name, smem + meta->static_smem, ctx->device_name, ctx->smem_optin);
      goto fail;
    }
    MJ_CU(cu, ModuleGetFunction(&k[i]->fn, *mod, entries[i]), err);
    if (smem > 48 * 1024)
      MJ_CU(cu, FuncSetAttribute(k[i]->fn, MJ_CU_FUNC_MAX_DYNAMIC_SHARED, smem), err);
  }
fail:
  return st;
}

moejit_status mj_rt_module_open(moejit_ctx *ctx, const char *template_name, const mj_spec *spec,
                                const char *const *entries, mj_kernel *const *k, CUmodule *mod,
                                mj_err *err) {
  moejit_status st;
  int pushed = 0;
  mj_module_src m;
  memset(&m, 0, sizeof m);
  *mod = NULL;
  m.template_name = template_name;
  m.spec = *spec;
  snprintf(m.name, sizeof m.name, "%s", template_name);
  if (!ctx->nv.lib && (st = mj_gen_nvrtc_load(&ctx->nv, err)) != MOEJIT_OK)
    return st;
  if ((st = mj_gen_render(ctx->gen, template_name, spec, &m.source, &m.meta, err)) == MOEJIT_OK &&
      (st = compile_all(ctx, &m, 1, ctx->arch, 0, err)) == MOEJIT_OK &&
      (ctx->offline || (st = mj_rt_enter(ctx, &pushed, err)) == MOEJIT_OK)) {
    st = mj_rt_load_module(ctx, &m, entries, k, mod, err);
    if (st != MOEJIT_OK && *mod) {
      ctx->cu.ModuleUnload(*mod);
      *mod = NULL;
    }
    mj_rt_leave(ctx, pushed);
  }
  free(m.source);
  mj_cubin_free(&m.cubin);
  return st;
}

/* Shared memory by arch for offline contexts: a block's opt-in limit and an SM's. */
static const struct {
  const char *arch;
  int block, sm;
} arch_smem[] = {{"sm_80", 163 * 1024, 164 * 1024}, {"sm_86", 99 * 1024, 100 * 1024},
                 {"sm_87", 163 * 1024, 164 * 1024}, {"sm_89", 99 * 1024, 100 * 1024},
                 {"sm_90", 227 * 1024, 228 * 1024}, {"sm_90a", 227 * 1024, 228 * 1024}};

void mj_rt_arch_smem(const char *arch, int *block, int *sm) {
  *block = 99 * 1024; /* an arch not in the table: the least of them */
  *sm = 100 * 1024;
  for (size_t i = 0; i < sizeof arch_smem / sizeof arch_smem[0]; i++)
    if (!strcmp(arch, arch_smem[i].arch)) {
      *block = arch_smem[i].block;
      *sm = arch_smem[i].sm;
    }
}

/* Whether a kernel's contract fits the context's device: its shared memory within a block's and,
 * with blocks_per_sm, that many blocks within an SM's. */
static int fits(const moejit_ctx *ctx, const mj_kernel_meta *k) {
  /* the driver keeps 1 KB of an SM's shared memory for each resident block */
  int64_t block = (int64_t)k->smem + k->static_smem;
  int64_t resident = k->blocks_per_sm > 1 ? k->blocks_per_sm : 1;
  return block <= ctx->smem_optin && (block + 1024) * resident <= ctx->smem_per_sm;
}

int mj_rt_config_fits(moejit_ctx *ctx, const moejit_layer_desc *d, const mj_gemm_config *c) {
  static const moejit_stage stages[] = {MOEJIT_STAGE_GEMM1, MOEJIT_STAGE_GEMM2};
  for (int g = 0; g < 2; g++) {
    mj_module_src m;
    mj_err err;
    memset(&m, 0, sizeof m);
    gemm_module(d, c, stages[g], &m);
    int ok =
        mj_gen_render(ctx->gen, m.template_name, &m.spec, &m.source, &m.meta, &err) == MOEJIT_OK &&
        fits(ctx, &m.meta.kernel[0]);
    free(m.source);
    if (!ok)
      return 0;
  }
  return 1;
}
