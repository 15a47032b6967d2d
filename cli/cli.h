/* cli.h: what the moejit command's subcommands share: layer options and their parsing. */
#ifndef MJ_CLI_H
#define MJ_CLI_H
#include <stdint.h>

#include "moejit.h"

typedef struct cli_layer {
  moejit_layer_desc desc;
  const char *arch;       /* --arch, or NULL */
  int64_t tokens;         /* --tokens: the largest of the list */
  int64_t token_list[32]; /* --tokens 1,8,64 */
  int ntokens;
  double budget;   /* --budget seconds (tune) */
  const char *dir; /* --dir (cache) */
  int repeat, check, verbose;
  uint64_t seed;
  const char *kernel, *config;
} cli_layer;

/* The options every subcommand accepts, for --help. */
extern const char *const cli_layer_help;

/* Parses argv (after the subcommand). Returns 0, 1 when --help was printed, or 2 after printing an
 * error naming the option. */
int cli_parse(int argc, char **argv, cli_layer *L, const char *usage);
/* The token counts of a command that takes a list: --tokens as cli_parse read it, each at least 1,
 * or `defaults` (n counts, the last the largest) when argv has no --tokens. Returns 0, or 2 after
 * printing an error that names the command and the option. */
int cli_token_list(int argc, char **argv, cli_layer *L, const int64_t *defaults, int n,
                   const char *command);
struct mj_gemm_config;
struct mj_err;
/* The configuration --config NAME names, for this layer: MOEJIT_OK, or MOEJIT_ERR_INVALID_ARG with
 * err saying that NAME is not a configuration name or names one of another math than the layer's.
 */
moejit_status cli_config(const char *name, const moejit_layer_desc *desc, struct mj_gemm_config *c,
                         struct mj_err *err);
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
