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
  mj_kernel fill[3]; /* by moejit_dtype: F32, F16, BF16 */
} mj_synth;

/* Compiles and loads the fill kernels for the context's device. */
moejit_status mj_synth_open(moejit_ctx *ctx, mj_synth *s, mj_err *err);
void mj_synth_close(mj_synth *s);

/* out[0..n) = uniform values in [lo, hi) of dtype, a function of (seed, index) only. */
moejit_status mj_synth_fill(const mj_synth *s, CUdeviceptr out, int64_t n, moejit_dtype dtype,
                            float lo, float hi, uint64_t seed, CUstream stream, mj_err *err);

/* Random routing on the host: ids [T, K] distinct experts per token (K <= E), weights [T, K] the
 * softmax of random logits over the K. Deterministic in seed. */
void mj_synth_routing(int64_t tokens, int64_t top_k, int64_t experts, uint64_t seed, int32_t *ids,
                      float *weights);

/* A random layer on the device for a plan: weights, biases, x, routing (ids distinct per token,
 * softmax weights; the dense [T, E] form when the plan asks for it), y and the workspace. */
typedef struct mj_synth_layer {
  moejit_layer_desc desc;
  int64_t tokens;
  CUdeviceptr x, ids, weights, gate_up, gate_up_bias, down, down_bias, y, workspace;
  size_t workspace_bytes;
  int32_t *host_ids;   /* [T, K] */
  float *host_weights; /* [T, K] */
} mj_synth_layer;

/* Values: x in [-1, 1), gate_up in +-1/sqrt(H), down in +-1/sqrt(I), biases in +-0.1. */
moejit_status mj_synth_layer_create(const mj_synth *s, const moejit_plan *plan, int64_t tokens,
                                    uint64_t seed, mj_synth_layer *L, mj_err *err);
void mj_synth_layer_destroy(const mj_synth *s, mj_synth_layer *L);
/* Replaces the routing ids (top-k form only; any values, out-of-range ones included). */
moejit_status mj_synth_layer_set_ids(const mj_synth *s, mj_synth_layer *L, const int32_t *ids,
                                     mj_err *err);
void mj_synth_layer_args(const mj_synth_layer *L, moejit_forward_args *args);

/* The layer's inputs for the listed tokens, in host memory, for the CPU reference: x rows of those
 * tokens, their ids and weights, all weights and biases; y rows of those tokens (as computed).
 * Every buffer is malloc'd; free with mj_synth_host_free. */
typedef struct mj_synth_host {
  int64_t n;
  void *x, *gate_up, *gate_up_bias, *down, *down_bias, *y; /* y: [n, H] dtype */
  int32_t *ids;
  float *weights;
} mj_synth_host;
moejit_status mj_synth_download(const mj_synth *s, const mj_synth_layer *L, const int64_t *tokens,
                                int64_t n, mj_synth_host *h, mj_err *err);
void mj_synth_host_free(mj_synth_host *h);

#endif
