/* test_ref_golden.c: checks the CPU reference (ref.c) against every golden case, plus its dtype
 * conversions and the out-of-range-id rule; uses golden.c and cmocka. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "golden.h"
#include "tools/ref.h"
#include "templates/mxfp4.cuh"

enum { MAX_CASES = 64 };

/* The state of one golden test. */
typedef struct golden_case {
  const char *root;
  char name[64];
} golden_case;

static float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* A reference layer of the GPT-OSS form over the given tensors, with no options. */
static mj_ref_layer ref_layer(int64_t T, int64_t H, int64_t I, int64_t E, int64_t K,
                              moejit_dtype dtype, float alpha, float limit, const void *x,
                              const void *w1, const void *b1, const void *w2, const void *b2,
                              const int32_t *ids, const float *weights) {
  mj_ref_layer r;
  memset(&r, 0, sizeof r);
  r.tokens = T, r.hidden = H, r.intermediate = I, r.experts = E, r.top_k = K;
  r.dtype = dtype, r.alpha = alpha, r.limit = limit;
  r.x = x, r.gate_up_proj = w1, r.gate_up_proj_bias = b1, r.down_proj = w2, r.down_proj_bias = b2;
  r.topk_ids = ids, r.topk_weights = weights;
  return r;
}

static mj_ref_layer golden_layer(const mj_golden *g) {
  return ref_layer(g->tokens, g->hidden, g->intermediate, g->experts, g->top_k, g->dtype, g->alpha,
                   g->limit, g->x, g->gate_up_proj, g->gate_up_proj_bias, g->down_proj,
                   g->down_proj_bias, g->topk_ids, g->topk_weights);
}

/* Loads the test's case into *g; a case that does not load fails the test, naming the fault. */
static void load_case(void **state, mj_golden *g) {
  const golden_case *c = *state;
  char err[512];
  if (mj_golden_load(c->root, c->name, g, err, sizeof err) != 0)
    fail_msg("%s", err);
}

static void test_golden_case(void **state) {
  mj_golden g;
  load_case(state, &g);

  /* the dense routing form names the same weights */
  for (int64_t t = 0; t < g.tokens; t++)
    for (int64_t k = 0; k < g.top_k; k++) {
      const int32_t e = g.topk_ids[t * g.top_k + k];
      assert_true(e >= 0 && e < g.experts);
      assert_true(g.dense_weights[t * g.experts + e] == g.topk_weights[t * g.top_k + k]);
    }

  float *out = malloc((size_t)(g.tokens * g.hidden) * sizeof *out); /* [T, H] */
  assert_non_null(out);
  const mj_ref_layer L = golden_layer(&g);
  assert_int_equal(mj_ref_forward(&L, NULL, g.tokens, out), 0);
  const double error = mj_rel_error(out, g.expected, g.tokens * g.hidden);
  const double tol = mj_tolerance(g.dtype);
  print_message(
      "%-10s T=%-4lld H=%-4lld I=%-4lld E=%-3lld K=%lld  rel error %.3e (tolerance %.0e)\n", g.name,
      (long long)g.tokens, (long long)g.hidden, (long long)g.intermediate, (long long)g.experts,
      (long long)g.top_k, error, tol);
  free(out);
  mj_golden_free(&g);
  assert_true(error <= tol);
}

/* An MXFP4 case: the decode gives exactly the dequantised bf16 weights the case carries (made by
 * another decoder); the reference on the MXFP4 weights and on those bf16 weights both meet the
 * expected output, and agree with each other to fp32 rounding (the same sums, in double, taken in
 * another order). */
static void test_mxfp4_case(void **state) {
  mj_golden g;
  load_case(state, &g);
  assert_true(g.mxfp4);
  const int64_t T = g.tokens, H = g.hidden, I = g.intermediate, E = g.experts;
  for (int64_t e = 0; e < E; e++) /* gate_up_proj [E, H, 2I] against blocks [E, 2I, H/32, 16] */
    for (int64_t n = 0; n < 2 * I; n++)
      for (int64_t k = 0; k < H; k++) {
        const int64_t r = e * 2 * I + n;
        const double w =
            mj_ref_mxfp4(g.gate_up_proj_blocks + r * H / 2, g.gate_up_proj_scales + r * H / 32, k);
        const float want = mj_load_f32(g.dtype, g.gate_up_proj, (e * H + k) * 2 * I + n);
        if (w != (double)want)
          fail_msg("%s: gate_up (e %lld, k %lld, n %lld) decodes to %g, the case says %g", g.name,
                   (long long)e, (long long)k, (long long)n, w, (double)want);
      }
  for (int64_t e = 0; e < E; e++) /* down_proj [E, I, H] against blocks [E, H, I/32, 16] */
    for (int64_t n = 0; n < H; n++)
      for (int64_t k = 0; k < I; k++) {
        const int64_t r = e * H + n;
        const double w =
            mj_ref_mxfp4(g.down_proj_blocks + r * I / 2, g.down_proj_scales + r * I / 32, k);
        assert_true(w == (double)mj_load_f32(g.dtype, g.down_proj, (e * I + k) * H + n));
      }

  float *mx = malloc((size_t)(2 * T * H) * sizeof *mx), *bf = mx + T * H; /* [T, H] each */
  assert_non_null(mx);
  mj_ref_layer L = golden_layer(&g);
  assert_int_equal(mj_ref_forward(&L, NULL, T, bf), 0);
  L.mxfp4 = 1;
  L.gate_up_proj = g.gate_up_proj_blocks, L.gate_up_proj_scales = g.gate_up_proj_scales;
  L.down_proj = g.down_proj_blocks, L.down_proj_scales = g.down_proj_scales;
  assert_int_equal(mj_ref_forward(&L, NULL, T, mx), 0);
  const double error = mj_rel_error(mx, g.expected, T * H),
               bf_error = mj_rel_error(bf, g.expected, T * H), apart = mj_rel_error(mx, bf, T * H),
               tol = mj_tolerance(g.dtype);
  print_message("%-9s T=%-4lld H=%-4lld I=%-4lld E=%-3lld K=%lld  rel error %.3e, dequantised "
                "bf16 %.3e, apart %.1e (tolerance %.0e)\n",
                g.name, (long long)T, (long long)H, (long long)I, (long long)E, (long long)g.top_k,
                error, bf_error, apart, tol);
  free(mx);
  mj_golden_free(&g);
  assert_true(error <= tol);
  assert_true(bf_error <= tol);
  assert_true(apart <= 1e-5);
}

static void test_golden_root_missing(void **state) {
  const char *root = *state;
  fail_msg("golden vectors not found at %s (required: set MOEJIT_GOLDEN_DIR or check out "
           "shared/golden beside the repository)",
           root);
}

static void test_conversions(void **state) {
  (void)state;
  /* bf16: exact values, ties to even, carries, specials */
  assert_int_equal(mj_f32_to_bf16(1.0f), 0x3F80);
  assert_true(mj_bf16_to_f32(0x3F80) == 1.0f);
  assert_int_equal(mj_f32_to_bf16(bits_f32(0x3F808000u)), 0x3F80); /* tie, even below */
  assert_int_equal(mj_f32_to_bf16(bits_f32(0x3F818000u)), 0x3F82); /* tie, odd below: up */
  assert_int_equal(mj_f32_to_bf16(bits_f32(0x3F808001u)), 0x3F81); /* above the tie */
  assert_int_equal(mj_f32_to_bf16(bits_f32(0x7F7FFFFFu)), 0x7F80); /* FLT_MAX rounds to inf */
  assert_int_equal(mj_f32_to_bf16(-0.0f), 0x8000);
  assert_int_equal(mj_f32_to_bf16(INFINITY), 0x7F80);
  assert_true(isnan(mj_bf16_to_f32(mj_f32_to_bf16(NAN))));
  assert_true(isnan(mj_bf16_to_f32(mj_f32_to_bf16(bits_f32(0x7F800001u))))); /* low-bit NaN */

  /* f16: range ends, subnormals, ties to even, specials */
  assert_int_equal(mj_f32_to_f16(1.0f), 0x3C00);
  assert_true(mj_f16_to_f32(0x3C00) == 1.0f);
  assert_int_equal(mj_f32_to_f16(65504.0f), 0x7BFF);
  assert_true(mj_f16_to_f32(0x7BFF) == 65504.0f);
  assert_int_equal(mj_f32_to_f16(65519.0f), 0x7BFF);
  assert_int_equal(mj_f32_to_f16(65520.0f), 0x7C00); /* tie with odd 65504: to infinity */
  assert_int_equal(mj_f32_to_f16(0x1p-24f), 0x0001);
  assert_true(mj_f16_to_f32(0x0001) == 0x1p-24f);
  assert_true(mj_f16_to_f32(0x8001) == -0x1p-24f);
  assert_int_equal(mj_f32_to_f16(0x1p-25f), 0x0000);     /* tie with 0: even */
  assert_int_equal(mj_f32_to_f16(0x1.8p-25f), 0x0001);   /* above the tie */
  assert_int_equal(mj_f32_to_f16(0x1.8p-24f), 0x0002);   /* tie between 1 and 2 units */
  assert_int_equal(mj_f32_to_f16(0x1.ff8p-15f), 0x03FF); /* largest subnormal */
  assert_int_equal(mj_f32_to_f16(0x1.ffcp-15f), 0x0400); /* its tie with 2^-14: up */
  assert_int_equal(mj_f32_to_f16(0x1p-14f), 0x0400);
  assert_int_equal(mj_f32_to_f16(1.0f + 0x1p-11f), 0x3C00); /* tie, even below */
  assert_int_equal(mj_f32_to_f16(1.0f + 0x3p-11f), 0x3C02); /* tie, odd below: up */
  assert_int_equal(mj_f32_to_f16(-2.0f), 0xC000);
  assert_int_equal(mj_f32_to_f16(INFINITY), 0x7C00);
  assert_true(isinf(mj_f16_to_f32(0xFC00)) && mj_f16_to_f32(0xFC00) < 0);
  assert_true(isnan(mj_f16_to_f32(mj_f32_to_f16(NAN))));
  assert_true(isnan(mj_f16_to_f32(mj_f32_to_f16(bits_f32(0x7F800001u)))));

  /* every finite 16-bit value survives the round trip through f32 */
  for (uint32_t h = 0; h < 0x10000u; h++) {
    const float bf = mj_bf16_to_f32((uint16_t)h), hf = mj_f16_to_f32((uint16_t)h);
    if (!isnan(bf))
      assert_int_equal(mj_f32_to_bf16(bf), h);
    if (!isnan(hf))
      assert_int_equal(mj_f32_to_f16(hf), h);
  }

  /* typed access */
  uint16_t half[2];
  mj_store_f32(MOEJIT_BF16, half, 1, 1.5f);
  assert_true(mj_load_f32(MOEJIT_BF16, half, 1) == 1.5f);
  mj_store_f32(MOEJIT_F16, half, 0, -0.25f);
  assert_true(mj_load_f32(MOEJIT_F16, half, 0) == -0.25f);
  assert_int_equal(mj_dtype_size(MOEJIT_F32), 4);
  assert_int_equal(mj_dtype_size(MOEJIT_F16), 2);
  assert_int_equal(mj_dtype_size(MOEJIT_BF16), 2);
  assert_int_equal(mj_dtype_size(MOEJIT_I32), 4);
  assert_int_equal(mj_dtype_size(MOEJIT_I64), 8);

  /* the metric */
  const float want[2] = {2.0f, -4.0f}, got[2] = {2.5f, -4.0f}, zero[2] = {0.0f, 0.0f};
  const float nan_got[2] = {2.0f, NAN};
  assert_true(mj_rel_error(got, want, 2) == 0.125);
  assert_true(mj_rel_error(got, zero, 2) == 4.0);
  assert_true(isinf(mj_rel_error(nan_got, want, 2)));
}

/* A tiny layer with deterministic values: T=2, H=8, I=8, E=3, K=2, f32. */
enum { T_ = 2, H_ = 8, I_ = 8, E_ = 3, K_ = 2 };
typedef struct tiny_layer {
  float x[T_ * H_];                /* [T, H] */
  float gate_up[E_ * H_ * 2 * I_]; /* [E, H, 2I] */
  float gate_up_bias[E_ * 2 * I_]; /* [E, 2I] */
  float down[E_ * I_ * H_];        /* [E, I, H] */
  float down_bias[E_ * H_];        /* [E, H] */
  int32_t ids[T_ * K_];            /* [T, K] */
  float weights[T_ * K_];          /* [T, K] */
} tiny_layer;

static void fill(float *a, int n, uint32_t *seed) {
  for (int i = 0; i < n; i++) {
    *seed = *seed * 1664525u + 1013904223u;
    a[i] = (float)((*seed >> 8) & 0xffff) / 32768.0f - 1.0f;
  }
}

static void tiny_init(tiny_layer *t) {
  uint32_t seed = 12345;
  fill(t->x, T_ * H_, &seed);
  fill(t->gate_up, E_ * H_ * 2 * I_, &seed);
  fill(t->gate_up_bias, E_ * 2 * I_, &seed);
  fill(t->down, E_ * I_ * H_, &seed);
  fill(t->down_bias, E_ * H_, &seed);
  const int32_t ids[T_ * K_] = {2, 0, 1, 1};
  const float weights[T_ * K_] = {0.6f, 0.4f, 0.7f, 0.3f};
  memcpy(t->ids, ids, sizeof ids);
  memcpy(t->weights, weights, sizeof weights);
}

static mj_ref_layer tiny_layer_of(const tiny_layer *t) {
  return ref_layer(T_, H_, I_, E_, K_, MOEJIT_F32, 1.702f, 7.0f, t->x, t->gate_up, t->gate_up_bias,
                   t->down, t->down_bias, t->ids, t->weights);
}

static void test_bad_id_contributes_nothing(void **state) {
  (void)state;
  static const int32_t bad_ids[] = {E_, -1, INT32_MAX};
  tiny_layer zeroed, bad;
  tiny_init(&zeroed);
  zeroed.weights[1] = 0.0f; /* slot (0, 1) keeps a valid id but weighs nothing */
  mj_ref_layer Lz = tiny_layer_of(&zeroed);
  float want[T_ * H_], got[T_ * H_];
  assert_int_equal(mj_ref_forward(&Lz, NULL, T_, want), 0);
  for (size_t b = 0; b < sizeof bad_ids / sizeof bad_ids[0]; b++) {
    tiny_init(&bad);
    bad.ids[1] = bad_ids[b];
    mj_ref_layer Lb = tiny_layer_of(&bad);
    assert_int_equal(mj_ref_forward(&Lb, NULL, T_, got), 0);
    for (int i = 0; i < T_ * H_; i++)
      assert_true(got[i] == want[i]);
  }
}

static void test_token_subset_and_bad_args(void **state) {
  (void)state;
  tiny_layer t;
  tiny_init(&t);
  mj_ref_layer L = tiny_layer_of(&t);
  float all[T_ * H_], one[H_];
  const int64_t second = 1, outside = T_;
  assert_int_equal(mj_ref_forward(&L, NULL, T_, all), 0);
  assert_int_equal(mj_ref_forward(&L, &second, 1, one), 0);
  assert_memory_equal(one, all + H_, sizeof one);

  assert_int_equal(mj_ref_forward(NULL, NULL, T_, all), -1);
  assert_int_equal(mj_ref_forward(&L, NULL, T_ - 1, all), -1);
  assert_int_equal(mj_ref_forward(&L, &outside, 1, one), -1);
  L.dtype = MOEJIT_I32;
  assert_int_equal(mj_ref_forward(&L, NULL, T_, all), -1);
}

static void test_mxfp4_decode(void **state) {
  (void)state;
  /* one block: codes 0..15 in order (element 2b low nibble, 2b + 1 high), scale 127: x1 */
  uint8_t block[16], scale = 127;
  for (int b = 0; b < 16; b++)
    block[b] = (uint8_t)((2 * b) % 16 | ((2 * b + 1) % 16) << 4);
  static const double e2m1[16] = {0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6};
  for (int k = 0; k < 32; k++)
    assert_true(mj_ref_mxfp4(block, &scale, k) == e2m1[k % 16]);
  assert_true(signbit(mj_ref_mxfp4(block, &scale, 8))); /* code 8 is -0 */
  /* the scale is a power of two from 2^-127 (byte 0) to 2^127 (byte 254); byte 255 is NaN */
  scale = 130;
  assert_true(mj_ref_mxfp4(block, &scale, 7) == 48.0);
  scale = 0;
  assert_true(mj_ref_mxfp4(block, &scale, 2) == ldexp(1.0, -127));
  scale = 254;
  assert_true(mj_ref_mxfp4(block, &scale, 15) == -6.0 * ldexp(1.0, 127));
  scale = 255;
  assert_true(isnan(mj_ref_mxfp4(block, &scale, 15)));
  assert_true(isnan(mj_ref_mxfp4(block, &scale, 0))); /* code 0 too: the whole block */
  /* a layer of MXFP4 weights needs H and I multiples of 32 and both scales */
  tiny_layer t;
  tiny_init(&t);
  mj_ref_layer L = tiny_layer_of(&t);
  float out[T_ * H_];
  L.mxfp4 = 1;
  L.gate_up_proj_scales = L.down_proj_scales = &scale;
  assert_int_equal(mj_ref_forward(&L, NULL, T_, out), -1); /* H_ is not a multiple of 32 */
}

/* The kernels' decoder (templates/mxfp4.cuh, plain C as well as CUDA) gives the reference's weight
 * in f32 for every code and every scale byte, bit for bit: the same value (infinity past f32's
 * range, as for bf16), the same sign of zero, NaN for scale 255. */
static void test_mxfp4_kernel_decoder(void **state) {
  (void)state;
  for (unsigned s = 0; s < 256; s++)
    for (unsigned c = 0; c < 16; c++) {
      uint8_t block[16] = {0}, scale = (uint8_t)s;
      block[0] = (uint8_t)c;
      /* in f32, as the kernels hold it before rounding to the layer's dtype: past 2^128, inf */
      const float want = (float)mj_ref_mxfp4(block, &scale, 0);
      const float got = mj_e2m1(c) * mj_e8m0(s);
      if (isnan(want) ? !isnan(got) : (got != want || !signbit(got) != !signbit(want)))
        fail_msg("code %u scale %u: the kernels decode %a, the reference %a", c, s, (double)got,
                 (double)want);
      /* the high nibble is read the same way (the decoder masks the low four bits itself) */
      assert_true(mj_e2m1(c | 0xf0u) == mj_e2m1(c) &&
                  !signbit(mj_e2m1(c | 0xf0u)) == !signbit(mj_e2m1(c)));
    }
}

/* A case of tests/golden-act (another activation, gate and up in halves, no biases; made by
 * tests/make_act_cases.py in numpy): the reference with the case's activation, layout and biases
 * meets the expected output; with another layout it does not, so the layout is read. */
static void test_act_case(void **state) {
  mj_golden g;
  load_case(state, &g);
  float *out = malloc((size_t)(g.tokens * g.hidden) * sizeof *out); /* [T, H] */
  assert_non_null(out);
  mj_ref_layer L = golden_layer(&g);
  L.activation = g.activation;
  L.gate_up_layout = g.gate_up_layout;
  assert_int_equal(mj_ref_forward(&L, NULL, g.tokens, out), 0);
  const double error = mj_rel_error(out, g.expected, g.tokens * g.hidden);
  const double tol = mj_tolerance(g.dtype);
  double other = -1.0; /* the error with the layout the case does not have (gated cases) */
  if (g.activation <= MOEJIT_ACT_SWIGLU_STEP) {
    L.gate_up_layout =
        g.gate_up_layout == MOEJIT_GATE_UP_HALVES ? MOEJIT_UP_GATE_HALVES : MOEJIT_GATE_UP_HALVES;
    assert_int_equal(mj_ref_forward(&L, NULL, g.tokens, out), 0);
    other = mj_rel_error(out, g.expected, g.tokens * g.hidden);
  }
  print_message("%-24s T=%-3lld H=%-3lld I=%-3lld E=%lld K=%lld %s  rel error %.3e (another "
                "layout: %.2g; tolerance %.0e)\n",
                g.name, (long long)g.tokens, (long long)g.hidden, (long long)g.intermediate,
                (long long)g.experts, (long long)g.top_k, g.no_bias ? "no bias" : "biases ", error,
                other, tol);
  free(out);
  mj_golden_free(&g);
  assert_true(error <= tol);
  assert_true(other < 0.0 || other > 10 * tol);
}

/* Adds a test per case folder under root (fn), or one that fails naming the root when it has
 * none. */
static void add_cases(const char *root, void (*fn)(void **), char (*names)[64], golden_case *cases,
                      struct CMUnitTest *tests, size_t *ntests) {
  const int n = mj_golden_list(root, names, MAX_CASES);
  for (int i = 0; i < n; i++) {
    cases[i].root = root;
    memcpy(cases[i].name, names[i], sizeof cases[i].name);
    tests[(*ntests)++] = (struct CMUnitTest){names[i], fn, NULL, NULL, &cases[i]};
  }
  if (n <= 0)
    tests[(*ntests)++] =
        (struct CMUnitTest){"golden_root", test_golden_root_missing, NULL, NULL, (void *)root};
}

int main(void) {
  static char names[3][MAX_CASES][64];
  static golden_case cases[3][MAX_CASES];
  static const struct CMUnitTest fixed[] = {
      cmocka_unit_test(test_conversions),
      cmocka_unit_test(test_bad_id_contributes_nothing),
      cmocka_unit_test(test_token_subset_and_bad_args),
      cmocka_unit_test(test_mxfp4_decode),
      cmocka_unit_test(test_mxfp4_kernel_decoder),
  };
  enum { NFIXED = sizeof fixed / sizeof fixed[0] };
  struct CMUnitTest tests[3 * MAX_CASES + NFIXED];
  size_t ntests = NFIXED;
  memcpy(tests, fixed, sizeof fixed);
  add_cases(mj_golden_root(), test_golden_case, names[0], cases[0], tests, &ntests);
  add_cases(mj_golden_mxfp4_root(), test_mxfp4_case, names[1], cases[1], tests, &ntests);
  add_cases(mj_golden_act_root(), test_act_case, names[2], cases[2], tests, &ntests);
  return _cmocka_run_group_tests("ref_golden", tests, ntests, NULL, NULL);
}
