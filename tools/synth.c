/* synth.c: synthetic layers (see synth.h). */
#include "tools/synth.h"

#include "base/half.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

moejit_status mj_synth_open(moejit_ctx *ctx, mj_synth *s, mj_err *err) {
  static const char *const entries[] = {"moejit_fill_f32",        "moejit_fill_f16",
                                        "moejit_fill_bf16",       "moejit_fill_normal_f32",
                                        "moejit_fill_normal_f16", "moejit_fill_normal_bf16",
                                        "moejit_fill_u8",         NULL};
  mj_kernel *k[] = {&s->fill[MOEJIT_F32],
                    &s->fill[MOEJIT_F16],
                    &s->fill[MOEJIT_BF16],
                    &s->fill_normal[MOEJIT_F32],
                    &s->fill_normal[MOEJIT_F16],
                    &s->fill_normal[MOEJIT_BF16],
                    &s->fill_u8};
  mj_spec spec;
  memset(s, 0, sizeof *s);
  memset(&spec, 0, sizeof spec);
  s->ctx = ctx;
  moejit_device_info info;
  moejit_device_info_init(&info);
  if (moejit_device_info_get(ctx, &info) != MOEJIT_OK || info.offline)
    return mj_errf(err, MOEJIT_ERR_NO_DEVICE, "synthetic layers need a GPU");
  return mj_rt_module_open(ctx, "synth", &spec, entries, k, &s->module, err);
}

void mj_synth_close(mj_synth *s) {
  int pushed = 0;
  mj_err err;
  if (s->module && s->ctx && mj_rt_enter(s->ctx, &pushed, &err) == MOEJIT_OK) {
    mj_rt_driver(s->ctx)->ModuleUnload(s->module);
    mj_rt_leave(s->ctx, pushed);
  }
  memset(s, 0, sizeof *s);
}

/* A grid-stride fill kernel over n elements, as many blocks as its contract allows. */
static moejit_status launch_fill(const mj_synth *s, const mj_kernel *k, int64_t n, void **args,
                                 CUstream stream, mj_err *err) {
  int64_t blocks = (n + k->meta.per_block - 1) / k->meta.per_block;
  if (blocks > k->meta.max_blocks)
    blocks = k->meta.max_blocks;
  if (blocks < 1)
    return MOEJIT_OK;
  return mj_rt_launch_args(s->ctx, k, (unsigned)blocks, 1, 1, args, stream, 0, err);
}

moejit_status mj_synth_fill(const mj_synth *s, CUdeviceptr out, int64_t n, moejit_dtype dtype,
                            float lo, float hi, uint64_t seed, CUstream stream, mj_err *err) {
  if ((unsigned)dtype > MOEJIT_BF16)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "dtype=%d cannot be filled", (int)dtype);
  long long nn = n;
  unsigned long long sd = seed;
  void *args[] = {&out, &nn, &lo, &hi, &sd};
  return launch_fill(s, &s->fill[dtype], n, args, stream, err);
}

moejit_status mj_synth_fill_normal(const mj_synth *s, CUdeviceptr out, int64_t n,
                                   moejit_dtype dtype, float mean, float sigma, uint64_t seed,
                                   CUstream stream, mj_err *err) {
  if ((unsigned)dtype > MOEJIT_BF16)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "dtype=%d cannot be filled", (int)dtype);
  long long nn = n;
  unsigned long long sd = seed;
  void *args[] = {&out, &nn, &mean, &sigma, &sd};
  return launch_fill(s, &s->fill_normal[dtype], n, args, stream, err);
}

const char *mj_synth_data_name(mj_synth_data data) {
  return data == MJ_SYNTH_NORMAL ? "normal" : "uniform";
}

moejit_status mj_synth_fill_bytes(const mj_synth *s, CUdeviceptr out, int64_t n, unsigned lo,
                                  unsigned hi, uint64_t seed, CUstream stream, mj_err *err) {
  if (lo > hi || hi > 255)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "byte range [%u, %u] is not within [0, 255]", lo,
                   hi);
  long long nn = n;
  unsigned long long sd = seed;
  void *args[] = {&out, &nn, &lo, &hi, &sd};
  return launch_fill(s, &s->fill_u8, n, args, stream, err);
}

void mj_synth_mxfp4_scales(int64_t k, unsigned *lo, unsigned *hi) {
  /* mean square of the 16 e2m1 codes: (0 + 0.25 + 1 + 2.25 + 4 + 9 + 16 + 36) / 8 = 8.5625; of
   * 2^(s - lo) over s = lo..lo+3: 4^0..4^3 averaged, 21.25. Their product times 4^(lo - 127) is
   * 1/k. */
  double s0 = -0.5 * log2((double)k) - 0.5 * log2(8.5625 * 21.25);
  long first = 127 + lround(s0);
  first = first < 0 ? 0 : first > 251 ? 251 : first; /* 255 is NaN: never drawn */
  *lo = (unsigned)first;
  *hi = (unsigned)first + 3;
}

static uint64_t splitmix(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void mj_synth_routing(int64_t tokens, int64_t top_k, int64_t experts, uint64_t seed, int32_t *ids,
                      float *weights) {
  uint64_t state = seed;
  for (int64_t t = 0; t < tokens; t++) {
    int32_t *row = ids + t * top_k;
    float *w = weights + t * top_k, sum = 0.0f, logit[32];
    for (int64_t k = 0; k < top_k; k++) {
      int fresh;
      do { /* distinct experts in a token (K <= E) */
        row[k] = (int32_t)(splitmix(&state) % (uint64_t)experts);
        fresh = 1;
        for (int64_t j = 0; j < k && top_k <= experts; j++)
          fresh &= row[j] != row[k];
      } while (!fresh);
      logit[k] = (float)(splitmix(&state) >> 40) * (4.0f / 16777216.0f);
    }
    for (int64_t k = 0; k < top_k; k++)
      sum += (w[k] = expf(logit[k]));
    for (int64_t k = 0; k < top_k; k++)
      w[k] /= sum;
  }
}

static moejit_status upload_ids(const mj_cu *cu, mj_synth_layer *L, const int32_t *ids,
                                mj_err *err);

moejit_status mj_synth_layer_create(const mj_synth *s, const moejit_plan *plan, int64_t tokens,
                                    uint64_t seed, mj_synth_layer *L, mj_err *err) {
  return mj_synth_layer_create_data(s, plan, tokens, seed, MJ_SYNTH_UNIFORM, L, err);
}

/* The dtype of a layer's biases. */
static moejit_dtype bias_dtype(const moejit_layer_desc *d) {
  return d->bias_f32 ? MOEJIT_F32 : d->dtype;
}

moejit_status mj_synth_layer_create_data(const mj_synth *s, const moejit_plan *plan, int64_t tokens,
                                         uint64_t seed, mj_synth_data data, mj_synth_layer *L,
                                         mj_err *err) {
  moejit_status st = MOEJIT_OK;
  moejit_ctx *ctx = s->ctx;
  const mj_cu *cu = mj_rt_driver(ctx);
  const moejit_layer_desc *d = mj_rt_plan_desc(plan);
  int64_t T = tokens, H = d->hidden, I = d->intermediate, E = d->experts, K = d->top_k;
  int64_t N1 = mj_rt_gate_up_cols(d); /* GEMM1's outputs: 2I, or I without mul */
  size_t act = mj_dtype_size(d->dtype), bias = mj_dtype_size(bias_dtype(d));
  int mxfp4 = d->weight_format == MOEJIT_WEIGHTS_MXFP4;
  /* MXFP4: 32 weights in 16 bytes of blocks and one scale byte; the element size is for dense */
  size_t gate_up_bytes = mxfp4 ? (size_t)(E * N1 * H / 2) : (size_t)(E * H * N1) * act;
  size_t down_bytes = mxfp4 ? (size_t)(E * H * I / 2) : (size_t)(E * I * H) * act;
  void *hw = NULL;
  float *dense = NULL;
  int pushed = 0;
  memset(L, 0, sizeof *L);
  L->desc = *d;
  L->tokens = T;
  L->data = data;
  int64_t TT = T > 0 ? T : 1;
  L->host_ids = malloc((size_t)(TT * K) * sizeof(int32_t));
  L->host_weights = malloc((size_t)(TT * K) * sizeof(float));
  if (!L->host_ids || !L->host_weights) {
    st = mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory");
    goto fail;
  }
  mj_synth_routing(T, K, E, seed, L->host_ids, L->host_weights);
  if ((st = mj_rt_enter(ctx, &pushed, err)) != MOEJIT_OK)
    goto fail;
  if ((st = moejit_workspace_size(plan, T, &L->workspace_bytes)) != MOEJIT_OK) {
    mj_errf(err, st, "workspace size: %s", moejit_last_error(ctx));
    goto fail;
  }
  MJ_CU(cu, MemAlloc(&L->x, (size_t)(TT * H) * act), err);
  MJ_CU(cu, MemAlloc(&L->y, (size_t)(TT * H) * act), err);
  MJ_CU(cu, MemAlloc(&L->gate_up, gate_up_bytes), err);
  MJ_CU(cu, MemAlloc(&L->down, down_bytes), err);
  if (!d->no_bias) { /* a layer without biases has none: the pointers stay 0, the args NULL */
    MJ_CU(cu, MemAlloc(&L->gate_up_bias, (size_t)(E * N1) * bias), err);
    MJ_CU(cu, MemAlloc(&L->down_bias, (size_t)(E * H) * bias), err);
  }
  MJ_CU(cu, MemAlloc(&L->workspace, L->workspace_bytes > 0 ? L->workspace_bytes : 256), err);
  struct {
    CUdeviceptr p;
    int64_t n;
    float scale; /* uniform in +-scale, or normal of the same RMS, scale / sqrt 3 */
    moejit_dtype dtype;
  } fills[] = {
      {L->x, TT * H, 1.0f, d->dtype},
      {mxfp4 ? 0 : L->gate_up, E * H * N1, 1.0f / sqrtf((float)H), d->dtype},
      {L->gate_up_bias, E * N1, 0.1f, bias_dtype(d)},
      {mxfp4 ? 0 : L->down, E * I * H, 1.0f / sqrtf((float)I), d->dtype},
      {L->down_bias, E * H, 0.1f, bias_dtype(d)},
  };
  for (size_t i = 0; i < sizeof fills / sizeof fills[0]; i++) {
    if (!fills[i].p)
      continue;
    float a = fills[i].scale;
    uint64_t sd = seed * 16 + i;
    st = data == MJ_SYNTH_NORMAL
             ? mj_synth_fill_normal(s, fills[i].p, fills[i].n, fills[i].dtype, 0.0f,
                                    a / sqrtf(3.0f), sd, NULL, err)
             : mj_synth_fill(s, fills[i].p, fills[i].n, fills[i].dtype, -a, a, sd, NULL, err);
    if (st != MOEJIT_OK)
      goto fail;
  }
  if (mxfp4) { /* any block byte; scale bytes near 127 - log2(sqrt(K) * 2.9) */
    unsigned lo1, hi1, lo2, hi2;
    mj_synth_mxfp4_scales(H, &lo1, &hi1);
    mj_synth_mxfp4_scales(I, &lo2, &hi2);
    MJ_CU(cu, MemAlloc(&L->gate_up_scales, (size_t)(E * N1 * H / 32)), err);
    MJ_CU(cu, MemAlloc(&L->down_scales, (size_t)(E * H * I / 32)), err);
    if ((st = mj_synth_fill_bytes(s, L->gate_up, (int64_t)gate_up_bytes, 0, 255, seed * 16 + 1,
                                  NULL, err)) != MOEJIT_OK ||
        (st = mj_synth_fill_bytes(s, L->down, (int64_t)down_bytes, 0, 255, seed * 16 + 3, NULL,
                                  err)) != MOEJIT_OK ||
        (st = mj_synth_fill_bytes(s, L->gate_up_scales, E * N1 * H / 32, lo1, hi1, seed * 16 + 5,
                                  NULL, err)) != MOEJIT_OK ||
        (st = mj_synth_fill_bytes(s, L->down_scales, E * H * I / 32, lo2, hi2, seed * 16 + 6, NULL,
                                  err)) != MOEJIT_OK)
      goto fail;
  }
  MJ_CU(cu, MemsetD8(L->y, 0xFF, (size_t)(TT * H) * act), err); /* poison: NaN in every dtype */
  MJ_CU(cu, MemAlloc(&L->ids, (size_t)(TT * K) * mj_dtype_size(d->ids_dtype)), err);
  if ((st = upload_ids(cu, L, L->host_ids, err)) != MOEJIT_OK)
    goto fail;
  /* routing weights: [T, K], or [T, E] with zeros off the chosen experts */
  int64_t wn = d->routing == MOEJIT_ROUTING_DENSE ? TT * E : TT * K;
  dense = calloc((size_t)wn, sizeof(float));
  if (!dense) {
    st = mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory");
    goto fail;
  }
  for (int64_t t = 0; t < T; t++)
    for (int64_t k = 0; k < K; k++) {
      if (d->routing == MOEJIT_ROUTING_DENSE)
        dense[t * E + L->host_ids[t * K + k]] = L->host_weights[t * K + k];
      else
        dense[t * K + k] = L->host_weights[t * K + k];
    }
  hw = malloc((size_t)wn * mj_dtype_size(d->weights_dtype));
  if (!hw) {
    st = mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory");
    goto fail;
  }
  for (int64_t i = 0; i < wn; i++)
    mj_store_f32(d->weights_dtype, hw, i, dense[i]);
  /* the reference must see the weights as the GPU reads them */
  for (int64_t t = 0; t < T; t++)
    for (int64_t k = 0; k < K; k++) {
      int64_t j = d->routing == MOEJIT_ROUTING_DENSE ? t * E + L->host_ids[t * K + k] : t * K + k;
      L->host_weights[t * K + k] = mj_load_f32(d->weights_dtype, hw, j);
    }
  MJ_CU(cu, MemAlloc(&L->weights, (size_t)wn * mj_dtype_size(d->weights_dtype)), err);
  MJ_CU(cu, MemcpyHtoD(L->weights, hw, (size_t)wn * mj_dtype_size(d->weights_dtype)), err);
  MJ_CU(cu, CtxSynchronize(), err);
fail:
  mj_rt_leave(ctx, pushed);
  free(hw);
  free(dense);
  if (st != MOEJIT_OK)
    mj_synth_layer_destroy(s, L);
  return st;
}

void mj_synth_layer_destroy(const mj_synth *s, mj_synth_layer *L) {
  const mj_cu *cu = mj_rt_driver(s->ctx);
  int pushed = 0;
  mj_err err;
  if (mj_rt_enter(s->ctx, &pushed, &err) == MOEJIT_OK) {
    CUdeviceptr bufs[] = {L->x,          L->ids,       L->weights, L->gate_up,   L->gate_up_bias,
                          L->down,       L->down_bias, L->y,       L->workspace, L->gate_up_scales,
                          L->down_scales};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
      if (bufs[i])
        cu->MemFree(bufs[i]);
    mj_rt_leave(s->ctx, pushed);
  }
  free(L->host_ids);
  free(L->host_weights);
  memset(L, 0, sizeof *L);
}

/* ids [T, K] into the host copy and, in the layer's id type, into L->ids (context current). */
static moejit_status upload_ids(const mj_cu *cu, mj_synth_layer *L, const int32_t *ids,
                                mj_err *err) {
  moejit_status st = MOEJIT_OK;
  int64_t n = L->tokens * L->desc.top_k;
  size_t es = mj_dtype_size(L->desc.ids_dtype);
  void *buf = malloc((size_t)(n > 0 ? n : 1) * es);
  if (!buf)
    return mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory");
  for (int64_t i = 0; i < n; i++) {
    L->host_ids[i] = ids[i];
    if (L->desc.ids_dtype == MOEJIT_I64)
      ((int64_t *)buf)[i] = ids[i];
    else
      ((int32_t *)buf)[i] = ids[i];
  }
  CUresult r = L->ids && n > 0 ? cu->MemcpyHtoD(L->ids, buf, (size_t)n * es) : MJ_CU_SUCCESS;
  if (r != MJ_CU_SUCCESS)
    st = mj_rt_cu_fail(cu, r, "MemcpyHtoD", __FILE__, __LINE__, err);
  free(buf);
  return st;
}

moejit_status mj_synth_layer_set_ids(const mj_synth *s, mj_synth_layer *L, const int32_t *ids,
                                     mj_err *err) {
  moejit_status st;
  int pushed = 0;
  if (L->desc.routing != MOEJIT_ROUTING_TOPK)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "set_ids needs top-k routing");
  if ((st = mj_rt_enter(s->ctx, &pushed, err)) != MOEJIT_OK)
    return st;
  st = upload_ids(mj_rt_driver(s->ctx), L, ids, err);
  mj_rt_leave(s->ctx, pushed);
  return st;
}

void mj_synth_layer_args(const mj_synth_layer *L, moejit_forward_args *a) {
  moejit_forward_args_init(a);
  a->tokens = L->tokens;
  a->x = (const void *)(uintptr_t)L->x;
  a->topk_ids = (const void *)(uintptr_t)L->ids;
  a->routing_weights = (const void *)(uintptr_t)L->weights;
  a->gate_up_proj = (const void *)(uintptr_t)L->gate_up;
  a->gate_up_proj_bias = (const void *)(uintptr_t)L->gate_up_bias;
  a->down_proj = (const void *)(uintptr_t)L->down;
  a->down_proj_bias = (const void *)(uintptr_t)L->down_bias;
  a->y = (void *)(uintptr_t)L->y;
  a->gate_up_proj_scales = (const void *)(uintptr_t)L->gate_up_scales;
  a->down_proj_scales = (const void *)(uintptr_t)L->down_scales;
}

void mj_synth_host_free(mj_synth_host *h) {
  void *bufs[] = {h->x, h->gate_up, h->gate_up_bias, h->down,           h->down_bias,
                  h->y, h->ids,     h->weights,      h->gate_up_scales, h->down_scales};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
    free(bufs[i]);
  memset(h, 0, sizeof *h);
}

moejit_status mj_synth_download(const mj_synth *s, const mj_synth_layer *L, const int64_t *tokens,
                                int64_t n, mj_synth_host *h, mj_err *err) {
  moejit_status st = MOEJIT_OK;
  const mj_cu *cu = mj_rt_driver(s->ctx);
  const moejit_layer_desc *d = &L->desc;
  int64_t H = d->hidden, I = d->intermediate, E = d->experts, K = d->top_k;
  int64_t N1 = mj_rt_gate_up_cols(d);
  size_t act = mj_dtype_size(d->dtype), bias = mj_dtype_size(bias_dtype(d));
  int mxfp4 = d->weight_format == MOEJIT_WEIGHTS_MXFP4, biases = !d->no_bias;
  size_t gate_up_bytes = mxfp4 ? (size_t)(E * N1 * H / 2) : (size_t)(E * H * N1) * act;
  size_t down_bytes = mxfp4 ? (size_t)(E * H * I / 2) : (size_t)(E * I * H) * act;
  size_t gate_up_scales = (size_t)(E * N1 * H / 32), down_scales = (size_t)(E * H * I / 32);
  size_t gate_up_bias = (size_t)(E * N1) * bias, down_bias = (size_t)(E * H) * bias;
  int pushed = 0;
  memset(h, 0, sizeof *h);
  h->n = n;
  h->x = malloc((size_t)(n * H) * act + 1);
  h->y = malloc((size_t)(n * H) * act + 1);
  h->gate_up = malloc(gate_up_bytes);
  h->down = malloc(down_bytes);
  if (biases) { /* else NULL: the reference's "no biases" */
    h->gate_up_bias = malloc(gate_up_bias);
    h->down_bias = malloc(down_bias);
  }
  h->ids = malloc((size_t)(n * K) * sizeof(int32_t) + 1);
  h->weights = malloc((size_t)(n * K) * sizeof(float) + 1);
  if (mxfp4) {
    h->gate_up_scales = malloc(gate_up_scales);
    h->down_scales = malloc(down_scales);
  }
  if (!h->x || !h->y || !h->gate_up || !h->down || !h->ids || !h->weights ||
      (biases && (!h->gate_up_bias || !h->down_bias)) ||
      (mxfp4 && (!h->gate_up_scales || !h->down_scales))) {
    st = mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of host memory downloading the layer");
    goto fail;
  }
  if ((st = mj_rt_enter(s->ctx, &pushed, err)) != MOEJIT_OK)
    goto fail;
  MJ_CU(cu, CtxSynchronize(), err);
  MJ_CU(cu, MemcpyDtoH(h->gate_up, L->gate_up, gate_up_bytes), err);
  MJ_CU(cu, MemcpyDtoH(h->down, L->down, down_bytes), err);
  if (biases) {
    MJ_CU(cu, MemcpyDtoH(h->gate_up_bias, L->gate_up_bias, gate_up_bias), err);
    MJ_CU(cu, MemcpyDtoH(h->down_bias, L->down_bias, down_bias), err);
  }
  if (mxfp4) {
    MJ_CU(cu, MemcpyDtoH(h->gate_up_scales, L->gate_up_scales, gate_up_scales), err);
    MJ_CU(cu, MemcpyDtoH(h->down_scales, L->down_scales, down_scales), err);
  }
  for (int64_t i = 0; i < n; i++) {
    int64_t t = tokens[i];
    MJ_CU(cu,
          MemcpyDtoH((char *)h->x + (size_t)(i * H) * act, L->x + (size_t)(t * H) * act,
                     (size_t)H * act),
          err);
    MJ_CU(cu,
          MemcpyDtoH((char *)h->y + (size_t)(i * H) * act, L->y + (size_t)(t * H) * act,
                     (size_t)H * act),
          err);
    memcpy(h->ids + i * K, L->host_ids + t * K, (size_t)K * sizeof(int32_t));
    memcpy(h->weights + i * K, L->host_weights + t * K, (size_t)K * sizeof(float));
  }
fail:
  mj_rt_leave(s->ctx, pushed);
  if (st != MOEJIT_OK)
    mj_synth_host_free(h);
  return st;
}
