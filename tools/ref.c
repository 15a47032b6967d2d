/* ref.c: the CPU reference of the MoE layer and host dtype conversions (see ref.h); uses libc,
 * libm. */
#include "tools/ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int is_activation(moejit_dtype dt) {
  return dt == MOEJIT_F32 || dt == MOEJIT_F16 || dt == MOEJIT_BF16;
}

/* dst[0..n) = elements off..off+n of base; the dtype switch stays outside the loop. */
static void load_row(moejit_dtype dt, const void *base, int64_t off, int64_t n, float *dst) {
  const uint16_t *h = (const uint16_t *)base + off;
  switch (dt) {
  case MOEJIT_F32: memcpy(dst, (const float *)base + off, (size_t)n * sizeof *dst); break;
  case MOEJIT_F16:
    for (int64_t j = 0; j < n; j++)
      dst[j] = mj_f16_to_f32(h[j]);
    break;
  case MOEJIT_BF16:
    for (int64_t j = 0; j < n; j++) { /* mj_bf16_to_f32, inline: this loop is the hot one */
      const uint32_t u = (uint32_t)h[j] << 16;
      memcpy(dst + j, &u, sizeof u);
    }
    break;
  default: break;
  }
}

/* v rounded to dt and back, as the GPU stores the intermediate h. */
static float round_to(moejit_dtype dt, double v) {
  uint16_t bits;
  switch (dt) {
  case MOEJIT_F16: bits = mj_f32_to_f16((float)v); return mj_f16_to_f32(bits);
  case MOEJIT_BF16: bits = mj_f32_to_bf16((float)v); return mj_bf16_to_f32(bits);
  default: return (float)v;
  }
}

static int layer_ok(const mj_ref_layer *L) {
  return L->tokens >= 0 && L->hidden > 0 && L->intermediate > 0 && L->experts > 0 && L->top_k > 0 &&
         is_activation(L->dtype) && L->x && L->gate_up_proj && L->down_proj && L->topk_ids &&
         L->topk_weights && !L->gate_up_proj_bias == !L->down_proj_bias && /* both or neither */
         (int)L->activation >= 0 && L->activation <= MOEJIT_ACT_RELU2 &&
         (int)L->gate_up_layout >= 0 && L->gate_up_layout <= MOEJIT_UP_GATE_HALVES &&
         (!L->mxfp4 || (L->hidden % 32 == 0 && L->intermediate % 32 == 0 &&
                        L->gate_up_proj_scales && L->down_proj_scales));
}

static const double e2m1[16] = {0.0,  0.5,  1.0,  1.5,  2.0,  3.0,  4.0,  6.0,
                                -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0};

/* 2^(s - 127) of an e8m0 scale byte; NaN for 255, the OCP MX format's NaN scale. */
static double e8m0(uint8_t s) { return s == 255 ? NAN : ldexp(1.0, (int)s - 127); }

double mj_ref_mxfp4(const uint8_t *blocks, const uint8_t *scales, int64_t k) {
  const uint8_t byte = blocks[k / 32 * 16 + k % 32 / 2];
  return e2m1[k % 2 ? byte >> 4 : byte & 15] * e8m0(scales[k / 32]);
}

/* An MXFP4 weight as a layer of this dtype multiplies with it: rounded to bf16 (exact, but past
 * the range: infinity; so rounding to float is enough) or f16 (rounded; subnormal or infinite
 * outside its range). */
static double mxfp4_round(moejit_dtype dt, double w) {
  return dt == MOEJIT_F16 ? mj_f16_to_f32(mj_f32_to_f16((float)w)) : (double)(float)w;
}

/* One GEMM of a slot: out[n] += sum over k of in[k] * W(e, k, n), W the expert's [K, N] weights:
 * rows of N in the layer's dtype (one contiguous row of N a k, row a scratch [N]), or MXFP4
 * blocks and scales out-major (one contiguous row of K an n). */
static void expert_gemm(const mj_ref_layer *L, const void *w, const uint8_t *scales, int64_t e,
                        int64_t K, int64_t N, const double *in, double *out, float *row) {
  if (!L->mxfp4) {
    for (int64_t k = 0; k < K; k++) {
      load_row(L->dtype, w, (e * K + k) * N, N, row);
      for (int64_t n = 0; n < N; n++)
        out[n] += in[k] * row[n];
    }
    return;
  }
  for (int64_t n = 0; n < N; n++) {
    const int64_t r = e * N + n; /* the weight row of output n */
    const uint8_t *b = (const uint8_t *)w + r * (K / 2), *sc = scales + r * (K / 32);
    double acc = 0.0;
    for (int64_t kb = 0; kb < K / 32; kb++) { /* a block: 16 bytes, one scale */
      const double f = e8m0(sc[kb]);
      for (int64_t j = 0; j < 32; j++) {
        const uint8_t byte = b[kb * 16 + j / 2];
        acc += in[kb * 32 + j] * mxfp4_round(L->dtype, e2m1[j % 2 ? byte >> 4 : byte & 15] * f);
      }
    }
    out[n] += acc;
  }
}

static int gated(moejit_activation act) { return act <= MOEJIT_ACT_SWIGLU_STEP; }

/* out[0..n) = expert e's bias row of n, or zeros for a layer without biases (bias NULL); row is
 * scratch [n]. */
static void load_bias(moejit_dtype dt, const void *bias, int64_t e, int64_t n, float *row,
                      double *out) {
  if (bias)
    load_row(dt, bias, e * n, n, row);
  for (int64_t j = 0; j < n; j++)
    out[j] = bias ? row[j] : 0.0;
}

static double silu(double v) { return v / (1.0 + exp(-v)); }
static double gelu(double v) { return 0.5 * v * (1.0 + erf(v / sqrt(2.0))); }
static double gelu_tanh(double v) {
  /* sqrt(2 / pi) */
  return 0.5 * v * (1.0 + tanh(0.79788456080286535588 * (v + 0.044715 * v * v * v)));
}

/* Output i of the activation of GEMM1's outputs gu (moejit.h's formulas, in double): gated ones
 * read gate and up where the layout puts them. */
static double activate(const mj_ref_layer *L, const double *gu, int64_t i) {
  const int64_t I = L->intermediate;
  const double limit = L->limit;
  if (!gated(L->activation)) {
    const double v = gu[i];
    return L->activation == MOEJIT_ACT_SILU   ? silu(v)
           : L->activation == MOEJIT_ACT_GELU ? gelu(v)
                                              : fmax(v, 0.0) * fmax(v, 0.0); /* RELU2 */
  }
  const int64_t at_gate = L->gate_up_layout == MOEJIT_GATE_UP_INTERLEAVED ? 2 * i
                          : L->gate_up_layout == MOEJIT_GATE_UP_HALVES    ? i
                                                                          : I + i;
  const int64_t at_up = L->gate_up_layout == MOEJIT_GATE_UP_INTERLEAVED ? 2 * i + 1
                        : L->gate_up_layout == MOEJIT_GATE_UP_HALVES    ? I + i
                                                                        : i;
  const double gate = gu[at_gate], up = gu[at_up];
  switch (L->activation) {
  case MOEJIT_ACT_SILU_MUL: return silu(gate) * up;
  case MOEJIT_ACT_GELU_MUL: return gelu(gate) * up;
  case MOEJIT_ACT_GELU_TANH_MUL: return gelu_tanh(gate) * up;
  case MOEJIT_ACT_SWIGLU_STEP: return fmin(silu(gate), limit) * fmin(fmax(up, -limit), limit);
  default: { /* SWIGLU_OAI */
    const double g = fmin(gate, limit), u = fmin(fmax(up, -limit), limit);
    return (u + 1.0) * g / (1.0 + exp(-(double)L->alpha * g));
  }
  }
}

int mj_ref_forward(const mj_ref_layer *L, const int64_t *tokens, int64_t ntokens, float *out) {
  if (!L || !out || ntokens < 0 || !layer_ok(L))
    return -1;
  if (!tokens && ntokens != L->tokens)
    return -1;
  const int64_t H = L->hidden, I = L->intermediate, I2 = 2 * L->intermediate, E = L->experts,
                K = L->top_k, N1 = gated(L->activation) ? I2 : I;
  for (int64_t r = 0; tokens && r < ntokens; r++)
    if (tokens[r] < 0 || tokens[r] >= L->tokens)
      return -1;

  const int64_t row_n = I2 > H ? I2 : H;
  /* xd: [H], gu: [2I], y: [H], xs: [H] (x times the input weight), hd: [I] (h) */
  double *xd = malloc((size_t)(H + I2 + H + H + I) * sizeof *xd);
  float *fbuf = malloc((size_t)(row_n + I) * sizeof *fbuf); /* row: [max(2I, H)], h: [I] */
  int rc = -1;
  uint8_t *kept = NULL;  /* [T * K]: the slot keeps a row */
  int64_t *taken = NULL; /* [E]: slots each expert has taken so far */
  if (!xd || !fbuf)
    goto done;
  double *gu = xd + H, *y = gu + I2, *xs = y + H, *hd = xs + H;
  float *row = fbuf, *h = fbuf + row_n;

  /* Which slots keep a row: an id in range, a local expert, within the expert's capacity (slots
   * taken in order of t * K + k). */
  const int64_t G = L->global_experts > 0 ? L->global_experts : E;
  const moejit_dtype bias_dt = L->bias_f32 ? MOEJIT_F32 : L->dtype;
  kept = malloc((size_t)(L->tokens * K) + 1);
  taken = calloc((size_t)E, sizeof *taken);
  if (!kept || !taken)
    goto done;
  for (int64_t s = 0; s < L->tokens * K; s++) {
    const int64_t g = L->topk_ids[s];
    int64_t e = g < 0 || g >= G ? -1 : L->expert_map ? L->expert_map[g] : g;
    kept[s] = e >= 0 && e < E && (L->capacity <= 0 || taken[e] < L->capacity);
    if (e >= 0 && e < E)
      taken[e]++;
  }

  for (int64_t r = 0; r < ntokens; r++) {
    const int64_t t = tokens ? tokens[r] : r;
    float *o = out + r * H; /* [H] */
    for (int64_t j = 0; j < H; j++)
      o[j] = 0.0f;
    load_row(L->dtype, L->x, t * H, H, row);
    for (int64_t j = 0; j < H; j++)
      xd[j] = row[j];

    for (int64_t k = 0; k < K; k++) {
      if (!kept[t * K + k])
        continue;
      const int64_t g = L->topk_ids[t * K + k], e = L->expert_map ? L->expert_map[g] : g;
      const double w = L->topk_weights[t * K + k];
      /* router weight on input: x scaled by w before GEMM1, the output unweighted */
      const double w_in = L->weight_on_input ? w : 1.0, w_out = L->weight_on_input ? 1.0 : w;

      /* gu = x[t] @ gate_up_proj[e] + bias: N1 = 2I outputs (gated) or I (without mul) */
      load_bias(bias_dt, L->gate_up_proj_bias, e, N1, row, gu);
      for (int64_t i = 0; i < H; i++)
        xs[i] = xd[i] * w_in;
      expert_gemm(L, L->gate_up_proj, L->gate_up_proj_scales, e, H, N1, xs, gu, row);

      for (int64_t i = 0; i < I; i++)
        h[i] = round_to(L->dtype, activate(L, gu, i));

      /* y = h @ down_proj[e] + bias */
      load_bias(bias_dt, L->down_proj_bias, e, H, row, y);
      for (int64_t i = 0; i < I; i++)
        hd[i] = h[i];
      expert_gemm(L, L->down_proj, L->down_proj_scales, e, I, H, hd, y, row);

      for (int64_t j = 0; j < H; j++)
        o[j] += (float)(y[j] * w_out);
    }
  }
  rc = 0;
done:
  free(xd);
  free(fbuf);
  free(kept);
  free(taken);
  return rc;
}

double mj_rel_error(const float *got, const float *want, int64_t n) {
  double max_diff = 0.0, max_want = 0.0;
  for (int64_t i = 0; i < n; i++) {
    if (isnan(got[i]))
      return INFINITY;
    max_diff = fmax(max_diff, fabs((double)got[i] - (double)want[i]));
    max_want = fmax(max_want, fabs((double)want[i]));
  }
  return max_want > 0.0 ? max_diff / max_want : max_diff;
}

double mj_tolerance(moejit_dtype dt) {
  switch (dt) {
  case MOEJIT_F32: return 1e-5;
  case MOEJIT_F16:
  case MOEJIT_BF16: return 2e-2;
  default: return 0.0;
  }
}

void mj_ref_route_logits(int64_t tokens, int64_t experts, int64_t top_k, const float *logits,
                         int32_t *ids, float *weights) {
  for (int64_t t = 0; t < tokens; t++) {
    const float *row = logits + t * experts; /* [E] */
    int32_t *id = ids + t * top_k;
    float *w = weights + t * top_k;
    double v[32];
    for (int64_t k = 0; k < top_k; k++) {
      int64_t best = -1;
      for (int64_t e = 0; e < experts; e++) {
        int taken = 0;
        for (int64_t j = 0; j < k; j++)
          taken |= id[j] == e;
        /* NaN ranks with -inf; the first maximum wins: ties go to the lower id */
        double x = isnan(row[e]) ? -INFINITY : row[e];
        if (!taken && (best < 0 || x > (isnan(row[best]) ? -INFINITY : row[best])))
          best = e;
      }
      id[k] = (int32_t)best;
      v[k] = isnan(row[best]) ? -INFINITY : row[best];
    }
    /* softmax over the K; +inf ones share the weight, all -inf share it equally */
    const double top = v[0]; /* the largest: the first pick */
    double sum = 0.0;
    for (int64_t k = 0; k < top_k; k++) {
      v[k] = top == INFINITY ? (v[k] == INFINITY) : top == -INFINITY ? 1.0 : exp(v[k] - top);
      sum += v[k];
    }
    for (int64_t k = 0; k < top_k; k++)
      w[k] = (float)(v[k] / sum);
  }
}

mj_ref_layer mj_ref_layer_of(const moejit_layer_desc *d, int64_t tokens) {
  mj_ref_layer r;
  memset(&r, 0, sizeof r);
  r.tokens = tokens, r.hidden = d->hidden, r.intermediate = d->intermediate;
  r.experts = d->experts, r.top_k = d->top_k, r.dtype = d->dtype;
  r.alpha = d->alpha, r.limit = d->limit;
  r.global_experts = d->global_experts, r.capacity = d->expert_capacity;
  r.weight_on_input = d->apply_router_weight_on_input, r.bias_f32 = d->bias_f32;
  r.activation = d->activation, r.gate_up_layout = d->gate_up_layout;
  r.mxfp4 = d->weight_format == MOEJIT_WEIGHTS_MXFP4;
  return r;
}
