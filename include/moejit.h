/* moejit.h: the one public header of moejit, a run-time kernel generator for Mixture-of-Experts
 * layers (GPT-OSS form).
 *
 * The library generates CUDA C++ from embedded Lua templates for the exact layer shape, compiles it
 * with NVRTC and launches it through the CUDA Driver API on the caller's stream. The driver and
 * NVRTC are loaded with dlopen, so this header needs no CUDA toolkit and the library starts on a
 * machine without a GPU (moejit_create then reports MOEJIT_ERR_NO_DEVICE, unless the options name
 * an offline target architecture).
 *
 * Ownership: every handle is created and destroyed by the library; every device buffer (weights,
 * activations, workspace) is allocated and freed by the caller. Destroy functions accept NULL.
 *
 * ABI rule: structs passed in carry `struct_size`, set by the matching *_init function; new fields
 * are only ever appended, status codes are only ever appended, and functions are never changed,
 * only added.
 */
#ifndef MOEJIT_H
#define MOEJIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MOEJIT_VERSION_MAJOR 0
#define MOEJIT_VERSION_MINOR 4
#define MOEJIT_VERSION_PATCH 0

#if defined(MOEJIT_BUILDING) && defined(__GNUC__)
#define MOEJIT_API __attribute__((visibility("default")))
#else
#define MOEJIT_API
#endif

/* The driver's stream handle; the same typedef as cuda.h, so both headers may be included. */
typedef struct CUstream_st *CUstream;

/* X(name, value, message). Codes are appended, never renumbered. */
#define MOEJIT_STATUS_LIST(X)                                                                      \
  X(MOEJIT_OK, 0, "success")                                                                       \
  X(MOEJIT_ERR_INVALID_ARG, 1, "invalid argument")                                                 \
  X(MOEJIT_ERR_UNSUPPORTED, 2, "option not supported by this version")                             \
  X(MOEJIT_ERR_NO_DEVICE, 3, "no CUDA driver or GPU found")                                        \
  X(MOEJIT_ERR_NO_COMPILER, 4, "NVRTC could not be loaded")                                        \
  X(MOEJIT_ERR_COMPILE, 5, "NVRTC failed to compile a generated kernel")                           \
  X(MOEJIT_ERR_TEMPLATE, 6, "a kernel template failed to render")                                  \
  X(MOEJIT_ERR_CUDA, 7, "a CUDA driver call failed")                                               \
  X(MOEJIT_ERR_OUT_OF_MEMORY, 8, "out of host memory")                                             \
  X(MOEJIT_ERR_BAD_EXPERT_ID, 9, "an expert id was outside [0, experts)")                          \
  X(MOEJIT_ERR_IO, 10, "a file could not be read or written")                                      \
  X(MOEJIT_ERR_INTERNAL, 11, "internal error")

typedef enum moejit_status {
#define MOEJIT_STATUS_ENUM_(name, value, message) name = value,
  MOEJIT_STATUS_LIST(MOEJIT_STATUS_ENUM_)
#undef MOEJIT_STATUS_ENUM_
} moejit_status;

typedef enum moejit_dtype {
  MOEJIT_F32 = 0,
  MOEJIT_F16 = 1,
  MOEJIT_BF16 = 2,
  MOEJIT_I32 = 3,
  MOEJIT_I64 = 4
} moejit_dtype;

/* How the routing reaches moejit_forward. */
typedef enum moejit_routing {
  MOEJIT_ROUTING_TOPK = 0,  /* topk_ids [T, K] + routing_weights [T, K] */
  MOEJIT_ROUTING_DENSE = 1, /* topk_ids [T, K] + routing_weights [T, E]: weight = w[t, ids[t, k]] */
  MOEJIT_ROUTING_LOGITS = 2 /* router_logits [T, E]: top-K (ties: lower id), softmax over the K */
} moejit_routing;

/* How the expert weights (gate_up_proj, down_proj) are stored. */
typedef enum moejit_weight_format {
  MOEJIT_WEIGHTS_DENSE = 0, /* [E, H, 2I] and [E, I, H] in desc->dtype (the default) */
  /* The gpt-oss checkpoints' MXFP4, read as the checkpoint holds it (no repacking): gate_up_proj
   * is the blocks [E, 2I, H/32, 16] and down_proj [E, H, I/32, 16] (uint8, one row per output, K
   * contiguous: transposed against the dense layout), 32 weights a block of 16 bytes, weight 2b of
   * a block in the low nibble of byte b and 2b + 1 in the high one, e2m1 codes (bit 3 the sign;
   * 0, 0.5, 1, 1.5, 2, 3, 4, 6); gate_up_proj_scales [E, 2I, H/32] and down_proj_scales
   * [E, H, I/32] one e8m0 byte s a block (with an activation without mul, gate_up_proj has I
   * rows: blocks [E, I, H/32, 16], scales [E, I, H/32]). A weight is code x 2^(s - 127), rounded
   * to desc->dtype
   * (which must be F16 or BF16). Scale byte 0 gives 2^-127 (bf16 subnormals; zeros in f16);
   * scale byte 255 is NaN, as the OCP MX format defines it: every weight of that block is NaN. In
   * down_proj row n, output n of every slot routed to that expert is then NaN; in gate_up_proj,
   * SwiGLU's clamps (fmin/fmax, which return the number beside a NaN) make a NaN gate `limit` and
   * a NaN up -`limit`, as the CPU reference does. Rows 2j and 2j + 1 of gate_up_proj are gate j and
   * up j, as the dense layout's even and odd columns. H and I must be multiples of 32. The kernels
   * decode the weights in registers; no dense copy is ever made. */
  MOEJIT_WEIGHTS_MXFP4 = 1
} moejit_weight_format;

/* The activation between the GEMMs. Gated ones take GEMM1's 2I outputs as gate and up pairs (as
 * moejit_gate_up_layout says) and give I; the others ("no mul") take GEMM1's I outputs (then
 * gate_up_proj is [E, H, I] and its bias [E, I]) and give I. As vLLM's MoEActivation defines
 * them, silu(v) = v * sigmoid(v), in fp32:
 *   SWIGLU_OAI     gate = min(gate, limit), up = clamp(up, -limit, limit),
 *                  (up + 1) * gate * sigmoid(alpha * gate)              (GPT-OSS; the default)
 *   SILU_MUL       silu(gate) * up                                      (Mixtral, Qwen, DeepSeek)
 *   GELU_MUL       gelu(gate) * up, gelu(v) = v / 2 * (1 + erf(v / sqrt 2))
 *   GELU_TANH_MUL  gelu_tanh(gate) * up,
 *                  gelu_tanh(v) = v / 2 * (1 + tanh(sqrt(2 / pi) * (v + 0.044715 v^3)))
 *   SWIGLU_STEP    min(silu(gate), limit) * clamp(up, -limit, limit)
 *   SILU, GELU     silu(v), gelu(v) (erf form)                          (no mul)
 *   RELU2          max(v, 0)^2                                          (no mul) */
typedef enum moejit_activation {
  MOEJIT_ACT_SWIGLU_OAI = 0,
  MOEJIT_ACT_SILU_MUL = 1,
  MOEJIT_ACT_GELU_MUL = 2,
  MOEJIT_ACT_GELU_TANH_MUL = 3,
  MOEJIT_ACT_SWIGLU_STEP = 4,
  MOEJIT_ACT_SILU = 5,
  MOEJIT_ACT_GELU = 6,
  MOEJIT_ACT_RELU2 = 7
} moejit_activation;

/* Where gate and up sit along gate_up_proj's 2I outputs (columns of the dense [E, H, 2I], rows of
 * the MXFP4 blocks) and its bias: interleaved (gate j = 2j, up j = 2j + 1; GPT-OSS, the default),
 * or two halves, [gate | up] (gate j = j, up j = I + j; vLLM's w13 of Mixtral-style models) or
 * [up | gate]. Unused by the activations without mul. With halves (and without mul) GEMM1's output
 * is stored in dtype before the activation reads it (moejit_workspace_view's gate_up), where the
 * interleaved layout's GEMM1 applies it to the fp32 sums: the two differ by that rounding. */
typedef enum moejit_gate_up_layout {
  MOEJIT_GATE_UP_INTERLEAVED = 0,
  MOEJIT_GATE_UP_HALVES = 1,
  MOEJIT_UP_GATE_HALVES = 2
} moejit_gate_up_layout;

typedef enum moejit_log_level {
  MOEJIT_LOG_DEBUG = 0,
  MOEJIT_LOG_INFO,
  MOEJIT_LOG_WARN
} moejit_log_level;

typedef void (*moejit_log_fn)(void *user, moejit_log_level level, const char *message);

typedef struct moejit_ctx_options {
  size_t struct_size;
  int device; /* CUDA device ordinal; default 0 */
  /* Offline target ("sm_80", "sm_90a", ...): plans compile for it and load nothing, so no GPU or
   * driver is needed; moejit_forward then returns MOEJIT_ERR_NO_DEVICE. NULL: the device's own. */
  const char *offline_arch;
  /* A folder of template sources used instead of the embedded ones (template development).
   * NULL: $MOEJIT_TEMPLATE_DIR, read once here, else the embedded templates. */
  const char *template_dir;
  moejit_log_fn log; /* optional; the library never prints */
  void *log_user;
  /* The cubin cache and tuning records folder. NULL: $MOEJIT_CACHE_DIR, else
   * $XDG_CACHE_HOME/moejit, else ~/.cache/moejit, read once here. "" : no disk cache. */
  const char *cache_dir;
} moejit_ctx_options;

/* The layer a plan serves. Shapes: T tokens, H hidden, I intermediate, E experts, K top-k. */
typedef struct moejit_layer_desc {
  size_t struct_size;
  int64_t hidden;             /* H, a multiple of 8 */
  int64_t intermediate;       /* I, a multiple of 8 */
  int64_t experts;            /* E, 1..1024 */
  int64_t top_k;              /* K, 1..32; a token's ids may repeat */
  int64_t max_tokens;         /* the largest T a forward may pass (workspace is sized by T) */
  moejit_dtype dtype;         /* x, weights, biases, y: MOEJIT_F32, MOEJIT_F16 or MOEJIT_BF16 */
  moejit_dtype ids_dtype;     /* MOEJIT_I32 or MOEJIT_I64 */
  moejit_dtype weights_dtype; /* routing weights: MOEJIT_F32, MOEJIT_F16 or MOEJIT_BF16 */
  moejit_routing routing;
  float alpha;             /* SwiGLU alpha, default 1.702 (SWIGLU_OAI) */
  float limit;             /* SwiGLU clamp, default 7.0 (SWIGLU_OAI, SWIGLU_STEP) */
  int64_t expert_capacity; /* 0: dropless; C > 0: each expert takes its first C slots in the
                              order of t * K + k and the others contribute nothing */
  int64_t global_experts;  /* 0: ids are local experts. G > 0: ids are global in [0, G) and
                              args->expert_map [G] maps them to a local expert or -1 (another
                              rank's: contributes nothing, costs nothing) */
  int apply_router_weight_on_input; /* scale x by the routing weight before GEMM1, not the output */
  moejit_dtype logits_dtype; /* router_logits (MOEJIT_ROUTING_LOGITS): F32 (default), F16, BF16 */
  int bias_f32;              /* 1: both biases are f32 while x and the weights are f16 or bf16 */
  int exact_f32;             /* f32 layers: exact FFMA GEMMs; 0 (default): TF32 tensor cores */
  int unfused;               /* 1: GEMM1 writes its output before the activation (workspace
                                `gate_up`), and the activation runs as a launch of its own, so a
                                caller can run the stages one by one (moejit_forward_stages) and
                                work on the intermediates in between (LoRA, as vLLM does) */
  moejit_weight_format weight_format; /* MOEJIT_WEIGHTS_DENSE (default) or MOEJIT_WEIGHTS_MXFP4 */
  /* 1: a token's output bits depend only on the token, its routing and the weights: never on T,
   * its position in the batch or the other tokens, with or without device_tokens, eager or in a
   * graph. The plan then runs one family of GEMM tiles whose every output sums K in the same
   * order (on sm_90a, f16/bf16: the wgmma tiles; elsewhere the mma.sync, TF32 or FFMA tiles), no
   * streamed tile and no split K. Holds for one GPU architecture, library version and set of plan
   * options. 0 (default): bitwise reproducible run to run for the same batch only. */
  int batch_invariant;
  moejit_activation activation;         /* default MOEJIT_ACT_SWIGLU_OAI (alpha, limit) */
  moejit_gate_up_layout gate_up_layout; /* default MOEJIT_GATE_UP_INTERLEAVED */
  int no_bias; /* 1: the layer has no biases: args' bias pointers must be NULL; none is read */
} moejit_layer_desc;

/* Arguments of one forward. Every pointer is a device address. */
typedef struct moejit_forward_args {
  size_t struct_size;
  int64_t tokens; /* T, 0..max_tokens */
  const void *x;  /* [T, H] dtype */
  /* TOPK / DENSE routing: inputs. LOGITS routing: optional outputs (NULL: not written), the
   * chosen ids and their softmax weights, [T, K], in ids_dtype and weights_dtype. */
  const void *topk_ids;          /* [T, K] ids_dtype */
  const void *routing_weights;   /* [T, K], or [T, E] (DENSE; E = global_experts when set) */
  const void *router_logits;     /* [T, E] logits_dtype, MOEJIT_ROUTING_LOGITS only (E global) */
  const int32_t *expert_map;     /* [global_experts] local id or -1, only with global_experts > 0 */
  const void *gate_up_proj;      /* [E, H, 2I] dtype: gate = even columns, up = odd columns
                                    (moejit_gate_up_layout; [E, H, I] without mul); MXFP4: the
                                    blocks [E, 2I, H/32, 16] (moejit_weight_format) */
  const void *gate_up_proj_bias; /* [E, 2I] dtype; NULL with desc->no_bias */
  const void *down_proj;         /* [E, I, H] dtype; MXFP4: the blocks [E, H, I/32, 16] */
  const void *down_proj_bias;    /* [E, H] dtype; NULL with desc->no_bias */
  void *y;                       /* [T, H] dtype, written (not accumulated into) */
  /* Optional: int32 [1] on the device, how many tokens the forward computes, read by the GPU when
   * the forward runs (NULL: all T). With n = min(max(*device_tokens, 0), T), y's first n rows are
   * those of a forward of n tokens and rows [n, T) are zeros; T still sizes the launches and picks
   * the kernels. So one CUDA graph captured at the largest batch serves every smaller one: write
   * the count, then replay. The routing of tokens [n, T) is not read (their ids may be anything),
   * and LOGITS routing writes its optional ids and weights for the first n tokens only. */
  const int32_t *device_tokens;
  /* MXFP4 weights only (NULL otherwise): the e8m0 scales, uint8 [E, 2I, H/32] and [E, H, I/32],
   * each 16-byte aligned. */
  const void *gate_up_proj_scales;
  const void *down_proj_scales;
} moejit_forward_args;

typedef struct moejit_ctx moejit_ctx;
typedef struct moejit_plan moejit_plan;

/* The *_init calls fill a struct with its defaults and set struct_size. They take the caller's
 * sizeof (the macros below pass it), so a program built against an older header, whose structs
 * are shorter, is never written past its struct's end: the first `size` bytes are filled (all of
 * them when size exceeds this version's struct) and struct_size is that many. Layer defaults:
 * bf16, int32 ids, f32 topk weights, alpha 1.702, limit 7.0, dropless, no expert map, weight on the
 * output, biases in the activation dtype, TF32 for f32 layers, dense weights, SwiGLU-OAI with gate
 * and up interleaved, not batch-invariant. */
MOEJIT_API void moejit_ctx_options_init_sized(moejit_ctx_options *opts, size_t size);
MOEJIT_API void moejit_layer_desc_init_sized(moejit_layer_desc *desc, size_t size);
MOEJIT_API void moejit_forward_args_init_sized(moejit_forward_args *args, size_t size);
#define moejit_ctx_options_init(opts) moejit_ctx_options_init_sized((opts), sizeof *(opts))
#define moejit_layer_desc_init(desc) moejit_layer_desc_init_sized((desc), sizeof *(desc))
#define moejit_forward_args_init(args) moejit_forward_args_init_sized((args), sizeof *(args))
/* The functions programs built against 0.1 .. 0.3 call by these names: they fill 0.3's sizes. */
MOEJIT_API void(moejit_ctx_options_init)(moejit_ctx_options *opts);
MOEJIT_API void(moejit_layer_desc_init)(moejit_layer_desc *desc);
MOEJIT_API void(moejit_forward_args_init)(moejit_forward_args *args);

/* What a context compiles for and runs on. */
typedef struct moejit_device_info {
  size_t struct_size;
  int offline;            /* 1: the context compiles for arch and runs nothing */
  char arch[16];          /* the target its plans compile for: "sm_90a", "sm_80", ... */
  char name[128];         /* the GPU's name; "" offline */
  int sm_count;           /* the GPU's multiprocessors; 0 offline */
  int cc_major, cc_minor; /* its compute capability; 0.0 offline */
} moejit_device_info;

/* Creates a context: loads the driver (unless offline), retains the device's primary context,
 * builds the template sandbox. Does not compile. *ctx is NULL on failure, except that with
 * MOEJIT_ERR_NO_DEVICE a context is not returned either; the message goes to the log callback.
 * Returns MOEJIT_OK, MOEJIT_ERR_INVALID_ARG, MOEJIT_ERR_NO_DEVICE, MOEJIT_ERR_CUDA,
 * MOEJIT_ERR_OUT_OF_MEMORY, MOEJIT_ERR_TEMPLATE. */
MOEJIT_API moejit_status moejit_create(moejit_ctx **ctx, const moejit_ctx_options *opts);
MOEJIT_API void moejit_destroy(moejit_ctx *ctx);

/* Does every expensive step: renders the kernels for the layer, compiles them with NVRTC (may take
 * seconds), loads the modules. The plan is immutable afterwards: one plan may launch from many
 * threads and streams at once. The context must outlive the plan. Not thread-safe on one context.
 * Returns MOEJIT_OK, MOEJIT_ERR_INVALID_ARG, MOEJIT_ERR_UNSUPPORTED, MOEJIT_ERR_NO_COMPILER,
 * MOEJIT_ERR_COMPILE, MOEJIT_ERR_TEMPLATE, MOEJIT_ERR_CUDA, MOEJIT_ERR_OUT_OF_MEMORY. */
MOEJIT_API moejit_status moejit_plan_create(moejit_ctx *ctx, const moejit_layer_desc *desc,
                                            moejit_plan **plan);
MOEJIT_API void moejit_plan_destroy(moejit_plan *plan);

/* Bytes of device workspace a forward of up to max_tokens tokens needs (256-byte aligned). */
MOEJIT_API moejit_status moejit_workspace_size(const moejit_plan *plan, int64_t max_tokens,
                                               size_t *bytes);

/* Launches the layer on `stream`: no allocation, no synchronisation, no host round trip, no
 * compilation, so it may be captured in a CUDA graph. The workspace (256-byte aligned, at least
 * moejit_workspace_size(plan, args->tokens)) must not be used by another forward at the same time.
 * Slots whose expert id is outside [0, E) contribute nothing and are counted in the workspace for
 * moejit_forward_check. Returns MOEJIT_OK, MOEJIT_ERR_INVALID_ARG, MOEJIT_ERR_NO_DEVICE,
 * MOEJIT_ERR_CUDA. Thread-safe on one plan; the error text then goes to the log callback. */
MOEJIT_API moejit_status moejit_forward(moejit_plan *plan, const moejit_forward_args *args,
                                        void *workspace, size_t workspace_bytes, CUstream stream);

/* The stages of a forward, in the order they run. */
typedef enum moejit_stage {
  MOEJIT_STAGE_ROUTE = 1,      /* routing: rows sorted by expert, the tile list, bad-id flags */
  MOEJIT_STAGE_GEMM1 = 2,      /* x @ gate_up_proj + bias (and the activation unless the plan is
                                  unfused) */
  MOEJIT_STAGE_ACTIVATION = 4, /* unfused plans: the activation of GEMM1's output into h (a plan
                                  that runs it as its own launch for its layout or activation but
                                  is not unfused runs it within GEMM1's stage) */
  MOEJIT_STAGE_GEMM2 = 8,      /* h @ down_proj + bias, times the routing weight, a row a slot */
  MOEJIT_STAGE_COMBINE = 16,   /* each token's K rows summed in a fixed order into y */
  MOEJIT_STAGE_ALL = 31
} moejit_stage;

/* moejit_forward limited to the stages in the mask (moejit_stage bits); moejit_forward is
 * MOEJIT_STAGE_ALL. Stages are launched in the order above; a caller running them in several
 * calls passes the same args and workspace each time and may launch its own work on the stream in
 * between (see moejit_workspace_view_get for where the intermediates live). Same statuses and
 * guarantees as moejit_forward. */
MOEJIT_API moejit_status moejit_forward_stages(moejit_plan *plan, const moejit_forward_args *args,
                                               void *workspace, size_t workspace_bytes,
                                               CUstream stream, unsigned stages);

/* Where a forward of `tokens` tokens keeps its intermediates: byte offsets into the workspace.
 * Rows are the routed (token, slot) pairs sorted by expert; their count is
 * expert_offsets[experts] on the device. */
typedef struct moejit_workspace_view {
  size_t struct_size;
  size_t expert_offsets; /* [E + 1] int32: the rows of expert e are [off[e], off[e + 1]) */
  size_t row_slot;       /* [T * K] int32: the slot t * K + k of each row */
  size_t slot_row;       /* [T * K] int32: the row of each slot, -1 when it has none */
  size_t row_weight;     /* [T * K] f32: the routing weight of each row */
  size_t gate_up;        /* plans whose activation runs as a launch of its own (unfused plans,
                            gate and up in halves, activations without mul): [rows, 2I] dtype
                            ([rows, I] without mul), GEMM1's output rounded to dtype, bias added,
                            before the activation, gate and up as gate_up_layout has them;
                            (size_t)-1 for the others */
  size_t h;              /* [rows, I] dtype: the activation, GEMM2's input */
  size_t y_slot;         /* [T * K, H] f32: each slot's weighted GEMM2 output, before the sum */
} moejit_workspace_view;

MOEJIT_API void moejit_workspace_view_init(moejit_workspace_view *view);
MOEJIT_API moejit_status moejit_workspace_view_get(const moejit_plan *plan, int64_t tokens,
                                                   moejit_workspace_view *view);

/* Reads the flags the last forward on this workspace left (blocks on `stream`). Returns MOEJIT_OK,
 * or MOEJIT_ERR_BAD_EXPERT_ID with the count of such slots in *bad_slots (may be NULL), or
 * MOEJIT_ERR_CUDA. */
MOEJIT_API moejit_status moejit_forward_check(moejit_plan *plan, const void *workspace,
                                              CUstream stream, int64_t *bad_slots);

MOEJIT_API void moejit_device_info_init(moejit_device_info *info);
/* Fills *info (set up by moejit_device_info_init). Returns MOEJIT_OK, or MOEJIT_ERR_INVALID_ARG for
 * a NULL argument or a struct_size of no version. Never blocks. */
MOEJIT_API moejit_status moejit_device_info_get(const moejit_ctx *ctx, moejit_device_info *info);

MOEJIT_API const char *moejit_status_name(moejit_status s);   /* "MOEJIT_ERR_INVALID_ARG" */
MOEJIT_API const char *moejit_status_string(moejit_status s); /* "invalid argument" */
/* Detail of the last failure on this context: the argument and its value, the NVRTC log, the
 * failing driver call. Valid until the next call on the context. Never NULL. */
MOEJIT_API const char *moejit_last_error(const moejit_ctx *ctx);
/* MOEJIT_VERSION_MAJOR * 10000 + MINOR * 100 + PATCH of the library actually loaded. */
MOEJIT_API int moejit_version(void);
MOEJIT_API const char *moejit_version_string(void);

#ifdef __cplusplus
}
#endif
#endif /* MOEJIT_H */
