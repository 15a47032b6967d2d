/* floor.c: the rates of a forward's floor (see floor.h). */
#include "tools/floor.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "base/half.h"
#include "tools/timing.h"

enum { GEMM_N = MJ_FLOOR_GEMM_N };

/* ---- HBM read bandwidth --------------------------------------------------------------------- */

/* The bandwidth kernel (templates/bench.lua): compiled, and loaded unless the context is
 * offline. */
static moejit_status bench_kernel(moejit_ctx *ctx, mj_kernel *k, CUmodule *mod, mj_err *err) {
  static const char *const entries[] = {"moejit_bench_read", NULL};
  mj_kernel *ks[] = {k};
  mj_spec spec;
  memset(&spec, 0, sizeof spec);
  return mj_rt_module_open(ctx, "bench", &spec, entries, ks, mod, err);
}

/* A read of the whole buffer into the checksum, after the checksum is zeroed. */
typedef struct bw_pass {
  moejit_ctx *ctx;
  const mj_cu *cu;
  int sm_count;
  mj_kernel k;
  CUdeviceptr buf, sum;
  long long n;
} bw_pass;

static moejit_status bw_zero(void *user, CUstream stream, mj_err *err) {
  bw_pass *p = user;
  moejit_status st = MOEJIT_OK;
  MJ_CU(p->cu, MemsetD32Async(p->sum, 0, 1, stream), err);
fail:
  return st;
}

static moejit_status bw_read(void *user, CUstream stream, mj_err *err) {
  bw_pass *p = user;
  void *args[] = {&p->buf, &p->n, &p->sum};
  unsigned blocks = (unsigned)(p->k.meta.blocks_per_sm * p->sm_count);
  return mj_rt_launch_args(p->ctx, &p->k, blocks, 1, 1, args, stream, 0, err);
}

moejit_status mj_floor_compile(moejit_ctx *ctx, mj_err *err) {
  mj_kernel k;
  CUmodule mod = NULL;
  moejit_status st = bench_kernel(ctx, &k, &mod, err);
  if (mod)
    mj_rt_driver(ctx)->ModuleUnload(mod);
  return st;
}

moejit_status mj_floor_bandwidth(moejit_ctx *ctx, CUstream stream, int64_t bytes, double *tbps,
                                 mj_err *err) {
  moejit_status st = MOEJIT_OK;
  const mj_cu *cu = mj_rt_driver(ctx);
  CUmodule mod = NULL;
  bw_pass p;
  float ms[MJ_FLOOR_BW_PASSES];
  moejit_device_info info;
  moejit_device_info_init(&info);
  moejit_device_info_get(ctx, &info);
  memset(&p, 0, sizeof p);
  p.ctx = ctx;
  p.cu = cu;
  p.sm_count = info.sm_count;
  p.n = bytes / 16;
  if ((st = bench_kernel(ctx, &p.k, &mod, err)) != MOEJIT_OK)
    goto fail;
  MJ_CU(cu, MemAlloc(&p.buf, (size_t)p.n * 16), err);
  MJ_CU(cu, MemAlloc(&p.sum, 4), err);
  /* on the bench stream (a non-blocking one does not wait for the legacy stream's memsets) */
  MJ_CU(cu, MemsetD32Async(p.buf, 0x5A5A5A5Au, (size_t)p.n * 4, stream), err);
  const mj_timing timed = {MJ_FLOOR_WARMUP, MJ_FLOOR_BW_PASSES, bw_read, bw_zero, &p};
  if ((st = mj_timing_run(ctx, stream, &timed, ms, err)) != MOEJIT_OK)
    goto fail;
  *tbps = (double)p.n * 16 / (mj_timing_median(ms, MJ_FLOOR_BW_PASSES) * 1e-3) / 1e12;
fail:
  if (p.sum)
    cu->MemFree(p.sum);
  if (p.buf)
    cu->MemFree(p.buf);
  if (mod)
    cu->ModuleUnload(mod);
  return st;
}

/* ---- the GEMM rate: cuBLAS, loaded with dlopen ------------------------------------------------------------- */

/* The few cuBLAS declarations used, from cublas_api.h and library_types.h. */
typedef int (*cublas_create_fn)(void **handle);
typedef int (*cublas_destroy_fn)(void *handle);
typedef int (*cublas_set_stream_fn)(void *handle, CUstream stream);
typedef int (*cublas_gemm_ex_fn)(void *handle, int transa, int transb, int m, int n, int k,
                                 const void *alpha, const void *A, int atype, int lda,
                                 const void *B, int btype, int ldb, const void *beta, void *C,
                                 int ctype, int ldc, int compute, int algo);
typedef const char *(*cublas_status_string_fn)(int status);
enum { CUBLAS_OP_N = 0, CUBLAS_GEMM_DEFAULT = -1 };

/* The GEMM of the floor per layer math: cudaDataType of A, B, C and the cublasComputeType_t. An
 * MXFP4 layer (bf16 or f16 activations) takes its dtype's row: its mma.sync tiles decode the
 * weights in registers and multiply on the 16-bit tensor cores, so the activations' dense GEMM is
 * the compute floor (the weights' fewer bytes lower only the memory side). */
static const struct gemm_math {
  moejit_dtype dtype;
  int exact_f32;
  int cuda_type, compute;
  const char *name;
} gemm_maths[] = {
    {MOEJIT_BF16, 0, 14 /* CUDA_R_16BF */, 68 /* CUBLAS_COMPUTE_32F */, "bf16"},
    {MOEJIT_BF16, 1, 14, 68, "bf16"},
    {MOEJIT_F16, 0, 2 /* CUDA_R_16F */, 68, "f16"},
    {MOEJIT_F16, 1, 2, 68, "f16"},
    {MOEJIT_F32, 0, 0 /* CUDA_R_32F */, 77 /* CUBLAS_COMPUTE_32F_FAST_TF32 */, "tf32"},
    {MOEJIT_F32, 1, 0, 68, "f32"},
};

static const struct gemm_math *gemm_math_of(const moejit_layer_desc *d) {
  for (size_t i = 0; i < sizeof gemm_maths / sizeof gemm_maths[0]; i++)
    if (gemm_maths[i].dtype == d->dtype && gemm_maths[i].exact_f32 == !!d->exact_f32)
      return &gemm_maths[i];
  return &gemm_maths[0];
}

typedef struct cublas {
  void *lib;
  char path[256];
  cublas_create_fn create;
  cublas_destroy_fn destroy;
  cublas_set_stream_fn set_stream;
  cublas_gemm_ex_fn gemm_ex;
  cublas_status_string_fn status_string; /* optional (cuBLAS 11.4+) */
} cublas;

/* dlopen of --cublas, else the usual names. MOEJIT_ERR_UNSUPPORTED naming what was tried. The
 * library stays loaded until the command exits: it carries its own CUDA runtime, and unloading
 * that mid-process buys nothing in a command about to exit. */
static moejit_status cublas_load(const char *path, cublas *c, mj_err *err) {
  static const char *const names[] = {"libcublas.so.13", "libcublas.so.12",
                                      "/usr/local/cuda/lib64/libcublas.so.13",
                                      "/usr/local/cuda/lib64/libcublas.so.12"};
  const char *const *list = path ? &path : names;
  int n = path ? 1 : (int)(sizeof names / sizeof names[0]);
  const char *why = "not found";
  memset(c, 0, sizeof *c);
  for (int i = 0; i < n && !c->lib; i++) {
    c->lib = dlopen(list[i], RTLD_NOW | RTLD_LOCAL);
    if (c->lib)
      snprintf(c->path, sizeof c->path, "%s", list[i]);
    else
      why = dlerror();
  }
  if (!c->lib)
    return mj_errf(err, MOEJIT_ERR_UNSUPPORTED, "no cuBLAS: dlopen(%s%s) failed: %s",
                   path ? path : "libcublas.so.13, .so.12", path ? "" : ", /usr/local/cuda/lib64",
                   why ? why : "?");
  *(void **)&c->create = dlsym(c->lib, "cublasCreate_v2");
  *(void **)&c->destroy = dlsym(c->lib, "cublasDestroy_v2");
  *(void **)&c->set_stream = dlsym(c->lib, "cublasSetStream_v2");
  *(void **)&c->gemm_ex = dlsym(c->lib, "cublasGemmEx");
  *(void **)&c->status_string = dlsym(c->lib, "cublasGetStatusString");
  if (!c->create || !c->destroy || !c->set_stream || !c->gemm_ex)
    return mj_errf(err, MOEJIT_ERR_UNSUPPORTED,
                   "%s lacks cublasCreate_v2, cublasDestroy_v2, "
                   "cublasSetStream_v2 or cublasGemmEx",
                   c->path);
  return MOEJIT_OK;
}

/* Runs a cuBLAS call; on failure names it, its status and the library, and jumps to fail. */
#define CUBLAS(c, call, err)                                                                       \
  do {                                                                                             \
    int s_ = (c)->call;                                                                            \
    if (s_ != 0) {                                                                                 \
      st = mj_errf((err), MOEJIT_ERR_CUDA, "%s failed: status %d (%s) in %s", #call, s_,           \
                   (c)->status_string ? (c)->status_string(s_) : "?", (c)->path);                  \
      goto fail;                                                                                   \
    }                                                                                              \
  } while (0)

/* One cuBLAS GEMM of the floor. */
typedef struct gemm_call {
  cublas *c;
  void *handle;
  const struct gemm_math *gm;
  CUdeviceptr m[3]; /* A, B, C: [8192, 8192] each */
} gemm_call;

static moejit_status gemm_run(void *user, CUstream stream, mj_err *err) {
  gemm_call *g = user;
  moejit_status st = MOEJIT_OK;
  float alpha = 1.0f, beta = 0.0f;
  (void)stream; /* the handle's */
  CUBLAS(g->c,
         gemm_ex(g->handle, CUBLAS_OP_N, CUBLAS_OP_N, GEMM_N, GEMM_N, GEMM_N, &alpha,
                 (void *)(uintptr_t)g->m[0], g->gm->cuda_type, GEMM_N, (void *)(uintptr_t)g->m[1],
                 g->gm->cuda_type, GEMM_N, &beta, (void *)(uintptr_t)g->m[2], g->gm->cuda_type,
                 GEMM_N, g->gm->compute, CUBLAS_GEMM_DEFAULT),
         err);
fail:
  return st;
}

const char *mj_floor_gemm_math(const moejit_layer_desc *d) { return gemm_math_of(d)->name; }

/* An expert's weights: H x N1 of gate_up (N1 = 2I, or I without mul) and I x H of down. */
static double expert_weights(const moejit_layer_desc *d) {
  return (double)d->hidden * (double)(mj_rt_gate_up_cols(d) + d->intermediate);
}

double mj_floor_expert_bytes(const moejit_layer_desc *d) {
  double weights = expert_weights(d);
  if (d->weight_format == MOEJIT_WEIGHTS_MXFP4)
    return weights / 2 + weights / 32; /* 16 bytes of blocks and 1 scale byte per 32 weights */
  return weights * (double)mj_dtype_size(d->dtype);
}

double mj_floor_slot_flops(const moejit_layer_desc *d) { return 2.0 * expert_weights(d); }

/* Dense GEMM rate, TFLOP/s: the median of GEMM_CALLS cuBLAS GEMMs of 8192^3 in the layer's math,
 * on random operands. cuBLAS uses the runtime API's current context: the device's primary context,
 * which moejit retains and the caller has made current. */

moejit_status mj_floor_gemm(moejit_ctx *ctx, const mj_synth *syn, CUstream stream,
                            const moejit_layer_desc *d, const char *cublas_path, double *tflops,
                            mj_err *err) {
  moejit_status st = MOEJIT_OK;
  const mj_cu *cu = mj_rt_driver(ctx);
  const struct gemm_math *gm = gemm_math_of(d);
  cublas c;
  gemm_call g = {&c, NULL, gm, {0, 0, 0}};
  float ms[MJ_FLOOR_GEMM_CALLS];
  int64_t elems = (int64_t)GEMM_N * GEMM_N;
  if ((st = cublas_load(cublas_path, &c, err)) != MOEJIT_OK)
    return st;
  for (int i = 0; i < 3; i++)
    MJ_CU(cu, MemAlloc(&g.m[i], (size_t)elems * mj_dtype_size(gm->dtype)), err);
  for (int i = 0; i < 2; i++)
    if ((st = mj_synth_fill(syn, g.m[i], elems, gm->dtype, -1.0f, 1.0f, 1000 + i, stream, err)) !=
        MOEJIT_OK)
      goto fail;
  CUBLAS(&c, create(&g.handle), err);
  CUBLAS(&c, set_stream(g.handle, stream), err);
  const mj_timing timed = {MJ_FLOOR_WARMUP, MJ_FLOOR_GEMM_CALLS, gemm_run, NULL, &g};
  if ((st = mj_timing_run(ctx, stream, &timed, ms, err)) != MOEJIT_OK)
    goto fail;
  *tflops = 2.0 * (double)GEMM_N * GEMM_N * GEMM_N /
            (mj_timing_median(ms, MJ_FLOOR_GEMM_CALLS) * 1e-3) / 1e12;
fail:
  if (g.handle)
    c.destroy(g.handle);
  for (int i = 0; i < 3; i++)
    if (g.m[i])
      cu->MemFree(g.m[i]);
  return st;
}
