/* heuristic.h: the GEMM tile configurations a plan compiles, and the choice among them by the
 * average rows per expert of a forward (until tuned records exist). Data, not branches: one table
 * per math path. Uses nothing but the public header. */
#ifndef MJ_TUNE_HEURISTIC_H
#define MJ_TUNE_HEURISTIC_H
#include <stddef.h>
#include <stdint.h>

#include "moejit.h"

typedef struct mj_gemm_config {
  const char *name;
  int bm, bn, bk, stages;
  int wm, wn; /* tensor-core path: warps along M and N */
  int tm, tn; /* FFMA path: outputs per thread along M and N */
  /* Chosen while T * K / E is at most this; the last entry takes everything above. */
  int64_t max_avg_rows;
} mj_gemm_config;

/* The configurations for an activation dtype, ordered by max_avg_rows. */
const mj_gemm_config *mj_tune_gemm_configs(moejit_dtype dtype, int *count);
/* Whether dtype takes the tensor-core (mma.sync) path. */
int mj_tune_uses_mma(moejit_dtype dtype);
int mj_tune_gemm_threads(const mj_gemm_config *c, moejit_dtype dtype);
/* Dynamic shared memory of the GEMM kernel for this configuration (gemm.cuh's layout). */
size_t mj_tune_gemm_smem(const mj_gemm_config *c, moejit_dtype dtype);
/* Index into the table for a forward of `tokens` tokens. */
int mj_tune_pick(const mj_gemm_config *configs, int count, int64_t tokens, int64_t top_k,
                 int64_t experts);

#endif
