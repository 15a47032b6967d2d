/* ref.h: the CPU reference of the MoE layer, the oracle for every GPU kernel, plus host dtype
 * conversions and the error metric tests compare with. Uses only moejit.h for moejit_dtype. */
#ifndef MJ_TOOLS_REF_H
#define MJ_TOOLS_REF_H

#include <stddef.h>
#include <stdint.h>

#include "moejit.h"
#include "base/half.h"

/* One layer in host memory; nothing is owned. */
typedef struct mj_ref_layer {
  int64_t tokens, hidden, intermediate, experts, top_k; /* T H I E K */
  moejit_dtype dtype;            /* storage of x, the weights, the biases: F32, F16 or BF16 */
  float alpha, limit;            /* SwiGLU: 1.702, 7.0 in GPT-OSS */
  const void *x;                 /* [T, H] dtype */
  const void *gate_up_proj;      /* [E, H, 2I] dtype: gate = even columns, up = odd (the
                                    layout's; [E, H, I] for an activation without mul) */
  const void *gate_up_proj_bias; /* [E, 2I] dtype; NULL (with down_proj_bias): no biases */
  const void *down_proj;         /* [E, I, H] dtype */
  const void *down_proj_bias;    /* [E, H] dtype */
  const int32_t *topk_ids;       /* [T, K] */
  const float *topk_weights;     /* [T, K] */
  /* Options (zero: off). */
  const int32_t *expert_map; /* [global_experts]: ids are global, mapped to local or -1 */
  int64_t global_experts;
  int64_t capacity;    /* > 0: an expert keeps its first `capacity` slots (t*K+k order) */
  int weight_on_input; /* x scaled by the weight before GEMM1; the output unweighted */
  int bias_f32;        /* the biases are f32 arrays */
  /* MXFP4 expert weights, as the gpt-oss checkpoints hold them: with mxfp4, gate_up_proj is the
   * blocks [E, 2I, H/32, 16] and down_proj [E, H, I/32, 16] (u8, out-major, K contiguous, element
   * 2b in the low nibble of byte b, e2m1 codes), and these their e8m0 scales (weight = e2m1 code x
   * 2^(scale - 127)); H and I multiples of 32. */
  int mxfp4;
  moejit_activation activation;         /* 0: SwiGLU-OAI (alpha, limit) */
  moejit_gate_up_layout gate_up_layout; /* 0: interleaved */
  const uint8_t *gate_up_proj_scales;   /* [E, 2I, H/32] */
  const uint8_t *down_proj_scales;      /* [E, H, I/32] */
} mj_ref_layer;

/* The value of MXFP4 weight `k` of a row of blocks (K elements, blocks of 32 in 16 bytes) and its
 * scales: e2m1 code x 2^(scale - 127), in double (exact: no scale byte overflows a double); NaN
 * for scale byte 255 (the OCP MX format's NaN). A layer multiplies with it rounded to its dtype
 * (moejit.h, MOEJIT_WEIGHTS_MXFP4). */
double mj_ref_mxfp4(const uint8_t *blocks, const uint8_t *scales, int64_t k);

/* Computes the output rows of the listed tokens into out [ntokens, H] (f32, written, not
 * accumulated into). tokens == NULL means all T tokens in order, and then ntokens must equal T. Per
 * slot (t, k) with e = topk_ids[t, k]: gu = x[t] @ gate_up_proj[e] + bias, accumulated in double
 * from the stored inputs; gate = min(gu_even, limit), up = clamp(gu_odd, -limit, limit);
 * h = (up + 1) * gate * sigmoid(alpha * gate), rounded to dtype as the GPU stores it (F32: to
 * float); y = h @ down_proj[e] + bias, accumulated in double; out[t] = sum over k = 0..K-1, in that
 * order, in float, of (float)(y * topk_weights[t, k]). A slot whose id is outside [0, E)
 * contributes nothing. With mxfp4 the weights are decoded from their blocks and scales
 * (mj_ref_mxfp4) and rounded to dtype; the sums are the same, taken output by output. Allocates O(H
 * + I) scratch. Returns 0, or -1 on a bad argument (mxfp4 with H or I not a multiple of 32, or no
 * scales) or out of memory. */
int mj_ref_forward(const mj_ref_layer *L, const int64_t *tokens, int64_t ntokens, float *out);

/* The reference layer of a descriptor for `tokens` tokens: its sizes, dtype, SwiGLU parameters
 * and options (global experts, capacity, weight on input, f32 biases); the pointers are the
 * caller's to set. */
mj_ref_layer mj_ref_layer_of(const moejit_layer_desc *desc, int64_t tokens);

/* GPT-OSS router: per token the top_k largest logits (ties: the lower id) and the softmax over
 * those K, into ids [T, K] and weights [T, K]. logits: [T, E]. */
void mj_ref_route_logits(int64_t tokens, int64_t experts, int64_t top_k, const float *logits,
                         int32_t *ids, float *weights);

/* max |got - want| / max |want| over n elements (max |got - want| when max |want| == 0);
 * INFINITY when got holds a NaN. */
double mj_rel_error(const float *got, const float *want, int64_t n);

/* The tolerance for mj_rel_error (the golden README's): 1e-5 for F32, 2e-2 for F16 and BF16,
 * 0 for a dtype that is not an activation type. */
double mj_tolerance(moejit_dtype dt);

#endif /* MJ_TOOLS_REF_H */
