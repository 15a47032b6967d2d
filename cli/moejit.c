/* moejit.c: the moejit command: dispatch, shared option parsing and --help. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "tools/tools.h"

const char *const cli_layer_help =
    "Layer options (defaults: gpt-oss-20b, bf16):\n"
    "  --model NAME         gpt-oss-20b (H=I=2880, E=32, K=4) or gpt-oss-120b (E=128)\n"
    "  --hidden N           H, a multiple of 8\n"
    "  --intermediate N     I, a multiple of 8\n"
    "  --experts N          E, 1..1024\n"
    "  --top-k N            K, 1..32\n"
    "  --dtype T            f32, f16 or bf16 (activations, weights, biases)\n"
    "  --ids T              i32 or i64 (expert ids)\n"
    "  --routing R          topk (weights [T,K]) or dense (weights [T,E])\n"
    "  --alpha X, --limit X SwiGLU parameters (1.702, 7.0)\n"
    "  --unfused            GEMM1 without the activation, which runs as its own launch\n"
    "  --exact-f32          f32 GEMMs on exact FFMA instead of TF32 tensor cores\n"
    "  --arch A             target such as sm_80 or sm_90a (default: the GPU's, else sm_90a)\n"
    "  --tokens N[,N...]    tokens of the forward (run: 4096; tune: a list)\n"
    "  --verbose            print the library's log\n";

static int parse_int(const char *opt, const char *v, int64_t lo, int64_t hi, int64_t *out) {
  char *end;
  long long x = v ? strtoll(v, &end, 10) : 0;
  if (!v || end == v || *end || x < lo || x > hi) {
    fprintf(stderr, "moejit: %s=%s: expected an integer in [%lld, %lld]\n", opt, v ? v : "(none)",
            (long long)lo, (long long)hi);
    return 2;
  }
  *out = x;
  return 0;
}

static int parse_enum(const char *opt, const char *v, const char *const *names, int n, int *out) {
  for (int i = 0; v && i < n; i++)
    if (names[i] && strcmp(v, names[i]) == 0) {
      *out = i;
      return 0;
    }
  fprintf(stderr, "moejit: %s=%s: expected one of", opt, v ? v : "(none)");
  for (int i = 0; i < n; i++)
    if (names[i])
      fprintf(stderr, " %s", names[i]);
  fprintf(stderr, "\n");
  return 2;
}

int cli_parse(int argc, char **argv, cli_layer *L, const char *usage) {
  static const char *const dtypes[] = {"f32", "f16", "bf16"};
  static const char *const ids[] = {NULL, NULL, NULL, "i32", "i64"};
  static const char *const routings[] = {"topk", "dense"};
  static const char *const models[] = {"gpt-oss-20b", "gpt-oss-120b"};
  moejit_layer_desc *d = &L->desc;
  memset(L, 0, sizeof *L);
  moejit_layer_desc_init(d);
  d->hidden = d->intermediate = 2880;
  d->experts = 32;
  d->top_k = 4;
  L->tokens = 4096;
  L->token_list[0] = 4096;
  L->ntokens = 1;
  L->repeat = 0; /* 0: the command's own default */
  L->check = -1;
  L->seed = 1;
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int64_t x = 0;
    int e = 0, rc = 0, takes = 1;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      printf("%s\n%s", usage, cli_layer_help);
      return 1;
    } else if (!strcmp(a, "--verbose")) {
      L->verbose = 1;
      takes = 0;
    } else if (!strcmp(a, "--unfused")) {
      d->unfused = 1;
      takes = 0;
    } else if (!strcmp(a, "--exact-f32")) {
      d->exact_f32 = 1;
      takes = 0;
    } else if (!strcmp(a, "--model")) {
      if (!(rc = parse_enum(a, v, models, 2, &e)))
        d->experts = e == 0 ? 32 : 128;
    } else if (!strcmp(a, "--hidden")) {
      if (!(rc = parse_int(a, v, 1, 1 << 20, &x)))
        d->hidden = x;
    } else if (!strcmp(a, "--intermediate")) {
      if (!(rc = parse_int(a, v, 1, 1 << 20, &x)))
        d->intermediate = x;
    } else if (!strcmp(a, "--experts")) {
      if (!(rc = parse_int(a, v, 1, 1 << 20, &x)))
        d->experts = x;
    } else if (!strcmp(a, "--top-k")) {
      if (!(rc = parse_int(a, v, 1, 1 << 20, &x)))
        d->top_k = x;
    } else if (!strcmp(a, "--tokens")) {
      L->ntokens = 0;
      L->tokens = 0;
      for (const char *p = v; p && !rc;) {
        char item[32];
        const char *comma = strchr(p, ',');
        snprintf(item, sizeof item, "%.*s", (int)(comma ? comma - p : (long)strlen(p)), p);
        if (L->ntokens == 32) {
          fprintf(stderr, "moejit: --tokens: at most 32 counts\n");
          rc = 2;
        } else if (!(rc = parse_int(a, item, 0, INT32_MAX, &x))) {
          L->token_list[L->ntokens++] = x;
          if (x > L->tokens)
            L->tokens = x;
        }
        p = comma ? comma + 1 : NULL;
      }
    } else if (!strcmp(a, "--budget")) {
      if (!(rc = parse_int(a, v, 1, 1 << 30, &x)))
        L->budget = (double)x;
    } else if (!strcmp(a, "--dir")) {
      L->dir = v;
    } else if (!strcmp(a, "--repeat")) {
      if (!(rc = parse_int(a, v, 1, 100000, &x)))
        L->repeat = (int)x;
    } else if (!strcmp(a, "--check")) {
      if (!(rc = parse_int(a, v, 0, 1 << 20, &x)))
        L->check = (int)x;
    } else if (!strcmp(a, "--seed")) {
      if (!(rc = parse_int(a, v, 0, INT64_MAX, &x)))
        L->seed = (uint64_t)x;
    } else if (!strcmp(a, "--dtype")) {
      if (!(rc = parse_enum(a, v, dtypes, 3, &e)))
        d->dtype = (moejit_dtype)e;
    } else if (!strcmp(a, "--ids")) {
      if (!(rc = parse_enum(a, v, ids, 5, &e)))
        d->ids_dtype = (moejit_dtype)e;
    } else if (!strcmp(a, "--routing")) {
      if (!(rc = parse_enum(a, v, routings, 2, &e)))
        d->routing = (moejit_routing)e;
    } else if (!strcmp(a, "--alpha") || !strcmp(a, "--limit")) {
      char *end;
      float f = v ? strtof(v, &end) : 0.0f;
      if (!v || *end) {
        fprintf(stderr, "moejit: %s=%s: expected a number\n", a, v ? v : "(none)");
        rc = 2;
      } else if (!strcmp(a, "--alpha")) {
        d->alpha = f;
      } else {
        d->limit = f;
      }
    } else if (!strcmp(a, "--arch")) {
      L->arch = v;
    } else if (!strcmp(a, "--kernel")) {
      L->kernel = v;
    } else if (!strcmp(a, "--config")) {
      L->config = v;
    } else {
      fprintf(stderr, "moejit: unknown option '%s' (see --help)\n", a);
      return 2;
    }
    if (rc)
      return rc;
    if (takes && !v) {
      fprintf(stderr, "moejit: %s needs a value\n", a);
      return 2;
    }
    i += takes;
  }
  if (L->tokens > d->max_tokens)
    d->max_tokens = L->tokens > 0 ? L->tokens : 1;
  return 0;
}

void cli_log(void *user, moejit_log_level level, const char *msg) {
  const int *verbose = user;
  if (level >= MOEJIT_LOG_WARN || (verbose && *verbose))
    fprintf(stderr, "moejit: %s\n", msg);
}

int cli_token_list(int argc, char **argv, cli_layer *L, const int64_t *defaults, int n,
                   const char *command) {
  int given = 0;
  for (int i = 0; i < argc; i++)
    given |= !strcmp(argv[i], "--tokens");
  if (!given) {
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

moejit_status cli_config(const char *name, const moejit_layer_desc *desc, mj_gemm_config *c,
                         mj_err *err) {
  mj_math math;
  if (mj_tune_config_parse(name, c, &math) != 0)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "--config %s: not a configuration name (moejit tune prints them)", name);
  if (math != mj_rt_math(desc))
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "--config %s: a %s configuration, and this layer's GEMMs are %s", name,
                   mj_tune_math_name(math), mj_tune_math_name(mj_rt_math(desc)));
  return MOEJIT_OK;
}

double cli_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static const char usage[] =
    "usage: moejit <command> [options]\n"
    "\n"
    "Generates, compiles and runs the GPU kernels of a GPT-OSS-style Mixture-of-Experts layer.\n"
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
