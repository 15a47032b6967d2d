/* args.c: the moejit command's options in one table (name, value, range, the commands that take
 * it, help line) and one getopt_long parser over it. Every message names the flag as the user
 * typed it; an option a command does not take is refused, not ignored. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "tools/tools.h"

typedef enum value_kind {
  V_NONE,   /* a flag */
  V_INT,    /* a decimal integer in [lo, hi] */
  V_SIZE,   /* an integer with an optional binary suffix K, M or G (then B or iB), in [lo, hi] */
  V_NUMBER, /* a finite decimal number */
  V_CHOICE, /* one of choices[] */
  V_TEXT,   /* any non-empty word */
  V_TOKENS, /* N[,N...]: at most 32 integers in [lo, hi] */
} value_kind;

typedef enum opt_id {
  O_HELP,
  O_MODEL,
  O_HIDDEN,
  O_INTERMEDIATE,
  O_EXPERTS,
  O_TOP_K,
  O_DTYPE,
  O_WEIGHTS,
  O_IDS,
  O_ROUTING,
  O_ACTIVATION,
  O_GATE_UP_LAYOUT,
  O_NO_BIAS,
  O_ALPHA,
  O_LIMIT,
  O_UNFUSED,
  O_BATCH_INVARIANT,
  O_EXACT_F32,
  O_ARCH,
  O_TOKENS,
  O_VERBOSE,
  O_KERNEL,
  O_CONFIG,
  O_REPEAT,
  O_CHECK,
  O_SEED,
  O_BUDGET,
  O_WARMUP,
  O_EAGER,
  O_JSON,
  O_BW_BYTES,
  O_NO_FLOOR,
  O_CUBLAS,
  O_GRAPH_TOKENS,
  O_DATA,
  O_DIR,
} opt_id;
_Static_assert(O_DIR < 64, "cli_parse keeps the options given in 64 bits");

typedef struct opt_spec {
  const char *name; /* without the leading "--" */
  opt_id id;
  value_kind kind;
  unsigned commands; /* CLI_* bits */
  int64_t lo, hi;
  const char *const *choices; /* V_CHOICE: NULL-terminated */
  const char *value;          /* the value's name in --help */
  const char *help;           /* lines after the first are indented under it */
} opt_spec;

#define LAYER CLI_LAYER_COMMANDS
#define TIMED (CLI_RUN | CLI_TUNE | CLI_BENCH)

/* The --model presets. The options given beside one win over it, wherever they stand. */
static const struct model {
  const char *name;
  int64_t hidden, intermediate, experts, top_k;
  moejit_dtype dtype;
  moejit_activation activation;
  moejit_gate_up_layout layout;
  int no_bias;
} model_table[] = {
    {"gpt-oss-20b", 2880, 2880, 32, 4, MOEJIT_BF16, MOEJIT_ACT_SWIGLU_OAI,
     MOEJIT_GATE_UP_INTERLEAVED, 0},
    {"gpt-oss-120b", 2880, 2880, 128, 4, MOEJIT_BF16, MOEJIT_ACT_SWIGLU_OAI,
     MOEJIT_GATE_UP_INTERLEAVED, 0},
    {"mixtral-8x7b", 4096, 14336, 8, 2, MOEJIT_BF16, MOEJIT_ACT_SILU_MUL, MOEJIT_GATE_UP_HALVES, 1},
};
static const char *const models[] = {"gpt-oss-20b", "gpt-oss-120b", "mixtral-8x7b",
                                     NULL}; /* model_table's order */
/* moejit_activation order */
static const char *const activations[] = {"swiglu",      "silu",         "gelu",
                                          "gelu-tanh",   "swiglu-step",  "silu-no-mul",
                                          "gelu-no-mul", "relu2-no-mul", NULL};
static const char *const layouts[] = {"interleaved", "halves", "up-gate-halves",
                                      NULL};                      /* moejit_gate_up_layout order */
static const char *const draws[] = {"uniform", "normal", NULL};   /* mj_synth_data order */
static const char *const dtypes[] = {"f32", "f16", "bf16", NULL}; /* moejit_dtype order */
static const char *const weights[] = {"dense", "mxfp4", NULL};    /* moejit_weight_format order */
static const char *const ids[] = {"i32", "i64", NULL};
static const char *const routings[] = {"topk", "dense", NULL};
static const char *const kernels[] = {"route", "combine", "gemm1", "gemm2", NULL};

static const opt_spec opts[] = {
    {"help", O_HELP, V_NONE, LAYER | CLI_CACHE, 0, 0, NULL, NULL, "print this help"},
    {"model", O_MODEL, V_CHOICE, LAYER, 0, 0, models, "NAME",
     "gpt-oss-20b (H=I=2880, E=32, K=4, swiglu, biases; the default),\n"
     "gpt-oss-120b (E=128), or mixtral-8x7b (H=4096, I=14336, E=8, K=2,\n"
     "silu, halves, no bias); options given beside it win"},
    {"hidden", O_HIDDEN, V_INT, LAYER, 1, 1 << 20, NULL, "N", "H, a multiple of 8"},
    {"intermediate", O_INTERMEDIATE, V_INT, LAYER, 1, 1 << 20, NULL, "N", "I, a multiple of 8"},
    {"experts", O_EXPERTS, V_INT, LAYER, 1, 1 << 20, NULL, "N", "E, 1..1024"},
    {"top-k", O_TOP_K, V_INT, LAYER, 1, 1 << 20, NULL, "N", "K, 1..32"},
    {"dtype", O_DTYPE, V_CHOICE, LAYER, 0, 0, dtypes, "T",
     "activations, weights and biases: f32, f16 or bf16 (default)"},
    {"weights", O_WEIGHTS, V_CHOICE, LAYER, 0, 0, weights, "W",
     "expert weights: dense (in --dtype; default) or mxfp4 (gpt-oss blocks + scales)"},
    {"ids", O_IDS, V_CHOICE, LAYER, 0, 0, ids, "T", "expert ids: i32 (default) or i64"},
    {"routing", O_ROUTING, V_CHOICE, LAYER, 0, 0, routings, "R",
     "topk (weights [T,K], default) or dense (weights [T,E])"},
    {"activation", O_ACTIVATION, V_CHOICE, LAYER, 0, 0, activations, "A",
     "between the GEMMs: swiglu (SwiGLU-OAI, gpt-oss's; default), silu,\n"
     "gelu, gelu-tanh (each times up), swiglu-step; without mul (GEMM1\n"
     "gives I outputs, not 2I): silu-no-mul, gelu-no-mul, relu2-no-mul"},
    {"gate-up-layout", O_GATE_UP_LAYOUT, V_CHOICE, LAYER, 0, 0, layouts, "L",
     "gate and up among GEMM1's 2I outputs: interleaved (default),\n"
     "halves ([gate | up]) or up-gate-halves ([up | gate]), which run\n"
     "the activation as its own launch"},
    {"no-bias", O_NO_BIAS, V_NONE, LAYER, 0, 0, NULL, NULL, "a layer without biases"},
    {"alpha", O_ALPHA, V_NUMBER, LAYER, 0, 0, NULL, "X", "SwiGLU-OAI alpha (1.702)"},
    {"limit", O_LIMIT, V_NUMBER, LAYER, 0, 0, NULL, "X",
     "clamp limit of swiglu and swiglu-step (7.0)"},
    {"unfused", O_UNFUSED, V_NONE, LAYER, 0, 0, NULL, NULL,
     "GEMM1 without the activation, which runs as its own launch"},
    {"batch-invariant", O_BATCH_INVARIANT, V_NONE, LAYER, 0, 0, NULL, NULL,
     "a token's output bits never depend on the batch: one tile family\n"
     "(wgmma on sm_90a for f16/bf16 dense weights where GEMM1 fuses the\n"
     "activation, mma.sync otherwise), no streamed tile, no split GEMM2"},
    {"exact-f32", O_EXACT_F32, V_NONE, LAYER, 0, 0, NULL, NULL,
     "f32 GEMMs on exact FFMA instead of TF32 tensor cores"},
    {"arch", O_ARCH, V_TEXT, CLI_GEN | CLI_COMPILE | CLI_RUN | CLI_BENCH, 0, 0, NULL, "A",
     "target such as sm_80 or sm_90a where no GPU is used (default sm_90a)"},
    {"tokens", O_TOKENS, V_TOKENS, TIMED, 0, INT32_MAX, NULL, "N[,N...]",
     "tokens of the forward (run: one count, 4096; tune, bench: a list)"},
    {"verbose", O_VERBOSE, V_NONE, LAYER, 0, 0, NULL, NULL, "print the library's log"},
    {"kernel", O_KERNEL, V_CHOICE, CLI_GEN, 0, 0, kernels, "K",
     "the kernel to print: route, combine, gemm1 (default) or gemm2"},
    {"config", O_CONFIG, V_TEXT, CLI_GEN | CLI_COMPILE | CLI_BENCH, 0, 0, NULL, "NAME",
     "a GEMM tile configuration (a name `moejit tune` prints)"},
    {"repeat", O_REPEAT, V_INT, TIMED, 1, 100000, NULL, "N", "timed runs"},
    {"check", O_CHECK, V_INT, TIMED, 0, 1 << 20, NULL, "N",
     "sampled tokens checked against the CPU reference"},
    {"seed", O_SEED, V_INT, TIMED, 0, INT64_MAX, NULL, "S", "seed of the random layer (1)"},
    {"budget", O_BUDGET, V_INT, CLI_TUNE, 1, 1 << 30, NULL, "SECONDS", "bound on the timing phase"},
    {"warmup", O_WARMUP, V_INT, CLI_BENCH, 0, 10000, NULL, "N", "replays before timing (5)"},
    {"eager", O_EAGER, V_NONE, CLI_BENCH, 0, 0, NULL, NULL,
     "time moejit_forward calls instead of graph replays"},
    {"json", O_JSON, V_TEXT, CLI_BENCH, 0, 0, NULL, "FILE|-", "append JSON lines to FILE"},
    {"bw-bytes", O_BW_BYTES, V_SIZE, CLI_BENCH, 1 << 20, (int64_t)1 << 40, NULL, "SIZE",
     "buffer of the bandwidth kernel (4G)"},
    {"no-floor", O_NO_FLOOR, V_NONE, CLI_BENCH, 0, 0, NULL, NULL, "measure no floor"},
    {"cublas", O_CUBLAS, V_TEXT, CLI_BENCH, 0, 0, NULL, "PATH", "the cuBLAS library to load"},
    {"graph-tokens", O_GRAPH_TOKENS, V_SIZE, CLI_BENCH, 1, INT32_MAX, NULL, "N",
     "run each row inside a forward of N tokens"},
    {"data", O_DATA, V_CHOICE, CLI_BENCH, 0, 0, draws, "D",
     "how x, the weights and the biases are drawn: uniform (default) or\n"
     "normal (the same RMS; MXFP4 blocks and scales stay uniform)"},
    {"dir", O_DIR, V_TEXT, CLI_CACHE, 0, 0, NULL, "DIR", "the cache folder"},
};
#define NOPTS ((int)(sizeof opts / sizeof opts[0]))

static const char *command_name(unsigned command) {
  static const char *const names[] = {"gen", "compile", "run", "tune", "bench", "cache"};
  for (int i = 0; i < 6; i++)
    if (command == 1u << i)
      return names[i];
  return "?";
}

static void print_help(unsigned command, const char *usage) {
  printf("%s\nOptions:\n", usage);
  for (int i = 0; i < NOPTS; i++) {
    if (!(opts[i].commands & command))
      continue;
    char left[40];
    snprintf(left, sizeof left, "--%s%s%s", opts[i].name, opts[i].value ? " " : "",
             opts[i].value ? opts[i].value : "");
    printf("  %-22s ", left);
    for (const char *h = opts[i].help; *h;) {
      size_t n = strcspn(h, "\n");
      printf("%.*s\n", (int)n, h);
      h += n;
      if (*h == '\n' && *++h)
        printf("  %-22s ", "");
    }
  }
}

/* A decimal integer, the whole of v, in [lo, hi]; with size, an optional K, M or G suffix (then
 * B or iB) multiplies it by 2^10, 2^20 or 2^30. 0, or -1 when v is anything else. */
static int parse_integer(const char *v, int size, int64_t lo, int64_t hi, int64_t *out) {
  char *end;
  if (!isdigit((unsigned char)v[0]) && !(v[0] == '-' && isdigit((unsigned char)v[1])))
    return -1;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (errno)
    return -1;
  int shift = 0;
  if (size && *end) {
    const char *u = strchr("KMG", toupper((unsigned char)*end));
    if (u && (end[1] == '\0' || !strcmp(end + 1, "B") || !strcmp(end + 1, "iB"))) {
      shift = 10 * (int)(u - "KMG" + 1);
      end += strlen(end);
    }
  }
  if (*end || (shift && (x < 0 || x > (INT64_MAX >> shift))))
    return -1;
  x = (long long)((uint64_t)x << shift);
  if (x < lo || x > hi)
    return -1;
  *out = x;
  return 0;
}

/* Checks and stores one option's value. 0, or 2 after printing the error. */
static int take(const char *cmd, const opt_spec *o, const char *v, cli_layer *L) {
  moejit_layer_desc *d = &L->desc;
  int64_t x = 0;
  int choice = 0;
  double f = 0;
  switch (o->kind) {
  case V_NONE: break;
  case V_INT:
  case V_SIZE:
    if (parse_integer(v, o->kind == V_SIZE, o->lo, o->hi, &x) != 0) {
      fprintf(stderr, "moejit %s: --%s '%s': expected %s in [%lld, %lld]\n", cmd, o->name, v,
              o->kind == V_SIZE ? "a count (suffix K, M or G allowed)" : "an integer",
              (long long)o->lo, (long long)o->hi);
      return 2;
    }
    break;
  case V_NUMBER: {
    char *end;
    f = strtod(v, &end);
    if (end == v || *end || !isfinite(f)) {
      fprintf(stderr, "moejit %s: --%s '%s': expected a finite number\n", cmd, o->name, v);
      return 2;
    }
    break;
  }
  case V_CHOICE:
    while (o->choices[choice] && strcmp(o->choices[choice], v) != 0)
      choice++;
    if (!o->choices[choice]) {
      fprintf(stderr, "moejit %s: --%s '%s': expected one of", cmd, o->name, v);
      for (int i = 0; o->choices[i]; i++)
        fprintf(stderr, " %s", o->choices[i]);
      fprintf(stderr, "\n");
      return 2;
    }
    break;
  case V_TEXT:
    if (!*v) {
      fprintf(stderr, "moejit %s: --%s '': expected %s\n", cmd, o->name, o->value);
      return 2;
    }
    if (o->id == O_ARCH && !mj_rt_arch_valid(v)) {
      fprintf(stderr, "moejit %s: --arch '%s': expected a target such as sm_80 or sm_90a (8.0+)\n",
              cmd, v);
      return 2;
    }
    break;
  case V_TOKENS:
    L->ntokens = 0;
    L->tokens = 0;
    for (const char *p = v;; p++) {
      char item[64];
      size_t n = strcspn(p, ",");
      if (L->ntokens == 32) {
        fprintf(stderr, "moejit %s: --%s '%s': at most 32 counts\n", cmd, o->name, v);
        return 2;
      }
      if (n >= sizeof item ||
          (memcpy(item, p, n), item[n] = '\0', parse_integer(item, 0, o->lo, o->hi, &x) != 0)) {
        fprintf(stderr, "moejit %s: --%s '%s': '%.*s' is not a count in [%lld, %lld]\n", cmd,
                o->name, v, (int)n, p, (long long)o->lo, (long long)o->hi);
        return 2;
      }
      L->token_list[L->ntokens++] = x;
      L->tokens = x > L->tokens ? x : L->tokens;
      p += n;
      if (!*p)
        break;
    }
    L->tokens_given = 1;
    break;
  }
  switch (o->id) {
  case O_HELP: break;
  case O_MODEL: L->model = choice; break; /* cli_parse applies it after the other options */
  case O_HIDDEN: d->hidden = x; break;
  case O_INTERMEDIATE: d->intermediate = x; break;
  case O_EXPERTS: d->experts = x; break;
  case O_TOP_K: d->top_k = x; break;
  case O_DTYPE: d->dtype = (moejit_dtype)choice; break;
  case O_WEIGHTS: d->weight_format = (moejit_weight_format)choice; break;
  case O_IDS: d->ids_dtype = choice == 0 ? MOEJIT_I32 : MOEJIT_I64; break;
  case O_ROUTING: d->routing = choice == 0 ? MOEJIT_ROUTING_TOPK : MOEJIT_ROUTING_DENSE; break;
  case O_ACTIVATION: d->activation = (moejit_activation)choice; break;
  case O_GATE_UP_LAYOUT: d->gate_up_layout = (moejit_gate_up_layout)choice; break;
  case O_NO_BIAS: d->no_bias = 1; break;
  case O_ALPHA: d->alpha = (float)f; break;
  case O_LIMIT: d->limit = (float)f; break;
  case O_UNFUSED: d->unfused = 1; break;
  case O_BATCH_INVARIANT: d->batch_invariant = 1; break;
  case O_EXACT_F32: d->exact_f32 = 1; break;
  case O_ARCH: L->arch = v; break;
  case O_TOKENS: break;
  case O_VERBOSE: L->verbose = 1; break;
  case O_KERNEL: L->kernel = v; break;
  case O_CONFIG: L->config = v; break;
  case O_REPEAT: L->repeat = (int)x; break;
  case O_CHECK: L->check = (int)x; break;
  case O_SEED: L->seed = (uint64_t)x; break;
  case O_BUDGET: L->budget = (double)x; break;
  case O_WARMUP: L->bench.warmup = (int)x; break;
  case O_EAGER: L->bench.eager = 1; break;
  case O_JSON: L->bench.json = v; break;
  case O_BW_BYTES: L->bench.bw_bytes = x; break;
  case O_NO_FLOOR: L->bench.floor = 0; break;
  case O_CUBLAS: L->bench.cublas = v; break;
  case O_GRAPH_TOKENS: L->bench.graph_tokens = x; break;
  case O_DATA: L->bench.data = choice; break;
  case O_DIR: L->dir = v; break;
  }
  return 0;
}

/* The library's message about a layer descriptor field, in the flags the user typed. */
static void flag_words(const char *msg, char *out, size_t cap) {
  static const char *const fields[][2] = {
      {"desc->hidden=", "--hidden "},
      {"desc->intermediate=", "--intermediate "},
      {"desc->experts=", "--experts "},
      {"desc->top_k=", "--top-k "},
      {"desc->max_tokens=", "--tokens (the largest) "},
      {"desc->alpha=", "--alpha "},
      {"desc->dtype=", "--dtype "},
      {"desc->weight_format=", "--weights "},
      {"desc->limit=", "--limit "},
      {"desc->activation=", "--activation "},
      {"desc->gate_up_layout=", "--gate-up-layout "},
      {"desc->no_bias=", "--no-bias "},
      {"desc->batch_invariant=", "--batch-invariant "},
      {"desc->unfused=", "--unfused "},
      {"desc->exact_f32=", "--exact-f32 "},
      {"top_k=", "--top-k "},
  };
  size_t n = 0;
  while (*msg && n + 1 < cap) {
    size_t f = 0, nf = sizeof fields / sizeof fields[0];
    while (f < nf && strncmp(msg, fields[f][0], strlen(fields[f][0])) != 0)
      f++;
    if (f < nf) {
      n += (size_t)snprintf(out + n, cap - n, "%s", fields[f][1]);
      msg += strlen(fields[f][0]);
    } else {
      out[n++] = *msg++;
    }
    if (n >= cap)
      n = cap - 1;
  }
  out[n] = '\0';
}

/* The preset's fields whose options were not given. */
static void apply_model(const struct model *m, uint64_t given, moejit_layer_desc *d) {
#define UNLESS_GIVEN(id, field, value)                                                             \
  if (!(given & ((uint64_t)1 << (id))))                                                            \
  d->field = (value)
  UNLESS_GIVEN(O_HIDDEN, hidden, m->hidden);
  UNLESS_GIVEN(O_INTERMEDIATE, intermediate, m->intermediate);
  UNLESS_GIVEN(O_EXPERTS, experts, m->experts);
  UNLESS_GIVEN(O_TOP_K, top_k, m->top_k);
  UNLESS_GIVEN(O_DTYPE, dtype, m->dtype);
  UNLESS_GIVEN(O_ACTIVATION, activation, m->activation);
  UNLESS_GIVEN(O_GATE_UP_LAYOUT, gate_up_layout, m->layout);
  UNLESS_GIVEN(O_NO_BIAS, no_bias, m->no_bias);
#undef UNLESS_GIVEN
}

const char *cli_activation_name(const moejit_layer_desc *desc) {
  int a = (int)desc->activation;
  return a >= 0 && a < (int)(sizeof activations / sizeof activations[0]) - 1 ? activations[a] : "?";
}

const char *cli_layout_name(const moejit_layer_desc *desc) {
  int l = (int)desc->gate_up_layout;
  return l >= 0 && l < (int)(sizeof layouts / sizeof layouts[0]) - 1 ? layouts[l] : "?";
}

int cli_parse(int argc, char **argv, unsigned command, const char *usage, cli_layer *L,
              const char **words, int max_words, int *nwords) {
  const char *cmd = command_name(command);
  moejit_layer_desc *d = &L->desc;
  uint64_t given = 0; /* the options given, by opt_id: they win over --model */
  memset(L, 0, sizeof *L);
  moejit_layer_desc_init(d);
  L->tokens = 4096;
  L->token_list[0] = 4096;
  L->ntokens = 1;
  L->repeat = 0; /* 0: the command's own default */
  L->check = -1;
  L->seed = 1;
  L->bench.warmup = 5;
  L->bench.floor = 1;
  L->bench.bw_bytes = (int64_t)4 << 30;
  *nwords = 0;

  struct option table[NOPTS + 1];
  int ntable = 0;
  for (int i = 0; i < NOPTS; i++)
    if (opts[i].commands & command)
      table[ntable++] = (struct option){
          opts[i].name, opts[i].kind == V_NONE ? no_argument : required_argument, NULL, 1000 + i};
  table[ntable] = (struct option){NULL, 0, NULL, 0};
  /* getopt_long wants the program's name first */
  char **args = calloc((size_t)argc + 2, sizeof *args);
  if (!args)
    return 2;
  args[0] = (char *)cmd;
  memcpy(args + 1, argv, (size_t)argc * sizeof *args);
  optind = 0; /* glibc: start over */
  opterr = 0;
  int rc = 0, c;
  while (rc == 0 && (c = getopt_long(argc + 1, args, ":h", table, NULL)) != -1) {
    const char *typed = args[optind - 1];
    if (c == 'h')
      c = 1000 + O_HELP;
    if (c == ':') {
      fprintf(stderr, "moejit %s: %s needs a value\n", cmd, typed);
      rc = 2;
    } else if (c == '?' && optopt >= 1000 && optopt < 1000 + NOPTS) {
      fprintf(stderr, "moejit %s: --%s takes no value\n", cmd, opts[optopt - 1000].name);
      rc = 2;
    } else if (c == '?') {
      char name[64];
      snprintf(name, sizeof name, "%.*s", (int)strcspn(typed + 2, "="), typed + 2);
      const opt_spec *other = NULL;
      for (int i = 0; i < NOPTS && !other && typed[0] == '-' && typed[1] == '-'; i++)
        if (!strcmp(opts[i].name, name))
          other = &opts[i];
      if (other)
        fprintf(stderr, "moejit %s: --%s is not an option of %s (see moejit %s --help)\n", cmd,
                name, cmd, cmd);
      else if (optopt > ' ' && optopt < 127)
        fprintf(stderr, "moejit %s: unknown option '-%c' (see moejit %s --help)\n", cmd, optopt,
                cmd);
      else
        fprintf(stderr, "moejit %s: unknown or ambiguous option '%s' (see moejit %s --help)\n", cmd,
                typed, cmd);
      rc = 2;
    } else if (c - 1000 == O_HELP) {
      print_help(command, usage);
      rc = 1;
    } else {
      rc = take(cmd, &opts[c - 1000], optarg, L);
      given |= (uint64_t)1 << opts[c - 1000].id;
    }
  }
  for (int i = optind; rc == 0 && i < argc + 1; i++) {
    if (*nwords == max_words) {
      fprintf(stderr, "moejit %s: unexpected argument '%s' (see moejit %s --help)\n", cmd, args[i],
              cmd);
      rc = 2;
    } else {
      words[(*nwords)++] = args[i]; /* getopt_long moved the words after the options */
    }
  }
  free(args);
  if (rc)
    return rc;
  apply_model(&model_table[L->model], given, d);
  if (L->tokens >= d->max_tokens) /* a plan takes at least one token */
    d->max_tokens = L->tokens > 0 ? L->tokens : 1;
  if (command & CLI_LAYER_COMMANDS) { /* the layer as the library will judge it, in flags */
    mj_err err;
    if (mj_rt_check_desc(d, &err) != MOEJIT_OK) {
      char text[sizeof err.msg];
      flag_words(err.msg, text, sizeof text);
      fprintf(stderr, "moejit %s: %s\n", cmd, text);
      return 2;
    }
  }
  return 0;
}
