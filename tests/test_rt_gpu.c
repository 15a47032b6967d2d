/* test_rt_gpu.c: the GPU suite: golden cases and GPT-OSS shapes through moejit_forward against the
 * CPU reference, out-of-range ids, reproducibility, CUDA graphs, two plans on two streams, argument
 * checks on a device plan, and no compilation on the launch path. Every test skips without a GPU.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tools/check.h"
#include "golden.h"
#include "tools/ref.h"
#include "runtime/internal.h"
#include "tools/tuner.h"

static moejit_ctx *g_ctx;
static mj_synth g_syn;

#define NEED_GPU()                                                                                 \
  do {                                                                                             \
    if (!g_ctx)                                                                                    \
      skip();                                                                                      \
  } while (0)

#define CU_OK(call) assert_int_equal(g_ctx->cu.call, MJ_CU_SUCCESS)

static int setup(void **state) {
  (void)state;
  moejit_status st = moejit_create(&g_ctx, NULL);
  if (st == MOEJIT_ERR_NO_DEVICE) {
    print_message("no GPU: the GPU suite skips\n");
    g_ctx = NULL;
    return 0;
  }
  if (st != MOEJIT_OK)
    return -1;
  mj_err err;
  if (mj_synth_open(g_ctx, &g_syn, &err) != MOEJIT_OK) {
    print_message("synth: %s\n", err.msg);
    return -1;
  }
  CUcontext cur;
  g_ctx->cu.CtxPushCurrent(g_ctx->cuctx);
  (void)cur;
  print_message("device: %s (%s)\n", g_ctx->device_name, g_ctx->arch);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  if (g_ctx) {
    CUcontext popped;
    mj_synth_close(&g_syn);
    g_ctx->cu.CtxPopCurrent(&popped);
  }
  moejit_destroy(g_ctx);
  g_ctx = NULL;
  return 0;
}

static CUdeviceptr upload(const void *host, size_t bytes) {
  CUdeviceptr p = 0;
  CU_OK(MemAlloc(&p, bytes ? bytes : 16));
  if (bytes)
    CU_OK(MemcpyHtoD(p, host, bytes));
  return p;
}

static void *download(CUdeviceptr p, size_t bytes) {
  void *h = malloc(bytes ? bytes : 1);
  assert_non_null(h);
  CU_OK(CtxSynchronize());
  if (bytes)
    CU_OK(MemcpyDtoH(h, p, bytes));
  return h;
}

static void *ptr(CUdeviceptr p) { return (void *)(uintptr_t)p; }

static int is_mxfp4(const moejit_layer_desc *d) { return d->weight_format == MOEJIT_WEIGHTS_MXFP4; }

static moejit_plan *make_plan(const moejit_layer_desc *d) {
  moejit_plan *plan = NULL;
  moejit_status st = moejit_plan_create(g_ctx, d, &plan);
  if (st != MOEJIT_OK)
    print_message("plan: %s: %s\n", moejit_status_name(st), moejit_last_error(g_ctx));
  assert_int_equal(st, MOEJIT_OK);
  return plan;
}

/* ---- golden cases -------------------------------------------------------------------------- */

/* ---- layer shapes -------------------------------------------------------------------------- */

/* A small layer (H=256, I=192, E=16, top-4) for the option, bad-id, stream and tuner tests. */
static moejit_layer_desc option_desc(moejit_dtype dtype) {
  moejit_layer_desc d;
  moejit_layer_desc_init(&d);
  d.hidden = 256;
  d.intermediate = 192;
  d.experts = 16;
  d.top_k = 4;
  d.dtype = dtype;
  return d;
}

/* ---- GPT-OSS shapes ------------------------------------------------------------------------ */

static moejit_layer_desc gpt_oss(int64_t experts, int64_t max_tokens) {
  moejit_layer_desc d;
  moejit_layer_desc_init(&d);
  d.hidden = d.intermediate = 2880;
  d.experts = experts;
  d.top_k = 4;
  d.max_tokens = max_tokens;
  return d;
}

static void run_and_check(moejit_plan *plan, mj_synth_layer *L, int64_t samples, const char *what) {
  moejit_forward_args a;
  mj_err err;
  mj_synth_layer_args(L, &a);
  assert_int_equal(moejit_forward(plan, &a, ptr(L->workspace), L->workspace_bytes, NULL),
                   MOEJIT_OK);
  CU_OK(CtxSynchronize());
  mj_check_result r;
  assert_int_equal(mj_check_sampled(&g_syn, L, samples, &r, &err), MOEJIT_OK);
  print_message("%-34s T=%-5lld %lld tokens checked: rel error %.3g (tolerance %.0e)\n", what,
                (long long)L->tokens, (long long)r.sampled, r.rel_error, r.tolerance);
  assert_int_equal(r.nonfinite, 0);
  assert_true(r.rel_error <= r.tolerance);
}

static void gpt_oss_tokens(int64_t experts) {
  static const int64_t tokens[] = {0, 1, 7, 256, 4096};
  moejit_layer_desc d = gpt_oss(experts, 4096);
  moejit_plan *plan = make_plan(&d);
  for (size_t i = 0; i < sizeof tokens / sizeof tokens[0]; i++) {
    mj_synth_layer L;
    mj_err err;
    assert_int_equal(mj_synth_layer_create(&g_syn, plan, tokens[i], 100 + i, &L, &err), MOEJIT_OK);
    char what[64];
    snprintf(what, sizeof what, "gpt-oss E=%lld", (long long)experts);
    run_and_check(plan, &L, 12, what);
    mj_synth_layer_destroy(&g_syn, &L);
  }
  moejit_plan_destroy(plan);
}

static void test_gpt_oss_e32(void **state) {
  (void)state;
  NEED_GPU();
  gpt_oss_tokens(32);
}

static void test_gpt_oss_e128(void **state) {
  (void)state;
  NEED_GPU();
  gpt_oss_tokens(128);
}

/* Every GEMM configuration of the plan forced one at a time, with y and the workspace poisoned
 * (NaN) before each forward, so that neither a row left unwritten nor one read before it is written
 * (a chained GEMM2 ahead of its expert's h, say) can pass on the last configuration's rows, which
 * hold the same numbers. Destroys the plan. */
static void plan_configs(moejit_plan *plan, moejit_layer_desc d, int64_t tokens, const char *what) {
  mj_synth_layer L;
  mj_err err;
  assert_int_equal(mj_synth_layer_create(&g_syn, plan, tokens, 7 + tokens, &L, &err), MOEJIT_OK);
  moejit_forward_args a;
  mj_synth_layer_args(&L, &a);
  size_t ybytes = (size_t)tokens * (size_t)d.hidden * (d.dtype == MOEJIT_F32 ? 4 : 2);
  for (int c = 0; c < plan->ngemm; c++) {
    if (plan->configs[c].splits > 1 && tokens * d.top_k > MJ_SPLIT_SLOTS) {
      assert_int_equal(mj_rt_forward_with(plan, &a, ptr(L.workspace), L.workspace_bytes, NULL, c),
                       MOEJIT_ERR_UNSUPPORTED); /* refused, not run past its workspace */
      continue;
    }
    CU_OK(MemsetD8(L.y, 0xFF, ybytes));
    CU_OK(MemsetD8(L.workspace, 0xFF, L.workspace_bytes));
    assert_int_equal(mj_rt_forward_with(plan, &a, ptr(L.workspace), L.workspace_bytes, NULL, c),
                     MOEJIT_OK);
    CU_OK(CtxSynchronize());
    mj_check_result r;
    assert_int_equal(mj_check_sampled(&g_syn, &L, 16, &r, &err), MOEJIT_OK);
    print_message("%-12s %-24s T=%-5lld rel error %.3g (tolerance %.0e)\n", what,
                  plan->configs[c].name, (long long)tokens, r.rel_error, r.tolerance);
    assert_int_equal(r.nonfinite, 0);
    assert_true(r.rel_error <= r.tolerance);
  }
  mj_synth_layer_destroy(&g_syn, &L);
  moejit_plan_destroy(plan);
}

/* Every configuration of the plan's table (mma.sync and, on sm_90a, wgmma) and, on sm_90a, wgmma
 * tiles the table does not hold (240 and 256 columns: weight slabs that are not whole 64-column
 * boxes, or run past N; two blocks of 64 x 192 a SM; ping-pong at 6 stages; 64 x 64 with 12
 * stages) and streamed tiles of 4 rows x 128 columns and 2 x 32 with 4 loads a thread in flight,
 * on GPT-OSS shapes and on an odd shape whose N and K are not multiples of the tiles (tails). */
static void each_config(moejit_layer_desc d, int64_t tokens, const char *what) {
  plan_configs(make_plan(&d), d, tokens, what);
  if (!mj_tune_arch_wgmma(g_ctx->arch))
    return;
  static const char *const wide[] = {"wg_m128n240s4c1", "wg_m128n256s3c1", "wg_m64n240s4c1",
                                     "wg_m64n192s3c2",  "wg_m128n128s6pp", "wg_m64n64s12c1",
                                     "stream_m4n128u8", "stream_m2n32u4"};
  enum { nwide = sizeof wide / sizeof wide[0] };
  mj_gemm_config c[nwide];
  mj_math math;
  for (int i = 0; i < nwide; i++)
    assert_int_equal(mj_tune_config_parse(wide[i], &c[i], &math), 0);
  moejit_plan *plan = NULL;
  moejit_status st = mj_rt_plan_create_with(g_ctx, &d, c, nwide, &plan, NULL);
  if (st != MOEJIT_OK)
    print_message("plan: %s: %s\n", moejit_status_name(st), moejit_last_error(g_ctx));
  assert_int_equal(st, MOEJIT_OK);
  plan_configs(plan, d, tokens, what);
}

static void test_every_config(void **state) {
  (void)state;
  NEED_GPU();
  each_config(gpt_oss(32, 4096), 4096, "gpt-oss E=32");
  each_config(gpt_oss(128, 1024), 1024, "gpt-oss E=128");
  each_config(gpt_oss(32, 2048), 2048, "gpt-oss E=32"); /* 8192 slots: the split tile's most */
  moejit_layer_desc odd = gpt_oss(5, 300);
  odd.hidden = 200; /* K of GEMM1 and N of GEMM2: 3 blocks of 64 and a tail of 8 */
  odd.intermediate = 136;
  odd.top_k = 2;
  odd.dtype = MOEJIT_F16;
  each_config(odd, 300, "odd f16");
}

/* All tokens on one expert (the others get none), and duplicate ids inside a token. */
static void test_skew_and_duplicates(void **state) {
  (void)state;
  NEED_GPU();
  moejit_layer_desc d = gpt_oss(32, 512);
  moejit_plan *plan = make_plan(&d);
  mj_synth_layer L;
  mj_err err;
  assert_int_equal(mj_synth_layer_create(&g_syn, plan, 512, 7, &L, &err), MOEJIT_OK);
  int64_t n = L.tokens * d.top_k;
  int32_t *ids = malloc((size_t)n * sizeof *ids);
  assert_non_null(ids);
  for (int64_t i = 0; i < n; i++)
    ids[i] = 5;
  assert_int_equal(mj_synth_layer_set_ids(&g_syn, &L, ids, &err), MOEJIT_OK);
  run_and_check(plan, &L, 8, "all slots on expert 5");
  for (int64_t i = 0; i < n; i++)
    ids[i] = (int32_t)((i / d.top_k) % 3 == 0 ? 9 : (i * 7) % 32); /* some tokens: 4 x expert 9 */
  assert_int_equal(mj_synth_layer_set_ids(&g_syn, &L, ids, &err), MOEJIT_OK);
  run_and_check(plan, &L, 8, "duplicate ids within tokens");
  free(ids);
  mj_synth_layer_destroy(&g_syn, &L);
  moejit_plan_destroy(plan);

  /* 6000 rows on one expert: 47 m-tiles of the 128-row wgmma tiles, more than one group of them
   * (wgmma.cuh's decode_item: groups of 24 at most, here two of 24 and 23). Every token checked. */
  d = gpt_oss(5, 3000);
  d.hidden = 200;
  d.intermediate = 136;
  d.top_k = 2;
  d.dtype = MOEJIT_F16;
  plan = make_plan(&d);
  assert_int_equal(mj_synth_layer_create(&g_syn, plan, 3000, 11, &L, &err), MOEJIT_OK);
  n = L.tokens * d.top_k;
  ids = malloc((size_t)n * sizeof *ids);
  assert_non_null(ids);
  for (int64_t i = 0; i < n; i++)
    ids[i] = 3;
  assert_int_equal(mj_synth_layer_set_ids(&g_syn, &L, ids, &err), MOEJIT_OK);
  run_and_check(plan, &L, 3000, "all slots on expert 3, groups");
  free(ids);
  mj_synth_layer_destroy(&g_syn, &L);
  moejit_plan_destroy(plan);
}

/* Out-of-range ids never fault: they contribute nothing and moejit_forward_check counts them. */
static void test_bad_expert_ids(void **state) {
  (void)state;
  NEED_GPU();
  moejit_layer_desc d = option_desc(MOEJIT_BF16);
  d.max_tokens = 300;
  for (int form = 0; form < 4; form++) { /* i32, i64 ids; dense, then MXFP4 weights */
    const int ids64 = form & 1;
    d.ids_dtype = ids64 ? MOEJIT_I64 : MOEJIT_I32;
    d.weight_format = form & 2 ? MOEJIT_WEIGHTS_MXFP4 : MOEJIT_WEIGHTS_DENSE;
    moejit_plan *plan = make_plan(&d);
    mj_synth_layer L;
    mj_err err;
    assert_int_equal(mj_synth_layer_create(&g_syn, plan, 300, 3, &L, &err), MOEJIT_OK);
    int64_t n = L.tokens * d.top_k, expect_bad = 0;
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    assert_non_null(ids);
    memcpy(ids, L.host_ids, (size_t)n * sizeof *ids);
    static const int32_t bad[] = {16, -1, INT32_MAX, INT32_MIN, 1000};
    for (int64_t i = 0; i < n; i += 7, expect_bad++)
      ids[i] = bad[expect_bad % 5];
    assert_int_equal(mj_synth_layer_set_ids(&g_syn, &L, ids, &err), MOEJIT_OK);
    moejit_forward_args a;
    mj_synth_layer_args(&L, &a);
    assert_int_equal(moejit_forward(plan, &a, ptr(L.workspace), L.workspace_bytes, NULL),
                     MOEJIT_OK);
    int64_t count = 0;
    assert_int_equal(moejit_forward_check(plan, ptr(L.workspace), NULL, &count),
                     MOEJIT_ERR_BAD_EXPERT_ID);
    assert_int_equal(count, expect_bad);
    assert_non_null(strstr(moejit_last_error(g_ctx), "outside [0, 16)"));
    mj_check_result r;
    assert_int_equal(mj_check_sampled(&g_syn, &L, 300, &r, &err), MOEJIT_OK);
    print_message("bad ids (%s, %s weights): %lld flagged, rel error %.3g\n", ids64 ? "i64" : "i32",
                  is_mxfp4(&d) ? "mxfp4" : "dense", (long long)count, r.rel_error);
    assert_int_equal(r.nonfinite, 0);
    assert_true(r.rel_error <= r.tolerance);
    free(ids);
    mj_synth_layer_destroy(&g_syn, &L);
    moejit_plan_destroy(plan);
  }
}

/* ---- reproducibility, graphs, streams ------------------------------------------------------ */

static void *forward_output(moejit_plan *plan, mj_synth_layer *L, CUstream stream) {
  moejit_forward_args a;
  mj_synth_layer_args(L, &a);
  size_t bytes = (size_t)(L->tokens * L->desc.hidden) * mj_dtype_size(L->desc.dtype);
  CU_OK(MemsetD8(L->y, 0xFF, bytes));
  assert_int_equal(moejit_forward(plan, &a, ptr(L->workspace), L->workspace_bytes, stream),
                   MOEJIT_OK);
  CU_OK(StreamSynchronize(stream));
  return download(L->y, bytes);
}

static void test_bitwise_reproducible(void **state) {
  (void)state;
  NEED_GPU();
  moejit_layer_desc d = gpt_oss(32, 1024);
  moejit_plan *plan = make_plan(&d);
  mj_synth_layer L;
  mj_err err;
  assert_int_equal(mj_synth_layer_create(&g_syn, plan, 1024, 11, &L, &err), MOEJIT_OK);
  size_t bytes = (size_t)(L.tokens * d.hidden) * 2;
  void *first = forward_output(plan, &L, NULL);
  for (int run = 0; run < 2; run++) {
    void *again = forward_output(plan, &L, NULL);
    assert_memory_equal(first, again, bytes);
    free(again);
  }
  free(first);
  mj_synth_layer_destroy(&g_syn, &L);
  moejit_plan_destroy(plan);
}

static void test_cuda_graph(void **state) {
  (void)state;
  NEED_GPU();
  moejit_layer_desc d = gpt_oss(32, 64);
  moejit_plan *plan = make_plan(&d);
  mj_synth_layer L;
  mj_err err;
  assert_int_equal(mj_synth_layer_create(&g_syn, plan, 64, 12, &L, &err), MOEJIT_OK);
  CUstream s;
  CU_OK(StreamCreate(&s, MJ_CU_STREAM_NON_BLOCKING));
  void *eager = forward_output(plan, &L, s);
  size_t bytes = (size_t)(L.tokens * d.hidden) * 2;
  CU_OK(MemsetD8(L.y, 0xFF, bytes));
  int64_t compiles = g_ctx->compiles;
  moejit_forward_args a;
  mj_synth_layer_args(&L, &a);
  CUgraph graph;
  CUgraphExec exec;
  CU_OK(StreamBeginCapture(s, MJ_CU_CAPTURE_MODE_THREAD_LOCAL));
  assert_int_equal(moejit_forward(plan, &a, ptr(L.workspace), L.workspace_bytes, s), MOEJIT_OK);
  CU_OK(StreamEndCapture(s, &graph));
  CU_OK(GraphInstantiate(&exec, graph, 0));
  for (int i = 0; i < 3; i++) {
    CU_OK(MemsetD8(L.y, 0xFF, bytes));
    CU_OK(GraphLaunch(exec, s));
    CU_OK(StreamSynchronize(s));
    void *replayed = download(L.y, bytes);
    assert_memory_equal(eager, replayed, bytes);
    free(replayed);
  }
  assert_int_equal(g_ctx->compiles, compiles); /* nothing compiles on the launch path */
  CU_OK(GraphExecDestroy(exec));
  CU_OK(GraphDestroy(graph));
  CU_OK(StreamDestroy(s));
  free(eager);
  mj_synth_layer_destroy(&g_syn, &L);
  moejit_plan_destroy(plan);
}

/* One moejit_forward of a on L's workspace captured on stream s and instantiated. */
static CUgraphExec capture_forward(moejit_plan *plan, const moejit_forward_args *a,
                                   const mj_synth_layer *L, CUstream s, CUgraph *graph) {
  CUgraphExec exec;
  CU_OK(StreamBeginCapture(s, MJ_CU_CAPTURE_MODE_THREAD_LOCAL));
  assert_int_equal(moejit_forward(plan, a, ptr(L->workspace), L->workspace_bytes, s), MOEJIT_OK);
  CU_OK(StreamEndCapture(s, graph));
  CU_OK(GraphInstantiate(&exec, *graph, 0));
  return exec;
}

/* y of view's tokens (on the device) against the CPU reference, up to 16 sampled tokens. */
static void expect_reference(const mj_synth_layer *view, const char *what, const char *config) {
  mj_check_result r;
  mj_err err;
  assert_int_equal(mj_check_sampled(&g_syn, view, view->tokens < 16 ? view->tokens : 16, &r, &err),
                   MOEJIT_OK);
  print_message("%-36s T=%-5lld %-24s rel error %.3g (tolerance %.0e)\n", what,
                (long long)view->tokens, config, r.rel_error, r.tolerance);
  assert_int_equal(r.nonfinite, 0);
  assert_true(r.rel_error <= r.tolerance);
}

/* Decode batch sizes: one CUDA graph captured per token count of the list, from one plan and one
 * workspace, then each replayed (out of order, y poisoned before each) and compared with the CPU
 * reference on every token and bitwise with an eager forward of the same count. */
static void decode_graphs(moejit_layer_desc d) {
  static const int64_t tokens[] = {1, 2, 3, 8, 64, 300};
  static const int order[] = {5, 0, 4, 1, 3, 2};
  enum { N = sizeof tokens / sizeof tokens[0] };
  const int64_t experts = d.experts;
  moejit_plan *plan = make_plan(&d);
  mj_synth_layer L;
  mj_err err;
  assert_int_equal(mj_synth_layer_create(&g_syn, plan, 300, 40 + experts, &L, &err), MOEJIT_OK);
  CUstream s;
  CU_OK(StreamCreate(&s, MJ_CU_STREAM_NON_BLOCKING));
  CUgraph graph[N];
  CUgraphExec exec[N];
  void *eager[N];
  for (int i = 0; i < N; i++) {
    mj_synth_layer view = L;
    view.tokens = tokens[i];
    eager[i] = forward_output(plan, &view, s);
    moejit_forward_args a;
    mj_synth_layer_args(&view, &a);
    exec[i] = capture_forward(plan, &a, &L, s, &graph[i]);
  }
  for (int j = 0; j < N; j++) {
    int i = order[j];
    mj_synth_layer view = L;
    view.tokens = tokens[i];
    size_t bytes = (size_t)(tokens[i] * d.hidden) * 2;
    CU_OK(MemsetD8(L.y, 0xFF, (size_t)(L.tokens * d.hidden) * 2));
    CU_OK(GraphLaunch(exec[i], s));
    CU_OK(StreamSynchronize(s));
    void *replayed = download(L.y, bytes);
    assert_memory_equal(eager[i], replayed, bytes);
    free(replayed);
    int tuned;
    char what[64];
    snprintf(what, sizeof what, "decode E=%lld%s graph replay", (long long)experts,
             is_mxfp4(&d) ? " mxfp4" : "");
    expect_reference(&view, what, plan->configs[mj_rt_pick(plan, tokens[i], &tuned)].name);
  }
  for (int i = 0; i < N; i++) {
    CU_OK(GraphExecDestroy(exec[i]));
    CU_OK(GraphDestroy(graph[i]));
    free(eager[i]);
  }
  CU_OK(StreamDestroy(s));
  mj_synth_layer_destroy(&g_syn, &L);
  moejit_plan_destroy(plan);
}

static void test_decode_graphs(void **state) {
  (void)state;
  NEED_GPU();
  decode_graphs(gpt_oss(32, 300));
  decode_graphs(gpt_oss(128, 300));
}

static void test_two_plans_two_streams(void **state) {
  (void)state;
  NEED_GPU();
  moejit_layer_desc da = gpt_oss(32, 256), db = option_desc(MOEJIT_F16);
  db.top_k = 2;
  db.max_tokens = 4096;
  moejit_plan *pa = make_plan(&da), *pb = make_plan(&db);
  mj_synth_layer la, lb;
  mj_err err;
  assert_int_equal(mj_synth_layer_create(&g_syn, pa, 256, 21, &la, &err), MOEJIT_OK);
  assert_int_equal(mj_synth_layer_create(&g_syn, pb, 4096, 22, &lb, &err), MOEJIT_OK);
  CUstream sa, sb;
  CU_OK(StreamCreate(&sa, MJ_CU_STREAM_NON_BLOCKING));
  CU_OK(StreamCreate(&sb, MJ_CU_STREAM_NON_BLOCKING));
  void *alone_a = forward_output(pa, &la, sa), *alone_b = forward_output(pb, &lb, sb);
  moejit_forward_args aa, ab;
  mj_synth_layer_args(&la, &aa);
  mj_synth_layer_args(&lb, &ab);
  int64_t compiles = g_ctx->compiles;
  for (int i = 0; i < 10; i++) {
    assert_int_equal(moejit_forward(pa, &aa, ptr(la.workspace), la.workspace_bytes, sa), MOEJIT_OK);
    assert_int_equal(moejit_forward(pb, &ab, ptr(lb.workspace), lb.workspace_bytes, sb), MOEJIT_OK);
  }
  CU_OK(StreamSynchronize(sa));
  CU_OK(StreamSynchronize(sb));
  assert_int_equal(g_ctx->compiles, compiles);
  void *ya = download(la.y, (size_t)(la.tokens * da.hidden) * 2);
  void *yb = download(lb.y, (size_t)(lb.tokens * db.hidden) * 2);
  assert_memory_equal(alone_a, ya, (size_t)(la.tokens * da.hidden) * 2);
  assert_memory_equal(alone_b, yb, (size_t)(lb.tokens * db.hidden) * 2);
  run_and_check(pb, &lb, 16, "second plan after concurrent runs");
  free(alone_a);
  free(alone_b);
  free(ya);
  free(yb);
  CU_OK(StreamDestroy(sa));
  CU_OK(StreamDestroy(sb));
  mj_synth_layer_destroy(&g_syn, &la);
  mj_synth_layer_destroy(&g_syn, &lb);
  moejit_plan_destroy(pa);
  moejit_plan_destroy(pb);
}

static double soak_clock(void) { /* seconds, monotonic */
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- soak: threads, plans, streams ------------------------------------------------------- */

enum { SOAK_PLANS = 3, SOAK_THREADS = 4, SOAK_SIZES = 6 };
static const int64_t soak_sizes[SOAK_SIZES] = {1, 3, 8, 64, 300, 512};

typedef struct soak_world {
  moejit_plan *plan[SOAK_PLANS];
  mj_synth_layer layer[SOAK_PLANS];
  void *want[SOAK_PLANS][SOAK_SIZES]; /* y of each size, run alone before the threads start */
  double seconds;
} soak_world;

typedef struct soak_thread {
  const soak_world *w;
  int index;
  int64_t forwards, errors, mismatches;
  char first_error[256];
} soak_thread;

/* One thread of the soak: its own stream, workspace and y per plan; forwards of random plans and
 * sizes until the time is up, each compared bit for bit with the sequential result. Counts what
 * went wrong (cmocka's asserts belong to the main thread). */
static void *soak_run(void *arg) {
  soak_thread *th = arg;
  const soak_world *w = th->w;
  const mj_cu *cu = &g_ctx->cu;
  CUstream s = NULL;
  CUdeviceptr ws[SOAK_PLANS] = {0}, y[SOAK_PLANS] = {0};
  size_t ws_bytes[SOAK_PLANS] = {0};
  void *host = malloc((size_t)512 * 4096 * 2);
  uint64_t r = 0x9E3779B97F4A7C15ull * (uint64_t)(th->index + 1);
#define SOAK_CU(call)                                                                              \
  if (cu->call != MJ_CU_SUCCESS && th->errors++ == 0)                                              \
  snprintf(th->first_error, sizeof th->first_error, "%s failed", #call)
  SOAK_CU(CtxPushCurrent(g_ctx->cuctx));
  SOAK_CU(StreamCreate(&s, MJ_CU_STREAM_NON_BLOCKING));
  for (int p = 0; p < SOAK_PLANS; p++) {
    const mj_synth_layer *L = &w->layer[p];
    moejit_workspace_size(w->plan[p], L->tokens, &ws_bytes[p]);
    SOAK_CU(MemAlloc(&ws[p], ws_bytes[p]));
    SOAK_CU(MemAlloc(&y[p], (size_t)L->tokens * (size_t)L->desc.hidden * 2));
  }
  const double end = soak_clock() + w->seconds;
  while (host && th->errors == 0 && soak_clock() < end) {
    r = r * 6364136223846793005ull + 1442695040888963407ull;
    const int p = (int)((r >> 33) % SOAK_PLANS), i = (int)((r >> 45) % SOAK_SIZES);
    mj_synth_layer view = w->layer[p];
    view.tokens = soak_sizes[i];
    moejit_forward_args a;
    mj_synth_layer_args(&view, &a);
    a.y = ptr(y[p]);
    const size_t bytes = (size_t)view.tokens * (size_t)view.desc.hidden * 2;
    moejit_status st = moejit_forward(w->plan[p], &a, ptr(ws[p]), ws_bytes[p], s);
    if (st != MOEJIT_OK) {
      if (th->errors++ == 0)
        snprintf(th->first_error, sizeof th->first_error, "forward: %s", moejit_status_name(st));
      break;
    }
    SOAK_CU(MemcpyDtoHAsync(host, y[p], bytes, s));
    SOAK_CU(StreamSynchronize(s));
    th->forwards++;
    if (memcmp(host, w->want[p][i], bytes) != 0 && th->mismatches++ == 0)
      snprintf(th->first_error, sizeof th->first_error,
               "plan %d, %lld tokens: not the sequential bits", p, (long long)view.tokens);
  }
  for (int p = 0; p < SOAK_PLANS; p++) {
    if (ws[p])
      cu->MemFree(ws[p]);
    if (y[p])
      cu->MemFree(y[p]);
  }
  if (s)
    cu->StreamDestroy(s);
  CUcontext popped;
  cu->CtxPopCurrent(&popped);
  free(host);
#undef SOAK_CU
  return NULL;
}

/* Four threads on their own streams share three plans (gpt-oss E = 32 in bf16 and with MXFP4
 * weights, and a small SiLU layer with gate and up in halves, no biases, int64 ids) for
 * MOEJIT_SOAK_SECONDS (default 5; land.sh's soak part runs minutes): every forward's y is bit for
 * bit the sequential result of its plan and size, and nothing fails or compiles. */
static void test_soak(void **state) {
  (void)state;
  NEED_GPU();
  static soak_world w;
  const char *env = getenv("MOEJIT_SOAK_SECONDS");
  w.seconds = env && *env ? atof(env) : 5.0;
  moejit_layer_desc d[SOAK_PLANS] = {gpt_oss(32, 512), gpt_oss(32, 512), option_desc(MOEJIT_BF16)};
  d[1].weight_format = MOEJIT_WEIGHTS_MXFP4;
  d[2].max_tokens = 512;
  d[2].activation = MOEJIT_ACT_SILU_MUL;
  d[2].gate_up_layout = MOEJIT_GATE_UP_HALVES;
  d[2].no_bias = 1;
  d[2].ids_dtype = MOEJIT_I64;
  for (int p = 0; p < SOAK_PLANS; p++) {
    mj_err err;
    w.plan[p] = make_plan(&d[p]);
    assert_int_equal(mj_synth_layer_create(&g_syn, w.plan[p], 512, 900 + p, &w.layer[p], &err),
                     MOEJIT_OK);
    for (int i = 0; i < SOAK_SIZES; i++) {
      mj_synth_layer view = w.layer[p];
      view.tokens = soak_sizes[i];
      w.want[p][i] = forward_output(w.plan[p], &view, NULL);
    }
  }
  const int64_t compiles = g_ctx->compiles;
  soak_thread th[SOAK_THREADS];
  pthread_t tid[SOAK_THREADS];
  for (int t = 0; t < SOAK_THREADS; t++) {
    memset(&th[t], 0, sizeof th[t]);
    th[t].w = &w;
    th[t].index = t;
    assert_int_equal(pthread_create(&tid[t], NULL, soak_run, &th[t]), 0);
  }
  int64_t forwards = 0, errors = 0, mismatches = 0;
  for (int t = 0; t < SOAK_THREADS; t++) {
    pthread_join(tid[t], NULL);
    forwards += th[t].forwards;
    errors += th[t].errors;
    mismatches += th[t].mismatches;
    if (th[t].first_error[0])
      print_message("soak thread %d: %s\n", t, th[t].first_error);
  }
  print_message("soak: %d threads, %d plans (bf16, mxfp4, silu halves), %.0f s: %lld forwards, "
                "%lld errors, %lld not bitwise the sequential result\n",
                SOAK_THREADS, SOAK_PLANS, w.seconds, (long long)forwards, (long long)errors,
                (long long)mismatches);
  assert_int_equal(errors, 0);
  assert_int_equal(mismatches, 0);
  assert_true(forwards > 0);
  assert_int_equal(g_ctx->compiles, compiles);
  for (int p = 0; p < SOAK_PLANS; p++) {
    for (int i = 0; i < SOAK_SIZES; i++)
      free(w.want[p][i]);
    mj_synth_layer_destroy(&g_syn, &w.layer[p]);
    moejit_plan_destroy(w.plan[p]);
  }
}

/* ---- argument checks on a device plan ------------------------------------------------------ */

static void expect_invalid(moejit_plan *plan, const moejit_forward_args *a, void *ws, size_t bytes,
                           const char *needle) {
  assert_int_equal(moejit_forward(plan, a, ws, bytes, NULL), MOEJIT_ERR_INVALID_ARG);
  const char *msg = moejit_last_error(g_ctx);
  if (!strstr(msg, needle))
    print_message("message \"%s\" lacks \"%s\"\n", msg, needle);
  assert_non_null(strstr(msg, needle));
}

static void test_forward_validation(void **state) {
  (void)state;
  NEED_GPU();
  moejit_layer_desc d;
  moejit_layer_desc_init(&d);
  d.hidden = 64;
  d.intermediate = 96;
  d.experts = 5;
  d.top_k = 2;
  d.max_tokens = 16;
  moejit_plan *plan = make_plan(&d);
  mj_synth_layer L;
  mj_err err;
  assert_int_equal(mj_synth_layer_create(&g_syn, plan, 16, 5, &L, &err), MOEJIT_OK);
  moejit_forward_args a, b;
  mj_synth_layer_args(&L, &a);
  void *ws = ptr(L.workspace);
  size_t wb = L.workspace_bytes;
  assert_int_equal(moejit_forward(plan, &a, ws, wb, NULL), MOEJIT_OK);
  assert_int_equal(moejit_forward(NULL, &a, ws, wb, NULL), MOEJIT_ERR_INVALID_ARG);
  expect_invalid(plan, NULL, ws, wb, "args is NULL");
  b = a, b.struct_size = 8, expect_invalid(plan, &b, ws, wb, "struct_size");
  b = a, b.tokens = 17, expect_invalid(plan, &b, ws, wb, "tokens=17");
  b = a, b.tokens = -1, expect_invalid(plan, &b, ws, wb, "tokens=-1");
  b = a, b.x = NULL, expect_invalid(plan, &b, ws, wb, "args->x is NULL");
  b = a, b.y = NULL, expect_invalid(plan, &b, ws, wb, "args->y is NULL");
  b = a, b.topk_ids = NULL, expect_invalid(plan, &b, ws, wb, "topk_ids");
  b = a, b.down_proj_bias = NULL, expect_invalid(plan, &b, ws, wb, "down_proj_bias");
  b = a, b.x = (const char *)a.x + 2, expect_invalid(plan, &b, ws, wb, "16-byte aligned");
  b = a, b.gate_up_proj = (const char *)a.gate_up_proj + 8;
  expect_invalid(plan, &b, ws, wb, "gate_up_proj");
  b = a, b.router_logits = a.x, expect_invalid(plan, &b, ws, wb, "router_logits");
  b = a, b.expert_map = (const int32_t *)a.topk_ids, expect_invalid(plan, &b, ws, wb, "expert_map");
  expect_invalid(plan, &a, NULL, wb, "workspace is NULL");
  expect_invalid(plan, &a, (char *)ws + 16, wb - 256, "256-byte aligned");
  expect_invalid(plan, &a, ws, wb - 1, "workspace_bytes");
  b = a, b.tokens = 0;
  assert_int_equal(moejit_forward(plan, &b, NULL, 0, NULL), MOEJIT_OK); /* nothing to do */
  mj_synth_layer_destroy(&g_syn, &L);
  moejit_plan_destroy(plan);
}

/* f32 runs the exact FFMA path at a GPT-OSS shape too. */
static void test_f32_gpt_oss(void **state) {
  (void)state;
  NEED_GPU();
  for (int exact = 0; exact <= 1; exact++) {
    moejit_layer_desc d = gpt_oss(32, 128);
    d.dtype = MOEJIT_F32;
    d.exact_f32 = exact;
    moejit_plan *plan = make_plan(&d);
    static const int64_t tokens[] = {3, 128};
    for (int i = 0; i < 2; i++) {
      mj_synth_layer L;
      mj_err err;
      assert_int_equal(mj_synth_layer_create(&g_syn, plan, tokens[i], 40 + i, &L, &err), MOEJIT_OK);
      run_and_check(plan, &L, 6, exact ? "gpt-oss f32 E=32 exact" : "gpt-oss f32 E=32 tf32");
      mj_synth_layer_destroy(&g_syn, &L);
    }
    moejit_plan_destroy(plan);
  }
}

/* ---- layer options (routing forms, expert map, capacity, weight on input, f32 biases, TF32) -- */

/* A random layer in host memory, with its routing in every form the options need. */
typedef struct host_layer {
  moejit_layer_desc d;
  int64_t T, G; /* tokens; experts the ids and logits range over */
  void *x, *w1, *b1, *w2, *b2;
  int32_t *ids;  /* [T, K] top-k form (from the logits when routing by logits) */
  float *wk;     /* [T, K] */
  float *dense;  /* [T, G] */
  float *logits; /* [T, G], rounded to logits_dtype */
  int32_t *map;  /* [G] when global_experts */
  int use_live;  /* 1: the forward gets args.device_tokens, holding live (any int32) */
  int64_t live;
  /* MXFP4 weights (d.weight_format): w1 and w2 hold the blocks, s1 and s2 the scales */
  uint8_t *s1, *s2;
  const char *config; /* a GEMM configuration to force (a plan of it alone); NULL: the table's */
} host_layer;

/* Bytes of a weight tensor of E experts mapping k inputs to n outputs: dense [E, k, n] in the
 * dtype, or MXFP4 blocks [E, n, k / 32, 16]. */
static size_t weight_bytes(const moejit_layer_desc *d, int64_t k, int64_t n) {
  return is_mxfp4(d) ? (size_t)(d->experts * n * k / 2)
                     : (size_t)(d->experts * k * n) * mj_dtype_size(d->dtype);
}

/* Random MXFP4 blocks (every code, both nibbles) and scales around the byte that gives weights an
 * RMS near 1/sqrt(k) (e2m1 codes have an RMS of about 2.9), into *blocks and *scales. */
static void rand_mxfp4(int64_t experts, int64_t k, int64_t n, uint8_t **blocks, uint8_t **scales);

/* The tokens a forward of L computes: T, or the device-side count clamped to [0, T]. */
static int64_t live_tokens(const host_layer *L) {
  if (!L->use_live)
    return L->T;
  return L->live < 0 ? 0 : L->live < L->T ? L->live : L->T;
}

static uint64_t rng_state;
static float urand(void) { /* [0, 1) */
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (float)(rng_state >> 40) / 16777216.0f;
}

static void *rand_array(moejit_dtype dt, int64_t n, float scale) {
  void *p = malloc((size_t)n * mj_dtype_size(dt));
  assert_non_null(p);
  for (int64_t i = 0; i < n; i++)
    mj_store_f32(dt, p, i, scale * (2.0f * urand() - 1.0f));
  return p;
}

static void rand_mxfp4(int64_t experts, int64_t k, int64_t n, uint8_t **blocks, uint8_t **scales) {
  const int64_t nb = experts * n * k / 2, ns = experts * n * k / 32;
  const int center = 127 - (int)lround(log2(2.9 * sqrt((double)k)));
  *blocks = malloc((size_t)nb);
  *scales = malloc((size_t)ns);
  assert_true(*blocks && *scales);
  for (int64_t i = 0; i < nb; i++)
    (*blocks)[i] = (uint8_t)(urand() * 256.0f);
  for (int64_t i = 0; i < ns; i++)
    (*scales)[i] = (uint8_t)(center - 1 + (int)(urand() * 3.0f));
}

/* ids: random in [0, G), duplicates within a token allowed when dup; weights: softmax. */
static void make_layer(host_layer *L, const moejit_layer_desc *d, int64_t T, int dup,
                       uint64_t seed) {
  memset(L, 0, sizeof *L);
  rng_state = seed;
  L->d = *d;
  L->d.max_tokens = T;
  L->T = T;
  int64_t H = d->hidden, I = d->intermediate, E = d->experts, K = d->top_k;
  L->G = d->global_experts ? d->global_experts : E;
  moejit_dtype bdt = d->bias_f32 ? MOEJIT_F32 : d->dtype;
  L->x = rand_array(d->dtype, T * H, 1.0f);
  const int64_t N1 = mj_rt_gate_up_cols(d); /* 2I, or I without mul */
  if (is_mxfp4(d)) {
    rand_mxfp4(E, H, N1, (uint8_t **)&L->w1, &L->s1);
    rand_mxfp4(E, I, H, (uint8_t **)&L->w2, &L->s2);
  } else {
    L->w1 = rand_array(d->dtype, E * H * N1, 1.0f / sqrtf((float)H));
    L->w2 = rand_array(d->dtype, E * I * H, 1.0f / sqrtf((float)I));
  }
  if (!d->no_bias) {
    L->b1 = rand_array(bdt, E * N1, 0.1f);
    L->b2 = rand_array(bdt, E * H, 0.1f);
  }
  L->ids = malloc((size_t)(T * K) * sizeof *L->ids);
  L->wk = malloc((size_t)(T * K) * sizeof *L->wk);
  L->dense = calloc((size_t)(T * L->G), sizeof *L->dense);
  L->logits = malloc((size_t)(T * L->G) * sizeof *L->logits);
  assert_true(L->ids && L->wk && L->dense && L->logits);
  for (int64_t i = 0; i < T * L->G; i++) /* quarters in [0, 6): exact in every dtype, ties happen */
    L->logits[i] = (float)(int)(urand() * 24) / 4;
  if (d->routing == MOEJIT_ROUTING_LOGITS) {
    mj_ref_route_logits(T, L->G, K, L->logits, L->ids, L->wk);
  } else {
    for (int64_t t = 0; t < T; t++) {
      float sum = 0.0f;
      for (int64_t k = 0; k < K; k++) {
        int32_t e;
        int fresh;
        do {
          e = (int32_t)(urand() * (float)L->G);
          fresh = 1;
          for (int64_t j = 0; j < k && !dup; j++)
            fresh &= L->ids[t * K + j] != e;
        } while (!fresh);
        L->ids[t * K + k] = e;
        sum += (L->wk[t * K + k] = expf(2.0f * urand()));
      }
      for (int64_t k = 0; k < K; k++) {
        L->wk[t * K + k] /= sum;
        L->dense[t * L->G + L->ids[t * K + k]] = L->wk[t * K + k]; /* a repeated id keeps one */
      }
    }
    if (d->routing == MOEJIT_ROUTING_DENSE) /* the reference reads what the GPU will */
      for (int64_t s = 0; s < T * K; s++)
        L->wk[s] = L->dense[(s / K) * L->G + L->ids[s]];
  }
  if (d->global_experts) { /* every third global expert is another rank's */
    L->map = malloc((size_t)L->G * sizeof *L->map);
    assert_non_null(L->map);
    int32_t next = 0;
    for (int64_t g = 0; g < L->G; g++)
      L->map[g] = g % 3 == 2 || next >= E ? -1 : next++;
  }
}

static void free_layer(host_layer *L) {
  void *p[] = {L->x,  L->w1,    L->b1,     L->w2,  L->b2, L->ids,
               L->wk, L->dense, L->logits, L->map, L->s1, L->s2};
  for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
    free(p[i]);
}

/* Runs the layer on the GPU; returns y [T, H] as f32 (malloc'd) and the bad-id count. With logits
 * routing the ids the GPU hands back must equal the reference's. */
static float *gpu_forward(host_layer *L, int64_t *bad_slots) {
  const moejit_layer_desc *d = &L->d;
  int64_t T = L->T, H = d->hidden, I = d->intermediate, E = d->experts, K = d->top_k, G = L->G;
  size_t act = mj_dtype_size(d->dtype), bsz = d->bias_f32 ? 4 : act;
  int logits = d->routing == MOEJIT_ROUTING_LOGITS;
  moejit_plan *plan = NULL;
  if (L->config) { /* a plan of that configuration alone */
    mj_gemm_config c;
    mj_math math;
    assert_int_equal(mj_tune_config_parse(L->config, &c, &math), 0);
    moejit_status st = mj_rt_plan_create_with(g_ctx, d, &c, 1, &plan, NULL);
    if (st != MOEJIT_OK)
      fail_msg("plan of %s: %s", L->config, moejit_last_error(g_ctx));
  } else {
    plan = make_plan(d);
  }
  /* routing inputs in the plan's types */
  void *ids = malloc((size_t)(T * K) * 8 + 1), *w = malloc((size_t)(T * G) * 4 + 1),
       *lg = malloc((size_t)(T * G) * 4 + 1);
  assert_true(ids && w && lg);
  for (int64_t s = 0; s < T * K; s++) {
    if (d->ids_dtype == MOEJIT_I64)
      ((int64_t *)ids)[s] = L->ids[s];
    else
      ((int32_t *)ids)[s] = L->ids[s];
  }
  int64_t nw = d->routing == MOEJIT_ROUTING_DENSE ? T * G : T * K;
  for (int64_t i = 0; i < nw; i++)
    mj_store_f32(d->weights_dtype, w, i,
                 d->routing == MOEJIT_ROUTING_DENSE ? L->dense[i] : L->wk[i]);
  for (int64_t i = 0; logits && i < T * G; i++)
    mj_store_f32(d->logits_dtype, lg, i, L->logits[i]);
  size_t ids_bytes = (size_t)(T * K) * mj_dtype_size(d->ids_dtype);
  size_t w_bytes = (size_t)nw * mj_dtype_size(d->weights_dtype);
  size_t lg_bytes = logits ? (size_t)(T * G) * mj_dtype_size(d->logits_dtype) : 0;
  const int64_t N1 = mj_rt_gate_up_cols(d); /* 2I, or I without mul */
  CUdeviceptr dx = upload(L->x, (size_t)(T * H) * act), dw1 = upload(L->w1, weight_bytes(d, H, N1)),
              db1 = upload(L->b1, L->b1 ? (size_t)(E * N1) * bsz : 0),
              dw2 = upload(L->w2, weight_bytes(d, I, H)),
              db2 = upload(L->b2, L->b2 ? (size_t)(E * H) * bsz : 0), dids = upload(ids, ids_bytes),
              dwt = upload(w, w_bytes), dlg = upload(lg, lg_bytes),
              dmap = L->map ? upload(L->map, (size_t)G * 4) : 0, y = 0, ws = 0;
  if (logits) { /* outputs: poison them */
    CU_OK(MemsetD8(dids, 0xFF, ids_bytes));
    CU_OK(MemsetD8(dwt, 0xFF, w_bytes));
  }
  int32_t live = (int32_t)L->live;
  CUdeviceptr dlive = L->use_live ? upload(&live, sizeof live) : 0;
  CUdeviceptr ds1 = is_mxfp4(d) ? upload(L->s1, (size_t)(E * N1 * H / 32)) : 0,
              ds2 = is_mxfp4(d) ? upload(L->s2, (size_t)(E * H * I / 32)) : 0;
  size_t ws_bytes = 0;
  assert_int_equal(moejit_workspace_size(plan, T, &ws_bytes), MOEJIT_OK);
  CU_OK(MemAlloc(&y, (size_t)(T * H) * act));
  CU_OK(MemsetD8(y, 0xFF, (size_t)(T * H) * act));
  CU_OK(MemAlloc(&ws, ws_bytes));
  moejit_forward_args a;
  moejit_forward_args_init(&a);
  a.tokens = T;
  a.x = ptr(dx);
  a.topk_ids = ptr(dids);
  a.routing_weights = ptr(dwt);
  a.router_logits = logits ? ptr(dlg) : NULL;
  a.expert_map = L->map ? (const int32_t *)ptr(dmap) : NULL;
  a.gate_up_proj = ptr(dw1);
  a.gate_up_proj_bias = L->b1 ? ptr(db1) : NULL; /* none: a layer without biases */
  a.down_proj = ptr(dw2);
  a.down_proj_bias = L->b2 ? ptr(db2) : NULL;
  a.y = ptr(y);
  a.device_tokens = L->use_live ? (const int32_t *)ptr(dlive) : NULL;
  a.gate_up_proj_scales = ds1 ? ptr(ds1) : NULL;
  a.down_proj_scales = ds2 ? ptr(ds2) : NULL;
  moejit_status st = moejit_forward(plan, &a, ptr(ws), ws_bytes, NULL);
  if (st != MOEJIT_OK)
    print_message("forward: %s\n", moejit_last_error(g_ctx));
  assert_int_equal(st, MOEJIT_OK);
  *bad_slots = -1;
  st = moejit_forward_check(plan, ptr(ws), NULL, bad_slots);
  assert_true(st == MOEJIT_OK || st == MOEJIT_ERR_BAD_EXPERT_ID);
  if (logits) { /* the ids and weights handed back: the computed tokens', the rest untouched */
    void *gids = download(dids, ids_bytes), *gw = download(dwt, w_bytes);
    for (int64_t s = 0; s < T * K; s++) {
      int64_t got = d->ids_dtype == MOEJIT_I64 ? ((int64_t *)gids)[s] : ((int32_t *)gids)[s];
      if (s >= live_tokens(L) * K) {
        assert_int_equal(got, -1); /* the poison */
        continue;
      }
      if (got != L->ids[s])
        fail_msg("logits routing: slot %lld chose %lld, the reference %d", (long long)s,
                 (long long)got, L->ids[s]);
      float gwv = mj_load_f32(d->weights_dtype, gw, s);
      assert_true(fabsf(gwv - L->wk[s]) <= 1e-2f * L->wk[s] + 1e-6f);
    }
    free(gids);
    free(gw);
  }
  void *hy = download(y, (size_t)(T * H) * act);
  float *out = malloc((size_t)(T * H) * sizeof *out + 1);
  assert_non_null(out);
  for (int64_t i = 0; i < T * H; i++)
    out[i] = mj_load_f32(d->dtype, hy, i);
  CUdeviceptr bufs[] = {dx, dw1, db1, dw2, db2, dids, dwt, dlg, y, ws};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
    CU_OK(MemFree(bufs[i]));
  if (dmap)
    CU_OK(MemFree(dmap));
  if (dlive)
    CU_OK(MemFree(dlive));
  if (ds1) {
    CU_OK(MemFree(ds1));
    CU_OK(MemFree(ds2));
  }
  free(ids);
  free(w);
  free(lg);
  free(hy);
  moejit_plan_destroy(plan);
  return out;
}

/* The GPU's output against the CPU reference over `samples` tokens (all when samples >= T): a
 * forward of the tokens it computes (live_tokens), whose rows past those must be zeros. */
static double run_layer(host_layer *L, int64_t samples, int64_t *bad_slots) {
  const moejit_layer_desc *d = &L->d;
  int64_t T = live_tokens(L), H = d->hidden;
  float *y = gpu_forward(L, bad_slots);
  for (int64_t i = T * H; i < L->T * H; i++)
    if (y[i] != 0.0f)
      fail_msg("token %lld of %lld, past the device-side count %lld: y = %g, not 0",
               (long long)(i / H), (long long)L->T, (long long)T, (double)y[i]);
  int64_t n = samples < T ? samples : T;
  if (n == 0) {
    free(y);
    return 0.0;
  }
  int64_t *tok = malloc((size_t)n * sizeof *tok);
  float *got = malloc((size_t)(n * H) * sizeof *got),
        *want = malloc((size_t)(n * H) * sizeof *want);
  assert_true(tok && got && want);
  for (int64_t i = 0; i < n; i++) {
    tok[i] = n == 1 ? 0 : i * (T - 1) / (n - 1);
    memcpy(got + i * H, y + tok[i] * H, (size_t)H * sizeof *got);
  }
  mj_ref_layer ref = mj_ref_layer_of(d, T); /* and the layer's tensors: */
  ref.x = L->x, ref.topk_ids = L->ids, ref.topk_weights = L->wk, ref.expert_map = L->map;
  ref.gate_up_proj = L->w1, ref.gate_up_proj_bias = L->b1;
  ref.down_proj = L->w2, ref.down_proj_bias = L->b2;
  ref.mxfp4 = is_mxfp4(d);
  ref.gate_up_proj_scales = L->s1, ref.down_proj_scales = L->s2;
  assert_int_equal(mj_ref_forward(&ref, tok, n, want), 0);
  double rel = mj_rel_error(got, want, n * H);
  free(y);
  free(tok);
  free(got);
  free(want);
  return rel;
}

/* One golden case through the GPU in one routing form and id type (an MXFP4 case on its blocks
 * and scales when mxfp4, else on its dense weights), with the table's configurations or the one
 * named; the error against expected. */
static double run_golden(const mj_golden *g, moejit_routing routing, moejit_dtype ids_dtype,
                         int mxfp4, const char *config) {
  host_layer L;
  memset(&L, 0, sizeof L);
  moejit_layer_desc_init(&L.d);
  L.d.hidden = g->hidden;
  L.d.intermediate = g->intermediate;
  L.d.experts = g->experts;
  L.d.top_k = g->top_k;
  L.d.max_tokens = g->tokens;
  L.d.dtype = g->dtype;
  L.d.ids_dtype = ids_dtype;
  L.d.routing = routing;
  L.d.alpha = g->alpha;
  L.d.limit = g->limit;
  L.d.exact_f32 = 1; /* the golden tolerance for f32 is that of fp32 arithmetic */
  L.T = g->tokens;
  L.G = g->experts;
  L.x = g->x;
  L.w1 = g->gate_up_proj;
  L.b1 = g->gate_up_proj_bias;
  L.w2 = g->down_proj;
  L.b2 = g->down_proj_bias;
  L.ids = g->topk_ids;
  L.wk = g->topk_weights;
  L.dense = g->dense_weights;
  L.config = config;
  L.d.activation = g->activation;
  L.d.gate_up_layout = g->gate_up_layout;
  L.d.no_bias = g->no_bias;
  if (mxfp4) {
    L.d.weight_format = MOEJIT_WEIGHTS_MXFP4;
    L.w1 = g->gate_up_proj_blocks, L.s1 = g->gate_up_proj_scales;
    L.w2 = g->down_proj_blocks, L.s2 = g->down_proj_scales;
  }
  int64_t bad = 0;
  float *y = gpu_forward(&L, &bad);
  assert_int_equal(bad, 0);
  double rel = mj_rel_error(y, g->expected, g->tokens * g->hidden);
  free(y);
  return rel;
}

/* Every case under root (at least min_cases of them) through the GPU on each configuration of the
 * list (configs NULL, or a NULL entry: the table's), top-k with int32 ids and dense weights with
 * int64 ids, each within its dtype's tolerance of the float64 answer; mxfp4: the MXFP4 cases on
 * their blocks and scales, else every case on its dense weights. Each run is named before it
 * starts (flushed: a hang names its case). */
static void golden_cases(const char *root, int min_cases, int mxfp4, const char *const *configs,
                         int nconfigs) {
  char names[32][64];
  int n = mj_golden_list(root, names, 32);
  assert_true(n >= min_cases);
  for (int i = 0; i < n; i++) {
    mj_golden g;
    char err[512];
    assert_int_equal(mj_golden_load(root, names[i], &g, err, sizeof err), 0);
    assert_true(!mxfp4 || g.mxfp4);
    const double tol = mj_tolerance(g.dtype);
    for (int c = 0; c < nconfigs; c++) {
      const char *config = configs ? configs[c] : NULL, *what = config ? config : "(the table)";
      printf("golden %s%s through %s ...\n", names[i], mxfp4 ? " mxfp4" : "", what);
      fflush(stdout);
      const double e1 = run_golden(&g, MOEJIT_ROUTING_TOPK, MOEJIT_I32, mxfp4, config);
      const double e2 = run_golden(&g, MOEJIT_ROUTING_DENSE, MOEJIT_I64, mxfp4, config);
      print_message("golden %-24s %-5s %-24s topk/i32 %.3g  dense/i64 %.3g  (tolerance %.0e)\n",
                    names[i], mxfp4 ? "mxfp4" : "", what, e1, e2, tol);
      assert_true(e1 <= tol);
      assert_true(e2 <= tol);
    }
    mj_golden_free(&g);
  }
}

/* The MXFP4 configurations every MXFP4 golden case runs through: the table's (streamed, then
 * mma.sync tiles of 16, 64 and 128 rows) and tiles the table does not hold (16 and 64 columns a
 * streamed block, 8 rows; 32-deep K steps, 256 columns). */
static const char *const mxfp4_configs[] = {NULL,
                                            "stream_m1n32u4z2",
                                            "stream_m4n16u8",
                                            "stream_m8n64u4z2",
                                            "mxfp4_m16n128k64s4w1x4",
                                            "mxfp4_m64n128k64s3w2x2",
                                            "mxfp4_m128n128k64s3w2x4",
                                            "mxfp4_m32n256k32s4w2x4",
                                            "mxfp4_m16n64k32s3w1x4"};

/* The wgmma GEMMs on MXFP4 weights (sm_90a; named configurations, not in the MXFP4 table):
 * every MXFP4 golden case through each (top-k/i32 and dense/i64), then gpt-oss-20b at 300 tokens
 * with y and the workspace poisoned. Its own filter word (wgmx) so that a first device call can
 * run it alone, under a timeout. */
static void test_wgmx(void **state) {
  (void)state;
  NEED_GPU();
  if (!mj_tune_arch_wgmma(g_ctx->arch))
    skip();
  static const char *const configs[] = {"wg_m64n128s3c2", "wg_m64n128s3c2ch", "wg_m128n128s5pp",
                                        "wg_m128n192s4c1", "wg_m128n240s4c1"};
  enum { N = sizeof configs / sizeof configs[0] };
  golden_cases(mj_golden_mxfp4_root(), 6, 1, configs, N);
  moejit_layer_desc d = gpt_oss(32, 300);
  d.weight_format = MOEJIT_WEIGHTS_MXFP4;
  mj_gemm_config cfg[N];
  mj_math math;
  for (int c = 0; c < N; c++)
    assert_int_equal(mj_tune_config_parse(configs[c], &cfg[c], &math), 0);
  moejit_plan *plan = NULL;
  if (mj_rt_plan_create_with(g_ctx, &d, cfg, N, &plan, NULL) != MOEJIT_OK)
    fail_msg("plan: %s", moejit_last_error(g_ctx));
  plan_configs(plan, d, 300, "wgmma mxfp4");
}

/* Every MXFP4 golden case, on its blocks and scales, through every path above (top-k ids in int32
 * and dense weights with int64 ids), and on its dequantised bf16 weights through the bf16 table:
 * each within the tolerance of the float64 answer. */
static void test_mxfp4_golden_cases(void **state) {
  (void)state;
  NEED_GPU();
  golden_cases(mj_golden_mxfp4_root(), 6, 0, NULL, 1); /* the dequantised bf16 weights */
  golden_cases(mj_golden_mxfp4_root(), 6, 1, mxfp4_configs,
               (int)(sizeof mxfp4_configs / sizeof mxfp4_configs[0]));
}

static void test_golden_cases(void **state) {
  (void)state;
  NEED_GPU();
  golden_cases(mj_golden_root(), 7, 0, NULL, 1);
}

/* The tolerance of a layer: its dtype's, and f16's for f32 on TF32 (10 mantissa bits, as f16). */
static double tolerance_of(const moejit_layer_desc *d) {
  return mj_tolerance(d->dtype == MOEJIT_F32 && !d->exact_f32 ? MOEJIT_F16 : d->dtype);
}

static void expect_match(const char *what, host_layer *L, int64_t samples) {
  int64_t bad = 0;
  double rel = run_layer(L, samples, &bad);
  double tol = tolerance_of(&L->d);
  print_message("%-44s T=%-4lld rel error %.3g (tolerance %.0e)\n", what, (long long)L->T, rel,
                tol);
  assert_true(rel <= tol);
  assert_int_equal(bad, 0);
}

static void test_router_logits(void **state) {
  (void)state;
  NEED_GPU();
  static const moejit_dtype logit_types[] = {MOEJIT_F32, MOEJIT_BF16, MOEJIT_F16};
  for (int i = 0; i < 3; i++) {
    moejit_layer_desc d = option_desc(MOEJIT_BF16);
    d.routing = MOEJIT_ROUTING_LOGITS;
    d.logits_dtype = logit_types[i];
    d.ids_dtype = i == 1 ? MOEJIT_I64 : MOEJIT_I32;
    d.weights_dtype = i == 2 ? MOEJIT_BF16 : MOEJIT_F32;
    host_layer L;
    make_layer(&L, &d, 300, 0, 70 + i);
    char what[64];
    snprintf(what, sizeof what, "logits %s (ties: lower id)", mj_dtype_name(logit_types[i]));
    expect_match(what, &L, 300);
    free_layer(&L);
  }
  /* Infinite and NaN logits: a token with two finite logits still gets K real ids (the -inf ones,
   * lower ids first); +inf ones share the weight; NaN ranks with -inf. */
  {
    moejit_layer_desc d = option_desc(MOEJIT_BF16);
    d.routing = MOEJIT_ROUTING_LOGITS;
    host_layer L;
    make_layer(&L, &d, 64, 0, 75);
    const float inf = INFINITY;
    for (int64_t e = 0; e < L.G; e++) {
      L.logits[0 * L.G + e] = e == 3 || e == 9 ? 1.0f : -inf;
      L.logits[1 * L.G + e] = e == 5 || e == 6 ? inf : (float)e;
      L.logits[2 * L.G + e] = e % 2 ? NAN : (float)e / 4;
      L.logits[3 * L.G + e] = -inf;
    }
    mj_ref_route_logits(L.T, L.G, d.top_k, L.logits, L.ids, L.wk);
    assert_int_equal(L.ids[2], 0); /* token 0: 3, 9, then the lowest -inf ids */
    assert_true(fabsf(L.wk[1 * 4] - 0.5f) < 1e-6f && L.wk[1 * 4 + 2] == 0.0f);
    expect_match("logits with -inf, +inf and NaN", &L, 64);
    free_layer(&L);
  }
  /* logits over 32 global experts, a third of them another rank's */
  moejit_layer_desc d = option_desc(MOEJIT_BF16);
  d.routing = MOEJIT_ROUTING_LOGITS;
  d.global_experts = 32;
  host_layer L;
  make_layer(&L, &d, 200, 0, 80);
  expect_match("logits + expert_map", &L, 200);
  free_layer(&L);
}

static void test_expert_map(void **state) {
  (void)state;
  NEED_GPU();
  for (int dense = 0; dense <= 1; dense++) {
    moejit_layer_desc d = option_desc(MOEJIT_BF16);
    d.global_experts = 40;
    d.routing = dense ? MOEJIT_ROUTING_DENSE : MOEJIT_ROUTING_TOPK;
    host_layer L;
    make_layer(&L, &d, 300, 0, 90 + dense);
    expect_match(dense ? "expert_map, dense weights [T, G]" : "expert_map, top-k weights", &L, 300);
    /* a global id outside [0, G) is flagged; it and non-local ids contribute nothing */
    L.ids[5] = 40;
    L.ids[17] = -3;
    L.wk[5] = L.wk[17] = 0.0f; /* the reference skips them either way */
    int64_t bad = 0;
    double rel = run_layer(&L, 300, &bad);
    assert_int_equal(bad, 2);
    assert_true(rel <= tolerance_of(&d));
    free_layer(&L);
  }
}

static void test_capacity(void **state) {
  (void)state;
  NEED_GPU();
  static const int64_t caps[] = {1, 20, 75, 10000};
  for (int i = 0; i < 4; i++) {
    moejit_layer_desc d = option_desc(MOEJIT_BF16);
    d.expert_capacity = caps[i];
    host_layer L;
    make_layer(&L, &d, 300, 1, 100 + i); /* duplicates inside tokens too */
    char what[64];
    snprintf(what, sizeof what, "capacity %lld, duplicate ids", (long long)caps[i]);
    expect_match(what, &L, 300);
    free_layer(&L);
  }
  moejit_layer_desc d = option_desc(MOEJIT_F16);
  d.expert_capacity = 12;
  d.global_experts = 24;
  host_layer L;
  make_layer(&L, &d, 256, 1, 110);
  expect_match("capacity 12 + expert_map", &L, 256);
  free_layer(&L);
}

/* The device-side token count (args.device_tokens) through every routing form: y's first n rows
 * are a forward of n tokens (capacity counted over their slots alone), the rest zeros; the slots
 * past them are neither routed nor flagged, whatever their ids; logits routing writes the ids and
 * weights of the n tokens only (gpu_forward checks). 300 tokens route in one launch, 1000 through
 * count, scan and scatter (and, with logits, the top-k kernel). */
static void test_device_tokens(void **state) {
  (void)state;
  NEED_GPU();
  static const struct {
    moejit_routing routing;
    int64_t T, live, capacity;
    const char *what;
  } cases[] = {
      {MOEJIT_ROUTING_TOPK, 300, 77, 0, "device tokens 77 of 300, top-k"},
      {MOEJIT_ROUTING_TOPK, 1000, 613, 0, "device tokens 613 of 1000, top-k"},
      {MOEJIT_ROUTING_DENSE, 300, 1, 0, "device tokens 1 of 300, dense"},
      {MOEJIT_ROUTING_LOGITS, 300, 77, 0, "device tokens 77 of 300, logits"},
      {MOEJIT_ROUTING_LOGITS, 1000, 613, 0, "device tokens 613 of 1000, logits"},
      {MOEJIT_ROUTING_TOPK, 300, 150, 20, "device tokens 150 of 300, capacity 20"},
      {MOEJIT_ROUTING_TOPK, 300, 5000, 0, "device tokens 5000 (all 300)"},
      {MOEJIT_ROUTING_LOGITS, 300, -4, 0, "device tokens -4 (none of 300)"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    moejit_layer_desc d = option_desc(MOEJIT_BF16);
    d.routing = cases[i].routing;
    d.expert_capacity = cases[i].capacity;
    host_layer L;
    make_layer(&L, &d, cases[i].T, 0, 120 + i);
    L.use_live = 1;
    L.live = cases[i].live;
    /* ids past the count that would be flagged, were they read */
    for (int64_t s = live_tokens(&L) * d.top_k;
         d.routing == MOEJIT_ROUTING_TOPK && s < L.T * d.top_k; s++)
      L.ids[s] = s % 2 ? -1 : (int32_t)(L.G + s);
    expect_match(cases[i].what, &L, 300);
    free_layer(&L);
  }
}

/* One CUDA graph captured at T tokens with a device-side count serves every count: replayed with
 * n = T, 1, 0, 3, T / 2, past T and negative, y's first min(max(n, 0), T) rows equal, bit for bit,
 * an eager forward of that many tokens on the configuration the graph's T picked, and match the
 * CPU reference; the other rows are zeros. At 64 tokens (one routing launch, the decode tile) and
 * 1024 (count, scan and scatter; on sm_90a, the wgmma kernels). */
static void device_token_graph(int64_t T) {
  moejit_layer_desc d = gpt_oss(32, T);
  moejit_plan *plan = make_plan(&d);
  mj_synth_layer L;
  mj_err err;
  assert_int_equal(mj_synth_layer_create(&g_syn, plan, T, 130 + T, &L, &err), MOEJIT_OK);
  CUstream s;
  CU_OK(StreamCreate(&s, MJ_CU_STREAM_NON_BLOCKING));
  CUdeviceptr count;
  CU_OK(MemAlloc(&count, 4));
  moejit_forward_args a;
  mj_synth_layer_args(&L, &a);
  a.device_tokens = (const int32_t *)ptr(count);
  CUgraph graph;
  CUgraphExec exec = capture_forward(plan, &a, &L, s, &graph);
  int tuned;
  const int cfg = mj_rt_pick(plan, T, &tuned);
  const size_t row = (size_t)d.hidden * 2, bytes = (size_t)T * row;
  const int64_t counts[] = {T, 1, 0, 3, T / 2, T + 100, -5};
  for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
    const int32_t n = (int32_t)counts[i];
    const int64_t live = n < 0 ? 0 : n < T ? n : T;
    CU_OK(MemcpyHtoD(count, &n, sizeof n));
    CU_OK(MemsetD8(L.y, 0xFF, bytes));
    CU_OK(GraphLaunch(exec, s));
    CU_OK(StreamSynchronize(s));
    unsigned char *got = download(L.y, bytes);
    for (size_t b = (size_t)live * row; b < bytes; b++)
      if (got[b] != 0)
        fail_msg("T=%lld, count %d: byte %zu of y (token %zu) is %d, not 0", (long long)T, n, b,
                 b / row, got[b]);
    if (live > 0) {
      mj_synth_layer view = L;
      view.tokens = live;
      moejit_forward_args e;
      mj_synth_layer_args(&view, &e);
      CU_OK(MemsetD8(L.y, 0xFF, bytes));
      assert_int_equal(mj_rt_forward_with(plan, &e, ptr(L.workspace), L.workspace_bytes, s, cfg),
                       MOEJIT_OK);
      CU_OK(StreamSynchronize(s));
      void *eager = download(L.y, (size_t)live * row);
      assert_memory_equal(got, eager, (size_t)live * row);
      free(eager);
      char what[64];
      snprintf(what, sizeof what, "device tokens %d, graph of %lld", n, (long long)T);
      expect_reference(&view, what, plan->configs[cfg].name);
    }
    free(got);
  }
  CU_OK(GraphExecDestroy(exec));
  CU_OK(GraphDestroy(graph));
  CU_OK(MemFree(count));
  CU_OK(StreamDestroy(s));
  mj_synth_layer_destroy(&g_syn, &L);
  moejit_plan_destroy(plan);
}

static void test_device_token_graphs(void **state) {
  (void)state;
  NEED_GPU();
  device_token_graph(64);
  device_token_graph(1024);
}

/* A forward of few slots works out GEMM1's tiles from the caller's ids and starts before routing
 * ends (gemm.cuh, MJ_GEMM_SELF_ROUTE); GEMM2 and the combine still read routing's. On a 16-row
 * mma.sync configuration (16 slots, one tile per expert) and the one-row streamed one, i32 and i64
 * ids: 4, 3 and 1 tokens; ids with repeats inside a token and across tokens and out-of-range ids
 * (flagged, they contribute nothing) at 4 and 2 tokens; a token whose ids are all out of range (no
 * tile at all); and, for contrast, a device-side count of 3 (routing's tiles, not the ids'). y
 * against the CPU reference. */
static void test_self_routed_tiles(void **state) {
  (void)state;
  NEED_GPU();
  for (int ids64 = 0; ids64 <= 1; ids64++) {
    moejit_layer_desc d = gpt_oss(32, 4);
    d.ids_dtype = ids64 ? MOEJIT_I64 : MOEJIT_I32;
    /* a 16-row mma.sync tile, which holds every slot of these forwards, and one-row streamed
     * tiles, which send forwards with an expert repeated within a token to routing's tiles */
    static const char *const names[] = {"mma_m16n64k64s6w1x4z2", "stream_m1n64u6z2"};
    mj_gemm_config configs[2];
    mj_math math;
    for (int i = 0; i < 2; i++)
      assert_int_equal(mj_tune_config_parse(names[i], &configs[i], &math), 0);
    moejit_plan *plan = NULL;
    assert_int_equal(mj_rt_plan_create_with(g_ctx, &d, configs, 2, &plan, NULL), MOEJIT_OK);
    for (int i = 0; i < 2; i++)
      assert_true(mj_rt_can_self_route(&plan->desc, &plan->configs[i]));
    /* without programmatic dependent launch (below sm_90, MOEJIT_PDL=0) routing makes the tiles */
    if (!plan->pdl)
      print_message("self-routed tiles: no PDL here, so these forwards take routing's tiles\n");
    mj_synth_layer L;
    mj_err err;
    assert_int_equal(mj_synth_layer_create(&g_syn, plan, 4, 77 + ids64, &L, &err), MOEJIT_OK);
    int32_t layer_ids[16];
    memcpy(layer_ids, L.host_ids, sizeof layer_ids);
    CUdeviceptr count;
    CU_OK(MemAlloc(&count, 4));
    const size_t row = (size_t)d.hidden * 2;
    static const struct {
      int64_t tokens;
      int ids;      /* 0: the layer's; 1: repeats and two bad ids; 2: token 0's all bad */
      int32_t live; /* device-side count, or -1 for none */
      int64_t bad;
      const char *what;
    } cases[] = {
        {4, 0, -1, 0, "self-routed, 4 tokens"},
        {3, 0, -1, 0, "self-routed, 3 tokens"},
        {1, 0, -1, 0, "self-routed, 1 token"},
        {3, 0, 3, 0, "device count 3 of 4 (routed)"},
        {4, 1, -1, 2, "self-routed, repeats + bad ids"},
        {2, 1, -1, 0, "self-routed, repeats, 2 tokens"},
        {1, 2, -1, 4, "self-routed, all ids bad"},
    };
    for (int cfg = 0; cfg < 2; cfg++) {
      for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (i == 0 || cases[i].ids != cases[i - 1].ids) {
          int32_t ids[16];
          memcpy(ids, layer_ids, sizeof ids);
          if (cases[i].ids == 1) {
            ids[1] = ids[0]; /* a repeat inside token 0 */
            ids[6] = ids[0]; /* token 1 shares token 0's expert */
            ids[9] = 32;     /* out of range, in tokens 2 and 3 */
            ids[14] = -3;
          } else if (cases[i].ids == 2) {
            ids[0] = 32;
            ids[1] = -1;
            ids[2] = 1000;
            ids[3] = INT32_MIN;
          }
          assert_int_equal(mj_synth_layer_set_ids(&g_syn, &L, ids, &err), MOEJIT_OK);
        }
        mj_synth_layer view = L;
        view.tokens = cases[i].tokens;
        moejit_forward_args a;
        mj_synth_layer_args(&view, &a);
        if (cases[i].live >= 0) {
          view.tokens = cases[i].live;
          a.tokens = 4;
          a.device_tokens = (const int32_t *)ptr(count);
          CU_OK(MemcpyHtoD(count, &cases[i].live, 4));
        }
        CU_OK(MemsetD8(L.y, 0xFF, 4 * row));
        assert_int_equal(
            mj_rt_forward_with(plan, &a, ptr(L.workspace), L.workspace_bytes, NULL, cfg),
            MOEJIT_OK);
        int64_t bad = -1;
        assert_int_equal(moejit_forward_check(plan, ptr(L.workspace), NULL, &bad),
                         cases[i].bad ? MOEJIT_ERR_BAD_EXPERT_ID : MOEJIT_OK);
        assert_int_equal(bad, cases[i].bad);
        char what[80];
        snprintf(what, sizeof what, "%s (%s)", cases[i].what, ids64 ? "i64" : "i32");
        expect_reference(&view, what, plan->configs[cfg].name);
      }
    }
    CU_OK(MemFree(count));
    mj_synth_layer_destroy(&g_syn, &L);
    moejit_plan_destroy(plan);
  }
}

static void test_weight_on_input_and_f32_bias(void **state) {
  (void)state;
  NEED_GPU();
  static const moejit_dtype types[] = {MOEJIT_BF16, MOEJIT_F16, MOEJIT_F32};
  for (int i = 0; i < 3; i++) {
    moejit_layer_desc d = option_desc(types[i]);
    d.apply_router_weight_on_input = 1;
    d.exact_f32 = 1;
    host_layer L;
    make_layer(&L, &d, 200, 0, 120 + i);
    char what[64];
    snprintf(what, sizeof what, "router weight on input, %s", mj_dtype_name(types[i]));
    expect_match(what, &L, 200);
    free_layer(&L);
  }
  for (int i = 0; i < 2; i++) {
    moejit_layer_desc d = option_desc(types[i]);
    d.bias_f32 = 1;
    host_layer L;
    make_layer(&L, &d, 200, 0, 130 + i);
    char what[64];
    snprintf(what, sizeof what, "f32 biases, %s weights", mj_dtype_name(types[i]));
    expect_match(what, &L, 200);
    free_layer(&L);
  }
}

/* f32: TF32 tensor cores by default, exact FFMA on request; and the kernels-benchmarks
 * openai_moe workloads (f32, H = I = 2880, top-2, E in {2, 4}, random ids with duplicates, dense
 * softmax weights). */
static void test_f32_paths_and_seed_workloads(void **state) {
  (void)state;
  NEED_GPU();
  for (int exact = 0; exact <= 1; exact++) {
    moejit_layer_desc d = option_desc(MOEJIT_F32);
    d.exact_f32 = exact;
    host_layer L;
    make_layer(&L, &d, 300, 0, 140 + exact);
    expect_match(exact ? "f32 exact FFMA" : "f32 TF32 tensor cores", &L, 300);
    free_layer(&L);
  }
  static const int64_t experts[] = {2, 4}, tokens[] = {512, 1024};
  for (int e = 0; e < 2; e++)
    for (int t = 0; t < 2; t++) {
      moejit_layer_desc d;
      moejit_layer_desc_init(&d);
      d.hidden = d.intermediate = 2880;
      d.experts = experts[e];
      d.top_k = 2;
      d.dtype = MOEJIT_F32;
      d.routing = MOEJIT_ROUTING_DENSE;
      host_layer L;
      make_layer(&L, &d, tokens[t], 1, 150 + 2 * e + t);
      char what[64];
      snprintf(what, sizeof what, "openai_moe f32 E=%lld top-2 dense (TF32)",
               (long long)experts[e]);
      expect_match(what, &L, 4);
      free_layer(&L);
    }
}

/* Unfused plans: GEMM1's raw output in the workspace, the activation a launch of its own; a caller
 * running the stages one by one can change the intermediates in between. */
static void test_unfused_and_stages(void **state) {
  (void)state;
  NEED_GPU();
  static const moejit_dtype types[] = {MOEJIT_BF16, MOEJIT_F32};
  for (int i = 0; i < 2; i++) {
    moejit_layer_desc d = option_desc(types[i]);
    d.unfused = 1;
    host_layer L;
    make_layer(&L, &d, 300, 1, 160 + i);
    expect_match(i ? "unfused, f32 (TF32)" : "unfused, bf16", &L, 300);
    free_layer(&L);
  }
  /* Stage by stage on an unfused plan, zeroing GEMM1's output before the activation: then
   * h = swiglu(0, 0) = 0 and y[t] = sum_k w[t, k] * down_proj_bias[e_k]. */
  moejit_layer_desc d = option_desc(MOEJIT_BF16);
  d.unfused = 1;
  d.max_tokens = 256;
  moejit_plan *plan = make_plan(&d);
  mj_synth_layer L;
  mj_err err;
  assert_int_equal(mj_synth_layer_create(&g_syn, plan, 256, 170, &L, &err), MOEJIT_OK);
  moejit_forward_args a;
  mj_synth_layer_args(&L, &a);
  moejit_workspace_view v;
  moejit_workspace_view_init(&v);
  assert_int_equal(moejit_workspace_view_get(plan, L.tokens, &v), MOEJIT_OK);
  assert_true(v.gate_up != (size_t)-1);
  void *ws = ptr(L.workspace);
  assert_int_equal(moejit_forward_stages(plan, &a, ws, L.workspace_bytes, NULL,
                                         MOEJIT_STAGE_ROUTE | MOEJIT_STAGE_GEMM1),
                   MOEJIT_OK);
  int32_t rows = 0;
  CU_OK(CtxSynchronize());
  CU_OK(MemcpyDtoH(&rows, L.workspace + v.expert_offsets + 16 * sizeof(int32_t), sizeof rows));
  assert_int_equal(rows, L.tokens * d.top_k);
  CU_OK(MemsetD8(L.workspace + v.gate_up, 0, (size_t)rows * 2 * d.intermediate * 2));
  assert_int_equal(
      moejit_forward_stages(plan, &a, ws, L.workspace_bytes, NULL,
                            MOEJIT_STAGE_ACTIVATION | MOEJIT_STAGE_GEMM2 | MOEJIT_STAGE_COMBINE),
      MOEJIT_OK);
  mj_synth_host h;
  int64_t tok[4] = {0, 77, 128, 255};
  assert_int_equal(mj_synth_download(&g_syn, &L, tok, 4, &h, &err), MOEJIT_OK);
  for (int r = 0; r < 4; r++)
    for (int64_t j = 0; j < d.hidden; j++) {
      double want = 0.0;
      for (int64_t k = 0; k < d.top_k; k++)
        want += (double)h.weights[r * d.top_k + k] *
                mj_load_f32(d.dtype, h.down_bias, h.ids[r * d.top_k + k] * d.hidden + j);
      float got = mj_load_f32(d.dtype, h.y, r * d.hidden + j);
      assert_true(fabs(got - want) <= 1e-2 * fabs(want) + 1e-3);
    }
  mj_synth_host_free(&h);
  /* a fused plan run in pieces gives what one forward gives, bit for bit */
  moejit_layer_desc fd = d;
  fd.unfused = 0;
  moejit_plan *fused = make_plan(&fd);
  size_t need = 0; /* a fused plan's workspace differs (no gate_up) */
  assert_int_equal(moejit_workspace_size(fused, L.tokens, &need), MOEJIT_OK);
  if (need > L.workspace_bytes) {
    CU_OK(MemFree(L.workspace));
    CU_OK(MemAlloc(&L.workspace, need));
    L.workspace_bytes = need;
    ws = ptr(L.workspace);
  }
  void *whole = forward_output(fused, &L, NULL);
  size_t bytes = (size_t)(L.tokens * d.hidden) * 2;
  CU_OK(MemsetD8(L.y, 0xFF, bytes));
  static const unsigned pieces[] = {MOEJIT_STAGE_ROUTE, MOEJIT_STAGE_GEMM1,
                                    MOEJIT_STAGE_ACTIVATION | MOEJIT_STAGE_GEMM2,
                                    MOEJIT_STAGE_COMBINE};
  for (int i = 0; i < 4; i++)
    assert_int_equal(moejit_forward_stages(fused, &a, ws, L.workspace_bytes, NULL, pieces[i]),
                     MOEJIT_OK);
  void *staged = download(L.y, bytes);
  assert_memory_equal(whole, staged, bytes);
  assert_int_equal(moejit_forward_stages(fused, &a, ws, L.workspace_bytes, NULL, 0),
                   MOEJIT_ERR_INVALID_ARG);
  assert_int_equal(moejit_forward_stages(fused, &a, ws, L.workspace_bytes, NULL, 64),
                   MOEJIT_ERR_INVALID_ARG);
  moejit_workspace_view_init(&v);
  assert_int_equal(moejit_workspace_view_get(fused, L.tokens, &v), MOEJIT_OK);
  assert_true(v.gate_up == (size_t)-1);
  free(whole);
  free(staged);
  mj_synth_layer_destroy(&g_syn, &L);
  moejit_plan_destroy(fused);
  moejit_plan_destroy(plan);
}

/* The tuner on a small layer: winners checked, recorded, and followed by a new plan. */
/* ---- MXFP4 weights ------------------------------------------------------------------------ */

/* gpt-oss shapes with MXFP4 weights against the CPU reference at decode, middle and prefill token
 * counts; then every configuration of the MXFP4 table forced at 3 and 300 tokens, y and the
 * workspace poisoned before each. */
static void mxfp4_gpt_oss(int64_t experts) {
  static const int64_t tokens[] = {1, 2, 3, 8, 64, 300, 4096};
  moejit_layer_desc d = gpt_oss(experts, 4096);
  d.weight_format = MOEJIT_WEIGHTS_MXFP4;
  moejit_plan *plan = make_plan(&d);
  for (size_t i = 0; i < sizeof tokens / sizeof tokens[0]; i++) {
    mj_synth_layer L;
    mj_err err;
    assert_int_equal(mj_synth_layer_create(&g_syn, plan, tokens[i], 200 + i, &L, &err), MOEJIT_OK);
    char what[64];
    snprintf(what, sizeof what, "gpt-oss E=%lld mxfp4 %s", (long long)experts,
             plan->configs[mj_rt_pick(plan, tokens[i], NULL)].name);
    run_and_check(plan, &L, 16, what);
    mj_synth_layer_destroy(&g_syn, &L);
  }
  moejit_plan_destroy(plan);
  char what[32];
  snprintf(what, sizeof what, "mxfp4 E=%lld", (long long)experts);
  d.max_tokens = 300;
  plan_configs(make_plan(&d), d, 3, what);
  plan_configs(make_plan(&d), d, 300, what);
}

static void test_mxfp4_gpt_oss(void **state) {
  (void)state;
  NEED_GPU();
  mxfp4_gpt_oss(32);
  mxfp4_gpt_oss(128);
}

/* Every routing form and option of the bf16 layer, with MXFP4 weights, against the CPU reference:
 * f16 activations and f32 biases, dense weights with int64 ids, logits, the expert map, capacity
 * with duplicate ids, the weight on the input, unfused plans, the device-side token count; at one
 * token (the streamed tile) and at 300 (mma.sync). */
static void test_mxfp4_options(void **state) {
  (void)state;
  NEED_GPU();
  static const struct {
    const char *what;
    moejit_dtype dtype;
    moejit_routing routing;
    int64_t global, capacity;
    int weight_in, unfused, bias_f32, dup, ids64, live; /* live: device tokens (T / 4 + 1) */
  } cases[] = {
      {"mxfp4 top-k", MOEJIT_BF16, MOEJIT_ROUTING_TOPK, 0, 0, 0, 0, 0, 0, 0, 0},
      {"mxfp4 f16, f32 biases", MOEJIT_F16, MOEJIT_ROUTING_TOPK, 0, 0, 0, 0, 1, 0, 0, 0},
      {"mxfp4 dense weights, i64 ids", MOEJIT_BF16, MOEJIT_ROUTING_DENSE, 0, 0, 0, 0, 0, 0, 1, 0},
      {"mxfp4 logits", MOEJIT_BF16, MOEJIT_ROUTING_LOGITS, 0, 0, 0, 0, 0, 0, 0, 0},
      {"mxfp4 expert_map", MOEJIT_BF16, MOEJIT_ROUTING_TOPK, 40, 0, 0, 0, 0, 0, 0, 0},
      {"mxfp4 capacity 20, duplicates", MOEJIT_BF16, MOEJIT_ROUTING_TOPK, 0, 20, 0, 0, 0, 1, 0, 0},
      {"mxfp4 weight on input", MOEJIT_BF16, MOEJIT_ROUTING_TOPK, 0, 0, 1, 0, 0, 0, 0, 0},
      {"mxfp4 unfused f16", MOEJIT_F16, MOEJIT_ROUTING_TOPK, 0, 0, 0, 1, 0, 0, 0, 0},
      {"mxfp4 device tokens", MOEJIT_BF16, MOEJIT_ROUTING_TOPK, 0, 0, 0, 0, 0, 0, 0, 1},
  };
  static const int64_t tokens[] = {1, 300};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    for (int t = 0; t < 2; t++) {
      moejit_layer_desc d = option_desc(cases[i].dtype);
      d.weight_format = MOEJIT_WEIGHTS_MXFP4;
      d.routing = cases[i].routing;
      d.global_experts = cases[i].global;
      d.expert_capacity = cases[i].capacity;
      d.apply_router_weight_on_input = cases[i].weight_in;
      d.unfused = cases[i].unfused;
      d.bias_f32 = cases[i].bias_f32;
      d.ids_dtype = cases[i].ids64 ? MOEJIT_I64 : MOEJIT_I32;
      host_layer L;
      make_layer(&L, &d, tokens[t], cases[i].dup, 300 + 2 * i + t);
      L.use_live = cases[i].live;
      L.live = tokens[t] / 4 + 1;
      expect_match(cases[i].what, &L, 300);
      free_layer(&L);
    }
}

/* Scale bytes 0 and 255 (moejit.h): 0 makes weights of 2^-127 times their codes; 255 NaN weights.
 * A NaN block of down_proj's row n makes output n of every slot routed to that expert NaN; one of
 * gate_up_proj meets SwiGLU's clamps, whose fmin/fmax return the number beside a NaN, as the
 * reference's do. The GPU's NaNs are exactly the reference's, and the other outputs match it:
 * through the streamed tile and two mma.sync tiles. */
static void test_mxfp4_special_scales(void **state) {
  (void)state;
  NEED_GPU();
  static const char *const configs[] = {"stream_m1n32u4z2", "mxfp4_m16n128k64s4w1x4",
                                        "mxfp4_m64n128k64s3w2x2"};
  for (size_t c = 0; c < sizeof configs / sizeof configs[0]; c++) {
    moejit_layer_desc d = option_desc(MOEJIT_BF16);
    d.weight_format = MOEJIT_WEIGHTS_MXFP4;
    const int64_t T = 64, H = d.hidden, I = d.intermediate, KB1 = H / 32, KB2 = I / 32;
    host_layer L;
    make_layer(&L, &d, T, 0, 400 + c);
    L.config = configs[c];
    L.s2[(1 * H + 5) * KB2 + 0] = 255;     /* expert 1, output 5, first block: NaN */
    L.s1[(2 * 2 * I + 8) * KB1 + 1] = 255; /* expert 2, gate 4, second block: NaN */
    L.s1[(2 * 2 * I + 9) * KB1 + 0] = 255; /* expert 2, up 4: NaN */
    for (int64_t k = 0; k < KB1; k++)      /* expert 3, gate 5: weights of 2^-127 */
      L.s1[(3 * 2 * I + 10) * KB1 + k] = 0;
    for (int64_t k = 0; k < KB2; k++) /* expert 0, output 7: the same */
      L.s2[(0 * H + 7) * KB2 + k] = 0;
    int64_t bad = 0;
    float *y = gpu_forward(&L, &bad);
    assert_int_equal(bad, 0);
    float *want = malloc((size_t)(T * H) * sizeof *want);
    assert_non_null(want);
    mj_ref_layer ref = mj_ref_layer_of(&L.d, T);
    ref.x = L.x, ref.topk_ids = L.ids, ref.topk_weights = L.wk;
    ref.gate_up_proj = L.w1, ref.gate_up_proj_bias = L.b1, ref.gate_up_proj_scales = L.s1;
    ref.down_proj = L.w2, ref.down_proj_bias = L.b2, ref.down_proj_scales = L.s2;
    assert_int_equal(mj_ref_forward(&ref, NULL, T, want), 0);
    int64_t nans = 0;
    for (int64_t i = 0; i < T * H; i++) {
      if (isnan(want[i]) != isnan(y[i]))
        fail_msg("%s: token %lld output %lld: the GPU gives %g, the reference %g", configs[c],
                 (long long)(i / H), (long long)(i % H), (double)y[i], (double)want[i]);
      if (isnan(want[i])) {
        nans++;
        y[i] = want[i] = 0.0f;
      }
    }
    const double rel = mj_rel_error(y, want, T * H);
    print_message("scales 0 and 255 %-24s %lld NaN outputs where the reference has them, the "
                  "rest rel error %.3g\n",
                  configs[c], (long long)nans, rel);
    assert_true(nans > 0);
    assert_true(rel <= mj_tolerance(d.dtype));
    free(want);
    free(y);
    free_layer(&L);
  }
}

/* Every activation (moejit.h's eight) in every gate/up layout, with and without biases, dense bf16
 * and MXFP4 weights, at one token (the streamed tile) and 300 (mma.sync or, on sm_90a, the wgmma
 * epilogue where gate and up are interleaved; the activation kernel where they are in halves or
 * without mul), against the CPU reference; then f16 and f32 (TF32) layers of two of them. */
static void test_activations(void **state) {
  (void)state;
  NEED_GPU();
  static const int64_t tokens[] = {1, 300};
  int n = 0;
  for (int act = MOEJIT_ACT_SWIGLU_OAI; act <= MOEJIT_ACT_RELU2; act++)
    for (int layout = 0; layout < (act <= MOEJIT_ACT_SWIGLU_STEP ? 3 : 1); layout++)
      for (int mx = 0; mx < 2; mx++)
        for (int t = 0; t < 2; t++, n++) {
          moejit_layer_desc d = option_desc(MOEJIT_BF16);
          d.activation = (moejit_activation)act;
          d.gate_up_layout = (moejit_gate_up_layout)layout;
          d.no_bias = n % 3 == 1;
          d.weight_format = mx ? MOEJIT_WEIGHTS_MXFP4 : MOEJIT_WEIGHTS_DENSE;
          host_layer L;
          make_layer(&L, &d, tokens[t], 0, 700 + n);
          char what[80];
          snprintf(what, sizeof what, "%s %s%s%s", mj_rt_activation_name(d.activation),
                   layout == 0   ? "interleaved"
                   : layout == 1 ? "gate|up"
                                 : "up|gate",
                   d.no_bias ? " no bias" : "", mx ? " mxfp4" : "");
          expect_match(what, &L, 300);
          free_layer(&L);
        }
  static const struct {
    moejit_dtype dtype;
    moejit_activation act;
    moejit_gate_up_layout layout;
  } more[] = {{MOEJIT_F16, MOEJIT_ACT_GELU_TANH_MUL, MOEJIT_GATE_UP_INTERLEAVED},
              {MOEJIT_F32, MOEJIT_ACT_SILU_MUL, MOEJIT_GATE_UP_HALVES},
              {MOEJIT_F16, MOEJIT_ACT_RELU2, MOEJIT_GATE_UP_INTERLEAVED}};
  for (size_t i = 0; i < sizeof more / sizeof more[0]; i++) {
    moejit_layer_desc d = option_desc(more[i].dtype);
    d.activation = more[i].act;
    d.gate_up_layout = more[i].layout;
    d.no_bias = 1;
    host_layer L;
    make_layer(&L, &d, 300, 0, 800 + i);
    char what[80];
    snprintf(what, sizeof what, "%s %s no bias", mj_rt_activation_name(d.activation),
             mj_dtype_name(d.dtype));
    expect_match(what, &L, 300);
    free_layer(&L);
  }
}

/* The activation cases of tests/golden-act (made in numpy outside the library) through the GPU,
 * top-k/i32 and dense/i64, each within its tolerance of the float64 answer. */
static void test_act_golden_cases(void **state) {
  (void)state;
  NEED_GPU();
  golden_cases(mj_golden_act_root(), 9, 0, NULL, 1);
}

/* Decode batch sizes with MXFP4 weights: one CUDA graph per token count, replayed out of order,
 * bitwise equal to eager forwards and within tolerance of the reference (decode_graphs). */
static void test_mxfp4_decode_graphs(void **state) {
  (void)state;
  NEED_GPU();
  for (int64_t e = 32; e <= 128; e *= 4) {
    moejit_layer_desc d = gpt_oss(e, 300);
    d.weight_format = MOEJIT_WEIGHTS_MXFP4;
    decode_graphs(d);
  }
}

/* ---- batch invariance ---------------------------------------------------------------------- */

/* A batch of T tokens drawn from a pool (a synthetic layer's x and routing, in host memory) on the
 * device, and one forward of it on the pool layer's weights. */
typedef struct inv_batch {
  CUdeviceptr x, ids, w, y, live;
  size_t row; /* bytes of an x or y row */
} inv_batch;

static void inv_forward(moejit_plan *plan, const mj_synth_layer *pool, const inv_batch *b,
                        const void *hx, const int32_t *hids, const float *hw, const int64_t *pick,
                        int64_t T, int64_t live, CUstream s) {
  const int64_t K = pool->desc.top_k;
  char *x = malloc((size_t)T * b->row + 1);
  int32_t *ids = malloc((size_t)(T * K) * sizeof *ids + 1);
  float *w = malloc((size_t)(T * K) * sizeof *w + 1);
  assert_true(x && ids && w);
  for (int64_t t = 0; t < T; t++) {
    memcpy(x + t * b->row, (const char *)hx + pick[t] * b->row, b->row);
    memcpy(ids + t * K, hids + pick[t] * K, (size_t)K * sizeof *ids);
    memcpy(w + t * K, hw + pick[t] * K, (size_t)K * sizeof *w);
  }
  CU_OK(MemcpyHtoD(b->x, x, (size_t)T * b->row));
  CU_OK(MemcpyHtoD(b->ids, ids, (size_t)(T * K) * sizeof *ids));
  CU_OK(MemcpyHtoD(b->w, w, (size_t)(T * K) * sizeof *w));
  int32_t n = (int32_t)live;
  if (live >= 0)
    CU_OK(MemcpyHtoD(b->live, &n, sizeof n));
  CU_OK(MemsetD32Async(b->y, 0xFFFFFFFFu, (size_t)T * b->row / 4, s)); /* ordered before it */
  moejit_forward_args a;
  mj_synth_layer_args(pool, &a);
  a.tokens = T;
  a.x = ptr(b->x);
  a.topk_ids = ptr(b->ids);
  a.routing_weights = ptr(b->w);
  a.y = ptr(b->y);
  a.device_tokens = live >= 0 ? (const int32_t *)ptr(b->live) : NULL;
  assert_int_equal(moejit_forward(plan, &a, ptr(pool->workspace), pool->workspace_bytes, s),
                   MOEJIT_OK);
  CU_OK(StreamSynchronize(s));
  free(x);
  free(ids);
  free(w);
}

/* A token's output is the same bits whatever batch it is in (desc->batch_invariant): tokens of a
 * pool of 20000 (random routing; some with an id twice, some all on the same experts), each run
 * alone, then inside batches of T in {1, 2, 3, 8, 64, 300, 4096, 20000} drawn in random order
 * from the pool, at random positions, through a device-side token count and a graph replay too;
 * bf16, f16, f32 and MXFP4 weights, E = 32 and 128. */
static void test_batch_invariance(void **state) {
  (void)state;
  NEED_GPU();
  static const struct {
    moejit_dtype dtype;
    moejit_weight_format weights;
  } forms[] = {{MOEJIT_BF16, MOEJIT_WEIGHTS_DENSE},
               {MOEJIT_F16, MOEJIT_WEIGHTS_DENSE},
               {MOEJIT_F32, MOEJIT_WEIGHTS_DENSE},
               {MOEJIT_BF16, MOEJIT_WEIGHTS_MXFP4}};
  static const int64_t sizes[] = {1, 2, 3, 8, 64, 300, 4096, 20000};
  enum { POOL = 20000, NTEST = 8 };
  for (size_t f = 0; f < sizeof forms / sizeof forms[0]; f++)
    for (int64_t E = 32; E <= 128; E *= 4) {
      moejit_layer_desc d = gpt_oss(E, POOL);
      d.dtype = forms[f].dtype;
      d.weight_format = forms[f].weights;
      d.batch_invariant = 1;
      moejit_plan *plan = make_plan(&d);
      mj_synth_layer pool;
      mj_err err;
      assert_int_equal(mj_synth_layer_create(&g_syn, plan, POOL, 500 + E + f, &pool, &err),
                       MOEJIT_OK);
      const int64_t K = d.top_k;
      inv_batch b;
      b.row = (size_t)d.hidden * mj_dtype_size(d.dtype);
      void *hx = download(pool.x, (size_t)POOL * b.row);
      int32_t *hids = pool.host_ids;
      float *hw = pool.host_weights;
      for (int64_t t = 0; t < 100; t++) /* an expert twice in a token */
        hids[t * K + 1] = hids[t * K];
      for (int64_t t = 100; t < 200; t++) /* all on experts 0 .. K - 1 */
        for (int64_t k = 0; k < K; k++)
          hids[t * K + k] = (int32_t)k;
      CU_OK(MemAlloc(&b.x, (size_t)POOL * b.row));
      CU_OK(MemAlloc(&b.y, (size_t)POOL * b.row));
      CU_OK(MemAlloc(&b.ids, (size_t)(POOL * K) * 4));
      CU_OK(MemAlloc(&b.w, (size_t)(POOL * K) * 4));
      CU_OK(MemAlloc(&b.live, 4));
      CUstream s;
      CU_OK(StreamCreate(&s, MJ_CU_STREAM_NON_BLOCKING));
      /* the tokens under test, each alone */
      rng_state = 600 + E + f;
      int64_t test[NTEST];
      void *alone[NTEST];
      for (int i = 0; i < NTEST; i++) {
        test[i] = i < 2 ? 50 * i + 7 : i < 4 ? 100 + 50 * (i - 2) : (int64_t)(urand() * POOL);
        inv_forward(plan, &pool, &b, hx, hids, hw, &test[i], 1, -1, s);
        alone[i] = download(b.y, b.row);
      }
      int64_t *pick = malloc(POOL * sizeof *pick);
      assert_non_null(pick);
      for (size_t j = 0; j < sizeof sizes / sizeof sizes[0]; j++) {
        const int64_t T = sizes[j];
        /* a random draw of T pool tokens, then the tested ones written over random positions */
        for (int64_t t = 0; t < POOL; t++)
          pick[t] = t;
        for (int64_t t = 0; t < T; t++) { /* partial Fisher-Yates */
          int64_t r = t + (int64_t)(urand() * (float)(POOL - t));
          int64_t tmp = pick[t];
          pick[t] = pick[r < POOL ? r : POOL - 1];
          pick[r < POOL ? r : POOL - 1] = tmp;
        }
        int64_t at[NTEST];
        for (int i = 0; i < NTEST && i < T; i++) {
          at[i] = (int64_t)(urand() * (float)T) % T;
          for (int k = 0; k < i; k++)
            if (at[k] == at[i]) { /* taken: the next free position */
              at[i] = (at[i] + 1) % T;
              k = -1;
            }
          pick[at[i]] = test[i];
        }
        /* eager; with the device-side count (the batch's rows, then more) when T < POOL; and a
         * graph of the eager forward replayed */
        for (int form = 0; form < 3; form++) {
          if (form == 1 && T >= POOL)
            continue;
          CUgraph graph = NULL;
          CUgraphExec exec = NULL;
          if (form == 1) {
            inv_forward(plan, &pool, &b, hx, hids, hw, pick, T + 5 < POOL ? T + 5 : POOL, T, s);
          } else if (form == 2) {
            CU_OK(StreamBeginCapture(s, MJ_CU_CAPTURE_MODE_THREAD_LOCAL));
            moejit_forward_args a;
            mj_synth_layer_args(&pool, &a);
            a.tokens = T, a.x = ptr(b.x), a.topk_ids = ptr(b.ids), a.routing_weights = ptr(b.w);
            a.y = ptr(b.y);
            assert_int_equal(moejit_forward(plan, &a, ptr(pool.workspace), pool.workspace_bytes, s),
                             MOEJIT_OK);
            CU_OK(StreamEndCapture(s, &graph));
            CU_OK(GraphInstantiate(&exec, graph, 0));
            CU_OK(MemsetD32Async(b.y, 0xFFFFFFFFu, (size_t)T * b.row / 4, s));
            CU_OK(GraphLaunch(exec, s));
            CU_OK(StreamSynchronize(s));
          } else {
            inv_forward(plan, &pool, &b, hx, hids, hw, pick, T, -1, s);
          }
          void *y = download(b.y, (size_t)T * b.row);
          for (int i = 0; i < NTEST && i < T; i++)
            if (memcmp((char *)y + at[i] * b.row, alone[i], b.row) != 0)
              fail_msg("%s%s E=%lld: token %lld at %lld of %lld (%s) differs from its forward "
                       "alone (%s)",
                       mj_dtype_name(d.dtype), is_mxfp4(&d) ? " mxfp4" : "", (long long)E,
                       (long long)test[i], (long long)at[i], (long long)T,
                       form == 0   ? "eager"
                       : form == 1 ? "device-side count"
                                   : "graph",
                       plan->configs[mj_rt_pick(plan, T, NULL)].name);
          free(y);
          if (exec) {
            CU_OK(GraphExecDestroy(exec));
            CU_OK(GraphDestroy(graph));
          }
        }
        print_message("batch-invariant %-4s%s E=%-3lld T=%-5lld %-22s %d tokens bitwise as alone\n",
                      mj_dtype_name(d.dtype), is_mxfp4(&d) ? " mxfp4" : "      ", (long long)E,
                      (long long)T, plan->configs[mj_rt_pick(plan, T, NULL)].name,
                      (int)(T < NTEST ? T : NTEST));
      }
      for (int i = 0; i < NTEST; i++)
        free(alone[i]);
      free(pick);
      free(hx);
      CUdeviceptr bufs[] = {b.x, b.y, b.ids, b.w, b.live};
      for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        CU_OK(MemFree(bufs[i]));
      CU_OK(StreamDestroy(s));
      mj_synth_layer_destroy(&g_syn, &pool);
      moejit_plan_destroy(plan);
    }
}

static int tune_check(void *user, const mj_synth *s, const mj_synth_layer *L, double *rel) {
  (void)user;
  mj_check_result r;
  mj_err err;
  if (mj_check_sampled(s, L, 16, &r, &err) != MOEJIT_OK)
    return -1;
  *rel = r.rel_error;
  return r.nonfinite == 0 && r.rel_error <= r.tolerance ? 0 : -1;
}

static void test_tuner(void **state) {
  (void)state;
  NEED_GPU();
  char dir[] = "/tmp/moejit-tune-XXXXXX";
  assert_non_null(mkdtemp(dir));
  moejit_ctx_options o;
  moejit_ctx_options_init(&o);
  o.cache_dir = dir;
  moejit_ctx *ctx = NULL;
  assert_int_equal(moejit_create(&ctx, &o), MOEJIT_OK);
  moejit_layer_desc d = option_desc(MOEJIT_BF16);
  d.max_tokens = 512;
  static const int64_t tokens[] = {8, 300};
  mj_tuner_options opt = {tokens, 2, 0.0, 3, 5, 1, NULL, tune_check, NULL};
  mj_tuner_result res[2];
  mj_err err;
  moejit_status st = mj_tuner_run(ctx, &d, &opt, res, &err);
  if (st != MOEJIT_OK)
    print_message("tune: %s\n", err.msg);
  assert_int_equal(st, MOEJIT_OK);
  for (int i = 0; i < 2; i++) {
    print_message("tuned T=%lld: %s %.4f ms (heuristic %s %.4f ms), %d candidates, check %.3g\n",
                  (long long)res[i].tokens, res[i].config, res[i].ms, res[i].heuristic,
                  res[i].heuristic_ms, res[i].candidates, res[i].rel_error);
    assert_int_equal(res[i].checked, 1);
    assert_true(res[i].candidates >= 2);
    assert_true(res[i].ms > 0 && res[i].ms <= res[i].heuristic_ms);
  }
  moejit_plan *plan = NULL;
  assert_int_equal(moejit_plan_create(ctx, &d, &plan), MOEJIT_OK);
  assert_true(plan->tuned[mj_rt_bucket(8)]);
  assert_string_equal(plan->configs[plan->pick[mj_rt_bucket(8)]].name, res[0].config);
  assert_int_equal(plan->nexact, 1);
  assert_string_equal(plan->configs[plan->exact_pick[0]].name, res[1].config);
  mj_synth syn;
  assert_int_equal(mj_synth_open(ctx, &syn, &err), MOEJIT_OK);
  for (int i = 0; i < 2; i++) {
    mj_synth_layer L;
    assert_int_equal(mj_synth_layer_create(&syn, plan, tokens[i], 60 + i, &L, &err), MOEJIT_OK);
    moejit_forward_args a;
    mj_synth_layer_args(&L, &a);
    assert_int_equal(moejit_forward(plan, &a, ptr(L.workspace), L.workspace_bytes, NULL),
                     MOEJIT_OK);
    mj_check_result r;
    assert_int_equal(mj_check_sampled(&syn, &L, 32, &r, &err), MOEJIT_OK);
    assert_true(r.nonfinite == 0 && r.rel_error <= r.tolerance);
    mj_synth_layer_destroy(&syn, &L);
  }
  mj_synth_close(&syn);
  moejit_plan_destroy(plan);
  moejit_destroy(ctx);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
}

/* Whether name contains one of the comma-separated words. */
static int name_has(const char *name, const char *words) {
  for (const char *w = words; w && *w; w = strchr(w, ',') ? strchr(w, ',') + 1 : NULL) {
    size_t len = strchr(w, ',') ? (size_t)(strchr(w, ',') - w) : strlen(w);
    char word[64];
    snprintf(word, sizeof word, "%.*s", (int)len, w);
    if (len > 0 && strstr(name, word) != NULL)
      return 1;
  }
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_golden_cases),
      cmocka_unit_test(test_mxfp4_golden_cases),
      cmocka_unit_test(test_wgmx),
      cmocka_unit_test(test_mxfp4_special_scales),
      cmocka_unit_test(test_mxfp4_options),
      cmocka_unit_test(test_act_golden_cases),
      cmocka_unit_test(test_activations),
      cmocka_unit_test(test_every_config),
      cmocka_unit_test(test_forward_validation),
      cmocka_unit_test(test_bad_expert_ids),
      cmocka_unit_test(test_skew_and_duplicates),
      cmocka_unit_test(test_bitwise_reproducible),
      cmocka_unit_test(test_cuda_graph),
      cmocka_unit_test(test_decode_graphs),
      cmocka_unit_test(test_two_plans_two_streams),
      cmocka_unit_test(test_soak),
      cmocka_unit_test(test_f32_gpt_oss),
      cmocka_unit_test(test_tuner),
      cmocka_unit_test(test_router_logits),
      cmocka_unit_test(test_expert_map),
      cmocka_unit_test(test_capacity),
      cmocka_unit_test(test_device_tokens),
      cmocka_unit_test(test_device_token_graphs),
      cmocka_unit_test(test_self_routed_tiles),
      cmocka_unit_test(test_weight_on_input_and_f32_bias),
      cmocka_unit_test(test_f32_paths_and_seed_workloads),
      cmocka_unit_test(test_unfused_and_stages),
      cmocka_unit_test(test_gpt_oss_e32),
      cmocka_unit_test(test_gpt_oss_e128),
      cmocka_unit_test(test_mxfp4_gpt_oss),
      cmocka_unit_test(test_mxfp4_decode_graphs),
      cmocka_unit_test(test_batch_invariance),
  };
  /* MOEJIT_TEST_FILTER="golden,graph": run only the tests whose names contain one of the words
   * (the sanitizer runs pick the small ones); MOEJIT_TEST_SKIP="mxfp4,act": leave out those whose
   * names contain one (a device call of under 10 minutes runs the rest). */
  struct CMUnitTest chosen[sizeof tests / sizeof tests[0]];
  size_t n = 0;
  const char *filter = getenv("MOEJIT_TEST_FILTER"), *skip = getenv("MOEJIT_TEST_SKIP");
  for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
    if ((!filter || !*filter || name_has(tests[i].name, filter)) &&
        !(skip && *skip && name_has(tests[i].name, skip)))
      chosen[n++] = tests[i];
  return _cmocka_run_group_tests("test_rt_gpu", chosen, n, setup, teardown);
}
