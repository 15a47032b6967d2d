/* ctx.c: contexts (driver, device, template sandbox), the error and log plumbing, option defaults.
 * Uses runtime/driver for the device, gen/ for the sandbox. */
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "base/half.h"
#include "runtime/internal.h"

/* Copies the first min(size, full_size) bytes of a filled struct (full) to out, its struct_size
 * (every struct's first field) set to that count. */
static void init_sized(void *out, size_t size, void *full, size_t full_size) {
  size_t n = size < full_size ? size : full_size;
  if (n >= sizeof(size_t))
    *(size_t *)full = n;
  memcpy(out, full, n);
}

void moejit_ctx_options_init_sized(moejit_ctx_options *opts, size_t size) {
  moejit_ctx_options o;
  memset(&o, 0, sizeof o);
  init_sized(opts, size, &o, sizeof o);
}

void moejit_layer_desc_init_sized(moejit_layer_desc *desc, size_t size) {
  moejit_layer_desc d;
  memset(&d, 0, sizeof d);
  d.dtype = MOEJIT_BF16;
  d.ids_dtype = MOEJIT_I32;
  d.weights_dtype = MOEJIT_F32;
  d.routing = MOEJIT_ROUTING_TOPK;
  d.alpha = 1.702f;
  d.limit = 7.0f;
  init_sized(desc, size, &d, sizeof d);
}

void moejit_forward_args_init_sized(moejit_forward_args *args, size_t size) {
  moejit_forward_args a;
  memset(&a, 0, sizeof a);
  init_sized(args, size, &a, sizeof a);
}

/* The names programs built against 0.3 and before call (their header had no macros): 0.3's sizes,
 * the largest any of them has. */
void(moejit_ctx_options_init)(moejit_ctx_options *opts) {
  moejit_ctx_options_init_sized(opts, sizeof *opts);
}
void(moejit_layer_desc_init)(moejit_layer_desc *desc) {
  moejit_layer_desc_init_sized(desc, MJ_DESC_SIZE_0_3);
}
void(moejit_forward_args_init)(moejit_forward_args *args) {
  moejit_forward_args_init_sized(args, MJ_ARGS_SIZE_0_3);
}

void moejit_device_info_init(moejit_device_info *info) {
  memset(info, 0, sizeof *info);
  info->struct_size = sizeof *info;
}

moejit_status moejit_device_info_get(const moejit_ctx *ctx, moejit_device_info *info) {
  if (!ctx || !info || info->struct_size != sizeof *info)
    return MOEJIT_ERR_INVALID_ARG;
  moejit_device_info_init(info);
  info->offline = ctx->offline;
  snprintf(info->arch, sizeof info->arch, "%s", ctx->arch);
  snprintf(info->name, sizeof info->name, "%s", ctx->device_name);
  info->sm_count = ctx->sm_count;
  info->cc_major = ctx->cc_major;
  info->cc_minor = ctx->cc_minor;
  return MOEJIT_OK;
}

const mj_cu *mj_rt_driver(const moejit_ctx *ctx) { return &ctx->cu; }

const char *mj_rt_cache_dir(const moejit_ctx *ctx) { return mj_tune_cache_dir(ctx->cache); }

void mj_rt_nvrtc_version(const moejit_ctx *ctx, int *major, int *minor) {
  *major = ctx->nv.major;
  *minor = ctx->nv.minor;
}

const char *mj_rt_records_path(const moejit_ctx *ctx) { return ctx->records_path; }

void mj_rt_logger(const moejit_ctx *ctx, moejit_log_fn *log, void **user) {
  *log = ctx->log;
  *user = ctx->log_user;
}

moejit_status mj_rt_fail(moejit_ctx *ctx, moejit_status s, const mj_err *err) {
  if (!ctx)
    return s;
  pthread_mutex_lock(&ctx->err_lock);
  if (&ctx->err != err)
    memcpy(ctx->err.msg, err->msg, sizeof ctx->err.msg);
  pthread_mutex_unlock(&ctx->err_lock);
  if (ctx->log) /* the caller gets the status and moejit_last_error; the log keeps a trace */
    ctx->log(ctx->log_user, MOEJIT_LOG_DEBUG, err->msg);
  return s;
}

const char *moejit_last_error(const moejit_ctx *ctx) { return ctx ? ctx->err.msg : "ctx is NULL"; }

/* "sm_90a" for Hopper (wgmma, setmaxnreg need the arch-specific target), else "sm_<major><minor>".
 */
static void arch_of(int major, int minor, char *buf, size_t len) {
  snprintf(buf, len, "sm_%d%d%s", major, minor, major == 9 && minor == 0 ? "a" : "");
}

int mj_rt_arch_valid(const char *arch) {
  size_t n = strlen(arch);
  if (n < 5 || n > 8 || strncmp(arch, "sm_", 3) != 0)
    return 0;
  for (size_t i = 3; i < n; i++)
    if (!(arch[i] >= '0' && arch[i] <= '9') && !(i == n - 1 && arch[i] == 'a' && i > 4))
      return 0;
  return atoi(arch + 3) >= 80;
}

static moejit_status open_device(moejit_ctx *ctx, int ordinal, mj_err *err) {
  moejit_status st = mj_rt_driver_load(&ctx->cu, err);
  if (st != MOEJIT_OK)
    return st;
  mj_cu *cu = &ctx->cu;
  int count = 0;
  MJ_CU(cu, DeviceGetCount(&count), err);
  if (ordinal < 0 || ordinal >= count) {
    st = mj_errf(err, MOEJIT_ERR_INVALID_ARG, "opts->device=%d, but %d GPU%s found", ordinal, count,
                 count == 1 ? " was" : "s were");
    goto fail;
  }
  MJ_CU(cu, DeviceGet(&ctx->dev, ordinal), err);
  MJ_CU(cu, DeviceGetName(ctx->device_name, (int)sizeof ctx->device_name, ctx->dev), err);
  MJ_CU(cu, DeviceGetAttribute(&ctx->cc_major, MJ_CU_ATTR_CC_MAJOR, ctx->dev), err);
  MJ_CU(cu, DeviceGetAttribute(&ctx->cc_minor, MJ_CU_ATTR_CC_MINOR, ctx->dev), err);
  MJ_CU(cu, DeviceGetAttribute(&ctx->sm_count, MJ_CU_ATTR_SM_COUNT, ctx->dev), err);
  MJ_CU(cu, DeviceGetAttribute(&ctx->smem_optin, MJ_CU_ATTR_SMEM_OPTIN, ctx->dev), err);
  MJ_CU(cu, DeviceGetAttribute(&ctx->smem_per_sm, MJ_CU_ATTR_SMEM_PER_SM, ctx->dev), err);
  if (ctx->cc_major < 8) {
    st = mj_errf(err, MOEJIT_ERR_UNSUPPORTED, "%s has compute capability %d.%d; moejit needs 8.0+",
                 ctx->device_name, ctx->cc_major, ctx->cc_minor);
    goto fail;
  }
  MJ_CU(cu, DevicePrimaryCtxRetain(&ctx->cuctx, ctx->dev), err);
  arch_of(ctx->cc_major, ctx->cc_minor, ctx->arch, sizeof ctx->arch);
  return MOEJIT_OK;
fail:
  mj_rt_driver_unload(cu);
  return st;
}

moejit_status moejit_create(moejit_ctx **out, const moejit_ctx_options *opts) {
  moejit_status st;
  mj_err err;
  moejit_ctx_options o;
  moejit_ctx_options_init(&o);
  if (!out)
    return MOEJIT_ERR_INVALID_ARG;
  *out = NULL;
  /* the sizes this header has had: before cache_dir was appended, and now */
  static const size_t sizes[] = {offsetof(moejit_ctx_options, cache_dir), sizeof o};
  if (opts && mj_rt_upgrade(opts, opts->struct_size, sizes, 2, &o, sizeof o) != 0)
    return MOEJIT_ERR_INVALID_ARG;
  moejit_ctx *ctx = calloc(1, sizeof *ctx);
  if (!ctx)
    return MOEJIT_ERR_OUT_OF_MEMORY;
  pthread_mutex_init(&ctx->err_lock, NULL);
  const char *pdl_env = getenv("MOEJIT_PDL"); /* read once, here */
  ctx->pdl_off = pdl_env && !strcmp(pdl_env, "0");
  ctx->log = o.log;
  ctx->log_user = o.log_user;
  const char *tdir = o.template_dir ? o.template_dir : getenv("MOEJIT_TEMPLATE_DIR");
  if (tdir && *tdir && !(ctx->template_dir = strdup(tdir))) {
    st = mj_errf(&err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory");
    goto fail;
  }
  if (o.offline_arch) {
    if (!mj_rt_arch_valid(o.offline_arch)) {
      st =
          mj_errf(&err, MOEJIT_ERR_INVALID_ARG,
                  "opts->offline_arch=\"%s\" is not an arch such as \"sm_80\" or \"sm_90a\" (8.0+)",
                  o.offline_arch);
      goto fail;
    }
    ctx->offline = 1;
    snprintf(ctx->arch, sizeof ctx->arch, "%s", o.offline_arch);
    mj_rt_arch_smem(ctx->arch, &ctx->smem_optin, &ctx->smem_per_sm);
  } else if ((st = open_device(ctx, o.device, &err)) != MOEJIT_OK) {
    goto fail;
  }
  if ((st = mj_gen_open(&ctx->gen, ctx->template_dir, &err)) != MOEJIT_OK)
    goto fail;
  char cache_dir[4096] = "";
  if (o.cache_dir)
    snprintf(cache_dir, sizeof cache_dir, "%s", o.cache_dir);
  else if (mj_tune_cache_default_dir(cache_dir, sizeof cache_dir) != 0)
    cache_dir[0] = '\0';
  if ((st = mj_tune_cache_open(&ctx->cache, cache_dir, ctx->log, ctx->log_user, &err)) != MOEJIT_OK)
    goto fail;
  if (mj_tune_cache_dir(ctx->cache))
    snprintf(ctx->records_path, sizeof ctx->records_path, "%s/%s", mj_tune_cache_dir(ctx->cache),
             MJ_RECORDS_FILE);
  if (ctx->offline)
    mj_rt_log(ctx, MOEJIT_LOG_INFO, "moejit %s: offline, compiling for %s", moejit_version_string(),
              ctx->arch);
  else
    mj_rt_log(ctx, MOEJIT_LOG_INFO, "moejit %s: %s (%s, %d SMs)", moejit_version_string(),
              ctx->device_name, ctx->arch, ctx->sm_count);
  *out = ctx;
  return MOEJIT_OK;
fail:
  /* No context is returned, so the reason goes to the log callback. */
  if (ctx->log)
    ctx->log(ctx->log_user, MOEJIT_LOG_WARN, err.msg);
  moejit_destroy(ctx);
  return st;
}

void moejit_destroy(moejit_ctx *ctx) {
  if (!ctx)
    return;
  mj_gen_close(ctx->gen);
  mj_tune_cache_close(ctx->cache);
  mj_gen_nvrtc_unload(&ctx->nv);
  if (ctx->cu.lib) {
    if (ctx->cuctx)
      ctx->cu.DevicePrimaryCtxRelease(ctx->dev);
    mj_rt_driver_unload(&ctx->cu);
  }
  pthread_mutex_destroy(&ctx->err_lock);
  free(ctx->template_dir);
  free(ctx);
}
