/* cmd_gen.c: `moejit gen` (print one kernel's generated source) and `moejit compile` (compile a
 * layer's kernels offline and report their resources). Neither needs a GPU. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "tools/tools.h"

static const char gen_usage[] =
    "usage: moejit gen [--kernel route|combine|gemm1|gemm2] [--config NAME] [layer options]\n"
    "\n"
    "Prints the CUDA source the templates generate for one kernel of the layer (default gemm1 of\n"
    "the first tile configuration). --config NAME renders that configuration's GEMMs: one\n"
    "`moejit compile` lists, or any name `moejit tune` prints for the layer's math.\n"
    "Where the activation runs as its own launch (--unfused, --gate-up-layout halves or\n"
    "up-gate-halves, an activation without mul), GEMM1 writes its raw output and the combine\n"
    "module holds the activation kernel too.\n";

static const char compile_usage[] =
    "usage: moejit compile [--arch sm_80|sm_90a|...] [--config NAME] [layer options]\n"
    "\n"
    "Renders and compiles every kernel of the layer with NVRTC for the arch (default sm_90a) and\n"
    "prints, per module: cubin bytes, registers, spill stores/loads, static shared memory and the\n"
    "dynamic shared memory the plan gives it, and the compile time. No GPU is needed.\n"
    "--config NAME compiles the GEMMs of that one configuration (any name `moejit tune` prints\n"
    "for the layer's math) instead of the heuristic table's.\n"
    "Fills the cubin cache ($MOEJIT_CACHE_DIR, else $XDG_CACHE_HOME/moejit, else ~/.cache/moejit)\n"
    "with the cubins a plan of this layer and arch loads: `moejit cache export` ships them.\n";

static moejit_status offline_ctx(const cli_layer *L, moejit_ctx **ctx) {
  moejit_ctx_options o;
  moejit_ctx_options_init(&o);
  o.offline_arch = L->arch ? L->arch : "sm_90a";
  o.log = cli_log;
  o.log_user = (void *)&L->verbose;
  return moejit_create(ctx, &o);
}

/* The configurations to build into cfg (room for MJ_MAX_GEMM_CONFIGS): the one --config names;
 * else the heuristic's, which a plan of this layer compiles on arch (runtime/plan.c: no wgmma
 * where the activation runs as its own launch; a batch-invariant layer's family only). Returns
 * their count, or -1 after printing why when --config is not a configuration name or names one
 * the layer cannot take (cli_config). */
static int layer_configs(const cli_layer *L, const char *arch, mj_gemm_config *cfg,
                         const char *cmd) {
  const moejit_layer_desc *d = &L->desc;
  if (L->config) {
    mj_err err;
    if (cli_config(L->config, d, arch, cfg, &err) != MOEJIT_OK) {
      fprintf(stderr, "moejit %s: %s\n", cmd, err.msg);
      return -1;
    }
    return 1;
  }
  const char *wg_arch = mj_rt_split_activation(d) ? "" : arch;
  int n = mj_tune_heuristic(mj_rt_math(d), wg_arch, cfg, MJ_MAX_GEMM_CONFIGS), kept = 0;
  if (!d->batch_invariant)
    return n;
  int wgmma_plan = mj_rt_math(d) == MJ_MATH_MMA && mj_tune_arch_wgmma(wg_arch);
  for (int i = 0; i < n; i++)
    if (mj_tune_invariant(&cfg[i], wgmma_plan))
      cfg[kept++] = cfg[i];
  return kept;
}

/* Parses the options, opens an offline context and renders (flags < 0) or builds the layer's
 * modules. Returns 0, or the exit status after printing why. */
static int prepare(int argc, char **argv, const char *usage, unsigned command, const char *cmd,
                   int flags, cli_layer *L, moejit_ctx **ctx, moejit_device_info *info,
                   mj_gemm_config *cfg, int *ncfg, mj_module_src **mods, int *n) {
  int nwords;
  int rc = cli_parse(argc, argv, command, usage, L, NULL, 0, &nwords);
  if (rc)
    return rc == 1 ? -1 : rc;
  mj_err err;
  moejit_status st = offline_ctx(L, ctx);
  if (st != MOEJIT_OK)
    return 1;
  moejit_device_info_init(info);
  moejit_device_info_get(*ctx, info);
  if ((*ncfg = layer_configs(L, info->arch, cfg, cmd)) < 0) {
    moejit_destroy(*ctx);
    return 2;
  }
  st = flags < 0 /* cli_parse has checked the layer */
           ? mj_rt_render_modules(*ctx, &L->desc, cfg, *ncfg, mods, n, &err)
           : mj_rt_build_modules(*ctx, &L->desc, cfg, *ncfg, info->arch, flags, mods, n, &err);
  if (st != MOEJIT_OK) {
    fprintf(stderr, "moejit %s: %s: %s\n", cmd, moejit_status_name(st), err.msg);
    moejit_destroy(*ctx);
    return st == MOEJIT_ERR_INVALID_ARG ? 2 : 1;
  }
  return 0;
}

int cmd_gen(int argc, char **argv) {
  cli_layer L;
  moejit_ctx *ctx = NULL;
  mj_module_src *mods = NULL;
  moejit_device_info info;
  mj_gemm_config cfg[MJ_MAX_GEMM_CONFIGS];
  int n = 0, ncfg = 0;
  int rc =
      prepare(argc, argv, gen_usage, CLI_GEN, "gen", -1, &L, &ctx, &info, cfg, &ncfg, &mods, &n);
  if (rc)
    return rc < 0 ? 0 : rc;
  const char *kernel = L.kernel ? L.kernel : "gemm1";
  const mj_module_src *pick = NULL;
  for (int i = 0; i < n && !pick; i++) {
    const char *name = mods[i].name;
    size_t kl = strlen(kernel);
    if (strncmp(name, kernel, kl) == 0 && (name[kl] == '\0' || name[kl] == '_') &&
        (!L.config || name[kl] == '\0' || strcmp(name + kl + 1, L.config) == 0))
      pick = &mods[i];
  }
  if (!pick) {
    fprintf(stderr, "moejit gen: no kernel '%s'%s%s; this layer has:", kernel,
            L.config ? " with config " : "", L.config ? L.config : "");
    for (int i = 0; i < n; i++)
      fprintf(stderr, " %s", mods[i].name);
    fprintf(stderr, "\n");
    rc = 2;
  } else {
    fputs(pick->source, stdout);
  }
  mj_rt_modules_free(mods, n);
  moejit_destroy(ctx);
  return rc;
}

/* Prints a row per kernel from the ptxas report in an NVRTC log: entry, registers, spills, static
 * shared memory, and the dynamic shared memory its launch contract gives it. The report gives, per
 * entry: "Compiling entry function 'X'", then "N bytes stack frame, N bytes spill stores, N bytes
 * spill loads", then "Used N registers, ...". */
static void print_kernels(const mj_module_src *m) {
  const char *module = m->name, *log = m->cubin.log;
  size_t cubin = m->cubin.size;
  char entry[96] = "?";
  int stack = 0, sst = 0, sld = 0;
  for (const char *p = log; p && *p;) {
    const char *eol = strchr(p, '\n');
    size_t len = eol ? (size_t)(eol - p) : strlen(p);
    char line[512];
    snprintf(line, sizeof line, "%.*s", (int)(len < sizeof line ? len : sizeof line - 1), p);
    const char *q;
    if ((q = strstr(line, "Compiling entry function '")) != NULL) {
      sscanf(q + strlen("Compiling entry function '"), "%95[^']", entry);
    } else if ((q = strstr(line, "bytes stack frame")) != NULL) {
      const char *b = q;
      while (b > line && b[-1] == ' ')
        b--;
      while (b > line && b[-1] >= '0' && b[-1] <= '9')
        b--;
      sscanf(b, "%d bytes stack frame, %d bytes spill stores, %d bytes spill loads", &stack, &sst,
             &sld);
    } else if ((q = strstr(line, "Used ")) != NULL) {
      int regs = 0, smem = 0;
      sscanf(q, "Used %d registers", &regs);
      const char *sm = strstr(q, "bytes smem");
      if (sm) {
        const char *b = sm;
        while (b > q && b[-1] == ' ')
          b--;
        while (b > q && b[-1] >= '0' && b[-1] <= '9')
          b--;
        sscanf(b, "%d", &smem);
      }
      const mj_kernel_meta *k = mj_gen_kernel(&m->meta, entry);
      printf("%-30s %-22s %9zu %5d %6d %5d/%-5d %7d %9d\n", module, entry, cubin, regs, stack, sst,
             sld, smem, k ? k->smem : 0);
    }
    p = eol ? eol + 1 : NULL;
  }
}

int cmd_compile(int argc, char **argv) {
  cli_layer L;
  moejit_ctx *ctx = NULL;
  mj_module_src *mods = NULL;
  moejit_device_info info;
  mj_gemm_config cfg[MJ_MAX_GEMM_CONFIGS];
  int n = 0, ncfg = 0, nv_major, nv_minor;
  double t0 = cli_now();
  int rc = prepare(argc, argv, compile_usage, CLI_COMPILE, "compile", MJ_COMPILE_PTXAS_VERBOSE, &L,
                   &ctx, &info, cfg, &ncfg, &mods, &n);
  if (rc)
    return rc < 0 ? 0 : rc;
  double secs = cli_now() - t0;
  mj_rt_nvrtc_version(ctx, &nv_major, &nv_minor);
  char words[160];
  printf("layer H=%lld I=%lld E=%lld K=%lld %s, arch %s, NVRTC %d.%d\n", (long long)L.desc.hidden,
         (long long)L.desc.intermediate, (long long)L.desc.experts, (long long)L.desc.top_k,
         cli_layer_words(&L.desc, words, sizeof words), info.arch, nv_major, nv_minor);
  printf("%-30s %-22s %9s %5s %6s %11s %7s %9s\n", "module", "kernel", "cubin B", "regs", "stack",
         "spill st/ld", "smem", "dyn smem");
  for (int i = 0; i < n; i++) {
    print_kernels(&mods[i]);
    if (L.verbose)
      printf("%s\n", mods[i].cubin.log);
  }
  const char *dir = mj_rt_cache_dir(ctx);
  printf("%d modules compiled in %.2f s; %s%s\n", n, secs,
         dir ? "a plan's cubins are in the cache folder " : "no cache folder: nothing cached",
         dir ? dir : "");
  mj_rt_modules_free(mods, n);
  moejit_destroy(ctx);
  return 0;
}
