/* runtime.h: the runtime's internal interface for the layers above it (tools/, and through
 * tools/tools.h the CLI): plans over given configurations, forced forwards, the modules of a layer
 * rendered and compiled without a GPU, one-module loads for the tools' kernels, the context's
 * driver. Contexts and plans stay opaque here; runtime/internal.h holds their structs.
 * Uses gen/ (contracts, cubins), tune/ (configurations, records), runtime/driver. */
#ifndef MJ_RUNTIME_RUNTIME_H
#define MJ_RUNTIME_RUNTIME_H
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "gen/gen.h"
#include "gen/nvrtc.h"
#include "moejit.h"
#include "runtime/driver.h"
#include "tune/heuristic.h"
#include "tune/records.h"

#define MJ_MAX_GEMM_CONFIGS 128
#define MJ_SPLIT_SLOTS                                                                             \
  8192 /* a configuration that splits GEMM2 along K takes at most this many                        \
          slots: the workspace holds the extra partial sums for that many */

/* Makes ctx's CUDA context current for the calls up to mj_rt_leave, if it is not already;
 * *pushed says whether mj_rt_leave must pop it. MOEJIT_ERR_CUDA. */
moejit_status mj_rt_enter(moejit_ctx *ctx, int *pushed, mj_err *err);
void mj_rt_leave(moejit_ctx *ctx, int pushed);

/* One kernel of a plan: its launch contract, its function, its parameters as offsets into
 * mj_values. */
typedef struct mj_kernel {
  mj_kernel_meta meta;
  CUfunction fn; /* NULL when offline, or when the plan has no such kernel */
  uint16_t arg[MJ_KERNEL_PARAMS];
} mj_kernel;

/* One launch of k with blocks (gx, gy, gz) of its contract's threads and shared memory, and the
 * given parameter pointers (the tools' kernels; the forward's bind theirs, see internal.h). */
moejit_status mj_rt_launch_args(const moejit_ctx *ctx, const mj_kernel *k, unsigned gx, unsigned gy,
                                unsigned gz, void **args, CUstream stream, int pdl, mj_err *err);

/* A rendered (and maybe compiled) module: what `moejit gen` prints and `moejit compile` reports. */
typedef struct mj_module_src {
  const char *template_name;
  mj_spec spec;
  char name[64]; /* "gemm1_mma_m64n128k32s4w2x2" */
  char *source;
  mj_module_meta meta;
  mj_cubin cubin;
} mj_module_src;

/* Renders every module of a layer (route, combine, then gemm1/gemm2 per configuration, then the
 * split combine when a configuration splits GEMM2) without compiling. On success *mods (count *n)
 * is owned by the caller, freed with mj_rt_modules_free. */
moejit_status mj_rt_render_modules(moejit_ctx *ctx, const moejit_layer_desc *desc,
                                   const mj_gemm_config *configs, int nconfigs,
                                   mj_module_src **mods, int *n, mj_err *err);
/* Renders and compiles every module of a layer for arch (no loading): the plan's first half, also
 * used by `moejit compile`. flags: MJ_COMPILE_*. On success *mods (count *n) is owned by the
 * caller, freed with mj_rt_modules_free. */
moejit_status mj_rt_build_modules(moejit_ctx *ctx, const moejit_layer_desc *desc,
                                  const mj_gemm_config *configs, int nconfigs, const char *arch,
                                  int flags, mj_module_src **mods, int *n, mj_err *err);
void mj_rt_modules_free(mj_module_src *mods, int n);
/* Renders and compiles (through the cache) one module for the context's arch, loads it unless
 * the context is offline (*mod stays NULL then), and fills k[i] for entries[i] (NULL-terminated)
 * from the module's contract: the tools' fill and bandwidth kernels. */
moejit_status mj_rt_module_open(moejit_ctx *ctx, const char *template_name, const mj_spec *spec,
                                const char *const *entries, mj_kernel *const *k, CUmodule *mod,
                                mj_err *err);
/* Whether both GEMMs of configuration c, rendered for the layer, fit the context's device: their
 * contracts' shared memory within a block's and, with blocks_per_sm, within an SM's for that many
 * blocks (a configuration whose template refuses the layer does not). */
int mj_rt_config_fits(moejit_ctx *ctx, const moejit_layer_desc *desc, const mj_gemm_config *c);

/* The context's driver table (loaded unless the context is offline), NVRTC version (0.0 before
 * the first compile) and tuning records file ("" without a cache folder). */
const mj_cu *mj_rt_driver(const moejit_ctx *ctx);
void mj_rt_nvrtc_version(const moejit_ctx *ctx, int *major, int *minor);
/* 1 when arch names a target the library compiles for: "sm_80" .. , "sm_90a" (8.0 and up). */
int mj_rt_arch_valid(const char *arch);
/* The context's cubin cache folder; NULL when it has none. */
const char *mj_rt_cache_dir(const moejit_ctx *ctx);
const char *mj_rt_records_path(const moejit_ctx *ctx);
/* The context's log callback and its user pointer (both NULL without one). */
void mj_rt_logger(const moejit_ctx *ctx, moejit_log_fn *log, void **user);

/* Whether a layer's activation runs as a launch of its own between the GEMMs (GEMM1 then writes
 * its raw output, workspace gate_up): unfused plans, gate and up in halves, activations without
 * mul. */
int mj_rt_split_activation(const moejit_layer_desc *desc);
/* GEMM1's outputs: 2I for a gated activation, I without mul. */
int64_t mj_rt_gate_up_cols(const moejit_layer_desc *desc);
/* The activation's name in the templates (prelude.lua's table): "swiglu", "silu_mul", ... */
const char *mj_rt_activation_name(moejit_activation act);

/* Validates a layer descriptor: MOEJIT_ERR_INVALID_ARG / MOEJIT_ERR_UNSUPPORTED naming the field.
 */
moejit_status mj_rt_check_desc(const moejit_layer_desc *desc, mj_err *err);
/* A plan over an explicit list of GEMM configurations (the tuner's candidates), picking
 * configuration 0 for every bucket until told otherwise; no records are read. at (may be NULL):
 * at[i] gets configs[i]'s index into plan->configs (a GEMM2 split the layer's intermediate size
 * cannot take is split fewer ways there and renamed, and may coincide with another). */
moejit_status mj_rt_plan_create_with(moejit_ctx *ctx, const moejit_layer_desc *desc,
                                     const mj_gemm_config *configs, int nconfigs,
                                     moejit_plan **plan, int *at);
/* moejit_forward with the GEMM configuration forced (index into plan->configs). */
moejit_status mj_rt_forward_with(moejit_plan *plan, const moejit_forward_args *args,
                                 void *workspace, size_t workspace_bytes, CUstream stream,
                                 int config);
/* The configuration (index into plan->configs) a forward of `tokens` runs: a tuned exact count,
 * else the token bucket's; *tuned (when not NULL) says whether a record chose it. */
int mj_rt_pick(const moejit_plan *plan, int64_t tokens, int *tuned);
/* The bucket of a token count: ceil(log2(tokens)), clamped to [0, MJ_BUCKETS). */
int mj_rt_bucket(int64_t tokens);
/* The record a plan of this context would look for (kernel "gemm", bucket given). */
void mj_rt_record_key(const moejit_ctx *ctx, const moejit_layer_desc *desc, int64_t bucket,
                      mj_record *r);
/* The GEMM math path of a layer (dtype, exact_f32). */
mj_math mj_rt_math(const moejit_layer_desc *desc);

/* The plan's configuration i (0 <= i < mj_rt_plan_configs(plan)), and its count of loaded
 * modules. */
const mj_gemm_config *mj_rt_plan_config(const moejit_plan *plan, int i);
int mj_rt_plan_configs(const moejit_plan *plan);
int mj_rt_plan_modules(const moejit_plan *plan);
/* The plan's layer descriptor (the current version of the struct). */
const moejit_layer_desc *mj_rt_plan_desc(const moejit_plan *plan);
/* The GEMM1 and GEMM2 kernels of the plan's configuration i. */
const mj_kernel *mj_rt_plan_gemm(const moejit_plan *plan, int i, moejit_stage stage);

#endif
