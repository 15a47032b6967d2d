/* check.h: checks a synthetic layer's GPU output against the CPU reference on sampled tokens.
 * Used by the GPU suites and `moejit run`. Uses tools/synth and tools/ref. */
#ifndef MJ_TOOLS_CHECK_H
#define MJ_TOOLS_CHECK_H
#include "tools/synth.h"

typedef struct mj_check_result {
  int64_t sampled;  /* tokens compared */
  double rel_error; /* mj_rel_error over the sampled rows */
  double tolerance; /* mj_tolerance of the dtype */
  int nonfinite;    /* outputs that were NaN or infinite (an unwritten, poisoned row) */
} mj_check_result;

/* Compares up to `samples` tokens spread evenly over [0, T) (first and last included; all when
 * samples >= T), dense or MXFP4 weights (the reference decodes the blocks and scales). The forward
 * must have run. */
moejit_status mj_check_sampled(const mj_synth *s, const mj_synth_layer *L, int64_t samples,
                               mj_check_result *r, mj_err *err);

#endif
