/* cmd_tune.c: `moejit tune`: the autotuner for a layer shape on this GPU, with a progress bar on a
 * terminal (plain lines otherwise) and a summary table; the winners go to the tuning records. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "tools/tools.h"

static const char tune_usage[] =
    "usage: moejit tune [--tokens 1,8,64,512,4096,65536] [--budget SECONDS] [--repeat N]\n"
    "                   [--check N] [layer options]\n"
    "\n"
    "For each token count, times every tile configuration of the search space that fits the\n"
    "rows per expert (whole forward, CUDA events, L2 flushed, median of --repeat runs, default 5),\n"
    "checks the winner against the CPU reference on --check sampled tokens (default 8), and merges\n"
    "the winners into\n"
    "the tuning records of the cache folder ($MOEJIT_CACHE_DIR, else $XDG_CACHE_HOME/moejit, else\n"
    "~/.cache/moejit). Plans made afterwards use them. --budget bounds the timing phase; when it\n"
    "runs out the best so far wins. Needs a GPU.\n";

typedef struct tune_ui {
  int tty;
  double start;
  int check; /* tokens checked against the CPU reference */
} tune_ui;

static void progress(void *user, const char *stage, int done, int total, const char *what) {
  tune_ui *ui = user;
  double secs = cli_now() - ui->start;
  if (ui->tty) {
    int width = 30, fill = total > 0 ? done * width / total : width;
    char bar[64];
    for (int i = 0; i < width; i++)
      bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    fprintf(stderr, "\r%-7s [%s] %3d/%-3d %6.1fs %-36s", stage, bar, done, total, secs, what);
    if (done == total)
      fputc('\n', stderr);
  } else {
    fprintf(stderr, "%s %d/%d %.1fs %s\n", stage, done, total, secs, what);
  }
  fflush(stderr);
}

static int check(void *user, const mj_synth *s, const mj_synth_layer *L, double *rel) {
  const tune_ui *ui = user;
  mj_check_result r;
  mj_err err;
  if (mj_check_sampled(s, L, ui->check, &r, &err) != MOEJIT_OK) {
    fprintf(stderr, "moejit tune: check: %s\n", err.msg);
    return -1;
  }
  *rel = r.rel_error;
  return r.nonfinite == 0 && r.rel_error <= r.tolerance ? 0 : -1;
}

int cmd_tune(int argc, char **argv) {
  cli_layer L;
  int nwords;
  int rc = cli_parse(argc, argv, CLI_TUNE, tune_usage, &L, NULL, 0, &nwords);
  if (rc)
    return rc == 1 ? 0 : rc;
  static const int64_t defaults[] = {1, 8, 64, 512, 4096, 65536};
  if ((rc = cli_token_list(&L, defaults, 6, "tune")) != 0)
    return rc;
  moejit_ctx_options o;
  moejit_ctx_options_init(&o);
  o.log = cli_log;
  o.log_user = &L.verbose;
  moejit_ctx *ctx = NULL;
  moejit_status st = moejit_create(&ctx, &o);
  if (st != MOEJIT_OK) {
    fprintf(stderr, "moejit tune: %s: tuning needs a GPU (run with --verbose for the reason)\n",
            moejit_status_name(st));
    return 1;
  }
  mj_err err;
  const moejit_layer_desc *d = &L.desc;
  moejit_device_info info;
  moejit_device_info_init(&info);
  moejit_device_info_get(ctx, &info);
  const char *records = mj_rt_records_path(ctx);
  char words[160];
  printf("tuning   H=%lld I=%lld E=%lld K=%lld %s, on %s (%s, %d SMs)\n", (long long)d->hidden,
         (long long)d->intermediate, (long long)d->experts, (long long)d->top_k,
         cli_layer_words(d, words, sizeof words), info.name, info.arch, info.sm_count);
  printf("records  %s\n", records[0] ? records : "(no cache folder: not saved)");
  tune_ui ui = {isatty(2), cli_now(), L.check < 0 ? 8 : L.check};
  mj_tuner_options opt = {L.token_list, L.ntokens, L.budget, L.repeat > 0 ? L.repeat : 5, L.seed, 1,
                          progress,     check,     &ui};
  mj_tuner_result res[32];
  double t0 = cli_now();
  st = mj_tuner_run(ctx, d, &opt, res, &err);
  if (st != MOEJIT_OK) {
    fprintf(stderr, "moejit tune: %s: %s\n", moejit_status_name(st), err.msg);
    moejit_destroy(ctx);
    return 1;
  }
  printf("\n%8s  %-24s %9s  %-24s %9s  %7s  %5s  %s\n", "tokens", "winner", "ms", "heuristic", "ms",
         "speedup", "cands", "check");
  rc = 0;
  for (int i = 0; i < L.ntokens; i++) {
    const mj_tuner_result *r = &res[i];
    char chk[48];
    if (r->checked == 1)
      snprintf(chk, sizeof chk, "ok (%.2g)", r->rel_error);
    else
      snprintf(chk, sizeof chk, "FAILED (%.2g): not recorded", r->rel_error);
    rc |= r->checked != 1;
    printf("%8lld  %-24s %9.4f  %-24s %9.4f  %6.2fx  %5d  %s\n", (long long)r->tokens, r->config,
           r->ms, r->heuristic, r->heuristic_ms, r->ms > 0 ? r->heuristic_ms / r->ms : 0.0,
           r->candidates, chk);
  }
  printf("tuned %d token counts in %.1f s\n", L.ntokens, cli_now() - t0);
  moejit_destroy(ctx);
  return rc;
}
