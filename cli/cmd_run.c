/* cmd_run.c: `moejit run`: a random layer through the JIT on the GPU, timed with CUDA events and
 * checked against the CPU reference on sampled tokens. Without a GPU it compiles the kernels for
 * sm_90a and says that nothing ran. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "tools/tools.h"

static const char run_usage[] =
    "usage: moejit run [--tokens N] [--repeat N] [--check N] [--seed S] [layer options]\n"
    "\n"
    "Builds a plan for the layer (JIT: render, NVRTC, load), fills random weights and top-k routing\n"
    "on the GPU, runs the forward --repeat times (default 20) after 3 warm-up runs and prints the\n"
    "median time of one forward (CUDA events) and its dropless TFLOP/s, then checks --check sampled\n"
    "tokens (default 32) against the CPU reference. Exit status 1 when the check fails.\n"
    "Without a GPU: compiles the layer's kernels for sm_90a (or --arch) and says no GPU was found.\n";

static int compile_only(const cli_layer *L, const char *why) {
  moejit_ctx_options o;
  moejit_ctx *ctx = NULL;
  moejit_plan *plan = NULL;
  moejit_ctx_options_init(&o);
  o.offline_arch = L->arch ? L->arch : "sm_90a";
  o.log = cli_log;
  o.log_user = (void *)&L->verbose;
  printf("no GPU found (%s)\n", why);
  char words[160];
  printf("compiling the layer's kernels (%s) for %s instead\n",
         cli_layer_words(&L->desc, words, sizeof words), o.offline_arch);
  if (moejit_create(&ctx, &o) != MOEJIT_OK)
    return 1;
  double t0 = cli_now();
  moejit_status st = moejit_plan_create(ctx, &L->desc, &plan);
  if (st != MOEJIT_OK) {
    fprintf(stderr, "moejit run: plan: %s: %s\n", moejit_status_name(st), moejit_last_error(ctx));
    moejit_destroy(ctx);
    return 1;
  }
  printf("compiled %d modules for %s in %.2f s; nothing was run: no GPU\n",
         2 + 2 * mj_rt_plan_configs(plan), o.offline_arch, cli_now() - t0);
  moejit_plan_destroy(plan);
  moejit_destroy(ctx);
  return 0;
}

static char no_device_reason[1024];

/* The forward `moejit run` times. */
typedef struct run_call {
  moejit_ctx *ctx;
  moejit_plan *plan;
  moejit_forward_args args;
  const mj_synth_layer *layer;
} run_call;

static moejit_status forward(void *user, CUstream stream, mj_err *err) {
  run_call *c = user;
  moejit_status st = moejit_forward(c->plan, &c->args, (void *)(uintptr_t)c->layer->workspace,
                                    c->layer->workspace_bytes, stream);
  return st == MOEJIT_OK ? st : mj_errf(err, st, "%s", moejit_last_error(c->ctx));
}

static void capture_log(void *user, moejit_log_level level, const char *msg) {
  snprintf(no_device_reason, sizeof no_device_reason, "%s", msg);
  cli_log(user, level == MOEJIT_LOG_WARN ? MOEJIT_LOG_INFO : level, msg);
}

int cmd_run(int argc, char **argv) {
  cli_layer L;
  int nwords;
  int rc = cli_parse(argc, argv, CLI_RUN, run_usage, &L, NULL, 0, &nwords);
  if (rc)
    return rc == 1 ? 0 : rc;
  if (L.ntokens != 1) {
    fprintf(stderr, "moejit run: --tokens: one count, not a list of %d\n", L.ntokens);
    return 2;
  }
  if (L.repeat == 0)
    L.repeat = 20;
  if (L.check < 0)
    L.check = 32;
  moejit_ctx_options o;
  moejit_ctx_options_init(&o);
  o.log = capture_log;
  o.log_user = &L.verbose;
  moejit_ctx *ctx = NULL;
  moejit_status st = moejit_create(&ctx, &o);
  if (st == MOEJIT_ERR_NO_DEVICE)
    return compile_only(&L, no_device_reason);
  if (st != MOEJIT_OK) {
    fprintf(stderr, "moejit run: %s: %s\n", moejit_status_name(st), no_device_reason);
    return 1;
  }
  moejit_plan *plan = NULL;
  mj_synth syn = {0};
  mj_synth_layer layer = {0};
  mj_err err;
  float *ms = NULL;
  rc = 1;
  const moejit_layer_desc *d = &L.desc;
  moejit_device_info info;
  moejit_device_info_init(&info);
  moejit_device_info_get(ctx, &info);
  printf("device   %s (%s, %d SMs)\n", info.name, info.arch, info.sm_count);
  char words[160];
  printf("layer    H=%lld I=%lld E=%lld K=%lld %s, %s routing, %lld tokens\n", (long long)d->hidden,
         (long long)d->intermediate, (long long)d->experts, (long long)d->top_k,
         cli_layer_words(d, words, sizeof words),
         d->routing == MOEJIT_ROUTING_DENSE ? "dense" : "topk", (long long)L.tokens);
  double t0 = cli_now();
  if ((st = moejit_plan_create(ctx, d, &plan)) != MOEJIT_OK) {
    fprintf(stderr, "moejit run: plan: %s: %s\n", moejit_status_name(st), moejit_last_error(ctx));
    goto done;
  }
  printf("plan     %d modules built and loaded in %.3f s\n", mj_rt_plan_modules(plan),
         cli_now() - t0);
  if ((st = mj_synth_open(ctx, &syn, &err)) != MOEJIT_OK ||
      (st = mj_synth_layer_create(&syn, plan, L.tokens, L.seed, &layer, &err)) != MOEJIT_OK) {
    fprintf(stderr, "moejit run: synthetic layer: %s: %s\n", moejit_status_name(st), err.msg);
    goto done;
  }
  run_call call = {ctx, plan, {0}, &layer};
  mj_synth_layer_args(&layer, &call.args);
  void *ws = (void *)(uintptr_t)layer.workspace;
  if (!(ms = calloc((size_t)L.repeat, sizeof *ms))) {
    fprintf(stderr, "moejit run: out of memory\n");
    goto done;
  }
  const mj_timing timed = {3, L.repeat, forward, NULL, &call};
  if ((st = mj_timing_run(ctx, NULL, &timed, ms, &err)) != MOEJIT_OK) {
    fprintf(stderr, "moejit run: forward: %s: %s\n", moejit_status_name(st), err.msg);
    goto done;
  }
  int64_t bad = 0;
  if ((st = moejit_forward_check(plan, ws, NULL, &bad)) != MOEJIT_OK) {
    fprintf(stderr, "moejit run: %s: %s\n", moejit_status_name(st), moejit_last_error(ctx));
    goto done;
  }
  double med = mj_timing_median(ms, L.repeat);
  double flop = (double)L.tokens * (double)d->top_k * mj_floor_slot_flops(d);
  printf("forward  %.3f ms median of %d (min %.3f, max %.3f), %.1f TFLOP/s dropless\n", med,
         L.repeat, ms[0], ms[L.repeat - 1], med > 0 ? flop / (med * 1e-3) / 1e12 : 0.0);
  if (L.check > 0 && L.tokens > 0) {
    mj_check_result r;
    t0 = cli_now();
    if ((st = mj_check_sampled(&syn, &layer, L.check, &r, &err)) != MOEJIT_OK) {
      fprintf(stderr, "moejit run: check: %s: %s\n", moejit_status_name(st), err.msg);
      goto done;
    }
    int ok = r.nonfinite == 0 && r.rel_error <= r.tolerance;
    printf("check    %lld sampled tokens vs CPU reference: rel error %.3g (tolerance %.0e), %s "
           "(%.1f s)\n",
           (long long)r.sampled, r.rel_error, r.tolerance, ok ? "OK" : "MISMATCH", cli_now() - t0);
    if (r.nonfinite)
      printf("check    %d outputs were not finite\n", r.nonfinite);
    if (!ok)
      goto done;
  }
  rc = 0;
done:
  free(ms);
  if (layer.host_ids)
    mj_synth_layer_destroy(&syn, &layer);
  mj_synth_close(&syn);
  moejit_plan_destroy(plan);
  moejit_destroy(ctx);
  return rc;
}
