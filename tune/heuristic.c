/* heuristic.c: the GEMM configuration tables and the pick by rows per expert (see heuristic.h). */
#include "tune/heuristic.h"

/* f16 / bf16: mma.sync m16n8k16. A 16-row tile for decode, 64 and 128 rows for prefill. */
static const mj_gemm_config mma_configs[] = {
    {"mma_m16n128k64s4", 16, 128, 64, 4, 1, 4, 0, 0, 24},
    {"mma_m64n128k32s4", 64, 128, 32, 4, 2, 2, 0, 0, 96},
    {"mma_m128n128k32s3", 128, 128, 32, 3, 2, 4, 0, 0, INT64_MAX},
};

/* f32: exact FFMA. */
static const mj_gemm_config ffma_configs[] = {
    {"ffma_m16n128k16s3", 16, 128, 16, 3, 0, 0, 1, 8, 24},
    {"ffma_m64n64k16s3", 64, 64, 16, 3, 0, 0, 4, 4, INT64_MAX},
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
