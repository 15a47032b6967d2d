/* heuristic.c: the GEMM configuration tables and the pick by rows per expert (see heuristic.h). */
#include "tune/heuristic.h"

#include <stdio.h>
#include <string.h>

/* f16 / bf16: mma.sync m16n8k16. A 16-row tile for decode, 64 and 128 rows for prefill. */
static const mj_gemm_config mma_configs[] = {
    {"mma_m16n128k64s4w1x4", 16, 128, 64, 4, 1, 4, 0, 0, 24},
    {"mma_m64n128k32s4w2x2", 64, 128, 32, 4, 2, 2, 0, 0, 96},
    {"mma_m128n128k32s3w2x4", 128, 128, 32, 3, 2, 4, 0, 0, INT64_MAX},
};

/* f32: exact FFMA. */
static const mj_gemm_config ffma_configs[] = {
    {"ffma_m16n128k16s3t1x8", 16, 128, 16, 3, 0, 0, 1, 8, 24},
    {"ffma_m64n64k16s3t4x4", 64, 64, 16, 3, 0, 0, 4, 4, INT64_MAX},
};

int mj_tune_uses_mma(moejit_dtype dtype) { return dtype == MOEJIT_F16 || dtype == MOEJIT_BF16; }

const mj_gemm_config *mj_tune_gemm_configs(moejit_dtype dtype, int *count) {
  if (mj_tune_uses_mma(dtype)) {
    *count = (int)(sizeof mma_configs / sizeof mma_configs[0]);
    return mma_configs;
  }
  *count = (int)(sizeof ffma_configs / sizeof ffma_configs[0]);
  return ffma_configs;
}

int mj_tune_gemm_threads(const mj_gemm_config *c, moejit_dtype dtype) {
  if (mj_tune_uses_mma(dtype))
    return 32 * c->wm * c->wn;
  return (c->bm / c->tm) * (c->bn / c->tn);
}

size_t mj_tune_gemm_smem(const mj_gemm_config *c, moejit_dtype dtype) {
  size_t elem = dtype == MOEJIT_F32 ? 4 : 2;
  size_t vec = 16 / elem;
  return (size_t)c->stages * ((size_t)c->bm * (c->bk + vec) + (size_t)c->bk * (c->bn + vec)) * elem;
}

int mj_tune_pick(const mj_gemm_config *configs, int count, int64_t tokens, int64_t top_k,
                 int64_t experts) {
  int64_t avg = (tokens * top_k + experts - 1) / experts;
  for (int i = 0; i < count; i++)
    if (avg <= configs[i].max_avg_rows)
      return i;
  return count - 1;
}

void mj_tune_config_name(mj_gemm_config *c, moejit_dtype dtype) {
  if (mj_tune_uses_mma(dtype))
    snprintf(c->name, sizeof c->name, "mma_m%dn%dk%ds%dw%dx%d", c->bm, c->bn, c->bk, c->stages,
             c->wm, c->wn);
  else
    snprintf(c->name, sizeof c->name, "ffma_m%dn%dk%ds%dt%dx%d", c->bm, c->bn, c->bk, c->stages,
             c->tm, c->tn);
}

int mj_tune_config_parse(const char *name, mj_gemm_config *c) {
  mj_gemm_config p;
  char tail;
  memset(&p, 0, sizeof p);
  if (sscanf(name, "mma_m%dn%dk%ds%dw%dx%d%c", &p.bm, &p.bn, &p.bk, &p.stages, &p.wm, &p.wn,
             &tail) != 6 &&
      sscanf(name, "ffma_m%dn%dk%ds%dt%dx%d%c", &p.bm, &p.bn, &p.bk, &p.stages, &p.tm, &p.tn,
             &tail) != 6)
    return -1;
  if (p.bm <= 0 || p.bn <= 0 || p.bk <= 0 || p.stages < 2 || (p.wm <= 0 && p.tm <= 0))
    return -1;
  if (snprintf(p.name, sizeof p.name, "%s", name) >= (int)sizeof p.name)
    return -1;
  *c = p;
  return 0;
}

/* The search space, as data: tile shapes with their warp (or thread) layout, times BK and stages. */
typedef struct shape {
  int bm, bn, a, b; /* wm, wn (mma) or tm, tn (ffma) */
} shape;

static const shape mma_shapes[] = {
    {16, 64, 1, 4},   {16, 128, 1, 4},  {16, 256, 1, 8},  {32, 128, 2, 2},
    {32, 256, 2, 4},  {64, 64, 2, 2},   {64, 128, 2, 2},  {64, 256, 2, 4},
    {128, 64, 4, 1},  {128, 128, 2, 4}, {128, 256, 2, 4},
};
static const int mma_bk[] = {32, 64}, mma_stages[] = {3, 4};

static const shape ffma_shapes[] = {
    {16, 128, 1, 8}, {32, 64, 2, 4}, {64, 64, 4, 4}, {64, 128, 4, 8}, {128, 128, 8, 8},
};
static const int ffma_bk[] = {16, 32}, ffma_stages[] = {2, 3};

int mj_tune_search_space(moejit_dtype dtype, size_t smem_limit, mj_gemm_config *out, int max) {
  int mma = mj_tune_uses_mma(dtype), n = 0;
  const shape *shapes = mma ? mma_shapes : ffma_shapes;
  int nshapes = mma ? (int)(sizeof mma_shapes / sizeof mma_shapes[0])
                    : (int)(sizeof ffma_shapes / sizeof ffma_shapes[0]);
  const int *bks = mma ? mma_bk : ffma_bk, *stages = mma ? mma_stages : ffma_stages;
  for (int i = 0; i < nshapes; i++)
    for (int k = 0; k < 2; k++)
      for (int s = 0; s < 2 && n < max; s++) {
        mj_gemm_config c;
        memset(&c, 0, sizeof c);
        c.bm = shapes[i].bm;
        c.bn = shapes[i].bn;
        c.bk = bks[k];
        c.stages = stages[s];
        if (mma) {
          c.wm = shapes[i].a;
          c.wn = shapes[i].b;
        } else {
          c.tm = shapes[i].a;
          c.tn = shapes[i].b;
        }
        c.max_avg_rows = INT64_MAX;
        if (mj_tune_gemm_smem(&c, dtype) + 1024 > smem_limit)
          continue;
        mj_tune_config_name(&c, dtype);
        out[n++] = c;
      }
  return n;
}
