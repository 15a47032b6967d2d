/* timing.c: CUDA-event timing of runs on a stream (see timing.h). */
#include "tools/timing.h"

#include <stdlib.h>

static int cmp_float(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

double mj_timing_median(float *ms, int n) {
  qsort(ms, (size_t)n, sizeof *ms, cmp_float);
  return ms[n / 2];
}

moejit_status mj_timing_run(moejit_ctx *ctx, CUstream stream, const mj_timing *t, float *ms,
                            mj_err *err) {
  moejit_status st = MOEJIT_OK;
  const mj_cu *cu = mj_rt_driver(ctx);
  /* run i lies between events start[i] and end[i]: its own pair around the prepare step's gap,
   * or, back to back, end[i] = start[i + 1] */
  int paired = t->prepare != NULL, nev = paired ? 2 * t->repeat : t->repeat + 1, made = 0;
  int pushed = 0;
  CUevent *ev = calloc((size_t)nev, sizeof *ev);
  if (!ev)
    return mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory");
  if ((st = mj_rt_enter(ctx, &pushed, err)) != MOEJIT_OK)
    goto fail;
  for (; made < nev; made++)
    MJ_CU(cu, EventCreate(&ev[made], 0), err);
  for (int i = 0; i < t->warmup + t->repeat; i++) {
    int j = i - t->warmup; /* the timed run's index, or < 0 */
    if (paired && (st = t->prepare(t->user, stream, err)) != MOEJIT_OK)
      goto fail;
    if (j >= 0)
      MJ_CU(cu, EventRecord(ev[paired ? 2 * j : j], stream), err);
    if ((st = t->run(t->user, stream, err)) != MOEJIT_OK)
      goto fail;
    if (j >= 0 && paired)
      MJ_CU(cu, EventRecord(ev[2 * j + 1], stream), err);
  }
  if (!paired)
    MJ_CU(cu, EventRecord(ev[t->repeat], stream), err);
  MJ_CU(cu, EventSynchronize(ev[nev - 1]), err); /* a fault in the runs surfaces here */
  for (int j = 0; j < t->repeat; j++)
    MJ_CU(cu, EventElapsedTime(&ms[j], ev[paired ? 2 * j : j], ev[paired ? 2 * j + 1 : j + 1]),
          err);
fail:
  for (int i = 0; i < made; i++)
    cu->EventDestroy(ev[i]);
  free(ev);
  mj_rt_leave(ctx, pushed);
  return st;
}
