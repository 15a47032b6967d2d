/* test_rt_api.c: the public API's validation without a GPU: context options, layer descriptors,
 * workspace sizes, forward on an offline plan, status names, version and defaults; and the forward
 * path itself (argument checks, launch order, grids, workspace bounds) against a fake driver table.
 * Uses moejit.h, runtime/internal.h (the context and plan structs, for the fake) and cmocka. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moejit.h"
#include "runtime/internal.h"

/* The plan every test shares: H=64 I=96 E=5 K=2 f32, up to 100 tokens, compiled for sm_90a. */
enum { H = 64, I = 96, E = 5, K = 2, MAX_T = 100 };

typedef struct log_capture {
  int count;
  moejit_log_level level;
  char last[1024];
} log_capture;

static void capture_log(void *user, moejit_log_level level, const char *message) {
  log_capture *c = user;
  c->count++;
  c->level = level;
  snprintf(c->last, sizeof c->last, "%s", message);
}

typedef struct fixture {
  log_capture log;
  moejit_ctx *ctx;
  moejit_plan *plan;
  moejit_status plan_status;
  char plan_error[1024];
  log_capture plan_log; /* the log as plan creation left it */
  moejit_layer_desc desc;
} fixture;

static moejit_layer_desc small_desc(void) {
  moejit_layer_desc d;
  moejit_layer_desc_init(&d);
  d.hidden = H;
  d.intermediate = I;
  d.experts = E;
  d.top_k = K;
  d.max_tokens = MAX_T;
  d.dtype = MOEJIT_F32;
  d.exact_f32 = 1; /* the FFMA path: two configurations, both reached by T <= MAX_T */
  return d;
}

static int group_setup(void **state) {
  fixture *fx = calloc(1, sizeof *fx);
  if (!fx)
    return -1;
  moejit_ctx_options opts;
  moejit_ctx_options_init(&opts);
  opts.offline_arch = "sm_90a";
  opts.cache_dir = ""; /* memory only: no cubins or tuning records from the user's cache */
  opts.log = capture_log;
  opts.log_user = &fx->log;
  moejit_status st = moejit_create(&fx->ctx, &opts);
  if (st != MOEJIT_OK) {
    print_error("moejit_create(offline sm_90a): %s: %s\n", moejit_status_name(st), fx->log.last);
    free(fx);
    return -1;
  }
  /* A plan needs NVRTC; without it the tests that use the plan fail with the reason. */
  fx->desc = small_desc();
  fx->plan_status = moejit_plan_create(fx->ctx, &fx->desc, &fx->plan);
  snprintf(fx->plan_error, sizeof fx->plan_error, "%s", moejit_last_error(fx->ctx));
  fx->plan_log = fx->log;
  *state = fx;
  return 0;
}

static int group_teardown(void **state) {
  fixture *fx = *state;
  if (fx) {
    moejit_plan_destroy(fx->plan);
    moejit_destroy(fx->ctx);
    free(fx);
  }
  return 0;
}

static const moejit_plan *need_plan(const fixture *fx) {
  if (fx->plan_status != MOEJIT_OK || !fx->plan)
    fail_msg("the shared offline plan could not be created (%s): %s",
             moejit_status_name(fx->plan_status), fx->plan_error);
  return fx->plan;
}

static void assert_contains(const char *haystack, const char *needle) {
  if (!haystack || !strstr(haystack, needle))
    fail_msg("\"%s\" not found in \"%s\"", needle, haystack ? haystack : "(null)");
}

/* ---- contexts -------------------------------------------------------------------------------- */

static void test_create_bad_args(void **state) {
  (void)state;
  moejit_ctx_options opts;
  moejit_ctx_options_init(&opts);
  opts.offline_arch = "sm_90a";
  assert_int_equal(moejit_create(NULL, &opts), MOEJIT_ERR_INVALID_ARG);
  assert_int_equal(moejit_create(NULL, NULL), MOEJIT_ERR_INVALID_ARG);

  moejit_ctx *ctx = (moejit_ctx *)&opts; /* not NULL: create must clear it */
  opts.struct_size = 0;
  assert_int_equal(moejit_create(&ctx, &opts), MOEJIT_ERR_INVALID_ARG);
  assert_null(ctx);
  opts.struct_size = sizeof opts + 8;
  ctx = (moejit_ctx *)&opts;
  assert_int_equal(moejit_create(&ctx, &opts), MOEJIT_ERR_INVALID_ARG);
  assert_null(ctx);

  static const char *const bad[] = {"sm_70", "foo",     "sm_9x", "",           "sm_",      "sm_75",
                                    "SM_90", "sm_90aa", "sm_a0", "compute_90", "sm_123456"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    log_capture log = {0};
    moejit_ctx_options_init(&opts);
    opts.offline_arch = bad[i];
    opts.cache_dir = "";
    opts.log = capture_log;
    opts.log_user = &log;
    ctx = (moejit_ctx *)&opts;
    moejit_status st = moejit_create(&ctx, &opts);
    if (st != MOEJIT_ERR_INVALID_ARG)
      fail_msg("offline_arch=\"%s\" gave %s", bad[i], moejit_status_name(st));
    assert_null(ctx);
    /* No context comes back, so the detail goes to the log. */
    char needle[64];
    snprintf(needle, sizeof needle, "offline_arch=\"%s\"", bad[i]);
    assert_true(log.count >= 1);
    assert_contains(log.last, needle);
  }
  static const char *const good[] = {"sm_80",  "sm_86",   "sm_89", "sm_90",
                                     "sm_90a", "sm_100a", "sm_120"};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    moejit_ctx_options_init(&opts);
    opts.offline_arch = good[i];
    opts.cache_dir = "";
    ctx = NULL;
    moejit_status st = moejit_create(&ctx, &opts);
    if (st != MOEJIT_OK)
      fail_msg("offline_arch=\"%s\" gave %s", good[i], moejit_status_name(st));
    assert_non_null(ctx);
    assert_string_equal(moejit_last_error(ctx), "");
    moejit_destroy(ctx);
  }
}

static void test_create_without_device(void **state) {
  (void)state;
  log_capture log = {0};
  moejit_ctx_options opts;
  moejit_ctx_options_init(&opts);
  opts.cache_dir = "";
  opts.log = capture_log;
  opts.log_user = &log;
  moejit_ctx *ctx = (moejit_ctx *)&opts;
  moejit_status st = moejit_create(&ctx, &opts);
  if (st == MOEJIT_OK) {
    moejit_destroy(ctx);
    skip(); /* a GPU is present: nothing to test here */
  }
  assert_int_equal(st, MOEJIT_ERR_NO_DEVICE);
  assert_null(ctx);
  assert_true(log.count >= 1);
  assert_contains(log.last, "CUDA");
  /* Options are optional, and give the same answer. */
  ctx = (moejit_ctx *)&opts;
  assert_int_equal(moejit_create(&ctx, NULL), MOEJIT_ERR_NO_DEVICE);
  assert_null(ctx);
}

static void test_destroy_null(void **state) {
  (void)state;
  moejit_destroy(NULL);
  moejit_plan_destroy(NULL);
  assert_non_null(moejit_last_error(NULL));
  assert_true(moejit_last_error(NULL)[0] != '\0');
}

/* ---- layer descriptors ----------------------------------------------------------------------- */

/* Data, not branches: the fields a case may change, by offset and kind. */
typedef enum { F_I64, F_ENUM, F_INT, F_FLOAT, F_SIZE } field_kind;
static const struct {
  const char *name;
  size_t offset;
  field_kind kind;
} fields[] = {
    {"struct_size", offsetof(moejit_layer_desc, struct_size), F_SIZE},
    {"hidden", offsetof(moejit_layer_desc, hidden), F_I64},
    {"intermediate", offsetof(moejit_layer_desc, intermediate), F_I64},
    {"experts", offsetof(moejit_layer_desc, experts), F_I64},
    {"top_k", offsetof(moejit_layer_desc, top_k), F_I64},
    {"max_tokens", offsetof(moejit_layer_desc, max_tokens), F_I64},
    {"dtype", offsetof(moejit_layer_desc, dtype), F_ENUM},
    {"ids_dtype", offsetof(moejit_layer_desc, ids_dtype), F_ENUM},
    {"weights_dtype", offsetof(moejit_layer_desc, weights_dtype), F_ENUM},
    {"routing", offsetof(moejit_layer_desc, routing), F_ENUM},
    {"alpha", offsetof(moejit_layer_desc, alpha), F_FLOAT},
    {"limit", offsetof(moejit_layer_desc, limit), F_FLOAT},
    {"expert_capacity", offsetof(moejit_layer_desc, expert_capacity), F_I64},
    {"global_experts", offsetof(moejit_layer_desc, global_experts), F_I64},
    {"apply_router_weight_on_input", offsetof(moejit_layer_desc, apply_router_weight_on_input),
     F_INT},
    {"logits_dtype", offsetof(moejit_layer_desc, logits_dtype), F_ENUM},
    {"bias_f32", offsetof(moejit_layer_desc, bias_f32), F_INT},
    {"exact_f32", offsetof(moejit_layer_desc, exact_f32), F_INT},
    {"weight_format", offsetof(moejit_layer_desc, weight_format), F_ENUM},
    {"batch_invariant", offsetof(moejit_layer_desc, batch_invariant), F_INT},
    {"activation", offsetof(moejit_layer_desc, activation), F_ENUM},
    {"gate_up_layout", offsetof(moejit_layer_desc, gate_up_layout), F_ENUM},
    {"no_bias", offsetof(moejit_layer_desc, no_bias), F_INT},
};

static void set_field(moejit_layer_desc *d, const char *name, double v) {
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    if (strcmp(fields[i].name, name) != 0)
      continue;
    char *p = (char *)d + fields[i].offset;
    int64_t i64 = (int64_t)v;
    int iv = (int)v;
    float f = (float)v;
    size_t z = (size_t)v;
    switch (fields[i].kind) {
    case F_I64: memcpy(p, &i64, sizeof i64); break;
    case F_ENUM:
    case F_INT: memcpy(p, &iv, sizeof iv); break;
    case F_FLOAT: memcpy(p, &f, sizeof f); break;
    case F_SIZE: memcpy(p, &z, sizeof z); break;
    }
    return;
  }
  fail_msg("no field %s", name);
}

typedef struct desc_case {
  const char *field;
  double value;
  moejit_status want;
  const char *needle; /* what the detail must say, after "desc->" */
} desc_case;

static const desc_case desc_cases[] = {
    {"struct_size", 8, MOEJIT_ERR_INVALID_ARG, "struct_size=8"},
    {"hidden", 0, MOEJIT_ERR_INVALID_ARG, "hidden=0"},
    {"hidden", -64, MOEJIT_ERR_INVALID_ARG, "hidden=-64"},
    {"hidden", 4100, MOEJIT_ERR_INVALID_ARG, "hidden=4100 is not a multiple of 8"},
    {"hidden", 1 << 21, MOEJIT_ERR_INVALID_ARG, "hidden=2097152"},
    {"intermediate", 12, MOEJIT_ERR_INVALID_ARG, "intermediate=12"},
    {"intermediate", 0, MOEJIT_ERR_INVALID_ARG, "intermediate=0"},
    {"experts", 0, MOEJIT_ERR_INVALID_ARG, "experts=0"},
    {"experts", 2000, MOEJIT_ERR_INVALID_ARG, "experts=2000"},
    {"top_k", 0, MOEJIT_ERR_INVALID_ARG, "top_k=0"},
    {"top_k", 33, MOEJIT_ERR_INVALID_ARG, "top_k=33"},
    {"max_tokens", 0, MOEJIT_ERR_INVALID_ARG, "max_tokens=0"},
    {"max_tokens", -5, MOEJIT_ERR_INVALID_ARG, "max_tokens=-5"},
    {"dtype", MOEJIT_I32, MOEJIT_ERR_INVALID_ARG, "dtype=3"},
    {"dtype", 99, MOEJIT_ERR_INVALID_ARG, "dtype=99"},
    {"ids_dtype", MOEJIT_F32, MOEJIT_ERR_INVALID_ARG, "ids_dtype=0"},
    {"weights_dtype", MOEJIT_I64, MOEJIT_ERR_INVALID_ARG, "weights_dtype=4"},
    {"routing", 7, MOEJIT_ERR_INVALID_ARG, "routing=7"},
    {"routing", -1, MOEJIT_ERR_INVALID_ARG, "routing=-1"},
    {"expert_capacity", -1, MOEJIT_ERR_INVALID_ARG, "expert_capacity=-1"},
    {"global_experts", 3, MOEJIT_ERR_INVALID_ARG, "global_experts=3"},
    {"global_experts", 2048, MOEJIT_ERR_INVALID_ARG, "global_experts=2048"},
    {"apply_router_weight_on_input", 2, MOEJIT_ERR_INVALID_ARG, "apply_router_weight_on_input=2"},
    {"bias_f32", 3, MOEJIT_ERR_INVALID_ARG, "bias_f32=3"},
    {"exact_f32", -1, MOEJIT_ERR_INVALID_ARG, "exact_f32=-1"},
    {"limit", 0, MOEJIT_ERR_INVALID_ARG, "limit=0"},
    {"limit", -1, MOEJIT_ERR_INVALID_ARG, "limit=-1"},
    {"limit", INFINITY, MOEJIT_ERR_INVALID_ARG, "limit=inf"},
    {"alpha", NAN, MOEJIT_ERR_INVALID_ARG, "alpha=nan"},
    {"alpha", -INFINITY, MOEJIT_ERR_INVALID_ARG, "alpha=-inf"},
    {"weight_format", 2, MOEJIT_ERR_INVALID_ARG, "weight_format=2"},
    {"batch_invariant", 2, MOEJIT_ERR_INVALID_ARG, "batch_invariant=2"},
    {"activation", 8, MOEJIT_ERR_INVALID_ARG, "activation=8 is not a moejit_activation"},
    {"activation", -1, MOEJIT_ERR_INVALID_ARG, "activation=-1"},
    {"gate_up_layout", 3, MOEJIT_ERR_INVALID_ARG, "gate_up_layout=3"},
    {"no_bias", 2, MOEJIT_ERR_INVALID_ARG, "no_bias=2"},
    /* small_desc's layer is f32: MXFP4 weights take bf16 or f16 activations */
    {"weight_format", MOEJIT_WEIGHTS_MXFP4, MOEJIT_ERR_INVALID_ARG,
     "dtype=f32 with MXFP4 weights: the activations must be MOEJIT_BF16 or MOEJIT_F16"},
};

/* A caller built against an older header passes a shorter desc: the fields it lacks are not read
 * (here they hold garbage) and take their defaults; a size that ends inside a field is refused. */
static void test_desc_older_sizes(void **state) {
  fixture *fx = *state;
  moejit_layer_desc d = small_desc();
  d.logits_dtype = (moejit_dtype)77;
  d.bias_f32 = 5;
  d.exact_f32 = 9;
  d.unfused = 3;
  d.struct_size = offsetof(moejit_layer_desc, logits_dtype);
  moejit_plan *plan = NULL;
  moejit_status st = moejit_plan_create(fx->ctx, &d, &plan);
  if (st != MOEJIT_OK)
    fail_msg("an older desc was refused: %s", moejit_last_error(fx->ctx));
  assert_int_equal(plan->desc.unfused, 0);
  assert_int_equal(plan->desc.exact_f32, 0);
  assert_int_equal(plan->desc.struct_size, sizeof d);
  moejit_plan_destroy(plan);
  d.struct_size = offsetof(moejit_layer_desc, logits_dtype) + 2;
  assert_int_equal(moejit_plan_create(fx->ctx, &d, &plan), MOEJIT_ERR_INVALID_ARG);
  assert_non_null(strstr(moejit_last_error(fx->ctx), "struct_size"));

  /* 0.3's programs call the plain-named inits: they fill 0.3's sizes and not a byte more */
  unsigned char buf[sizeof(moejit_layer_desc) + sizeof(moejit_forward_args) + 16];
  size_t n;
  memset(buf, 0xAA, sizeof buf);
  (moejit_layer_desc_init)((moejit_layer_desc *)buf);
  memcpy(&n, buf, sizeof n);
  assert_int_equal(n, MJ_DESC_SIZE_0_3);
  assert_int_equal(n, 112); /* 0.3's sizeof, its last field ending at 108 */
  for (size_t i = n; i < sizeof buf; i++)
    assert_int_equal(buf[i], 0xAA);
  memset(buf, 0xAA, sizeof buf);
  (moejit_forward_args_init)((moejit_forward_args *)buf);
  memcpy(&n, buf, sizeof n);
  assert_int_equal(n, MJ_ARGS_SIZE_0_3);
  for (size_t i = n; i < sizeof buf; i++)
    assert_int_equal(buf[i], 0xAA);
  /* a sized init fills that far; the macro, the whole struct */
  memset(buf, 0xAA, sizeof buf);
  moejit_layer_desc_init_sized((moejit_layer_desc *)buf, 96);
  memcpy(&n, buf, sizeof n);
  assert_int_equal(n, 96);
  assert_int_equal(buf[96], 0xAA);
  moejit_layer_desc whole;
  moejit_layer_desc_init(&whole);
  assert_int_equal(whole.struct_size, sizeof whole);
  /* and a plan takes a descriptor of 0.3's size: what lies past it at its defaults */
  d = small_desc();
  d.struct_size = MJ_DESC_SIZE_0_3;
  d.batch_invariant = 7;
  d.activation = (moejit_activation)99;
  if (moejit_plan_create(fx->ctx, &d, &plan) != MOEJIT_OK)
    fail_msg("a 0.3 desc was refused: %s", moejit_last_error(fx->ctx));
  assert_int_equal(plan->desc.batch_invariant, 0);
  assert_int_equal(plan->desc.activation, MOEJIT_ACT_SWIGLU_OAI);
  moejit_plan_destroy(plan);
}

static void test_desc_validation(void **state) {
  fixture *fx = *state;
  mj_err err;
  const moejit_layer_desc base = small_desc();
  assert_int_equal(mj_rt_check_desc(&base, &err), MOEJIT_OK);

  moejit_plan *plan = (moejit_plan *)fx; /* not NULL: a failed create must clear it */
  assert_int_equal(moejit_plan_create(fx->ctx, NULL, &plan), MOEJIT_ERR_INVALID_ARG);
  assert_null(plan);
  assert_contains(moejit_last_error(fx->ctx), "desc is NULL");
  assert_int_equal(moejit_plan_create(NULL, &base, &plan), MOEJIT_ERR_INVALID_ARG);
  assert_int_equal(moejit_plan_create(fx->ctx, &base, NULL), MOEJIT_ERR_INVALID_ARG);
  assert_contains(moejit_last_error(fx->ctx), "plan is NULL");

  for (size_t i = 0; i < sizeof desc_cases / sizeof desc_cases[0]; i++) {
    const desc_case *c = &desc_cases[i];
    moejit_layer_desc d = base;
    set_field(&d, c->field, c->value);
    int logged = fx->log.count;
    plan = (moejit_plan *)fx;
    moejit_status st = moejit_plan_create(fx->ctx, &d, &plan);
    if (st != c->want)
      fail_msg("desc->%s=%g gave %s, expected %s (%s)", c->field, c->value, moejit_status_name(st),
               moejit_status_name(c->want), moejit_last_error(fx->ctx));
    assert_null(plan);
    char needle[128];
    snprintf(needle, sizeof needle, "desc->%s", c->needle);
    assert_contains(moejit_last_error(fx->ctx), needle);
    /* The same detail went to the log. */
    assert_int_equal(fx->log.count, logged + 1);
    assert_string_equal(fx->log.last, moejit_last_error(fx->ctx));
    /* The internal check agrees with the public one. */
    assert_int_equal(mj_rt_check_desc(&d, &err), c->want);
  }

  /* The edges of each range are accepted (checked without compiling). */
  static const struct {
    const char *field;
    double value;
  } edges[] = {{"hidden", 8},
               {"hidden", 1 << 20},
               {"intermediate", 8},
               {"experts", 1},
               {"experts", 1024},
               {"top_k", 1},
               {"top_k", E},
               {"max_tokens", 1},
               {"ids_dtype", MOEJIT_I64},
               {"weights_dtype", MOEJIT_BF16},
               {"routing", MOEJIT_ROUTING_DENSE},
               {"alpha", -3.5},
               {"limit", 1e-3}};
  for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) {
    moejit_layer_desc d = base;
    set_field(&d, edges[i].field, edges[i].value);
    if (mj_rt_check_desc(&d, &err) != MOEJIT_OK)
      fail_msg("desc->%s=%g was refused: %s", edges[i].field, edges[i].value, err.msg);
  }

  /* MXFP4 weights: bf16 and f16 activations, H and I in whole 32-weight blocks */
  moejit_layer_desc d = base;
  d.weight_format = MOEJIT_WEIGHTS_MXFP4;
  d.dtype = MOEJIT_F16;
  assert_int_equal(mj_rt_check_desc(&d, &err), MOEJIT_OK);
  d.dtype = MOEJIT_BF16;
  assert_int_equal(mj_rt_check_desc(&d, &err), MOEJIT_OK);
  d.intermediate = 104;
  assert_int_equal(mj_rt_check_desc(&d, &err), MOEJIT_ERR_INVALID_ARG);
  assert_contains(err.msg, "desc->hidden=64 and desc->intermediate=104 must be multiples of 32");
  d.intermediate = I;
  d.hidden = 72;
  assert_int_equal(mj_rt_check_desc(&d, &err), MOEJIT_ERR_INVALID_ARG);
  assert_contains(err.msg, "multiples of 32 with MXFP4 weights");

  /* activations, layouts and biases: every value in range is taken; f32 biases need biases */
  d = base;
  d.activation = MOEJIT_ACT_RELU2;
  d.gate_up_layout = MOEJIT_UP_GATE_HALVES;
  d.no_bias = 1;
  assert_int_equal(mj_rt_check_desc(&d, &err), MOEJIT_OK);
  d.bias_f32 = 1;
  assert_int_equal(mj_rt_check_desc(&d, &err), MOEJIT_ERR_INVALID_ARG);
  assert_contains(err.msg, "desc->bias_f32=1 with desc->no_bias=1");

  /* capacity drops slots by the tokens before them: no batch-invariant layer has it */
  d = base;
  d.batch_invariant = 1;
  assert_int_equal(mj_rt_check_desc(&d, &err), MOEJIT_OK);
  d.expert_capacity = 8;
  assert_int_equal(mj_rt_check_desc(&d, &err), MOEJIT_ERR_INVALID_ARG);
  assert_contains(err.msg, "desc->batch_invariant=1 with desc->expert_capacity=8");
}

/* ---- workspace ------------------------------------------------------------------------------- */

static void test_workspace_size(void **state) {
  fixture *fx = *state;
  const moejit_plan *plan = need_plan(fx);
  size_t bytes = 0, prev = 0;
  assert_int_equal(moejit_workspace_size(NULL, 1, &bytes), MOEJIT_ERR_INVALID_ARG);
  assert_int_equal(moejit_workspace_size(plan, 1, NULL), MOEJIT_ERR_INVALID_ARG);
  assert_int_equal(moejit_workspace_size(plan, MAX_T + 1, &bytes), MOEJIT_ERR_INVALID_ARG);
  assert_contains(moejit_last_error(fx->ctx), "max_tokens=101");
  assert_int_equal(moejit_workspace_size(plan, -1, &bytes), MOEJIT_ERR_INVALID_ARG);
  assert_contains(moejit_last_error(fx->ctx), "max_tokens=-1");

  assert_int_equal(moejit_workspace_size(plan, 0, &bytes), MOEJIT_OK);
  assert_true(bytes > 0);
  const size_t base = bytes;
  for (int64_t t = 0; t <= MAX_T; t++) {
    assert_int_equal(moejit_workspace_size(plan, t, &bytes), MOEJIT_OK);
    assert_int_equal(bytes % 256, 0);
    assert_true(bytes >= prev);
    /* Lower bound: h [T*K, I] and y_slot [T*K, H] in f32, plus three ints per slot. Upper bound:
     * the same with slack for the tile list and the per-chunk counts. */
    const size_t slots = (size_t)(t * K);
    assert_true(bytes >= slots * (4 * I + 4 * H + 12));
    assert_true(bytes <= base + slots * (4 * I + 4 * H + 64) + 4096);
    prev = bytes;
  }
  assert_int_equal(moejit_workspace_size(plan, 1, &bytes), MOEJIT_OK);
  assert_true(prev > bytes); /* 100 tokens need more than one */

  /* The plan keeps its own copy of the descriptor. */
  fx->desc.max_tokens = 1;
  assert_int_equal(moejit_workspace_size(plan, MAX_T, &bytes), MOEJIT_OK);
  fx->desc.max_tokens = MAX_T;
}

/* Without tuning records (memory-only cache), every bucket takes the heuristic's pick for the
 * bucket's token count, and the plan holds exactly the heuristic's configurations. */
static void test_plan_configurations(void **state) {
  fixture *fx = *state;
  const moejit_plan *plan = need_plan(fx);
  mj_gemm_config heur[MJ_MAX_GEMM_CONFIGS];
  int nheur = mj_tune_heuristic(mj_rt_math(&fx->desc), "", heur, MJ_MAX_GEMM_CONFIGS);
  assert_int_equal(plan->ngemm, nheur);
  for (int i = 0; i < nheur; i++) {
    assert_string_equal(plan->configs[i].name, heur[i].name);
    assert_true(plan->configs[i].bm >= plan->min_bm);
  }
  assert_int_equal(plan->nexact, 0);
  for (int b = 0; b < MJ_BUCKETS; b++) {
    assert_int_equal(plan->tuned[b], 0);
    assert_int_equal(plan->pick[b], mj_tune_pick(heur, nheur, (int64_t)1 << b, K, E));
  }
  /* max_slots: an entry with a slot bound takes only forwards of at most that many slots, so that
   * one and two tokens, the same rows per expert rounded up, can take different entries. */
  static const mj_gemm_config bounded[] = {
      {.name = "one", .bm = 16, .max_avg_rows = 1, .max_slots = 4},
      {.name = "few", .bm = 64, .max_avg_rows = 1},
      {.name = "rest", .bm = 64, .max_avg_rows = INT64_MAX},
  };
  assert_int_equal(mj_tune_pick(bounded, 3, 1, 4, 32), 0);
  assert_int_equal(mj_tune_pick(bounded, 3, 2, 4, 32), 1);
  assert_int_equal(mj_tune_pick(bounded, 3, 8, 4, 32), 1);
  assert_int_equal(mj_tune_pick(bounded, 3, 9, 4, 32), 2);
  mj_gemm_config wg[MJ_MAX_GEMM_CONFIGS];
  int nwg = mj_tune_heuristic(MJ_MATH_MMA, "sm_90a", wg, MJ_MAX_GEMM_CONFIGS);
  assert_int_not_equal(mj_tune_pick(wg, nwg, 1, 4, 32), mj_tune_pick(wg, nwg, 2, 4, 32));
  /* Buckets are powers of two: T goes to the smallest 2^b >= T. */
  assert_int_equal(mj_rt_bucket(1), 0);
  assert_int_equal(mj_rt_bucket(2), 1);
  assert_int_equal(mj_rt_bucket(3), 2);
  assert_int_equal(mj_rt_bucket(64), 6);
  assert_int_equal(mj_rt_bucket(65), 7);
  assert_int_equal(mj_rt_bucket(INT64_MAX), MJ_BUCKETS - 1);
}

/* A GEMM2 split that would leave a split of the intermediate size empty is split fewer ways (as
 * its template's contract says) and renamed; the tuner finds each candidate in its plan by the
 * index plan creation gives back. */
static void test_plan_fits_splits(void **state) {
  fixture *fx = *state;
  moejit_layer_desc d = small_desc();
  d.dtype = MOEJIT_BF16;
  d.exact_f32 = 0;
  d.intermediate = 64; /* one 64-wide K step: no split can have a second */
  mj_gemm_config c[3];
  mj_math math;
  assert_int_equal(mj_tune_config_parse("mma_m16n128k64s4w1x4z3", &c[0], &math), 0);
  assert_int_equal(mj_tune_config_parse("mma_m16n128k64s4w1x4", &c[1], &math), 0);
  assert_int_equal(mj_tune_config_parse("mma_m16n64k64s3w1x4", &c[2], &math), 0);
  moejit_plan *plan = NULL;
  int at[3] = {-2, -2, -2};
  if (mj_rt_plan_create_with(fx->ctx, &d, c, 3, &plan, at) != MOEJIT_OK)
    fail_msg("plan: %s", moejit_last_error(fx->ctx));
  assert_int_equal(plan->ngemm, 2);
  assert_string_equal(plan->configs[0].name, "mma_m16n128k64s4w1x4");
  assert_int_equal(plan->configs[0].splits, 1);
  assert_int_equal(plan->splits, 1);
  assert_int_equal(at[0], 0);
  assert_int_equal(at[1], 0);
  assert_int_equal(at[2], 1);
  assert_string_equal(plan->configs[1].name, "mma_m16n64k64s3w1x4");
  moejit_plan_destroy(plan);
}

/* Batch-invariant plans (desc->batch_invariant): every token count from 1 to 2^20 runs a tile of
 * one family, whose outputs each sum K in the same order: on sm_90a for bf16 the wgmma tiles, for
 * MXFP4 and unfused layers mma.sync ones; never a streamed tile, never a GEMM2 split along K. The
 * tiles an explicit list names outside the family are refused. */
static void test_batch_invariant_plans(void **state) {
  fixture *fx = *state;
  static const struct {
    moejit_dtype dtype;
    moejit_weight_format weights;
    int unfused;
    mj_gemm_kind family;
  } cases[] = {{MOEJIT_BF16, MOEJIT_WEIGHTS_DENSE, 0, MJ_GEMM_WGMMA},
               {MOEJIT_F16, MOEJIT_WEIGHTS_DENSE, 1, MJ_GEMM_SYNC},
               {MOEJIT_BF16, MOEJIT_WEIGHTS_MXFP4, 0, MJ_GEMM_SYNC},
               {MOEJIT_F32, MOEJIT_WEIGHTS_DENSE, 0, MJ_GEMM_SYNC}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    moejit_layer_desc d = small_desc();
    d.dtype = cases[i].dtype;
    d.exact_f32 = 0;
    d.weight_format = cases[i].weights;
    d.unfused = cases[i].unfused;
    d.batch_invariant = 1;
    moejit_plan *plan = NULL;
    if (moejit_plan_create(fx->ctx, &d, &plan) != MOEJIT_OK)
      fail_msg("case %zu: %s", i, moejit_last_error(fx->ctx));
    for (int64_t t = 1; t <= (1 << 20); t = t < 8 ? t + 1 : 2 * t) {
      const mj_gemm_config *c = &plan->configs[mj_rt_pick(plan, t, NULL)];
      if (c->kind != cases[i].family || c->splits > 1)
        fail_msg("case %zu: %lld tokens run %s", i, (long long)t, c->name);
    }
    for (int j = 0; j < plan->ngemm; j++)
      assert_true(mj_tune_invariant(&plan->configs[j], cases[i].family == MJ_GEMM_WGMMA));
    moejit_plan_destroy(plan);
    /* the same layer without the option takes a streamed tile for one token */
    d.batch_invariant = 0;
    if (cases[i].dtype != MOEJIT_F32 && !cases[i].unfused) {
      assert_int_equal(moejit_plan_create(fx->ctx, &d, &plan), MOEJIT_OK);
      assert_int_equal(plan->configs[mj_rt_pick(plan, 1, NULL)].kind, MJ_GEMM_STREAM);
      moejit_plan_destroy(plan);
    }
  }
  moejit_layer_desc d = small_desc();
  d.dtype = MOEJIT_BF16;
  d.exact_f32 = 0;
  d.batch_invariant = 1;
  static const char *const refused[] = {"stream_m1n64u6", "mma_m16n128k64s4w1x4z2",
                                        "mma_m64n128k32s4w2x2"}; /* on sm_90a: wgmma tiles only */
  for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
    mj_gemm_config c;
    mj_math math;
    moejit_plan *plan = NULL;
    assert_int_equal(mj_tune_config_parse(refused[i], &c, &math), 0);
    assert_int_equal(mj_rt_plan_create_with(fx->ctx, &d, &c, 1, &plan, NULL),
                     MOEJIT_ERR_UNSUPPORTED);
    assert_contains(moejit_last_error(fx->ctx), "is not of the batch-invariant family");
    assert_null(plan);
  }
  /* a tuned record of a batch-invariant plan is its own: another kernel name in the key */
  mj_record a, b;
  mj_rt_record_key(fx->ctx, &d, 64, &a);
  d.batch_invariant = 0;
  mj_rt_record_key(fx->ctx, &d, 64, &b);
  assert_string_equal(a.kernel, "gemm_mma_bi");
  assert_false(mj_tune_record_same_key(&a, &b));
  /* so are those of another activation, layout or fusion: GEMM1's shape or the families differ */
  d.activation = MOEJIT_ACT_SILU_MUL;
  d.gate_up_layout = MOEJIT_GATE_UP_HALVES;
  mj_rt_record_key(fx->ctx, &d, 64, &a);
  assert_string_equal(a.kernel, "gemm_mma_silu_mul_halves");
  d.activation = MOEJIT_ACT_RELU2; /* without mul: no layout */
  d.unfused = 1;
  d.batch_invariant = 1;
  d.weight_format = MOEJIT_WEIGHTS_MXFP4;
  mj_rt_record_key(fx->ctx, &d, 64, &a);
  assert_string_equal(a.kernel, "gemm_mxfp4_relu2_unfused_bi");
}

/* sm_90a's table names one configuration for two ranges of rows (around the chained one): the plan
 * holds it once, and every bucket's pick is the plan's index of the table's entry for it. */
static void test_plan_table_repeats(void **state) {
  fixture *fx = *state;
  moejit_layer_desc d = small_desc();
  d.dtype = MOEJIT_BF16;
  d.exact_f32 = 0;
  int distinct = 0;
  mj_gemm_config wg[MJ_MAX_GEMM_CONFIGS];
  int nwg = mj_tune_heuristic(MJ_MATH_MMA, "sm_90a", wg, MJ_MAX_GEMM_CONFIGS);
  for (int i = 0; i < nwg; i++) {
    int seen = 0;
    for (int j = 0; j < i; j++)
      seen |= !strcmp(wg[i].name, wg[j].name);
    distinct += !seen;
  }
  assert_true(distinct < nwg);
  moejit_plan *plan = NULL;
  if (moejit_plan_create(fx->ctx, &d, &plan) != MOEJIT_OK)
    fail_msg("plan: %s", moejit_last_error(fx->ctx));
  assert_int_equal(plan->ngemm, distinct);
  for (int b = 0; b < MJ_BUCKETS; b++) {
    const mj_gemm_config *want = &wg[mj_tune_pick(wg, nwg, (int64_t)1 << b, d.top_k, d.experts)];
    assert_string_equal(plan->configs[plan->pick[b]].name, want->name);
  }
  moejit_plan_destroy(plan);
}

/* Configuration names: each one of the tuner's search space (sm_90a's wgmma and ping-pong tiles
 * too) parses back to itself, and names outside what the kernels take are refused. */
static void test_config_names(void **state) {
  (void)state;
  static const mj_math maths[] = {MJ_MATH_MMA, MJ_MATH_TF32, MJ_MATH_FFMA, MJ_MATH_MXFP4};
  int pingpong = 0, chain = 0, streamed = 0;
  for (int a = 0; a < 2; a++)
    for (int m = 0; m < 4; m++) {
      mj_gemm_config space[2 * MJ_MAX_GEMM_CONFIGS], back;
      mj_math math;
      int n = mj_tune_search_space(maths[m], a ? "sm_90a" : "sm_80", NULL, NULL, space,
                                   2 * MJ_MAX_GEMM_CONFIGS);
      assert_true(n > 0 && n < 2 * MJ_MAX_GEMM_CONFIGS);
      for (int i = 0; i < n; i++) {
        if (mj_tune_config_parse(space[i].name, &back, &math) != 0)
          fail_msg("%s does not parse", space[i].name);
        assert_string_equal(back.name, space[i].name);
        /* a streamed tile's name says no math: f16/bf16 and MXFP4 layers both take it */
        assert_int_equal(math, space[i].kind == MJ_GEMM_STREAM ? MJ_MATH_MMA : maths[m]);
        assert_true(mj_tune_math_takes(maths[m], math, &back));
        assert_int_equal(back.bm, space[i].bm);
        assert_int_equal(back.bn, space[i].bn);
        assert_int_equal(back.stages, space[i].stages);
        assert_int_equal(back.kind, space[i].kind);
        assert_int_equal(back.ctas, space[i].ctas);
        assert_int_equal(back.pingpong, space[i].pingpong);
        assert_int_equal(back.chain, space[i].chain);
        assert_int_equal(back.splits, space[i].splits);
        pingpong += space[i].pingpong;
        chain += space[i].chain;
        streamed += space[i].kind == MJ_GEMM_STREAM;
      }
    }
  assert_true(pingpong > 0 && chain > 0 && streamed > 0);
  mj_gemm_config c;
  mj_math math;
  assert_int_equal(mj_tune_config_parse("wg_m128n128s5pp", &c, &math), 0);
  assert_int_equal(c.pingpong, 1);
  assert_int_equal(c.ctas, 1);
  assert_int_equal(c.bm, 128);
  assert_int_equal(c.stages, 5);
  assert_int_equal(c.chain, 0);
  assert_int_equal(mj_tune_config_parse("wg_m64n128s3c2ch", &c, &math), 0);
  assert_int_equal(c.chain, 1);
  assert_int_equal(c.ctas, 2);
  assert_string_equal(c.name, "wg_m64n128s3c2ch");
  /* the streamed path: rows, columns, loads a thread in flight, and a split of GEMM2 */
  assert_int_equal(mj_tune_config_parse("stream_m1n64u6z2", &c, &math), 0);
  assert_int_equal(c.kind, MJ_GEMM_STREAM);
  assert_int_equal(math, MJ_MATH_MMA);
  assert_int_equal(c.bm, 1);
  assert_int_equal(c.bn, 64);
  assert_int_equal(c.stages, 6);
  assert_int_equal(c.splits, 2);
  /* chained GEMM2s are for 64-row wgmma tiles alone, and ch comes once, last */
  static const char *const bad[] = {
      "wg_m64n128s5pp",     "wg_m128n128s5ppc1", "wg_m128n128s5p",    "wg_m128n128s5ppz2",
      "wg_m128n192s4c2",    "wg_m128n128s5ppch", "wg_m128n192s4c1ch", "mma_m16n64k64s6w1x4ch",
      "wg_m64n128s3c2chch", "wg_m64n128s3chc2",  "stream_m9n64u8",    "stream_m0n64u8",
      "stream_m1n48u8",     "stream_m1n64u17",   "stream_m1n64u1",    "stream_m1n64u8ch",
      "stream_m1n64u8pp",   "stream_m1n64u08",   "gv_m1n64u6z2"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    if (mj_tune_config_parse(bad[i], &c, &math) == 0)
      fail_msg("%s parsed", bad[i]);
}

/* ---- forward on an offline plan -------------------------------------------------------------- */

static void test_forward_offline(void **state) {
  fixture *fx = *state;
  moejit_plan *plan = (moejit_plan *)need_plan(fx);
  const int64_t compiles = fx->ctx->compiles;
  assert_true(compiles > 0); /* the plan compiled its modules */
  moejit_forward_args args;
  moejit_forward_args_init(&args);
  args.tokens = 1;
  assert_int_equal(moejit_forward(NULL, &args, NULL, 0, NULL), MOEJIT_ERR_INVALID_ARG);
  assert_int_equal(moejit_forward(plan, &args, NULL, 0, NULL), MOEJIT_ERR_NO_DEVICE);
  assert_contains(moejit_last_error(fx->ctx), "offline");
  assert_contains(moejit_last_error(fx->ctx), "sm_90a");
  assert_int_equal(moejit_forward(plan, NULL, NULL, 0, NULL), MOEJIT_ERR_NO_DEVICE);

  int64_t bad = -7;
  assert_int_equal(moejit_forward_check(NULL, NULL, NULL, &bad), MOEJIT_ERR_INVALID_ARG);
  assert_int_equal(moejit_forward_check(plan, (void *)0x1000, NULL, &bad), MOEJIT_ERR_NO_DEVICE);
  assert_int_equal(bad, 0);
  assert_int_equal(moejit_forward_check(plan, NULL, NULL, NULL), MOEJIT_ERR_NO_DEVICE);
  assert_int_equal(fx->ctx->compiles, compiles);
}

/* ---- forward against a fake driver ------------------------------------------------------------ *
 * A copy of the offline plan is bound to a context that claims to be on a device, and whose driver
 * table holds only the entry points the launch path may use; every other entry is NULL, so a call
 * to anything else (module load, allocation, compile) would crash the test. */

enum { MAX_LAUNCHES = 16 };

typedef struct launch_record {
  CUfunction fn;
  unsigned grid[3], block[3], smem;
  CUstream stream;
  uint64_t ptr[9]; /* the kernel's device-pointer parameters, in order */
  int ints[4];     /* its int parameters, in order */
  int pdl;         /* launched by cuLaunchKernelEx with programmatic stream serialisation */
  uint64_t live;   /* routing kernels: the device-side token count's address, and the chunk's */
  int live_base;   /* first token */
  /* the wgmma GEMMs: wait_ready, and the two tensor maps encoded before the launch */
  int wait_ready;
  unsigned long long tmap_dims[2][3];
  unsigned tmap_box[2][3], tmap_rank[2];
} launch_record;

typedef struct fake_device {
  moejit_ctx ctx;
  moejit_plan plan;
  CUcontext current; /* what CtxGetCurrent reports */
  int pushes, pops, gets, syncs;
  int fail_launch_at; /* 1-based; 0: never */
  int nlaunch;
  launch_record launch[MAX_LAUNCHES];
  int flags0; /* what the workspace's flags[0] holds, for forward_check */
  int ntmaps; /* tensor maps encoded since the last launch, and theirs dims and boxes */
  unsigned long long tmap_dims[2][3];
  unsigned tmap_box[2][3], tmap_rank[2];
  uint64_t copied_from;
  size_t copied_bytes;
} fake_device;

/* The driver has no user pointer, so the fakes find their device here; set by each test. */
static fake_device *the_fake;

#define FAKE_FN_COUNT ((CUfunction)(uintptr_t)0x11)
#define FAKE_FN_SCAN ((CUfunction)(uintptr_t)0x12)
#define FAKE_FN_SCATTER ((CUfunction)(uintptr_t)0x13)
#define FAKE_FN_COMBINE ((CUfunction)(uintptr_t)0x14)
#define FAKE_FN_SMALL ((CUfunction)(uintptr_t)0x15)
#define FAKE_FN_GATHER ((CUfunction)(uintptr_t)0x16)
#define FAKE_FN_ACT ((CUfunction)(uintptr_t)0x17)
#define FAKE_FN_GEMM1(i) ((CUfunction)(uintptr_t)(0x20 + (i)))
#define FAKE_FN_GEMM2(i) ((CUfunction)(uintptr_t)(0x30 + (i)))
#define FAKE_CUCTX ((CUcontext)(uintptr_t)0xC0)
#define FAKE_STREAM ((CUstream)(uintptr_t)0x5E)

static CUresult fake_get_current(CUcontext *c) {
  the_fake->gets++;
  *c = the_fake->current;
  return 0;
}
static CUresult fake_push(CUcontext c) {
  assert_ptr_equal(c, FAKE_CUCTX);
  the_fake->pushes++;
  return 0;
}
static CUresult fake_pop(CUcontext *c) {
  the_fake->pops++;
  *c = FAKE_CUCTX;
  return 0;
}
static CUresult fake_error_name(CUresult r, const char **s) {
  *s = r == 700 ? "CUDA_ERROR_ILLEGAL_ADDRESS" : "CUDA_ERROR_UNKNOWN";
  return 0;
}
static CUresult fake_error_string(CUresult r, const char **s) {
  *s = r == 700 ? "an illegal memory access was encountered" : "unknown error";
  return 0;
}

static uint64_t u64_at(void *p) {
  uint64_t v;
  memcpy(&v, p, sizeof v);
  return v;
}
static int int_at(void *p) {
  int v;
  memcpy(&v, p, sizeof v);
  return v;
}

static CUresult fake_launch(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                            unsigned by, unsigned bz, unsigned smem, CUstream s, void **params,
                            void **extra) {
  fake_device *fk = the_fake;
  assert_true(fk->nlaunch < MAX_LAUNCHES);
  assert_null(extra);
  launch_record *r = &fk->launch[fk->nlaunch++];
  memset(r, 0, sizeof *r);
  r->fn = f, r->smem = smem, r->stream = s;
  r->grid[0] = gx, r->grid[1] = gy, r->grid[2] = gz;
  r->block[0] = bx, r->block[1] = by, r->block[2] = bz;
  /* Parameter lists by kernel (see forward.c and the .cuh signatures). */
  if (f == FAKE_FN_COUNT) { /* ids, expert_map, nslots, chunk_counts, live, live_base */
    r->ptr[0] = u64_at(params[0]);
    r->ptr[2] = u64_at(params[1]);
    r->ints[0] = int_at(params[2]);
    r->ptr[1] = u64_at(params[3]);
    r->live = u64_at(params[4]);
    r->live_base = int_at(params[5]);
  } else if (f == FAKE_FN_SCAN) { /* chunk_counts, nchunks, block_m, capacity, chunk_base,
                                     expert_offsets, tiles, num_tiles, flags */
    r->ptr[0] = u64_at(params[0]);
    r->ints[0] = int_at(params[1]);
    r->ints[1] = int_at(params[2]);
    r->ints[2] = int_at(params[3]);
    for (int i = 0; i < 5; i++)
      r->ptr[1 + i] = u64_at(params[4 + i]);
  } else if (f == FAKE_FN_SCATTER) { /* ids, expert_map, weights, nslots, capacity, chunk_base,
                                        expert_offsets, row_slot, slot_row, row_weight, live,
                                        live_base */
    r->ptr[0] = u64_at(params[0]);
    r->ptr[6] = u64_at(params[1]);
    r->ptr[1] = u64_at(params[2]);
    r->ints[0] = int_at(params[3]);
    r->ints[1] = int_at(params[4]);
    r->ptr[2] = u64_at(params[5]);
    r->ptr[7] = u64_at(params[6]);
    for (int i = 0; i < 3; i++)
      r->ptr[3 + i] = u64_at(params[7 + i]);
    r->live = u64_at(params[10]);
    r->live_base = int_at(params[11]);
  } else if (f == FAKE_FN_SMALL) { /* ids, expert_map, weights, nslots, block_m, capacity,
                                      expert_offsets, tiles, num_tiles, flags, row_slot, slot_row,
                                      row_weight, live, live_base */
    r->ptr[0] = u64_at(params[0]);
    r->ptr[1] = u64_at(params[2]);
    r->ints[0] = int_at(params[3]);
    r->ints[1] = int_at(params[4]);
    for (int i = 0; i < 6; i++) /* tiles .. row_weight */
      r->ptr[2 + i] = u64_at(params[7 + i]);
    r->live = u64_at(params[13]);
    r->live_base = int_at(params[14]);
  } else if (f == FAKE_FN_COMBINE) { /* y_slot, slot_row, y */
    for (int i = 0; i < 3; i++)
      r->ptr[i] = u64_at(params[i]);
  } else if (f == FAKE_FN_ACT) { /* gate_up, expert_offsets, h */
    for (int i = 0; i < 3; i++)
      r->ptr[i] = u64_at(params[i]);
  } else if (f == FAKE_FN_GATHER) { /* x, slot_row, tokens, x_sorted */
    r->ptr[0] = u64_at(params[0]);
    r->ints[0] = int_at(params[2]);
  } else if (fk->ntmaps == 2) { /* a wgmma GEMM: tmap_a, tmap_b, bias, ..., ready, wait_ready */
    r->ptr[0] = u64_at(params[2]);
    r->wait_ready = int_at(params[10]);
    memcpy(r->tmap_dims, fk->tmap_dims, sizeof r->tmap_dims);
    memcpy(r->tmap_box, fk->tmap_box, sizeof r->tmap_box);
    memcpy(r->tmap_rank, fk->tmap_rank, sizeof r->tmap_rank);
  } else { /* a GEMM: a, w, bias, scales, row_slot, row_weight, tiles, num_tiles, out, ... */
    for (int i = 0; i < 9; i++)
      r->ptr[i] = u64_at(params[i]);
  }
  fk->ntmaps = 0;
  return fk->fail_launch_at == fk->nlaunch ? 700 : 0;
}

static CUresult fake_tmap(mj_tmap *map, int dtype, unsigned rank, void *address,
                          const unsigned long long *dims, const unsigned long long *strides,
                          const unsigned *box, const unsigned *element_strides, int interleave,
                          int swizzle, int l2_promotion, int oob_fill) {
  fake_device *fk = the_fake;
  assert_true(fk->ntmaps < 2 && rank <= 3);
  memset(map, 0, sizeof *map);
  fk->tmap_rank[fk->ntmaps] = rank;
  for (unsigned i = 0; i < rank; i++) {
    fk->tmap_dims[fk->ntmaps][i] = dims[i];
    fk->tmap_box[fk->ntmaps][i] = box[i];
  }
  fk->ntmaps++;
  return 0;
}

static CUresult fake_copy(void *dst, CUdeviceptr src, size_t n, CUstream s) {
  assert_ptr_equal(s, FAKE_STREAM);
  the_fake->copied_from = src;
  the_fake->copied_bytes = n;
  memset(dst, 0, n);
  memcpy(dst, &the_fake->flags0, sizeof(int));
  return 0;
}
static CUresult fake_sync(CUstream s) {
  assert_ptr_equal(s, FAKE_STREAM);
  assert_true(the_fake->copied_bytes > 0); /* after the copy */
  the_fake->syncs++;
  return 0;
}

static CUresult fake_launch_ex(const mj_launch_config *c, CUfunction f, void **params,
                               void **extra) {
  assert_int_equal(c->num_attrs, 1);
  assert_int_equal(c->attrs[0].id, MJ_CU_LAUNCH_ATTR_PDL);
  assert_int_equal(c->attrs[0].v.value, 1);
  CUresult r = fake_launch(f, c->grid[0], c->grid[1], c->grid[2], c->block[0], c->block[1],
                           c->block[2], c->smem, c->stream, params, extra);
  if (r == MJ_CU_SUCCESS)
    the_fake->launch[the_fake->nlaunch - 1].pdl = 1;
  return r;
}

static fake_device *fake_open(const moejit_plan *offline) {
  fake_device *fk = calloc(1, sizeof *fk);
  assert_non_null(fk);
  pthread_mutex_init(&fk->ctx.err_lock, NULL);
  fk->ctx.offline = 0;
  snprintf(fk->ctx.arch, sizeof fk->ctx.arch, "sm_90a");
  fk->ctx.cuctx = FAKE_CUCTX;
  fk->ctx.cu.CtxGetCurrent = fake_get_current;
  fk->ctx.cu.CtxPushCurrent = fake_push;
  fk->ctx.cu.CtxPopCurrent = fake_pop;
  fk->ctx.cu.LaunchKernel = fake_launch;
  fk->ctx.cu.LaunchKernelEx = fake_launch_ex;
  fk->ctx.cu.MemcpyDtoHAsync = fake_copy;
  fk->ctx.cu.TensorMapEncodeTiled = fake_tmap;
  fk->ctx.sm_count = 132;
  fk->ctx.cu.StreamSynchronize = fake_sync;
  fk->ctx.cu.GetErrorName = fake_error_name;
  fk->ctx.cu.GetErrorString = fake_error_string;
  fk->plan = *offline;
  fk->plan.ctx = &fk->ctx;
  fk->plan.route.count.fn = FAKE_FN_COUNT;
  fk->plan.route.scan.fn = FAKE_FN_SCAN;
  fk->plan.route.scatter.fn = FAKE_FN_SCATTER;
  fk->plan.combine.fn = FAKE_FN_COMBINE;
  fk->plan.route.small.fn = FAKE_FN_SMALL;
  fk->plan.gather.fn = FAKE_FN_GATHER;
  fk->plan.activation.fn = FAKE_FN_ACT;
  /* the chunked routing kernels; test_forward_small_routing takes the other */
  fk->plan.route.small.meta.max_slots = 0;
  for (int i = 0; i < fk->plan.ngemm; i++) {
    fk->plan.gemm1[i].fn = FAKE_FN_GEMM1(i);
    fk->plan.gemm2[i].fn = FAKE_FN_GEMM2(i);
  }
  fk->current = (CUcontext)(uintptr_t)0xDEAD; /* another context is current */
  the_fake = fk;
  return fk;
}

static void fake_close(fake_device *fk) {
  pthread_mutex_destroy(&fk->ctx.err_lock);
  the_fake = NULL;
  free(fk);
}

/* Device addresses that are never dereferenced. */
#define WS_ADDR ((uintptr_t)0x90000000u)

static void valid_args(moejit_forward_args *a, int64_t tokens) {
  moejit_forward_args_init(a);
  a->tokens = tokens;
  a->x = (const void *)(uintptr_t)0x10000000u;
  a->topk_ids = (const void *)(uintptr_t)0x20000000u;
  a->routing_weights = (const void *)(uintptr_t)0x30000000u;
  a->gate_up_proj = (const void *)(uintptr_t)0x40000000u;
  a->gate_up_proj_bias = (const void *)(uintptr_t)0x50000000u;
  a->down_proj = (const void *)(uintptr_t)0x60000000u;
  a->down_proj_bias = (const void *)(uintptr_t)0x70000000u;
  a->y = (void *)(uintptr_t)0x80000000u;
}

static uint64_t addr(const void *p) { return (uint64_t)(uintptr_t)p; }

/* A whole forward of T tokens on the fake, with valid args (left in *a) and a workspace of the
 * size moejit_workspace_size gives (returned); fk's launch records start from this forward. */
static size_t fake_forward(fake_device *fk, int64_t T, moejit_forward_args *a) {
  size_t need = 0;
  assert_int_equal(moejit_workspace_size(&fk->plan, T, &need), MOEJIT_OK);
  valid_args(a, T);
  fk->nlaunch = 0;
  assert_int_equal(moejit_forward(&fk->plan, a, (void *)WS_ADDR, need, FAKE_STREAM), MOEJIT_OK);
  return need;
}

typedef struct arg_case {
  const char *label;
  void (*mutate)(moejit_forward_args *a, void **ws, size_t *bytes);
  const char *needle;
} arg_case;

static void m_struct_size(moejit_forward_args *a, void **w, size_t *b) { a->struct_size = 4; }
static void m_tokens_neg(moejit_forward_args *a, void **w, size_t *b) { a->tokens = -1; }
static void m_tokens_big(moejit_forward_args *a, void **w, size_t *b) { a->tokens = MAX_T + 1; }
static void m_logits(moejit_forward_args *a, void **w, size_t *b) { a->router_logits = a->x; }
static void m_map(moejit_forward_args *a, void **w, size_t *b) {
  a->expert_map = (const int32_t *)a->x;
}
static void m_x_null(moejit_forward_args *a, void **w, size_t *b) { a->x = NULL; }
static void m_x_align(moejit_forward_args *a, void **w, size_t *b) {
  a->x = (const char *)a->x + 8;
}
static void m_gate_null(moejit_forward_args *a, void **w, size_t *b) { a->gate_up_proj = NULL; }
static void m_down_align(moejit_forward_args *a, void **w, size_t *b) {
  a->down_proj = (const char *)a->down_proj + 4;
}
static void m_gate_bias_align(moejit_forward_args *a, void **w, size_t *b) {
  a->gate_up_proj_bias = (const char *)a->gate_up_proj_bias + 2;
}
static void m_down_bias_pair(moejit_forward_args *a, void **w, size_t *b) {
  a->down_proj_bias = (const char *)a->down_proj_bias + 4; /* an f32 element, not a pair */
}
static void m_down_bias_null(moejit_forward_args *a, void **w, size_t *b) {
  a->down_proj_bias = NULL;
}
static void m_y_null(moejit_forward_args *a, void **w, size_t *b) { a->y = NULL; }
static void m_y_align(moejit_forward_args *a, void **w, size_t *b) { a->y = (char *)a->y + 2; }
static void m_ids_null(moejit_forward_args *a, void **w, size_t *b) { a->topk_ids = NULL; }
static void m_ids_align(moejit_forward_args *a, void **w, size_t *b) {
  a->topk_ids = (const char *)a->topk_ids + 2;
}
static void m_weights_null(moejit_forward_args *a, void **w, size_t *b) {
  a->routing_weights = NULL;
}
static void m_live_align(moejit_forward_args *a, void **w, size_t *b) {
  a->device_tokens = (const int32_t *)(uintptr_t)0xA0000002u;
}
static void m_ws_null(moejit_forward_args *a, void **w, size_t *b) { *w = NULL; }
static void m_ws_align(moejit_forward_args *a, void **w, size_t *b) { *w = (char *)*w + 128; }
static void m_ws_small(moejit_forward_args *a, void **w, size_t *b) { *b -= 1; }
static void m_scales_dense(moejit_forward_args *a, void **w, size_t *b) {
  a->down_proj_scales = a->down_proj;
}

static const arg_case arg_cases[] = {
    {"struct_size", m_struct_size, "args->struct_size=4"},
    {"tokens -1", m_tokens_neg, "args->tokens=-1"},
    {"tokens max+1", m_tokens_big, "args->tokens=101"},
    {"router_logits", m_logits, "args->router_logits"},
    {"expert_map", m_map, "args->expert_map"},
    {"x NULL", m_x_null, "args->x is NULL"},
    {"x misaligned", m_x_align, "16-byte aligned"},
    {"gate_up_proj NULL", m_gate_null, "args->gate_up_proj is NULL"},
    {"down_proj misaligned", m_down_align, "args->down_proj="},
    {"gate_up_proj_bias misaligned", m_gate_bias_align, "args->gate_up_proj_bias="},
    {"down_proj_bias NULL", m_down_bias_null, "args->down_proj_bias is NULL"},
    {"down_proj_bias off a pair", m_down_bias_pair,
     "args->down_proj_bias=0x70000004 is not 8-byte"},
    {"y NULL", m_y_null, "args->y is NULL"},
    {"y misaligned", m_y_align, "args->y="},
    {"topk_ids NULL", m_ids_null, "args->topk_ids is NULL"},
    {"topk_ids misaligned", m_ids_align, "args->topk_ids="},
    {"routing_weights NULL", m_weights_null, "args->routing_weights is NULL"},
    {"device_tokens misaligned", m_live_align, "args->device_tokens="},
    {"workspace NULL", m_ws_null, "workspace is NULL"},
    {"workspace misaligned", m_ws_align, "256-byte aligned"},
    {"workspace small", m_ws_small, "workspace_bytes="},
    {"scales of dense weights", m_scales_dense,
     "args->down_proj_scales is set but desc->weight_format is not MOEJIT_WEIGHTS_MXFP4"},
};

static void test_forward_argument_checks(void **state) {
  fixture *fx = *state;
  fake_device *fk = fake_open(need_plan(fx));
  const int64_t T = 37;
  size_t need = 0;
  assert_int_equal(moejit_workspace_size(&fk->plan, T, &need), MOEJIT_OK);

  assert_int_equal(moejit_forward(&fk->plan, NULL, (void *)WS_ADDR, need, FAKE_STREAM),
                   MOEJIT_ERR_INVALID_ARG);
  assert_contains(moejit_last_error(&fk->ctx), "args is NULL");
  for (size_t i = 0; i < sizeof arg_cases / sizeof arg_cases[0]; i++) {
    moejit_forward_args a;
    valid_args(&a, T);
    void *ws = (void *)WS_ADDR;
    size_t bytes = need;
    arg_cases[i].mutate(&a, &ws, &bytes);
    moejit_status st = moejit_forward(&fk->plan, &a, ws, bytes, FAKE_STREAM);
    if (st != MOEJIT_ERR_INVALID_ARG)
      fail_msg("%s: %s (%s)", arg_cases[i].label, moejit_status_name(st),
               moejit_last_error(&fk->ctx));
    assert_contains(moejit_last_error(&fk->ctx), arg_cases[i].needle);
  }
  /* Nothing reached the driver. */
  assert_int_equal(fk->nlaunch, 0);
  assert_int_equal(fk->gets + fk->pushes + fk->pops, 0);

  /* Zero tokens: nothing to check, nothing to launch. */
  moejit_forward_args a;
  moejit_forward_args_init(&a);
  assert_int_equal(moejit_forward(&fk->plan, &a, NULL, 0, FAKE_STREAM), MOEJIT_OK);
  assert_int_equal(fk->nlaunch + fk->gets, 0);

  /* Exactly the workspace moejit_workspace_size names is enough. */
  valid_args(&a, T);
  assert_int_equal(moejit_forward(&fk->plan, &a, (void *)WS_ADDR, need, FAKE_STREAM), MOEJIT_OK);
  assert_int_equal(fk->nlaunch, 6);
  fake_close(fk);
}

/* Checks one forward of T tokens: order, grids, parameters, and that every workspace region lies
 * inside the workspace and the big ones do not overlap. */
static void check_forward(fake_device *fk, int64_t T) {
  const moejit_plan *p = &fk->plan;
  size_t need = 0;
  assert_int_equal(moejit_workspace_size(p, T, &need), MOEJIT_OK);
  moejit_forward_args a;
  valid_args(&a, T);
  fk->nlaunch = fk->pushes = fk->pops = 0;
  moejit_status st = moejit_forward(&fk->plan, &a, (void *)WS_ADDR, need, FAKE_STREAM);
  if (st != MOEJIT_OK)
    fail_msg("T=%lld: %s", (long long)T, moejit_last_error(&fk->ctx));
  assert_int_equal(fk->nlaunch, 6);
  assert_int_equal(fk->pushes, fk->pops);

  assert_int_equal(p->nexact, 0);
  const int cfg = p->pick[mj_rt_bucket(T)];
  assert_true(cfg >= 0 && cfg < p->ngemm);
  const mj_gemm_config *c = &p->configs[cfg];
  const launch_record *count = &fk->launch[0], *scan = &fk->launch[1], *scatter = &fk->launch[2],
                      *g1 = &fk->launch[3], *g2 = &fk->launch[4], *comb = &fk->launch[5];
  assert_ptr_equal(count->fn, FAKE_FN_COUNT);
  assert_ptr_equal(scan->fn, FAKE_FN_SCAN);
  assert_ptr_equal(scatter->fn, FAKE_FN_SCATTER);
  assert_ptr_equal(g1->fn, FAKE_FN_GEMM1(cfg));
  assert_ptr_equal(g2->fn, FAKE_FN_GEMM2(cfg));
  assert_ptr_equal(comb->fn, FAKE_FN_COMBINE);
  for (int i = 0; i < 6; i++) {
    assert_ptr_equal(fk->launch[i].stream, FAKE_STREAM);
    assert_int_equal(fk->launch[i].grid[2], 1);
    assert_int_equal(fk->launch[i].block[1] * fk->launch[i].block[2], 1);
  }

  /* count and scatter blocks take route.lua's chunk of 256 slots */
  assert_int_equal(p->route.count.meta.per_block, 256);
  const int64_t slots = T * K, chunks = (slots + 255) / 256;
  /* routing */
  assert_int_equal(count->ptr[0], addr(a.topk_ids));
  assert_int_equal(count->ints[0], slots);
  assert_int_equal(count->grid[0], chunks);
  assert_int_equal(count->block[0], p->route.count.meta.threads);
  assert_int_equal(scan->ints[0], chunks);
  assert_int_equal(scan->ints[1], c->bm);
  assert_int_equal(scan->grid[0], 1);
  assert_int_equal(scan->ptr[5], WS_ADDR); /* flags at offset 0, where forward_check reads */
  assert_int_equal(scatter->ptr[0], addr(a.topk_ids));
  assert_int_equal(scatter->ptr[1], addr(a.routing_weights));
  assert_int_equal(scatter->ints[0], slots);
  assert_int_equal(scatter->grid[0], chunks);
  assert_int_equal(scan->ptr[0], count->ptr[1]);   /* chunk_counts */
  assert_int_equal(scatter->ptr[2], scan->ptr[1]); /* chunk_base */

  /* GEMMs: the configuration the heuristic picks, enough tiles for every slot, with the block and
   * the shared memory of its contract: a warp per warp tile (TF32) or a thread per tm x tn outputs
   * (FFMA), and the stage ring of padded f32 tiles */
  const unsigned threads =
      (unsigned)(p->math == MJ_MATH_FFMA ? (c->bm / c->tm) * (c->bn / c->tn) : 32 * c->wm * c->wn);
  const unsigned smem = (unsigned)(c->stages * (c->bm * (c->bk + 4) + c->bk * (c->bn + 4)) * 4);
  assert_int_equal(p->gemm1[cfg].meta.threads, threads);
  assert_int_equal(p->gemm2[cfg].meta.smem, smem);
  assert_true(g1->grid[0] >= (slots + c->bm - 1) / c->bm);
  assert_int_equal(g1->grid[1], (2 * I + c->bn - 1) / c->bn);
  assert_int_equal(g2->grid[1], (H + c->bn - 1) / c->bn);
  assert_int_equal(g2->grid[0], g1->grid[0]);
  assert_int_equal(g1->block[0], threads);
  assert_int_equal(g2->block[0], threads);
  assert_int_equal(g1->smem, smem);
  assert_int_equal(g2->smem, smem);
  assert_int_equal(g1->ptr[0], addr(a.x));
  assert_int_equal(g1->ptr[1], addr(a.gate_up_proj));
  assert_int_equal(g1->ptr[2], addr(a.gate_up_proj_bias));
  assert_int_equal(g2->ptr[0], g1->ptr[8]); /* h */
  assert_int_equal(g2->ptr[1], addr(a.down_proj));
  assert_int_equal(g2->ptr[2], addr(a.down_proj_bias));
  assert_int_equal(g1->ptr[3], 0); /* scales: MXFP4 weights only */
  assert_int_equal(g2->ptr[3], 0);
  assert_int_equal(g1->ptr[4], scatter->ptr[3]); /* row_slot */
  assert_int_equal(g2->ptr[4], scatter->ptr[3]);
  assert_int_equal(g1->ptr[5], scatter->ptr[5]); /* row_weight */
  assert_int_equal(g1->ptr[6], scan->ptr[3]);    /* tiles */
  assert_int_equal(g1->ptr[7], scan->ptr[4]);    /* num_tiles */

  /* combine */
  assert_int_equal(comb->grid[0], T);
  assert_int_equal(comb->ptr[0], g2->ptr[8]);      /* y_slot */
  assert_int_equal(comb->ptr[1], scatter->ptr[4]); /* slot_row */
  assert_int_equal(comb->ptr[2], addr(a.y));

  /* workspace regions: 256-byte aligned, inside [ws, ws + need) */
  const uint64_t ws_regions[] = {count->ptr[1],   scan->ptr[1], scan->ptr[2],    scan->ptr[3],
                                 scan->ptr[4],    scan->ptr[5], scatter->ptr[3], scatter->ptr[4],
                                 scatter->ptr[5], g1->ptr[8],   g2->ptr[8]};
  for (size_t i = 0; i < sizeof ws_regions / sizeof ws_regions[0]; i++) {
    assert_int_equal((ws_regions[i] - WS_ADDR) % 256, 0);
    assert_true(ws_regions[i] >= WS_ADDR && ws_regions[i] < WS_ADDR + need);
    for (size_t j = 0; j < i; j++)
      assert_true(ws_regions[i] != ws_regions[j]);
  }
  /* h [slots, I] and y_slot [slots, H] in f32 fit and do not overlap; nor do the per-slot arrays.
   */
  const uint64_t h = g1->ptr[8], y_slot = g2->ptr[8];
  const uint64_t h_end = h + (uint64_t)slots * I * 4, y_end = y_slot + (uint64_t)slots * H * 4;
  assert_true(h_end <= WS_ADDR + need);
  assert_true(y_end <= WS_ADDR + need);
  assert_true(h_end <= y_slot || y_end <= h);
  const uint64_t per_slot[] = {scatter->ptr[3], scatter->ptr[4], scatter->ptr[5]};
  for (size_t i = 0; i < 3; i++) {
    const uint64_t end = per_slot[i] + (uint64_t)slots * 4;
    assert_true(end <= WS_ADDR + need);
    assert_true(end <= h || per_slot[i] >= h_end);
    assert_true(end <= y_slot || per_slot[i] >= y_end);
  }
}

/* The sm_90a table's wgmma GEMMs as an offline bf16 plan launches them on a fake driver (132
 * SMs), against the rules written out here: the gather a thread a 16-byte chunk of x; a
 * persistent grid of min(items, blocks a SM x 132); a producer warpgroup and a consumer a 64 rows;
 * the shared memory of the stage ring (A rows and 64-column weight boxes), GEMM1's output staging
 * and 1 KB of alignment; A read in boxes of 8 rows (64-row tiles) or the tile's rows, the weights
 * in 64 x 64 boxes of [E, K, N]; programmatic dependent launch and the chained wait with 64-row
 * tiles only. */
static void test_forward_wgmma_launches(void **state) {
  fixture *fx = *state;
  moejit_layer_desc d;
  moejit_layer_desc_init(&d);
  d.hidden = 256, d.intermediate = 192, d.experts = 8, d.top_k = 4, d.max_tokens = 4096;
  moejit_plan *plan = NULL;
  if (moejit_plan_create(fx->ctx, &d, &plan) != MOEJIT_OK)
    fail_msg("plan: %s", moejit_last_error(fx->ctx));
  fake_device *fk = fake_open(plan);
  fk->plan.pdl = 1;
  static const int64_t tokens[] = {2, 3, 16, 64, 128, 4096};
  int seen_chained = 0, seen_pingpong = 0, seen_128 = 0;
  for (size_t t = 0; t < sizeof tokens / sizeof tokens[0]; t++) {
    const int64_t T = tokens[t], slots = T * d.top_k;
    const int cfg = mj_rt_pick(&fk->plan, T, NULL);
    const mj_gemm_config *c = &fk->plan.configs[cfg];
    if (c->kind != MJ_GEMM_WGMMA)
      continue;
    moejit_forward_args a;
    fake_forward(fk, T, &a);
    const launch_record *gather = NULL, *g[2] = {NULL, NULL};
    for (int i = 0; i < fk->nlaunch; i++) {
      const launch_record *r = &fk->launch[i];
      if (r->fn == FAKE_FN_GATHER)
        gather = r;
      else if (r->fn == FAKE_FN_GEMM1(cfg))
        g[0] = r;
      else if (r->fn == FAKE_FN_GEMM2(cfg))
        g[1] = r;
    }
    assert_true(gather && g[0] && g[1]);
    assert_int_equal(gather->grid[0], (T * d.hidden / 8 + 255) / 256);
    assert_int_equal(gather->block[0], 256);
    assert_int_equal(gather->ints[0], T);
    const int64_t max_tiles =
        (slots + fk->plan.min_bm - 1) / fk->plan.min_bm + (slots < d.experts ? slots : d.experts);
    const int bc = (c->bn + 63) / 64 * 64;
    const unsigned smem = (unsigned)(c->stages * (c->bm + bc) * 64 * 2 +
                                     (c->bm / 64) * 4 * 16 * (c->bn / 2 + 8) * 2 + 1024);
    const int chained = c->bm == 64 && c->chain;
    for (int s = 0; s < 2; s++) {
      const int64_t n = s == 0 ? 2 * d.intermediate : d.hidden;
      const int64_t k = s == 0 ? d.hidden : d.intermediate;
      const int64_t items = max_tiles * ((n + c->bn - 1) / c->bn), resident = c->ctas * 132;
      const launch_record *r = g[s];
      assert_int_equal(r->grid[0], items < resident ? items : resident);
      assert_int_equal(r->grid[1] * r->grid[2], 1);
      assert_int_equal(r->block[0], 128 * (1 + c->bm / 64));
      assert_int_equal(r->smem, smem);
      assert_int_equal(r->pdl, c->bm == 64);
      assert_int_equal(r->wait_ready, s == 1 && chained);
      assert_int_equal(r->ptr[0], s == 0 ? addr(a.gate_up_proj_bias) : addr(a.down_proj_bias));
      assert_int_equal(r->tmap_rank[0], 2);
      assert_true(r->tmap_dims[0][0] == (unsigned long long)k &&
                  r->tmap_dims[0][1] == (unsigned long long)slots);
      assert_int_equal(r->tmap_box[0][0], 64);
      assert_int_equal(r->tmap_box[0][1], c->bm == 64 ? 8 : c->bm);
      assert_int_equal(r->tmap_rank[1], 3);
      assert_true(r->tmap_dims[1][0] == (unsigned long long)n &&
                  r->tmap_dims[1][1] == (unsigned long long)k &&
                  r->tmap_dims[1][2] == (unsigned long long)d.experts);
      assert_true(r->tmap_box[1][0] == 64 && r->tmap_box[1][1] == 64 && r->tmap_box[1][2] == 1);
    }
    seen_chained += chained;
    seen_pingpong += c->pingpong;
    seen_128 += c->bm == 128 && !c->pingpong;
  }
  assert_true(seen_chained && seen_pingpong && seen_128);
  fake_close(fk);
  moejit_plan_destroy(plan);
}

static void test_forward_launches(void **state) {
  fixture *fx = *state;
  fake_device *fk = fake_open(need_plan(fx));
  static const int64_t tokens[] = {1, 2, 12, 13, 37, 60, 61, 100};
  int picked[MJ_MAX_GEMM_CONFIGS] = {0};
  for (size_t i = 0; i < sizeof tokens / sizeof tokens[0]; i++) {
    check_forward(fk, tokens[i]);
    picked[fk->plan.pick[mj_rt_bucket(tokens[i])]]++;
  }
  /* The token counts above reach every configuration of the plan. */
  for (int i = 0; i < fk->plan.ngemm; i++)
    assert_true(picked[i] > 0);

  /* When the plan's context is already current, nothing is pushed or popped. */
  fk->current = FAKE_CUCTX;
  fk->gets = 0;
  check_forward(fk, 5);
  assert_int_equal(fk->pushes + fk->pops, 0);
  assert_int_equal(fk->gets, 1);
  /* Nothing was compiled on the launch path. */
  assert_int_equal(fk->ctx.compiles, 0);
  fake_close(fk);
}

/* MXFP4 weights: each GEMM gets the blocks and the scales the caller passed, with no repacking and
 * nothing compiled on the launch path; a forward without the scales, or with them misaligned, is
 * refused before the driver. */
static void test_forward_mxfp4(void **state) {
  fixture *fx = *state;
  moejit_layer_desc d = small_desc();
  d.dtype = MOEJIT_BF16;
  d.exact_f32 = 0;
  d.weight_format = MOEJIT_WEIGHTS_MXFP4;
  moejit_plan *plan = NULL;
  if (moejit_plan_create(fx->ctx, &d, &plan) != MOEJIT_OK)
    fail_msg("an MXFP4 plan: %s", moejit_last_error(fx->ctx));
  const int64_t compiles = fx->ctx->compiles;
  fake_device *fk = fake_open(plan);
  static const int64_t tokens[] = {1, 37}; /* the streamed tile, then an mma.sync one */
  for (size_t i = 0; i < sizeof tokens / sizeof tokens[0]; i++) {
    const int64_t T = tokens[i];
    const int cfg = fk->plan.pick[mj_rt_bucket(T)];
    assert_int_equal(fk->plan.configs[cfg].kind, i == 0 ? MJ_GEMM_STREAM : MJ_GEMM_SYNC);
    size_t need = 0;
    assert_int_equal(moejit_workspace_size(&fk->plan, T, &need), MOEJIT_OK);
    moejit_forward_args a;
    valid_args(&a, T);
    a.gate_up_proj_scales = (const void *)(uintptr_t)0xA0000000u;
    a.down_proj_scales = (const void *)(uintptr_t)0xB0000000u;
    fk->nlaunch = 0;
    if (moejit_forward(&fk->plan, &a, (void *)WS_ADDR, need, FAKE_STREAM) != MOEJIT_OK)
      fail_msg("T=%lld: %s", (long long)T, moejit_last_error(&fk->ctx));
    const launch_record *g1 = NULL, *g2 = NULL;
    for (int l = 0; l < fk->nlaunch; l++) {
      if (fk->launch[l].fn == FAKE_FN_GEMM1(cfg))
        g1 = &fk->launch[l];
      if (fk->launch[l].fn == FAKE_FN_GEMM2(cfg))
        g2 = &fk->launch[l];
    }
    assert_non_null(g1);
    assert_non_null(g2);
    assert_int_equal(g1->ptr[1], addr(a.gate_up_proj));
    assert_int_equal(g1->ptr[3], addr(a.gate_up_proj_scales));
    assert_int_equal(g2->ptr[1], addr(a.down_proj));
    assert_int_equal(g2->ptr[3], addr(a.down_proj_scales));
    assert_int_equal(g2->grid[2],
                     fk->plan.configs[cfg].splits > 1 ? fk->plan.configs[cfg].splits : 1);

    fk->nlaunch = 0;
    a.gate_up_proj_scales = NULL;
    assert_int_equal(moejit_forward(&fk->plan, &a, (void *)WS_ADDR, need, FAKE_STREAM),
                     MOEJIT_ERR_INVALID_ARG);
    assert_contains(moejit_last_error(&fk->ctx), "args->gate_up_proj_scales is NULL");
    a.gate_up_proj_scales = (const void *)(uintptr_t)0xA0000000u;
    a.down_proj_scales = (const void *)(uintptr_t)0xB0000008u;
    assert_int_equal(moejit_forward(&fk->plan, &a, (void *)WS_ADDR, need, FAKE_STREAM),
                     MOEJIT_ERR_INVALID_ARG);
    assert_contains(moejit_last_error(&fk->ctx), "args->down_proj_scales=");
    assert_contains(moejit_last_error(&fk->ctx), "16-byte aligned");
    assert_int_equal(fk->nlaunch, 0);
  }
  assert_int_equal(fx->ctx->compiles, compiles);
  fake_close(fk);
  moejit_plan_destroy(plan);
}

/* A layer whose activation runs as its own launch (gate and up in halves here; also activations
 * without mul) though the plan is not unfused: GEMM1 writes its raw output to the workspace's
 * gate_up, the activation kernel reads it and writes h, which GEMM2 reads, all within the GEMM1
 * stage; a layer without biases passes NULL bias pointers, which reach the kernels as such, and
 * is refused bias pointers. */
static void test_forward_split_activation(void **state) {
  fixture *fx = *state;
  moejit_layer_desc d = small_desc();
  d.dtype = MOEJIT_BF16;
  d.exact_f32 = 0;
  d.activation = MOEJIT_ACT_SILU_MUL;
  d.gate_up_layout = MOEJIT_GATE_UP_HALVES;
  d.no_bias = 1;
  moejit_plan *plan = NULL;
  if (moejit_plan_create(fx->ctx, &d, &plan) != MOEJIT_OK)
    fail_msg("plan: %s", moejit_last_error(fx->ctx));
  assert_int_equal(plan->wgmma, 0); /* wgmma's epilogue fuses interleaved pairs only */
  fake_device *fk = fake_open(plan);
  const int64_t T = 37;
  const int cfg = fk->plan.pick[mj_rt_bucket(T)];
  size_t need = 0;
  assert_int_equal(moejit_workspace_size(&fk->plan, T, &need), MOEJIT_OK);
  moejit_forward_args a;
  valid_args(&a, T);
  a.gate_up_proj_bias = a.down_proj_bias = NULL;
  fk->nlaunch = 0;
  if (moejit_forward(&fk->plan, &a, (void *)WS_ADDR, need, FAKE_STREAM) != MOEJIT_OK)
    fail_msg("forward: %s", moejit_last_error(&fk->ctx));
  assert_int_equal(fk->nlaunch, 7);
  const launch_record *g1 = &fk->launch[3], *act = &fk->launch[4], *g2 = &fk->launch[5];
  assert_ptr_equal(g1->fn, FAKE_FN_GEMM1(cfg));
  assert_ptr_equal(act->fn, FAKE_FN_ACT);
  assert_ptr_equal(g2->fn, FAKE_FN_GEMM2(cfg));
  assert_int_equal(g1->ptr[2], 0); /* no bias */
  assert_int_equal(g2->ptr[2], 0);
  moejit_workspace_view view;
  moejit_workspace_view_init(&view);
  assert_int_equal(moejit_workspace_view_get(&fk->plan, T, &view), MOEJIT_OK);
  assert_true(view.gate_up != (size_t)-1);
  assert_int_equal(g1->ptr[8], WS_ADDR + view.gate_up); /* GEMM1's raw output */
  assert_int_equal(act->ptr[0], WS_ADDR + view.gate_up);
  assert_int_equal(act->ptr[2], WS_ADDR + view.h);
  assert_int_equal(g2->ptr[0], WS_ADDR + view.h);
  /* the GEMM1 stage alone launches the activation too; the activation stage alone, nothing */
  fk->nlaunch = 0;
  assert_int_equal(
      moejit_forward_stages(&fk->plan, &a, (void *)WS_ADDR, need, FAKE_STREAM, MOEJIT_STAGE_GEMM1),
      MOEJIT_OK);
  assert_int_equal(fk->nlaunch, 2);
  assert_ptr_equal(fk->launch[1].fn, FAKE_FN_ACT);
  fk->nlaunch = 0;
  assert_int_equal(moejit_forward_stages(&fk->plan, &a, (void *)WS_ADDR, need, FAKE_STREAM,
                                         MOEJIT_STAGE_ACTIVATION),
                   MOEJIT_OK);
  assert_int_equal(fk->nlaunch, 0);
  /* bias pointers for a layer without biases, with tokens and without */
  a.down_proj_bias = a.down_proj;
  assert_int_equal(moejit_forward(&fk->plan, &a, (void *)WS_ADDR, need, FAKE_STREAM),
                   MOEJIT_ERR_INVALID_ARG);
  assert_contains(moejit_last_error(&fk->ctx), "args->down_proj_bias is set but desc->no_bias=1");
  a.tokens = 0;
  assert_int_equal(moejit_forward(&fk->plan, &a, NULL, 0, FAKE_STREAM), MOEJIT_ERR_INVALID_ARG);
  assert_int_equal(fk->nlaunch, 0);
  fake_close(fk);
  moejit_plan_destroy(plan);
}

/* Few slots: routing is one launch of one 1024-thread block that writes the regions count, scan and
 * scatter would, and the GEMMs read them. */
static void test_forward_small_routing(void **state) {
  fixture *fx = *state;
  fake_device *fk = fake_open(need_plan(fx));
  fk->plan.route.small.meta.max_slots = need_plan(fx)->route.small.meta.max_slots;
  const int64_t T = 37;
  moejit_forward_args a;
  fake_forward(fk, T, &a);
  assert_int_equal(fk->nlaunch, 4);
  const launch_record *small = &fk->launch[0], *g1 = &fk->launch[1], *g2 = &fk->launch[2];
  const mj_gemm_config *c = &fk->plan.configs[fk->plan.pick[mj_rt_bucket(T)]];
  assert_ptr_equal(small->fn, FAKE_FN_SMALL);
  assert_int_equal(small->grid[0] * small->grid[1] * small->grid[2], 1);
  assert_int_equal(small->block[0], 1024);
  assert_int_equal(small->ptr[0], addr(a.topk_ids));
  assert_int_equal(small->ptr[1], addr(a.routing_weights));
  assert_int_equal(small->ints[0], T * K);
  assert_int_equal(small->ints[1], c->bm);
  assert_int_equal(small->ptr[4], WS_ADDR);    /* flags at offset 0 */
  assert_int_equal(g1->ptr[6], small->ptr[2]); /* tiles */
  assert_int_equal(g1->ptr[7], small->ptr[3]); /* num_tiles */
  assert_int_equal(g1->ptr[4], small->ptr[5]); /* row_slot */
  assert_int_equal(g1->ptr[5], small->ptr[7]); /* row_weight */
  assert_int_equal(g2->ptr[4], small->ptr[5]);
  assert_ptr_equal(fk->launch[3].fn, FAKE_FN_COMBINE);
  assert_int_equal(fk->launch[3].ptr[1], small->ptr[6]); /* slot_row */
  fake_close(fk);
}

/* With programmatic dependent launch (sm_90+), a whole forward launches every kernel but its first
 * with the attribute; a staged forward launches none with it, as the caller may run kernels of its
 * own in between. */
static void test_forward_pdl(void **state) {
  fixture *fx = *state;
  assert_int_equal(need_plan(fx)->pdl, 0); /* an offline plan launches nothing */
  fake_device *fk = fake_open(need_plan(fx));
  fk->plan.pdl = 1; /* as a plan on sm_90+ sets it */
  for (int small = 0; small <= 1; small++) {
    fk->plan.route.small.meta.max_slots = small ? need_plan(fx)->route.small.meta.max_slots : 0;
    moejit_forward_args a;
    const size_t need = fake_forward(fk, 37, &a);
    assert_int_equal(fk->nlaunch, small ? 4 : 6);
    for (int i = 0; i < fk->nlaunch; i++)
      if (fk->launch[i].pdl != (i > 0))
        fail_msg("small=%d: launch %d of %d: pdl=%d", small, i, fk->nlaunch, fk->launch[i].pdl);
    fk->nlaunch = 0;
    assert_int_equal(moejit_forward_stages(&fk->plan, &a, (void *)WS_ADDR, need, FAKE_STREAM,
                                           MOEJIT_STAGE_ROUTE | MOEJIT_STAGE_GEMM1),
                     MOEJIT_OK);
    assert_int_equal(moejit_forward_stages(&fk->plan, &a, (void *)WS_ADDR, need, FAKE_STREAM,
                                           MOEJIT_STAGE_GEMM2 | MOEJIT_STAGE_COMBINE),
                     MOEJIT_OK);
    assert_int_equal(fk->nlaunch, small ? 4 : 6);
    for (int i = 0; i < fk->nlaunch; i++)
      assert_int_equal(fk->launch[i].pdl, 0);
  }
  /* A forward past MJ_CHUNK_TOKENS runs chunk after chunk: each chunk's first kernel follows the
   * previous chunk's combine, plainly. */
  fk->plan.desc.max_tokens = MJ_CHUNK_TOKENS + 5;
  moejit_forward_args a;
  fake_forward(fk, MJ_CHUNK_TOKENS + 5, &a);
  assert_int_equal(fk->nlaunch, 12);
  for (int i = 0; i < fk->nlaunch; i++)
    if (fk->launch[i].pdl != (i % 6 != 0))
      fail_msg("chunked: launch %d of %d: pdl=%d", i, fk->nlaunch, fk->launch[i].pdl);
  fake_close(fk);
}

/* The device-side token count: every routing launch gets its address and the first token of its
 * chunk (route.cuh reads it there); the other kernels need nothing of it. A caller built against
 * the 0.1 header, whose struct ends before the field, is still accepted and has no count. */
static void test_forward_device_tokens(void **state) {
  fixture *fx = *state;
  fake_device *fk = fake_open(need_plan(fx));
  const uint64_t live = 0xA0000000u;
  fk->plan.desc.max_tokens = MJ_CHUNK_TOKENS + 5;
  for (int small = 0; small <= 1; small++) {
    fk->plan.route.small.meta.max_slots = small ? need_plan(fx)->route.small.meta.max_slots : 0;
    const int64_t tokens[] = {37, MJ_CHUNK_TOKENS + 5};
    for (int j = 0; j < 2; j++) {
      size_t need = 0;
      assert_int_equal(moejit_workspace_size(&fk->plan, tokens[j], &need), MOEJIT_OK);
      moejit_forward_args a;
      valid_args(&a, tokens[j]);
      a.device_tokens = (const int32_t *)(uintptr_t)live;
      fk->nlaunch = 0;
      assert_int_equal(moejit_forward(&fk->plan, &a, (void *)WS_ADDR, need, FAKE_STREAM),
                       MOEJIT_OK);
      int routed = 0;
      for (int i = 0; i < fk->nlaunch; i++) {
        const launch_record *r = &fk->launch[i];
        if (r->fn != FAKE_FN_COUNT && r->fn != FAKE_FN_SCATTER && r->fn != FAKE_FN_SMALL)
          continue;
        /* chunks of MJ_CHUNK_TOKENS: the second one's launches come after the first's combine */
        int chunk = 0;
        for (int k = 0; k < i; k++)
          chunk += fk->launch[k].fn == FAKE_FN_COMBINE;
        assert_int_equal(r->live, live);
        assert_int_equal(r->live_base, chunk * MJ_CHUNK_TOKENS);
        routed++;
      }
      /* small routing only when the chunk's slots fit: one launch each, else count and scatter */
      assert_true(routed >= (j == 0 ? 1 : 2));
    }
  }
  /* The 0.1 struct: the field past its end is never read (garbage there changes nothing). */
  fk->plan.route.small.meta.max_slots = need_plan(fx)->route.small.meta.max_slots;
  size_t need = 0;
  assert_int_equal(moejit_workspace_size(&fk->plan, 37, &need), MOEJIT_OK);
  moejit_forward_args a;
  valid_args(&a, 37);
  a.device_tokens = (const int32_t *)(uintptr_t)0xA0000001u; /* misaligned: rejected if read */
  a.struct_size = offsetof(moejit_forward_args, device_tokens);
  fk->nlaunch = 0;
  assert_int_equal(moejit_forward(&fk->plan, &a, (void *)WS_ADDR, need, FAKE_STREAM), MOEJIT_OK);
  assert_int_equal(fk->nlaunch, 4);
  assert_ptr_equal(fk->launch[0].fn, FAKE_FN_SMALL);
  assert_int_equal(fk->launch[0].live, 0);
  fake_close(fk);
}

static void test_forward_launch_failure(void **state) {
  fixture *fx = *state;
  fake_device *fk = fake_open(need_plan(fx));
  size_t need = 0;
  assert_int_equal(moejit_workspace_size(&fk->plan, 9, &need), MOEJIT_OK);
  moejit_forward_args a;
  valid_args(&a, 9);
  fk->fail_launch_at = 4; /* the first GEMM */
  assert_int_equal(moejit_forward(&fk->plan, &a, (void *)WS_ADDR, need, FAKE_STREAM),
                   MOEJIT_ERR_CUDA);
  assert_int_equal(fk->nlaunch, 4); /* stopped there */
  assert_int_equal(fk->pushes, 1);
  assert_int_equal(fk->pops, 1); /* the context was popped on the way out */
  const char *msg = moejit_last_error(&fk->ctx);
  assert_contains(msg, "LaunchKernel");
  assert_contains(msg, "CUDA_ERROR_ILLEGAL_ADDRESS");
  assert_contains(msg, "launch.c:");
  fake_close(fk);
}

static void test_forward_check_fake(void **state) {
  fixture *fx = *state;
  fake_device *fk = fake_open(need_plan(fx));
  int64_t bad = -1;
  assert_int_equal(moejit_forward_check(&fk->plan, NULL, FAKE_STREAM, &bad),
                   MOEJIT_ERR_INVALID_ARG);
  assert_contains(moejit_last_error(&fk->ctx), "workspace is NULL");

  fk->flags0 = 0;
  assert_int_equal(moejit_forward_check(&fk->plan, (void *)WS_ADDR, FAKE_STREAM, &bad), MOEJIT_OK);
  assert_int_equal(bad, 0);
  assert_int_equal(fk->copied_from, WS_ADDR);
  assert_int_equal(fk->syncs, 1);
  assert_int_equal(fk->pushes, fk->pops);

  fk->flags0 = 3;
  bad = -1;
  assert_int_equal(moejit_forward_check(&fk->plan, (void *)WS_ADDR, FAKE_STREAM, &bad),
                   MOEJIT_ERR_BAD_EXPERT_ID);
  assert_int_equal(bad, 3);
  assert_contains(moejit_last_error(&fk->ctx), "3 slot");
  assert_int_equal(moejit_forward_check(&fk->plan, (void *)WS_ADDR, FAKE_STREAM, NULL),
                   MOEJIT_ERR_BAD_EXPERT_ID);
  assert_int_equal(fk->pushes, fk->pops);
  fake_close(fk);
}

/* ---- statuses, version, defaults ------------------------------------------------------------- */

static void test_status_names(void **state) {
  (void)state;
  static const struct {
    moejit_status value;
    const char *name, *message;
  } table[] = {
#define ROW_(name, value, message) {name, #name, message},
      MOEJIT_STATUS_LIST(ROW_)
#undef ROW_
  };
  const size_t n = sizeof table / sizeof table[0];
  assert_true(n >= 12);
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(table[i].value, (int)i); /* appended, never renumbered: no gaps */
    const char *name = moejit_status_name(table[i].value);
    const char *text = moejit_status_string(table[i].value);
    assert_non_null(name);
    assert_non_null(text);
    assert_true(name[0] != '\0' && text[0] != '\0');
    assert_string_equal(name, table[i].name);
    assert_string_equal(text, table[i].message);
    for (size_t j = 0; j < i; j++) {
      assert_string_not_equal(name, moejit_status_name(table[j].value));
      assert_string_not_equal(text, moejit_status_string(table[j].value));
    }
  }
  static const int unknown[] = {-1, 12, 999, INT32_MAX};
  for (size_t u = 0; u < sizeof unknown / sizeof unknown[0]; u++) {
    if ((size_t)unknown[u] < n)
      continue;
    const char *name = moejit_status_name((moejit_status)unknown[u]);
    const char *text = moejit_status_string((moejit_status)unknown[u]);
    assert_non_null(name);
    assert_non_null(text);
    for (size_t j = 0; j < n; j++) {
      assert_string_not_equal(name, table[j].name);
      assert_string_not_equal(text, table[j].message);
    }
  }
}

static void test_version(void **state) {
  (void)state;
  assert_int_equal(moejit_version(), MOEJIT_VERSION_MAJOR * 10000 + MOEJIT_VERSION_MINOR * 100 +
                                         MOEJIT_VERSION_PATCH);
  char want[32];
  snprintf(want, sizeof want, "%d.%d.%d", MOEJIT_VERSION_MAJOR, MOEJIT_VERSION_MINOR,
           MOEJIT_VERSION_PATCH);
  assert_non_null(moejit_version_string());
  assert_string_equal(moejit_version_string(), want);
}

static void test_defaults(void **state) {
  (void)state;
  moejit_layer_desc d;
  memset(&d, 0xA5, sizeof d); /* init must set every field */
  moejit_layer_desc_init(&d);
  assert_int_equal(d.struct_size, sizeof d);
  assert_true(d.alpha == 1.702f);
  assert_true(d.limit == 7.0f);
  assert_int_equal(d.dtype, MOEJIT_BF16);
  assert_int_equal(d.ids_dtype, MOEJIT_I32);
  assert_int_equal(d.weights_dtype, MOEJIT_F32);
  assert_int_equal(d.routing, MOEJIT_ROUTING_TOPK);
  assert_int_equal(d.expert_capacity, 0); /* dropless */
  assert_int_equal(d.global_experts, 0);
  assert_int_equal(d.apply_router_weight_on_input, 0);
  assert_int_equal(d.hidden, 0); /* the shape is the caller's to give */
  assert_int_equal(d.max_tokens, 0);
  /* The defaults plus a shape make a valid descriptor. */
  d.hidden = 2880;
  d.intermediate = 2880;
  d.experts = 32;
  d.top_k = 4;
  d.max_tokens = 8192;
  mj_err err;
  assert_int_equal(mj_rt_check_desc(&d, &err), MOEJIT_OK);

  moejit_ctx_options o;
  memset(&o, 0xA5, sizeof o);
  moejit_ctx_options_init(&o);
  assert_int_equal(o.struct_size, sizeof o);
  assert_int_equal(o.device, 0);
  assert_null(o.offline_arch);
  assert_null(o.template_dir);
  assert_null(o.log);
  assert_null(o.log_user);
  assert_null(o.cache_dir);

  moejit_forward_args a;
  memset(&a, 0xA5, sizeof a);
  moejit_forward_args_init(&a);
  assert_int_equal(a.struct_size, sizeof a);
  assert_int_equal(a.tokens, 0);
  assert_null(a.x);
  assert_null(a.topk_ids);
  assert_null(a.routing_weights);
  assert_null(a.router_logits);
  assert_null(a.expert_map);
  assert_null(a.y);
}

/* Creating a context and a plan is logged at INFO; a fresh context's last error is empty. */
static void test_logged(void **state) {
  fixture *fx = *state;
  need_plan(fx);
  assert_int_equal(fx->plan_log.count, 2); /* the context, then the plan */
  assert_int_equal(fx->plan_log.level, MOEJIT_LOG_INFO);
  assert_contains(fx->plan_log.last, "H=64 I=96 E=5 K=2 f32");
  assert_contains(fx->plan_log.last, "sm_90a");
  moejit_ctx_options opts;
  moejit_ctx_options_init(&opts);
  opts.offline_arch = "sm_80";
  opts.cache_dir = "";
  log_capture log = {0};
  opts.log = capture_log;
  opts.log_user = &log;
  moejit_ctx *ctx = NULL;
  assert_int_equal(moejit_create(&ctx, &opts), MOEJIT_OK);
  assert_int_equal(log.level, MOEJIT_LOG_INFO);
  assert_contains(log.last, "offline");
  assert_contains(log.last, "sm_80");
  assert_non_null(moejit_last_error(ctx));
  assert_string_equal(moejit_last_error(ctx), "");
  moejit_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_create_bad_args),
      cmocka_unit_test(test_create_without_device),
      cmocka_unit_test(test_destroy_null),
      cmocka_unit_test(test_desc_validation),
      cmocka_unit_test(test_desc_older_sizes),
      cmocka_unit_test(test_workspace_size),
      cmocka_unit_test(test_plan_configurations),
      cmocka_unit_test(test_plan_fits_splits),
      cmocka_unit_test(test_plan_table_repeats),
      cmocka_unit_test(test_batch_invariant_plans),
      cmocka_unit_test(test_config_names),
      cmocka_unit_test(test_forward_offline),
      cmocka_unit_test(test_forward_argument_checks),
      cmocka_unit_test(test_forward_launches),
      cmocka_unit_test(test_forward_wgmma_launches),
      cmocka_unit_test(test_forward_small_routing),
      cmocka_unit_test(test_forward_mxfp4),
      cmocka_unit_test(test_forward_split_activation),
      cmocka_unit_test(test_forward_pdl),
      cmocka_unit_test(test_forward_device_tokens),
      cmocka_unit_test(test_forward_launch_failure),
      cmocka_unit_test(test_forward_check_fake),
      cmocka_unit_test(test_status_names),
      cmocka_unit_test(test_version),
      cmocka_unit_test(test_defaults),
      cmocka_unit_test(test_logged),
  };
  return cmocka_run_group_tests_name("rt_api", tests, group_setup, group_teardown);
}
