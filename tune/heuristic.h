/* heuristic.h: the GEMM tile configurations a plan compiles, and the choice among them by the
 * average rows per expert of a forward (until tuned records exist). Data, not branches: one table
 * per math path. Uses nothing but the public header. */
#ifndef MJ_TUNE_HEURISTIC_H
#define MJ_TUNE_HEURISTIC_H
#include <stddef.h>
#include <stdint.h>

#include "moejit.h"

typedef struct mj_gemm_config {
  char name[40]; /* "mma_m64n128k32s4w2x2", "ffma_m64n64k16s3t4x4": mj_tune_config_name */
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
/* Writes the configuration's name (it encodes every field) into c->name. */
void mj_tune_config_name(mj_gemm_config *c, moejit_dtype dtype);
/* Parses a name back; returns 0, or -1 when it is not one. max_avg_rows is left 0. */
int mj_tune_config_parse(const char *name, mj_gemm_config *c);

/* The tuner's search space for a dtype: every configuration (named) whose shared memory fits in
 * smem_limit bytes. Returns the count written (at most max). */
int mj_tune_search_space(moejit_dtype dtype, size_t smem_limit, mj_gemm_config *out, int max);

/* Index into the table for a forward of `tokens` tokens. */
int mj_tune_pick(const mj_gemm_config *configs, int count, int64_t tokens, int64_t top_k,
                 int64_t experts);

#endif
