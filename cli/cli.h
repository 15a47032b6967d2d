/* cli.h: what the moejit command's subcommands share: layer options and their parsing. */
#ifndef MJ_CLI_H
#define MJ_CLI_H
#include <stddef.h>
#include <stdint.h>

#include "moejit.h"

/* The commands, as bits: each option names the commands that take it. */
enum {
  CLI_GEN = 1 << 0,
  CLI_COMPILE = 1 << 1,
  CLI_RUN = 1 << 2,
  CLI_TUNE = 1 << 3,
  CLI_BENCH = 1 << 4,
  CLI_CACHE = 1 << 5,
};
#define CLI_LAYER_COMMANDS (CLI_GEN | CLI_COMPILE | CLI_RUN | CLI_TUNE | CLI_BENCH)

/* `moejit bench`'s own options. */
typedef struct cli_bench_opts {
  int warmup;           /* --warmup: replays before timing */
  int eager;            /* --eager */
  int floor;            /* measure BW and GEMM_RATE (0: --no-floor) */
  int64_t bw_bytes;     /* --bw-bytes */
  const char *json;     /* --json: NULL, "-" or a path */
  const char *cublas;   /* --cublas: NULL, the default search */
  int64_t graph_tokens; /* --graph-tokens: > 0, every row is a forward of this many tokens */
  int data;             /* --data: an mj_synth_data, how the layer's values are drawn */
} cli_bench_opts;

/* Every option's value after cli_parse: the command's defaults where it was not given. */
typedef struct cli_layer {
  moejit_layer_desc desc;
  int model;              /* --model: its index in args.c's table (0, gpt-oss-20b, by default) */
  const char *arch;       /* --arch, or NULL */
  int64_t tokens;         /* --tokens: the largest of the list */
  int64_t token_list[32]; /* --tokens 1,8,64 */
  int ntokens;
  int tokens_given;
  double budget;   /* --budget seconds (tune) */
  const char *dir; /* --dir (cache) */
  int repeat, check, verbose;
  uint64_t seed;
  const char *kernel, *config;
  cli_bench_opts bench;
} cli_layer;

/* Parses argv (after the command's name) with getopt_long against the options of the one command
 * (a CLI_* bit) from the table in args.c: --opt VALUE and --opt=VALUE, every value checked, an
 * option the command does not take refused; the --model preset (gpt-oss-20b when none is given)
 * fills the layer fields whose options were not given. The other words go to words[] (at most
 * max_words).
 * For the layer commands the layer is then checked as the library would, the message in flags.
 * Returns 0, 1 when --help was printed (usage, then the command's options), or 2 after printing
 * an error naming the flag. */
int cli_parse(int argc, char **argv, unsigned command, const char *usage, cli_layer *L,
              const char **words, int max_words, int *nwords);
/* The token counts of a command that takes a list: --tokens as cli_parse read it, or `defaults`
 * (n counts, the last the largest) when it was not given. Returns 0, or 2 after printing an error
 * naming the command when a count is below 1 (run alone takes 0 tokens). */
int cli_token_list(cli_layer *L, const int64_t *defaults, int n, const char *command);
struct mj_gemm_config;
struct mj_err;
/* The configuration --config NAME names, for this layer: MOEJIT_OK, or MOEJIT_ERR_INVALID_ARG with
 * err saying that NAME is not a configuration name, names one of another math than the layer's, a
 * wgmma one for a layer whose activation runs as its own launch (mj_rt_split_activation) or, with
 * arch (NULL: not checked), one outside a batch-invariant layer's family on that arch. */
moejit_status cli_config(const char *name, const moejit_layer_desc *desc, const char *arch,
                         struct mj_gemm_config *c, struct mj_err *err);
/* "dense" or "mxfp4": the layer's weight format as --weights names it. */
const char *cli_weights_name(const moejit_layer_desc *desc);
/* The layer's activation and gate/up layout as --activation and --gate-up-layout name them. */
const char *cli_activation_name(const moejit_layer_desc *desc);
const char *cli_layout_name(const moejit_layer_desc *desc);
/* "bf16, dense weights, swiglu": the layer's dtype, weights and activation, then ", halves" or
 * ", up-gate-halves" for a gated activation whose gate and up are not interleaved, ", no bias",
 * ", unfused" and ", batch-invariant" where they hold. Returns buf. */
const char *cli_layer_words(const moejit_layer_desc *desc, char *buf, size_t cap);
/* Log callback printing to stderr (warnings always, info with --verbose). */
void cli_log(void *user, moejit_log_level level, const char *msg);
double cli_now(void);

int cmd_gen(int argc, char **argv);
int cmd_compile(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_tune(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_cache(int argc, char **argv);

#endif
