/* timing.h: the one way the tools time GPU work: CUDA events around each run on a stream, warm-up
 * runs first, an optional untimed step before each run (an L2 flush), medians. Used by the tuner,
 * `moejit bench` and `moejit run`. Uses runtime/runtime.h for the context's driver. */
#ifndef MJ_TOOLS_TIMING_H
#define MJ_TOOLS_TIMING_H
#include "runtime/runtime.h"

/* What mj_timing_run times. */
typedef struct mj_timing {
  int warmup, repeat; /* untimed runs first, then timed ones (repeat >= 1) */
  /* The work timed, enqueued on stream. */
  moejit_status (*run)(void *user, CUstream stream, mj_err *err);
  /* Untimed work before each run (NULL: none, and the runs go back to back, one event between
   * each two). */
  moejit_status (*prepare)(void *user, CUstream stream, mj_err *err);
  void *user;
} mj_timing;

/* Enqueues the runs on stream, waits for them and writes each timed run's milliseconds into
 * ms[0..repeat) (GPU time between its events). A fault in the work surfaces here as
 * MOEJIT_ERR_CUDA. Makes the context current while it runs. */
moejit_status mj_timing_run(moejit_ctx *ctx, CUstream stream, const mj_timing *t, float *ms,
                            mj_err *err);
/* Sorts ms[0..n) and returns its median (the upper one for even n). */
double mj_timing_median(float *ms, int n);

#endif
