/* moejit.c: the moejit command: dispatch, --help and what the commands share. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "tools/tools.h"

void cli_log(void *user, moejit_log_level level, const char *msg) {
  const int *verbose = user;
  if (level >= MOEJIT_LOG_WARN || (verbose && *verbose))
    fprintf(stderr, "moejit: %s\n", msg);
}

int cli_token_list(cli_layer *L, const int64_t *defaults, int n, const char *command) {
  if (!L->tokens_given) {
    L->ntokens = n;
    memcpy(L->token_list, defaults, (size_t)n * sizeof defaults[0]);
    L->tokens = defaults[n - 1];
  }
  for (int i = 0; i < L->ntokens; i++)
    if (L->token_list[i] < 1) {
      fprintf(stderr, "moejit %s: --tokens: every count must be at least 1\n", command);
      return 2;
    }
  return 0;
}

moejit_status cli_config(const char *name, const moejit_layer_desc *desc, const char *arch,
                         mj_gemm_config *c, mj_err *err) {
  mj_math math;
  if (mj_tune_config_parse(name, c, &math) != 0)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "--config %s: not a configuration name (moejit tune prints them)", name);
  if (!mj_tune_math_takes(mj_rt_math(desc), math, c))
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "--config %s: a %s configuration, and this layer's GEMMs are %s", name,
                   mj_tune_math_name(math), mj_tune_math_name(mj_rt_math(desc)));
  int split = mj_rt_split_activation(desc);
  if (c->kind == MJ_GEMM_WGMMA && split)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "--config %s: a wgmma configuration, and this layer's activation runs as a "
                   "launch of its own (--unfused, --gate-up-layout halves or an activation without "
                   "mul), which only the other tiles take",
                   name);
  /* the family a batch-invariant plan keeps (runtime/plan.c): wgmma where it may take them */
  int wgmma_plan = mj_rt_math(desc) == MJ_MATH_MMA && !split && mj_tune_arch_wgmma(arch);
  if (arch && desc->batch_invariant && !mj_tune_invariant(c, wgmma_plan))
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "--config %s: not of the batch-invariant family on %s (%s tiles, no streamed "
                   "tile, no split GEMM2)",
                   name, arch, wgmma_plan ? "wgmma" : "mma.sync, TF32, FFMA or MXFP4");
  return MOEJIT_OK;
}

const char *cli_weights_name(const moejit_layer_desc *desc) {
  return desc->weight_format == MOEJIT_WEIGHTS_MXFP4 ? "mxfp4" : "dense";
}

const char *cli_layer_words(const moejit_layer_desc *d, char *buf, size_t cap) {
  int gated = mj_rt_gate_up_cols(d) != d->intermediate;
  snprintf(buf, cap, "%s, %s weights, %s%s%s%s%s%s", mj_dtype_name(d->dtype), cli_weights_name(d),
           cli_activation_name(d),
           gated && d->gate_up_layout != MOEJIT_GATE_UP_INTERLEAVED ? ", " : "",
           gated && d->gate_up_layout != MOEJIT_GATE_UP_INTERLEAVED ? cli_layout_name(d) : "",
           d->no_bias ? ", no bias" : "", d->unfused ? ", unfused" : "",
           d->batch_invariant ? ", batch-invariant" : "");
  return buf;
}

double cli_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static const char usage[] =
    "usage: moejit <command> [options]\n"
    "\n"
    "Generates, compiles and runs the GPU kernels of a Mixture-of-Experts layer (GPT-OSS's by\n"
    "default; --model mixtral-8x7b, or --activation, --gate-up-layout, --no-bias for others).\n"
    "\n"
    "Commands:\n"
    "  gen       print the generated CUDA source of one kernel of a layer\n"
    "  compile   compile a layer's kernels with NVRTC for an arch; print cubin size, registers,\n"
    "            shared memory and spills per kernel (no GPU needed)\n"
    "  run       run a random layer on the GPU through the JIT, time it and check sampled tokens\n"
    "            against the CPU reference (without a GPU: compile and say so)\n"
    "  tune      time the tile configurations for token counts on this GPU and record the\n"
    "            winners in the tuning records (plans use them from then on)\n"
    "  bench     time the forward per token count (CUDA graph replays) beside its floor from the\n"
    "            measured HBM bandwidth and cuBLAS GEMM rate; table and JSON lines\n"
    "  cache     ls | verify | clear | export FILE | import FILE: the cubin cache and records\n"
    "  version   print the library version\n"
    "\n"
    "`moejit <command> --help` lists the command's options.\n";

int main(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
      !strcmp(argv[1], "help")) {
    fputs(usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "gen"))
    return cmd_gen(argc - 2, argv + 2);
  if (!strcmp(cmd, "compile"))
    return cmd_compile(argc - 2, argv + 2);
  if (!strcmp(cmd, "run"))
    return cmd_run(argc - 2, argv + 2);
  if (!strcmp(cmd, "tune"))
    return cmd_tune(argc - 2, argv + 2);
  if (!strcmp(cmd, "bench"))
    return cmd_bench(argc - 2, argv + 2);
  if (!strcmp(cmd, "cache"))
    return cmd_cache(argc - 2, argv + 2);
  if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
    printf("moejit %s\n", moejit_version_string());
    return 0;
  }
  fprintf(stderr, "moejit: unknown command '%s'\n\n%s", cmd, usage);
  return 2;
}
