/* synth.h: synthetic layers on the GPU for the tests, `moejit run` and the tuner: device buffers
 * filled with reproducible random values, and random top-k routing made on the host.
 * Uses runtime/runtime.h (the synth template's module, the context's driver). */
#ifndef MJ_TOOLS_SYNTH_H
#define MJ_TOOLS_SYNTH_H
#include <stdint.h>

#include "runtime/runtime.h"

typedef struct mj_synth {
  moejit_ctx *ctx;
  CUmodule module;
  mj_kernel fill[3];        /* by moejit_dtype: F32, F16, BF16 */
  mj_kernel fill_normal[3]; /* the same, normal draws */
  mj_kernel fill_u8;        /* bytes: MXFP4 blocks and scales */
} mj_synth;

/* How a synthetic layer's values are drawn: uniform (the default), or from a normal distribution
 * of the same RMS (what prefill times at a GPU's power cap depend on). */
typedef enum mj_synth_data { MJ_SYNTH_UNIFORM = 0, MJ_SYNTH_NORMAL = 1 } mj_synth_data;
/* "uniform" or "normal". */
const char *mj_synth_data_name(mj_synth_data data);

/* Compiles and loads the fill kernels for the context's device. */
moejit_status mj_synth_open(moejit_ctx *ctx, mj_synth *s, mj_err *err);
void mj_synth_close(mj_synth *s);

/* out[0..n) = uniform values in [lo, hi) of dtype, a function of (seed, index) only. */
moejit_status mj_synth_fill(const mj_synth *s, CUdeviceptr out, int64_t n, moejit_dtype dtype,
                            float lo, float hi, uint64_t seed, CUstream stream, mj_err *err);
/* out[0..n) = normal draws of that mean and sigma in dtype, a function of (seed, index) only
 * (Box-Muller; |value - mean| < 5.9 sigma). */
moejit_status mj_synth_fill_normal(const mj_synth *s, CUdeviceptr out, int64_t n,
                                   moejit_dtype dtype, float mean, float sigma, uint64_t seed,
                                   CUstream stream, mj_err *err);
/* out[0..n) = uniform bytes in [lo, hi] (lo <= hi <= 255), a function of (seed, index) only. */
moejit_status mj_synth_fill_bytes(const mj_synth *s, CUdeviceptr out, int64_t n, unsigned lo,
                                  unsigned hi, uint64_t seed, CUstream stream, mj_err *err);

/* Random routing on the host: ids [T, K] distinct experts per token (K <= E), weights [T, K] the
 * softmax of random logits over the K. Deterministic in seed. */
void mj_synth_routing(int64_t tokens, int64_t top_k, int64_t experts, uint64_t seed, int32_t *ids,
                      float *weights);

/* A random layer on the device for a plan: weights, biases, x, routing (ids distinct per token,
 * softmax weights; the dense [T, E] form when the plan asks for it), y and the workspace. With N1
 * = mj_rt_gate_up_cols(desc) (2I, or I for an activation without mul), gate_up is [E, H, N1] and
 * its bias [E, N1] in the layout the desc names; the biases are in the dtype (f32 with
 * desc.bias_f32), and with desc.no_bias there are none (gate_up_bias and down_bias are 0). With
 * MXFP4 weights (desc.weight_format) gate_up and down hold the blocks, [E, N1, H/32, 16] and
 * [E, H, I/32, 16], and gate_up_scales and down_scales the e8m0 scales, [E, N1, H/32] and
 * [E, H, I/32]; the scales are 0 for dense weights. */
typedef struct mj_synth_layer {
  moejit_layer_desc desc;
  int64_t tokens;
  mj_synth_data data; /* how x, the weights and the biases were drawn */
  CUdeviceptr x, ids, weights, gate_up, gate_up_bias, down, down_bias, y, workspace;
  CUdeviceptr gate_up_scales, down_scales;
  size_t workspace_bytes;
  int32_t *host_ids;   /* [T, K] */
  float *host_weights; /* [T, K] */
} mj_synth_layer;

/* Values: x in [-1, 1), gate_up in +-1/sqrt(H), down in +-1/sqrt(I), biases in +-0.1, uniform.
 * MXFP4: random block bytes (every e2m1 code, in both nibbles) and scale bytes in a range of 4
 * (mj_synth_mxfp4_scales) that puts the weights' RMS near 1/sqrt(H) and 1/sqrt(I). */
moejit_status mj_synth_layer_create(const mj_synth *s, const moejit_plan *plan, int64_t tokens,
                                    uint64_t seed, mj_synth_layer *L, mj_err *err);
/* The same with the values drawn as data says: MJ_SYNTH_NORMAL draws x, the dense weights and
 * the biases from normal distributions of mean 0 and the RMS of the uniform ranges above (a / sqrt
 * 3 for +-a); MXFP4 blocks and scales are drawn as above either way. */
moejit_status mj_synth_layer_create_data(const mj_synth *s, const moejit_plan *plan, int64_t tokens,
                                         uint64_t seed, mj_synth_data data, mj_synth_layer *L,
                                         mj_err *err);
void mj_synth_layer_destroy(const mj_synth *s, mj_synth_layer *L);
/* Replaces the routing ids (top-k form only; any values, out-of-range ones included). */
moejit_status mj_synth_layer_set_ids(const mj_synth *s, mj_synth_layer *L, const int32_t *ids,
                                     mj_err *err);
/* The forward's arguments of the layer, the MXFP4 scales included; the bias pointers are NULL for
 * a layer without biases. */
void mj_synth_layer_args(const mj_synth_layer *L, moejit_forward_args *args);
/* The scale bytes [*lo, *hi] of synthetic MXFP4 weights whose K is k: random e2m1 codes (RMS about
 * 2.93) times 2^(s - 127), s uniform in a range of 4, have an RMS near 1/sqrt(k). */
void mj_synth_mxfp4_scales(int64_t k, unsigned *lo, unsigned *hi);

/* The layer's inputs for the listed tokens, in host memory, for the CPU reference: x rows of those
 * tokens, their ids and weights, all weights and biases (NULL with desc.no_bias); y rows of those
 * tokens (as computed). MXFP4: gate_up and down hold the blocks and gate_up_scales, down_scales the
 * scales (NULL for dense weights), shaped as in mj_synth_layer. Every buffer is malloc'd; free
 * with mj_synth_host_free. */
typedef struct mj_synth_host {
  int64_t n;
  void *x, *gate_up, *gate_up_bias, *down, *down_bias, *y; /* y: [n, H] dtype */
  int32_t *ids;
  float *weights;
  uint8_t *gate_up_scales, *down_scales;
} mj_synth_host;
moejit_status mj_synth_download(const mj_synth *s, const mj_synth_layer *L, const int64_t *tokens,
                                int64_t n, mj_synth_host *h, mj_err *err);
void mj_synth_host_free(mj_synth_host *h);

#endif
