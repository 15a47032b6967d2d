/* tuner.h: the autotuner. For a layer and a list of token counts it compiles the search space's
 * configurations (in parallel, through the cubin cache), drops those that spill, times each
 * candidate's whole forward with CUDA events on a synthetic routed layer (L2 flushed before every
 * timed run, median of repeats), keeps the fastest per token count, has the winner checked by the
 * caller's check (the CPU reference), and merges the winners into the tuning records.
 * Uses runtime/runtime.h (plans, forced configurations), tools/synth, tools/timing, tune/records.
 */
#ifndef MJ_TOOLS_TUNER_H
#define MJ_TOOLS_TUNER_H
#include "runtime/runtime.h"
#include "tools/synth.h"

#define MJ_TUNER_MAX_TOKENS 32

typedef struct mj_tuner_result {
  int64_t tokens;
  char config[40];    /* the winner */
  double ms;          /* its median forward time */
  char heuristic[40]; /* what the untuned plan picks */
  double heuristic_ms;
  int candidates;   /* timed for this token count */
  double rel_error; /* the check of the winner */
  int checked;      /* 1: the check ran and passed; 0: not run (budget); -1: failed */
} mj_tuner_result;

typedef struct mj_tuner_options {
  const int64_t *tokens; /* token counts to tune, each its own record */
  int ntokens;
  double budget_s; /* wall-clock budget for the timing; 0 = none */
  int repeat;      /* timed runs per candidate (median); default 5 */
  uint64_t seed;
  int write_records; /* merge the winners into the context's records file */
  /* Called as work advances: stage "compile" or "time"; done of total steps. */
  void (*progress)(void *user, const char *stage, int done, int total, const char *what);
  /* Checks the layer's output (the forward with the winner just ran); returns 0 when it matches,
   * and the error it saw. */
  int (*check)(void *user, const mj_synth *s, const mj_synth_layer *L, double *rel_error);
  void *user;
} mj_tuner_options;

/* results[ntokens] are filled in the order of o->tokens. MOEJIT_ERR_NO_DEVICE offline. */
moejit_status mj_tuner_run(moejit_ctx *ctx, const moejit_layer_desc *desc,
                           const mj_tuner_options *o, mj_tuner_result *results, mj_err *err);

#endif
