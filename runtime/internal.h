/* internal.h: the context and plan structs shared by the runtime files (and read by tests and the CLI).
 * Uses gen/ for rendering and compiling, tune/ for the configuration tables. */
#ifndef MJ_RUNTIME_INTERNAL_H
#define MJ_RUNTIME_INTERNAL_H
#include <pthread.h>
#include <stddef.h>

#include "gen/gen.h"
#include "gen/nvrtc.h"
#include "moejit.h"
#include "runtime/driver.h"
#include "tune/cache.h"
#include "tune/heuristic.h"
#include "tune/records.h"

#define MJ_MAX_GEMM_CONFIGS 128
#define MJ_BUCKETS 21       /* token buckets 1, 2, 4, ..., 2^20 (and above) */
#define MJ_MAX_EXACT 16     /* tuned exact token counts a plan honours */
#define MJ_ROUTE_CHUNK 256
#define MJ_SPLIT_SLOTS 8192 /* a configuration that splits GEMM2 along K takes at most this many
                               slots: the workspace holds the extra partial sums for that many */
#define MJ_SMALL_SLOTS 2048 /* route.cuh's kSmallSlots: moejit_route_small's most slots */
/* The first moejit_layer_desc layout ended before logits_dtype; later fields are appended and take
 * their defaults when a caller's struct_size stops short of them. */
#define MJ_DESC_MIN_SIZE offsetof(moejit_layer_desc, logits_dtype) /* slots per routing block (route.cuh's kChunk) */

struct moejit_ctx {
  moejit_log_fn log;
  void *log_user;
  char *template_dir;   /* NULL: embedded */
  int offline;          /* compile for `arch`, load nothing */
  char arch[16];        /* "sm_90a", "sm_80" */
  mj_cu cu;             /* loaded unless offline */
  CUdevice dev;
  CUcontext cuctx;      /* the device's primary context, retained */
  int cc_major, cc_minor, sm_count, smem_optin;
  char device_name[128];
  mj_gen *gen;
  mj_nvrtc nv;          /* loaded on first plan */
  int64_t compiles;     /* NVRTC compiles so far (tests prove forwards add none) */
  mj_cache *cache;      /* cubins: memory, and disk when a folder is usable */
  char records_path[4096]; /* "" when there is no cache folder */
  pthread_mutex_t err_lock;
  mj_err err;           /* the last failure, for moejit_last_error */
};

/* One compiled kernel of a plan. */
typedef struct mj_kernel {
  const char *entry;    /* extern "C" name */
  CUmodule module;      /* NULL when offline (and for all but a module's first kernel) */
  CUfunction fn;
  int threads;
  int smem;             /* dynamic shared memory, bytes */
} mj_kernel;

/* A rendered and compiled module, before loading: what `moejit compile` reports on. */
typedef struct mj_module_src {
  const char *template_name;
  mj_spec spec;
  char name[64];        /* "gemm1_mma_m64n128k32s4" */
  char *source;
  mj_cubin cubin;
} mj_module_src;

struct moejit_plan {
  moejit_ctx *ctx;
  moejit_layer_desc desc;
  mj_kernel topk, count, scan, scatter, combine; /* topk: logits routing only */
  mj_kernel small; /* routing in one block for at most small_slots slots (the logits form's
                      own kernel under logits routing) */
  int small_slots;  /* MJ_SMALL_SLOTS; 0 sends every forward through count, scan and scatter */
  int splits;       /* the split count (> 1) of the configurations that split GEMM2 along K, or 1;
                       one per plan, as combine_split sums exactly that many partials */
  mj_kernel combine_split; /* combine over `splits` partial sums (splits > 1 only) */
  mj_kernel activation;                          /* unfused plans only */
  mj_kernel gather;     /* wgmma plans: the permuted copy of x GEMM1 reads (fn NULL otherwise) */
  int wgmma;            /* 1: the plan may take wgmma configurations (sm_90a, 16-bit, fused) */
  int pdl;              /* 1: whole forwards launch with programmatic dependent launch (sm_90+,
                           unless MOEJIT_PDL=0 in the environment) */
  mj_math math;
  int ngemm;
  mj_gemm_config configs[MJ_MAX_GEMM_CONFIGS];
  mj_kernel gemm1[MJ_MAX_GEMM_CONFIGS], gemm2[MJ_MAX_GEMM_CONFIGS];
  int min_bm;
  int pick[MJ_BUCKETS];              /* configuration per token bucket */
  int tuned[MJ_BUCKETS];             /* 1 where a tuning record chose it */
  int nexact;                        /* tuned exact token counts, checked before the buckets */
  int64_t exact_tokens[MJ_MAX_EXACT];
  int exact_pick[MJ_MAX_EXACT];
  CUmodule modules[3 + 2 * MJ_MAX_GEMM_CONFIGS];
  int nmodules;
};

/* Workspace layout for `tokens` tokens; every offset is 256-byte aligned. flags sit at offset 0. */
typedef struct mj_layout {
  size_t flags, num_tiles, expert_off, ready, chunk_counts, chunk_base, tiles, sorted_slot,
      slot_pos, slot_weight, route_ids, route_w, gate_up, x_sorted, h, y_slot, total;
  int64_t nslots, nchunks, max_tiles;
} mj_layout;

void mj_rt_layout(const moejit_plan *plan, int64_t tokens, mj_layout *layout);

/* Forwards of more tokens than this run as consecutive chunks of it, so the workspace (the
 * per-slot rows of h, x_sorted and y_slot) stays bounded: 65536 tokens of a GPT-OSS layer in bf16
 * need 6 GiB. */
#define MJ_CHUNK_TOKENS 65536

/* Copies err into the context's last error (under its lock) and logs it at DEBUG. Returns s. */
moejit_status mj_rt_fail(moejit_ctx *ctx, moejit_status s, const mj_err *err);
#define mj_rt_log(ctx, level, ...) mj_logf((ctx)->log, (ctx)->log_user, (level), __VA_ARGS__)

/* Validates a layer descriptor: MOEJIT_ERR_INVALID_ARG / MOEJIT_ERR_UNSUPPORTED naming the field. */
moejit_status mj_rt_check_desc(const moejit_layer_desc *desc, mj_err *err);

/* Renders every module of a layer (route, combine, then gemm1/gemm2 per configuration) without
 * compiling. On success *mods (count *n) is owned by the caller, freed with mj_rt_modules_free. */
moejit_status mj_rt_render_modules(moejit_ctx *ctx, const moejit_layer_desc *desc,
                                   const mj_gemm_config *configs, int nconfigs, mj_module_src **mods,
                                   int *n, mj_err *err);
/* Renders and compiles every module of a layer for arch (no loading): the plan's first half, also
 * used by `moejit compile`. flags: MJ_COMPILE_*. On success *mods (count *n) is owned by the caller,
 * freed with mj_rt_modules_free. */
moejit_status mj_rt_build_modules(moejit_ctx *ctx, const moejit_layer_desc *desc,
                                  const mj_gemm_config *configs, int nconfigs, const char *arch,
                                  int flags, mj_module_src **mods, int *n, mj_err *err);

/* A plan over an explicit list of GEMM configurations (the tuner's candidates), picking
 * configuration 0 for every bucket until told otherwise; no records are read. */
moejit_status mj_rt_plan_create_with(moejit_ctx *ctx, const moejit_layer_desc *desc,
                                     const mj_gemm_config *configs, int nconfigs,
                                     moejit_plan **plan);
/* The index into plan->configs of configuration c as the plan holds it (a GEMM2 split the layer's
 * intermediate size cannot take is split fewer ways and renamed), or -1 when the plan lacks it. */
int mj_rt_config_index(const moejit_plan *plan, const mj_gemm_config *c);
/* moejit_forward with the GEMM configuration forced (index into plan->configs). */
moejit_status mj_rt_forward_with(moejit_plan *plan, const moejit_forward_args *args, void *workspace,
                                 size_t workspace_bytes, CUstream stream, int config);
/* The configuration (index into plan->configs) a forward of `tokens` runs: a tuned exact count,
 * else the token bucket's; *tuned (when not NULL) says whether a record chose it. */
int mj_rt_pick(const moejit_plan *plan, int64_t tokens, int *tuned);
/* The bucket of a token count: ceil(log2(tokens)), clamped to [0, MJ_BUCKETS). */
int mj_rt_bucket(int64_t tokens);
/* The record a plan of this context would look for (kernel "gemm", bucket given). */
void mj_rt_record_key(const moejit_ctx *ctx, const moejit_layer_desc *desc, int64_t bucket,
                      mj_record *r);
void mj_rt_modules_free(mj_module_src *mods, int n);

const char *mj_rt_dtype_name(moejit_dtype dt); /* "bf16", "i32", ... */
/* The GEMM math path of a layer (dtype, exact_f32). */
mj_math mj_rt_math(const moejit_layer_desc *desc);
/* Whether the GEMM1 of configuration c is built to work out its tiles from the caller's ids
 * (gemm.cuh, MJ_GEMM_SELF_ROUTE): mma.sync configurations of layers whose ids name their experts
 * directly (top-k or dense routing, no expert map), without capacity and with the routing weight
 * on the output. */
int mj_rt_can_self_route(const moejit_layer_desc *desc, const mj_gemm_config *c);

#endif
