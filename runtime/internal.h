/* internal.h: the context and plan structs shared by the runtime's files (runtime.h is the
 * interface the layers above get). Uses gen/ for rendering and compiling, tune/ for the
 * configuration tables, the cubin cache and the records.
 *
 * The runtime's files, by job: ctx.c (contexts), desc.c (descriptor checks, struct versions),
 * build.c (render, compile, load), layout.c (the workspace), plan.c (the plan's life and its
 * configurations), forward.c (arguments, chunks, the stages in order), launch.c (launches from a
 * kernel's contract); one file per kernel family pairs its spec and its launch: route.c, gemm.c
 * (mma.sync, FFMA and streamed GEMMs), wgmma.c, combine.c (combine and the unfused activation). */
#ifndef MJ_RUNTIME_INTERNAL_H
#define MJ_RUNTIME_INTERNAL_H
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/runtime.h"
#include "tune/cache.h"

#define MJ_BUCKETS 21   /* token buckets 1, 2, 4, ..., 2^20 (and above) */
#define MJ_MAX_EXACT 16 /* tuned exact token counts a plan honours */
/* Forwards of more tokens than this run as consecutive chunks of it, so the workspace (the
 * per-slot rows of h, x_sorted and y_slot) stays bounded: 65536 tokens of a GPT-OSS layer in bf16
 * need 6 GiB. */
#define MJ_CHUNK_TOKENS 65536

struct moejit_ctx {
  moejit_log_fn log;
  void *log_user;
  char *template_dir; /* NULL: embedded */
  int offline;        /* compile for `arch`, load nothing */
  char arch[16];      /* "sm_90a", "sm_80" */
  mj_cu cu;           /* loaded unless offline */
  CUdevice dev;
  CUcontext cuctx; /* the device's primary context, retained */
  int cc_major, cc_minor, sm_count;
  int smem_optin;  /* shared memory a block may have, bytes (offline: the arch's) */
  int smem_per_sm; /* shared memory of an SM (offline: the arch's) */
  char device_name[128];
  mj_gen *gen;
  mj_nvrtc nv;             /* loaded on first plan */
  int64_t compiles;        /* NVRTC compiles so far (tests prove forwards add none) */
  int pdl_off;             /* MOEJIT_PDL=0 in the environment when the context was made */
  mj_cache *cache;         /* cubins: memory, and disk when a folder is usable */
  char records_path[4096]; /* "" when there is no cache folder */
  pthread_mutex_t err_lock;
  mj_err err; /* the last failure, for moejit_last_error */
};

/* ---- the values a forward's kernels take ------------------------------------------------------
 * Every kernel parameter has a name in its template's launch contract; the runtime binds it to the
 * member of mj_values of that name (launch.c's table), once, when the plan loads the kernel. */
typedef struct mj_values {
  mj_tmap tmap_a, tmap_b; /* the wgmma GEMM's A rows and weights */
  /* the caller's (moejit_forward_args) */
  CUdeviceptr x, topk_ids, routing_weights, router_logits, expert_map, device_tokens, y,
      gate_up_proj, gate_up_proj_bias, down_proj, down_proj_bias, gate_up_proj_scales,
      down_proj_scales;
  /* the workspace's (mj_layout) */
  CUdeviceptr flags, num_tiles, expert_offsets, ready, chunk_counts, chunk_base, tiles, row_slot,
      slot_row, row_weight, route_ids, route_weights, gate_up, x_sorted, h, y_slot;
  CUdeviceptr ids, weights; /* what routing reads: the caller's, or route_ids/_weights */
  /* the GEMM being launched: its A, weights, bias, output; scales: MXFP4 weights' */
  CUdeviceptr a, w, bias, out, own_ids, scales;
  int tokens, nslots, nchunks, tile_rows, capacity, accumulate, token_base, slab_major, own_slots,
      wait_ready;
  long long split_stride;
} mj_values;

/* The bytes of the value named `name` a kernel parameter binds to, or 0 when there is none. */
size_t mj_rt_value_size(const char *name);
/* Resolves k->meta's parameter names to members of mj_values. MOEJIT_ERR_TEMPLATE naming the
 * kernel and the parameter when the runtime has no value of that name. */
moejit_status mj_rt_bind(mj_kernel *k, mj_err *err);
/* One launch of k with blocks (gx, gy, gz) of its contract's threads and shared memory, its
 * parameters from v. pdl: with programmatic stream serialisation, so that k's blocks may start
 * while the kernel before it in the stream still runs (each kernel of the forward built with pdl=1
 * begins with griddepcontrol.wait and launch_dependents; see prelude.cuh's mj_pdl_begin). */
moejit_status mj_rt_launch(const moejit_ctx *ctx, const mj_kernel *k, unsigned gx, unsigned gy,
                           unsigned gz, const mj_values *v, CUstream stream, int pdl, mj_err *err);
/* ceil(a / b) for b > 0. */
static inline int64_t mj_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* The kernels a plan runs, by family (each family's file fills its own part). */
typedef struct mj_route_kernels {
  mj_kernel small; /* one block for at most small.meta.max_slots slots; logits routing: top-k too */
  mj_kernel topk, count, scan, scatter; /* topk: logits routing only */
} mj_route_kernels;

struct moejit_plan {
  moejit_ctx *ctx;
  moejit_layer_desc desc;
  mj_math math;
  int wgmma;  /* 1: some configuration is a wgmma one (x_sorted, the gather) */
  int pdl;    /* 1: whole forwards launch with programmatic dependent launch (sm_90+, unless
                 the context was made with MOEJIT_PDL=0 in the environment) */
  int splits; /* the split count (> 1) of the configurations that split GEMM2 along K, or 1; one
                 per plan, as combine_split sums exactly that many partials */
  mj_route_kernels route;
  mj_kernel combine, combine_split, activation; /* combine_split: splits > 1; activation: unfused */
  mj_kernel gather; /* wgmma plans: the permuted copy of x GEMM1 reads */
  int ngemm;
  mj_gemm_config configs[MJ_MAX_GEMM_CONFIGS];
  mj_kernel gemm1[MJ_MAX_GEMM_CONFIGS], gemm2[MJ_MAX_GEMM_CONFIGS];
  int min_bm;
  int pick[MJ_BUCKETS];  /* configuration per token bucket */
  int tuned[MJ_BUCKETS]; /* 1 where a tuning record chose it */
  int nexact;            /* tuned exact token counts, checked before the buckets */
  int64_t exact_tokens[MJ_MAX_EXACT];
  int exact_pick[MJ_MAX_EXACT];
  CUmodule modules[3 + 2 * MJ_MAX_GEMM_CONFIGS];
  int nmodules;
};

/* ---- layout.c -------------------------------------------------------------------------------- */

/* Workspace layout for `tokens` tokens; every offset is 256-byte aligned. flags sit at offset 0. */
typedef struct mj_layout {
  size_t flags, num_tiles, expert_offsets, ready, chunk_counts, chunk_base, tiles, row_slot,
      slot_row, row_weight, route_ids, route_weights, gate_up, x_sorted, h, y_slot, total;
  int64_t nslots, nchunks, max_tiles;
  int64_t split_stride; /* floats from one split's partial y_slot to the next */
} mj_layout;

void mj_rt_layout(const moejit_plan *plan, int64_t tokens, mj_layout *layout);

/* ---- ctx.c, desc.c --------------------------------------------------------------------------- */
/* The sizes of the structs in 0.3, the last version whose *_init took no size (what the plain-named
 * functions fill): the descriptor ended with `unfused`, padded to its alignment; the arguments with
 * `device_tokens`. */
#define MJ_DESC_SIZE_0_3                                                                           \
  ((offsetof(moejit_layer_desc, weight_format) + _Alignof(moejit_layer_desc) - 1) /                \
   _Alignof(moejit_layer_desc) * _Alignof(moejit_layer_desc))
#define MJ_ARGS_SIZE_0_3 offsetof(moejit_forward_args, gate_up_proj_scales)

/* Copies err into the context's last error (under its lock) and logs it at DEBUG. Returns s. */
moejit_status mj_rt_fail(moejit_ctx *ctx, moejit_status s, const mj_err *err);
#define mj_rt_log(ctx, level, ...) mj_logf((ctx)->log, (ctx)->log_user, (level), __VA_ARGS__)

/* A caller's struct of an earlier version (a struct_size in sizes[0..n), each the size a version of
 * the header had), copied over the current defaults in *full (full_size bytes, set up by the
 * struct's _init). 0, or -1 when in->struct_size is none of those sizes. */
int mj_rt_upgrade(const void *in, size_t in_size, const size_t *sizes, int n, void *full,
                  size_t full_size);
/* desc upgraded to the current struct (the fields an older caller lacks at their defaults);
 * MOEJIT_ERR_INVALID_ARG for a struct_size of no version. */
moejit_status mj_rt_desc_full(const moejit_layer_desc *desc, moejit_layer_desc *full, mj_err *err);

/* ---- build.c --------------------------------------------------------------------------------- */
/* Loads a compiled module (the context current) into *mod and fills the kernel of each entry
 * named in entries (NULL-terminated; k[i] for entries[i]; an entry the module lacks is an error)
 * from its contract, with its shared memory set. */
moejit_status mj_rt_load_module(moejit_ctx *ctx, const mj_module_src *m, const char *const *entries,
                                mj_kernel *const *k, CUmodule *mod, mj_err *err);
/* A block's and an SM's shared memory on an arch, for offline contexts. */
void mj_rt_arch_smem(const char *arch, int *block, int *sm);

/* ---- the kernel families: spec and launch ---------------------------------------------------- */

/* Each family's launch reads the values forward.c set from the caller's arguments, the workspace's
 * layout and the chunk (tokens, nslots, nchunks, tile_rows, capacity, token_base, split_stride),
 * sets the values that belong to its own kernels (named below), and returns mj_rt_launch's
 * statuses. */

/* route.c: sets ids and weights (the caller's, or the top-k kernel's copies under logits routing)
 * and accumulate (a later chunk adds its bad ids to the flags). */
void mj_rt_route_spec(const moejit_layer_desc *desc, mj_spec *spec);
moejit_status mj_rt_route(const moejit_plan *plan, mj_values *v, const mj_layout *l, int accumulate,
                          CUstream stream, int pdl, mj_err *err);
/* combine.c: sets nothing. */
void mj_rt_combine_spec(const moejit_layer_desc *desc, int splits, mj_spec *spec);
moejit_status mj_rt_activation(const moejit_plan *plan, const mj_values *v, const mj_layout *l,
                               CUstream stream, int pdl, mj_err *err);
moejit_status mj_rt_combine(const moejit_plan *plan, const mj_kernel *k, const mj_values *v,
                            CUstream stream, int pdl, mj_err *err);
/* gemm.c: the mma.sync, FFMA and streamed GEMMs (templates/gemm.lua); the spec keys both GEMM
 * templates take (dtype, bias, stage, the layer's sizes and SwiGLU, the tile), which
 * mj_rt_gemm_spec and mj_rt_wgmma_spec start from */
void mj_rt_gemm_shape_spec(const moejit_layer_desc *desc, const mj_gemm_config *c,
                           moejit_stage stage, mj_spec *spec);
void mj_rt_gemm_spec(const moejit_layer_desc *desc, const mj_gemm_config *c, moejit_stage stage,
                     mj_spec *spec);
/* Whether the GEMM1 of configuration c is built to work out its tiles from the caller's ids
 * (gemm.cuh, MJ_GEMM_SELF_ROUTE): mma.sync and streamed configurations of layers whose ids name
 * their experts directly (top-k or dense routing, no expert map), without capacity and with the
 * routing weight on the output. */
int mj_rt_can_self_route(const moejit_layer_desc *desc, const mj_gemm_config *c);
/* Sets a, w, bias, out (by stage), slab_major, own_ids and own_slots (GEMM1 routes itself where
 * self_route allows and the slots fit the contract's max_slots). */
moejit_status mj_rt_gemm(const moejit_plan *plan, int cfg, moejit_stage stage, mj_values *v,
                         const mj_layout *l, int self_route, CUstream stream, int pdl, mj_err *err);
/* wgmma.c: the sm_90a GEMMs (templates/wgmma.lua) and the gather GEMM1 reads */
void mj_rt_wgmma_spec(const moejit_layer_desc *desc, const mj_gemm_config *c, moejit_stage stage,
                      mj_spec *spec);
moejit_status mj_rt_gather(const moejit_plan *plan, const mj_values *v, CUstream stream, int pdl,
                           mj_err *err);
/* Sets a, w, bias, out (by stage), tmap_a, tmap_b and wait_ready (chained: GEMM2 waits for its
 * own experts' rows of h, not for GEMM1 as a whole; wgmma.cuh's kChain). */
moejit_status mj_rt_wgmma(const moejit_plan *plan, int cfg, moejit_stage stage, mj_values *v,
                          const mj_layout *l, int chained, CUstream stream, int pdl, mj_err *err);

#endif
