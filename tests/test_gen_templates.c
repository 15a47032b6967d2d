/* test_gen_templates.c: every kernel template renders and compiles with NVRTC for sm_80 and sm_90a
 * over a grid of layer shapes, and bad shapes, bad tiles and bad sources fail with the right status
 * and detail. Offline contexts, so no GPU is needed; NVRTC is (the compile tests fail without it).
 * Uses runtime/internal.h (mj_rt_build_modules), gen/ and cmocka. */
#include <ctype.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/half.h"
#include "runtime/internal.h"

enum { NARCH = 2, EM_CUDA = 190 };
static const char *const arches[NARCH] = {"sm_80", "sm_90a"};

/* The group's state: one offline context per arch, and a handle on NVRTC of the test's own for
 * the PTX checks (the contexts load theirs on their first build). */
typedef struct fixture {
  moejit_ctx *ctx[NARCH];
  mj_nvrtc nv;
  moejit_status nv_status;
  mj_err nv_err;
  int (*GetPTXSize)(void *prog, size_t *size);
  int (*GetPTX)(void *prog, char *ptx);
} fixture;

static int group_setup(void **state) {
  fixture *fx = calloc(1, sizeof *fx);
  if (!fx)
    return -1;
  for (int a = 0; a < NARCH; a++) {
    moejit_ctx_options opts;
    moejit_ctx_options_init(&opts);
    opts.offline_arch = arches[a];
    opts.cache_dir = ""; /* memory only: every module is compiled here, none read from disk */
    moejit_status st = moejit_create(&fx->ctx[a], &opts);
    if (st != MOEJIT_OK) {
      print_error("moejit_create(offline_arch=%s): %s\n", arches[a], moejit_status_name(st));
      return -1;
    }
  }
  /* A missing NVRTC is reported by every test that compiles, not here, so the others still run. */
  fx->nv_status = mj_gen_nvrtc_load(&fx->nv, &fx->nv_err);
  if (fx->nv_status == MOEJIT_OK) {
    *(void **)&fx->GetPTXSize = dlsym(fx->nv.lib, "nvrtcGetPTXSize");
    *(void **)&fx->GetPTX = dlsym(fx->nv.lib, "nvrtcGetPTX");
  }
  *state = fx;
  return 0;
}

static int group_teardown(void **state) {
  fixture *fx = *state;
  if (!fx)
    return 0;
  for (int a = 0; a < NARCH; a++)
    moejit_destroy(fx->ctx[a]);
  mj_gen_nvrtc_unload(&fx->nv);
  free(fx);
  return 0;
}

static void require_nvrtc(const fixture *fx) {
  if (fx->nv_status != MOEJIT_OK)
    fail_msg("NVRTC is required for this test (%s): %s", moejit_status_name(fx->nv_status),
             fx->nv_err.msg);
}

static void assert_contains(const char *haystack, const char *needle) {
  if (!haystack || !strstr(haystack, needle))
    fail_msg("\"%s\" not found in:\n%s", needle, haystack ? haystack : "(null)");
}

static void assert_containsf(const char *haystack, const char *fmt, ...) {
  char needle[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(needle, sizeof needle, fmt, ap);
  va_end(ap);
  assert_contains(haystack, needle);
}

static uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* A cubin is a 64-bit little-endian ELF for the CUDA machine. */
static void check_cubin(const mj_cubin *c, const char *what) {
  const unsigned char *b = c->data;
  if (!b || c->size < 64)
    fail_msg("%s: cubin of %zu bytes", what, c->size);
  if (memcmp(b, "\177ELF", 4) != 0)
    fail_msg("%s: cubin does not start with the ELF magic", what);
  assert_int_equal(b[4], 2); /* ELFCLASS64 */
  assert_int_equal(b[5], 1); /* little endian */
  if (le16(b + 18) != EM_CUDA)
    fail_msg("%s: ELF e_machine %u, expected EM_CUDA (190)", what, le16(b + 18));
}

static int cubin_has(const mj_cubin *c, const char *name) {
  return memmem(c->data, c->size, name, strlen(name) + 1) != NULL; /* with its NUL: a whole name */
}

/* ---- the grid -------------------------------------------------------------------------------- */

/* Layer options a case turns on, so that every template variant is rendered and compiled. */
enum {
  EXACT = 1,
  MAP = 2,
  CAPPED = 4,
  WEIGHT_IN = 8,
  BIAS_F32 = 16,
  UNFUSED = 32,
  MXFP4 = 64,
  NO_BIAS = 128,
  HALVES = 256,  /* gate and up in halves, [gate | up] */
  UP_GATE = 512, /* [up | gate] */
};

typedef struct layer_case {
  const char *name;
  int64_t hidden, intermediate, experts, top_k;
  moejit_dtype dtype, ids, weights;
  moejit_routing routing;
  int options;
  moejit_activation act; /* default SwiGLU-OAI */
} layer_case;

static const layer_case grid[] = {
    {"gpt-oss-20b", 2880, 2880, 32, 4, MOEJIT_BF16, MOEJIT_I32, MOEJIT_F32, MOEJIT_ROUTING_TOPK, 0,
     MOEJIT_ACT_SWIGLU_OAI},
    {"gpt-oss-120b f16 logits", 2880, 2880, 128, 4, MOEJIT_F16, MOEJIT_I64, MOEJIT_F16,
     MOEJIT_ROUTING_LOGITS, MAP | BIAS_F32, MOEJIT_ACT_SWIGLU_OAI},
    {"small f32 exact", 64, 96, 5, 2, MOEJIT_F32, MOEJIT_I64, MOEJIT_BF16, MOEJIT_ROUTING_DENSE,
     EXACT, MOEJIT_ACT_SWIGLU_OAI},
    {"tiny f32 tf32", 16, 8, 2, 1, MOEJIT_F32, MOEJIT_I64, MOEJIT_F32, MOEJIT_ROUTING_DENSE, CAPPED,
     MOEJIT_ACT_SWIGLU_OAI},
    {"odd bf16 unfused", 256, 192, 16, 4, MOEJIT_BF16, MOEJIT_I32, MOEJIT_F32, MOEJIT_ROUTING_DENSE,
     MAP | WEIGHT_IN | UNFUSED, MOEJIT_ACT_SWIGLU_OAI},
    {"wide f16 logits", 4096, 1024, 8, 2, MOEJIT_F16, MOEJIT_I64, MOEJIT_F32, MOEJIT_ROUTING_LOGITS,
     CAPPED, MOEJIT_ACT_SWIGLU_OAI},
    {"gpt-oss-20b mxfp4", 2880, 2880, 32, 4, MOEJIT_BF16, MOEJIT_I32, MOEJIT_F32,
     MOEJIT_ROUTING_TOPK, MXFP4, MOEJIT_ACT_SWIGLU_OAI},
    {"gpt-oss-120b mxfp4 f16", 2880, 2880, 128, 4, MOEJIT_F16, MOEJIT_I64, MOEJIT_BF16,
     MOEJIT_ROUTING_DENSE, MXFP4 | MAP | BIAS_F32 | UNFUSED, MOEJIT_ACT_SWIGLU_OAI},
    {"small mxfp4 logits", 64, 96, 5, 2, MOEJIT_BF16, MOEJIT_I64, MOEJIT_F32, MOEJIT_ROUTING_LOGITS,
     MXFP4 | CAPPED | WEIGHT_IN, MOEJIT_ACT_SWIGLU_OAI},
    /* other activations fused (interleaved) on every path, and in their own launch (halves, no
     * mul), with and without biases */
    {"mixtral-like silu halves", 4096, 1024, 8, 2, MOEJIT_BF16, MOEJIT_I32, MOEJIT_F32,
     MOEJIT_ROUTING_TOPK, HALVES | NO_BIAS, MOEJIT_ACT_SILU_MUL},
    {"gelu_tanh interleaved", 256, 192, 16, 4, MOEJIT_F16, MOEJIT_I32, MOEJIT_F32,
     MOEJIT_ROUTING_TOPK, NO_BIAS, MOEJIT_ACT_GELU_TANH_MUL},
    {"swiglu_step up|gate mxfp4", 256, 192, 16, 4, MOEJIT_BF16, MOEJIT_I64, MOEJIT_F32,
     MOEJIT_ROUTING_DENSE, UP_GATE | MXFP4, MOEJIT_ACT_SWIGLU_STEP},
    {"relu2 no mul f32", 64, 96, 5, 2, MOEJIT_F32, MOEJIT_I32, MOEJIT_F32, MOEJIT_ROUTING_TOPK,
     EXACT | NO_BIAS, MOEJIT_ACT_RELU2},
    {"gelu erf interleaved", 256, 192, 16, 4, MOEJIT_BF16, MOEJIT_I32, MOEJIT_F32,
     MOEJIT_ROUTING_TOPK, 0, MOEJIT_ACT_GELU_MUL},
};

static moejit_layer_desc desc_of(const layer_case *c) {
  moejit_layer_desc d;
  moejit_layer_desc_init(&d);
  d.hidden = c->hidden;
  d.intermediate = c->intermediate;
  d.experts = c->experts;
  d.top_k = c->top_k;
  d.max_tokens = 4096;
  d.dtype = c->dtype;
  d.ids_dtype = c->ids;
  d.weights_dtype = c->weights;
  d.routing = c->routing;
  d.logits_dtype = c->dtype == MOEJIT_F16 ? MOEJIT_BF16 : MOEJIT_F32;
  d.exact_f32 = (c->options & EXACT) != 0;
  d.global_experts = c->options & MAP ? 2 * c->experts : 0;
  d.expert_capacity = c->options & CAPPED ? 7 : 0;
  d.apply_router_weight_on_input = (c->options & WEIGHT_IN) != 0;
  d.bias_f32 = (c->options & BIAS_F32) != 0;
  d.unfused = (c->options & UNFUSED) != 0;
  d.weight_format = c->options & MXFP4 ? MOEJIT_WEIGHTS_MXFP4 : MOEJIT_WEIGHTS_DENSE;
  d.no_bias = (c->options & NO_BIAS) != 0;
  d.gate_up_layout = c->options & HALVES    ? MOEJIT_GATE_UP_HALVES
                     : c->options & UP_GATE ? MOEJIT_UP_GATE_HALVES
                                            : MOEJIT_GATE_UP_INTERLEAVED;
  d.activation = c->act;
  return d;
}

static const char *ctype_of(moejit_dtype dt) {
  return dt == MOEJIT_F32 ? "float" : dt == MOEJIT_F16 ? "mj_f16" : "mj_bf16";
}

/* What a module's source must say for the layer: the constants the kernels are built on. */
static void check_source(const mj_module_src *m, const layer_case *c) {
  const char *s = m->source;
  /* the activation runs as its own launch (GEMM1 raw, the activation kernel in combine's module)
   * for unfused plans, gate and up in halves, and activations without mul */
  const int split = (c->options & (UNFUSED | HALVES | UP_GATE)) || c->act >= MOEJIT_ACT_SILU;
  /* Every module but the wgmma ones (launched without it) is built for programmatic dependent
   * launch; these tables split no GEMM2 but MXFP4's streamed one-token tile. */
  if ((strstr(s, "#define MJ_PDL 1") != NULL) != (strcmp(m->template_name, "wgmma") != 0))
    fail_msg("%s: MJ_PDL 1 is%s defined", m->name, strstr(s, "#define MJ_PDL 1") ? "" : " not");
  const int streamed = strstr(m->name, "_stream_") != NULL;
  if (!(streamed && (c->options & MXFP4)) && strcmp(m->name, "combine_z2") != 0)
    assert_null(strstr(s, "_SPLITS"));
  char first[128];
  snprintf(first, sizeof first,
           "// moejit: generated by templates/%s.lua\n// spec: ", m->template_name);
  if (!s || strncmp(s, first, strlen(first)) != 0)
    fail_msg("%s: source starts \"%.120s\"", m->name, s ? s : "(null)");
  assert_null(strstr(s, "#include <"));
  /* gemm.cuh's MJ_GEMM_PATH: f16/bf16 tensor cores, TF32, exact FFMA */
  const char *path = streamed                 ? "MJ_PATH_STREAM"
                     : c->dtype != MOEJIT_F32 ? "MJ_PATH_MMA"
                     : (c->options & EXACT)   ? "MJ_PATH_FFMA"
                                              : "MJ_PATH_TF32";
  int ffma = c->dtype == MOEJIT_F32 && (c->options & EXACT);
  int logits = c->routing == MOEJIT_ROUTING_LOGITS;
  if (strcmp(m->template_name, "route") == 0) {
    assert_containsf(s, "static constexpr int kExperts = %lld;", (long long)c->experts);
    assert_containsf(s, "static constexpr int kGlobalExperts = %lld;",
                     (long long)(c->options & MAP ? 2 * c->experts : c->experts));
    assert_containsf(s, "static constexpr bool kMapped = %s;", c->options & MAP ? "true" : "false");
    assert_containsf(s, "static constexpr bool kCapped = %s;",
                     c->options & CAPPED ? "true" : "false");
    assert_containsf(s, "static constexpr int kTopK = %lld;", (long long)c->top_k);
    /* with logits the routing kernels read the int32 ids and f32 weights of the top-k kernel */
    assert_containsf(s, "typedef %s IdT;", c->ids == MOEJIT_I64 && !logits ? "mj_i64" : "int");
    assert_containsf(s, "typedef %s WeightT;", logits ? "float" : ctype_of(c->weights));
    assert_containsf(s, "#define MJ_ROUTE_LOGITS %d", logits);
    if (logits)
      assert_containsf(s, "typedef %s UserIdT;", c->ids == MOEJIT_I64 ? "mj_i64" : "int");
    assert_containsf(s, "static constexpr bool kDense = %s;",
                     c->routing == MOEJIT_ROUTING_DENSE ? "true" : "false");
  } else if (strcmp(m->template_name, "combine") == 0) {
    assert_containsf(s, "static constexpr int kHidden = %lld;", (long long)c->hidden);
    assert_containsf(s, "#define MJ_COMBINE_ACTIVATION %d", split);
    if (split) {
      assert_containsf(s, "static constexpr int kAct = %d;", (int)c->act);
      assert_containsf(s, "static constexpr int kLayout = %d;",
                       c->options & HALVES    ? 1
                       : c->options & UP_GATE ? 2
                                              : 0);
    }
    assert_containsf(s, "static constexpr int kTopK = %lld;", (long long)c->top_k);
    assert_containsf(s, "typedef %s T;", ctype_of(c->dtype));
  } else {
    assert_string_equal(m->template_name, "gemm");
    int mode = strncmp(m->name, "gemm1_", 6) == 0 ? 1 : 2;
    assert_true(mode == 1 || strncmp(m->name, "gemm2_", 6) == 0);
    int64_t n = mode == 1 ? (c->act >= MOEJIT_ACT_SILU ? 1 : 2) * c->intermediate : c->hidden;
    int64_t k = mode == 1 ? c->hidden : c->intermediate;
    assert_containsf(s, "static constexpr int kMode = %d;", mode == 1 && split ? 3 : mode);
    assert_containsf(s, "static constexpr int kAct = %d;", mode == 1 && !split ? (int)c->act : 0);
    assert_containsf(s, "static constexpr bool kHasBias = %s;",
                     c->options & NO_BIAS ? "false" : "true");
    assert_containsf(s, "static constexpr int kN = %lld;", (long long)n);
    assert_containsf(s, "static constexpr int kK = %lld;", (long long)k);
    assert_containsf(s, "typedef %s T;", ctype_of(c->dtype));
    assert_containsf(s, "typedef %s BiasT;",
                     ctype_of(c->options & BIAS_F32 ? MOEJIT_F32 : c->dtype));
    assert_containsf(s, "static constexpr bool kWeightOnInput = %s;",
                     c->options & WEIGHT_IN ? "true" : "false");
    assert_containsf(s, "#define MJ_GEMM_PATH %s\n", path);
    assert_int_equal(strstr(s, "#define MJ_GEMM_MXFP4 1\n") != NULL, (c->options & MXFP4) != 0);
    assert_int_equal(strstr(s, "kWM") != NULL, !ffma && !streamed);
    assert_int_equal(strstr(s, "kTM") != NULL, ffma);
    /* GEMM1 routes itself from the caller's ids where the layer lets it (gemm.cuh,
     * MJ_GEMM_SELF_ROUTE): ids naming the experts directly, no capacity, weight on the output */
    const int self_route = mode == 1 && c->routing != MOEJIT_ROUTING_LOGITS &&
                           !(c->options & (MAP | CAPPED | WEIGHT_IN));
    assert_int_equal(strstr(s, "#define MJ_GEMM_SELF_ROUTE 1") != NULL, self_route);
    if (self_route) {
      assert_containsf(s, "typedef %s RouteIdT;", c->ids == MOEJIT_I64 ? "mj_i64" : "int");
      assert_containsf(s, "static constexpr int kRouteExperts = %lld;", (long long)c->experts);
    }
  }
}

/* The bytes a parameter declaration passes: a pointer 8, mj_tmap 128, a 64-bit integer 8, int,
 * unsigned or float 4; 0 for anything else. */
static int param_width(const char *decl, size_t len) {
  char d[256];
  snprintf(d, sizeof d, "%.*s", (int)(len < sizeof d ? len : sizeof d - 1), decl);
  if (strchr(d, '*'))
    return 8;
  if (strstr(d, "mj_tmap"))
    return 128;
  if (strstr(d, "long long") || strstr(d, "mj_i64") || strstr(d, "mj_u64"))
    return 8;
  if (strstr(d, "int") || strstr(d, "float") || strstr(d, "unsigned"))
    return 4;
  return 0;
}

/* The parameter names of kernel `entry` as its definition in text declares them (the last
 * identifier of each parameter) and the bytes each passes (param_width), or -1 when text does not
 * define it. */
static int signature_params(const char *text, const char *entry, char names[][MJ_PARAM_LEN],
                            int *widths, int max) {
  char pattern[MJ_NAME_LEN + 2];
  snprintf(pattern, sizeof pattern, "%s(", entry);
  for (const char *p = strstr(text, pattern); p; p = strstr(p + 1, pattern)) {
    const char *from = p;
    while (from > text && from[-1] != ';' && from[-1] != '}')
      from--;
    if (!memmem(from, (size_t)(p - from), "__global__", 10) || (p[-1] != ' ' && p[-1] != '\n'))
      continue; /* a call or a mention, not the definition */
    const char *id = NULL, *decl = p + strlen(pattern);
    size_t idlen = 0;
    int n = 0, depth = 0;
    for (const char *q = decl; *q; q++) {
      if (*q == '(') {
        depth++;
      } else if ((*q == ',' || *q == ')') && depth == 0) {
        if (id && n < max) {
          snprintf(names[n], MJ_PARAM_LEN, "%.*s", (int)idlen, id);
          widths[n] = param_width(decl, (size_t)(q - decl));
        }
        n += id != NULL;
        id = NULL;
        decl = q + 1;
        if (*q == ')')
          return n;
      } else if (*q == ')') {
        depth--;
      } else if ((*q == '_' || isalpha((unsigned char)*q)) &&
                 !(isalnum((unsigned char)q[-1]) || q[-1] == '_')) {
        id = q;
        idlen = strspn(q, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_");
      }
    }
    return -1;
  }
  return -1;
}

/* A module's launch contract against its source: each kernel it lists is defined (in the source
 * or a header) with exactly the parameters, in the order, the contract names; each name is one the
 * runtime binds, to a value of the parameter's width; the block and the shared memory are
 * possible; the cubin, when built, holds it. */
static void check_contract(const fixture *fx, const mj_module_src *m) {
  int nh = 0;
  const mj_gen_file *headers = mj_gen_headers(fx->ctx[0]->gen, &nh);
  assert_true(m->meta.count >= 1);
  for (int i = 0; i < m->meta.count; i++) {
    const mj_kernel_meta *k = &m->meta.kernel[i];
    char names[MJ_KERNEL_PARAMS][MJ_PARAM_LEN];
    int widths[MJ_KERNEL_PARAMS];
    int n = signature_params(m->source, k->entry, names, widths, MJ_KERNEL_PARAMS);
    for (int h = 0; h < nh && n < 0; h++)
      n = signature_params(headers[h].text, k->entry, names, widths, MJ_KERNEL_PARAMS);
    if (n != k->nparams)
      fail_msg("%s: %s takes %d parameters, its contract names %d", m->name, k->entry, n,
               k->nparams);
    for (int j = 0; j < n; j++)
      if (strcmp(names[j], k->params[j]) != 0)
        fail_msg("%s: %s's parameter %d is %s, its contract says %s", m->name, k->entry, j + 1,
                 names[j], k->params[j]);
      else if ((size_t)widths[j] != mj_rt_value_size(names[j]))
        fail_msg("%s: %s's parameter %s passes %d bytes, the value it binds to has %zu", m->name,
                 k->entry, names[j], widths[j], mj_rt_value_size(names[j]));
    mj_kernel bound;
    mj_err err;
    memset(&bound, 0, sizeof bound);
    bound.meta = *k;
    if (mj_rt_bind(&bound, &err) != MOEJIT_OK)
      fail_msg("%s: %s", m->name, err.msg);
    assert_true(k->threads >= 32 && k->threads <= 1024 && k->threads % 32 == 0);
    assert_true(k->smem >= 0 && k->smem + k->static_smem <= 227 * 1024);
    if (m->cubin.data && !cubin_has(&m->cubin, k->entry))
      fail_msg("%s: the cubin has no %s", m->name, k->entry);
  }
}

/* Renders and compiles every module of the layer for both arches and checks them. */
static void build_and_check(fixture *fx, const layer_case *c) {
  require_nvrtc(fx);
  moejit_layer_desc d = desc_of(c);
  mj_err err;
  assert_int_equal(mj_rt_check_desc(&d, &err), MOEJIT_OK);
  mj_gemm_config cfg[MJ_MAX_GEMM_CONFIGS];
  int ncfg = mj_tune_heuristic(mj_rt_math(&d), "", cfg, MJ_MAX_GEMM_CONFIGS);
  mj_module_src *mods[NARCH] = {NULL, NULL};
  int n[NARCH] = {0, 0};
  for (int a = 0; a < NARCH; a++) {
    const int64_t before = fx->ctx[a]->compiles;
    moejit_status st =
        mj_rt_build_modules(fx->ctx[a], &d, cfg, ncfg, fx->ctx[a]->arch, 0, &mods[a], &n[a], &err);
    if (st != MOEJIT_OK)
      fail_msg("%s for %s: %s: %s", c->name, arches[a], moejit_status_name(st), err.msg);
    int splits = 0;
    for (int i = 0; i < ncfg; i++)
      splits |= cfg[i].splits > 1;
    assert_int_equal(n[a], 2 + 2 * ncfg + splits);
    assert_true(fx->ctx[a]->compiles > before && fx->ctx[a]->compiles <= before + n[a]);
    assert_string_equal(mods[a][0].template_name, "route");
    assert_string_equal(mods[a][1].template_name, "combine");
    for (int i = 0; i < n[a]; i++) {
      const mj_module_src *m = &mods[a][i];
      char what[128];
      snprintf(what, sizeof what, "%s %s %s", c->name, arches[a], m->name);
      check_source(m, c);
      check_contract(fx, m);
      check_cubin(&m->cubin, what);
      /* The entry points the plan looks up by name are in every cubin. */
      if (i == 0) {
        assert_true(cubin_has(&m->cubin, "moejit_route_count"));
        assert_true(cubin_has(&m->cubin, "moejit_route_scan"));
        assert_true(cubin_has(&m->cubin, "moejit_route_scatter"));
        assert_true(cubin_has(&m->cubin, "moejit_route_small"));
        assert_int_equal(cubin_has(&m->cubin, "moejit_route_small_logits"),
                         c->routing == MOEJIT_ROUTING_LOGITS);
      } else if (!strcmp(m->template_name, "combine")) { /* and combine_z<splits>, last */
        assert_true(i == 1 || i == n[a] - 1);
        assert_true(cubin_has(&m->cubin, "moejit_combine"));
      } else {
        assert_true(cubin_has(&m->cubin, "moejit_gemm"));
      }
    }
  }
  /* A second build on the same context comes from its memory cache: no compile, the same bytes. */
  const int64_t compiles = fx->ctx[0]->compiles;
  mj_module_src *again = NULL;
  int n_again = 0;
  assert_int_equal(
      mj_rt_build_modules(fx->ctx[0], &d, cfg, ncfg, arches[0], 0, &again, &n_again, &err),
      MOEJIT_OK);
  assert_int_equal(fx->ctx[0]->compiles, compiles);
  assert_int_equal(n_again, n[0]);
  for (int i = 0; i < n_again; i++) {
    assert_int_equal(again[i].cubin.size, mods[0][i].cubin.size);
    assert_memory_equal(again[i].cubin.data, mods[0][i].cubin.data, again[i].cubin.size);
  }
  mj_rt_modules_free(again, n_again);
  /* The source is a function of the spec only; the machine code depends on the arch. */
  for (int i = 0; i < n[0]; i++) {
    assert_string_equal(mods[0][i].name, mods[1][i].name);
    assert_string_equal(mods[0][i].source, mods[1][i].source);
    if (mods[0][i].cubin.size == mods[1][i].cubin.size &&
        memcmp(mods[0][i].cubin.data, mods[1][i].cubin.data, mods[0][i].cubin.size) == 0)
      fail_msg("%s %s: the sm_80 and sm_90a cubins are identical", c->name, mods[0][i].name);
  }
  print_message("%-17s H=%-5lld I=%-5lld E=%-4lld K=%lld %-4s ids=%s %s: %d modules x %d arches\n",
                c->name, (long long)c->hidden, (long long)c->intermediate, (long long)c->experts,
                (long long)c->top_k, mj_dtype_name(c->dtype), mj_dtype_name(c->ids),
                c->routing == MOEJIT_ROUTING_DENSE ? "dense" : "topk", n[0], NARCH);
  for (int a = 0; a < NARCH; a++)
    mj_rt_modules_free(mods[a], n[a]);
}

static void test_layer_gpt_oss_20b_bf16(void **state) { build_and_check(*state, &grid[0]); }
static void test_layer_gpt_oss_120b_f16(void **state) { build_and_check(*state, &grid[1]); }
static void test_layer_small_f32_dense(void **state) { build_and_check(*state, &grid[2]); }
static void test_layer_tiny_f32_i64_dense(void **state) { build_and_check(*state, &grid[3]); }
static void test_layer_odd_bf16_dense(void **state) { build_and_check(*state, &grid[4]); }
static void test_layer_wide_f16_i64(void **state) { build_and_check(*state, &grid[5]); }
static void test_layer_gpt_oss_20b_mxfp4(void **state) { build_and_check(*state, &grid[6]); }
static void test_layer_gpt_oss_120b_mxfp4_f16(void **state) { build_and_check(*state, &grid[7]); }
static void test_layer_small_mxfp4_logits(void **state) { build_and_check(*state, &grid[8]); }
static void test_layer_mixtral_like_silu_halves(void **state) { build_and_check(*state, &grid[9]); }
static void test_layer_gelu_tanh(void **state) { build_and_check(*state, &grid[10]); }
static void test_layer_swiglu_step_up_gate_mxfp4(void **state) {
  build_and_check(*state, &grid[11]);
}
static void test_layer_relu2_no_mul(void **state) { build_and_check(*state, &grid[12]); }
static void test_layer_gelu_erf(void **state) { build_and_check(*state, &grid[13]); }

/* ---- the math path of the GEMMs, as NVRTC sees it -------------------------------------------- */

/* Compiles source to PTX for a virtual arch ("compute_80") with the templates' headers and the
 * library's options; returns the PTX (malloc'd). The rendered GEMM source only selects the path
 * (MJ_GEMM_MMA); the mma.sync instructions come from prelude.cuh, so the PTX is where their use
 * shows. */
static char *compile_ptx_for(const fixture *fx, const mj_gen *gen, const char *source,
                             const char *arch) {
  if (!fx->GetPTXSize || !fx->GetPTX)
    fail_msg("NVRTC lacks nvrtcGetPTX");
  int nh = 0;
  const mj_gen_file *h = mj_gen_headers(gen, &nh);
  const char *texts[16], *names[16];
  assert_true(nh <= 16);
  for (int i = 0; i < nh; i++) {
    texts[i] = h[i].text;
    names[i] = h[i].name;
  }
  char options[512];
  mj_gen_compile_options(arch, 0, options, sizeof options);
  const char *opts[16];
  int nopt = 0;
  for (char *tok = strtok(options, " "); tok && nopt < 16; tok = strtok(NULL, " "))
    opts[nopt++] = tok;
  void *prog = NULL;
  assert_int_equal(fx->nv.CreateProgram(&prog, source, "ptx_check.cu", nh, texts, names), 0);
  int r = fx->nv.CompileProgram(prog, nopt, opts);
  if (r != 0) {
    size_t n = 0;
    fx->nv.GetProgramLogSize(prog, &n);
    char *log = calloc(n + 1, 1);
    fx->nv.GetProgramLog(prog, log);
    fail_msg("PTX compile failed: %s", log);
  }
  size_t size = 0;
  assert_int_equal(fx->GetPTXSize(prog, &size), 0);
  char *ptx = calloc(size + 1, 1);
  assert_non_null(ptx);
  assert_int_equal(fx->GetPTX(prog, ptx), 0);
  fx->nv.DestroyProgram(&prog);
  return ptx;
}

static char *compile_ptx(const fixture *fx, const mj_gen *gen, const char *source) {
  return compile_ptx_for(fx, gen, source, "compute_80");
}

static void test_gemm_math_path(void **state) {
  fixture *fx = *state;
  require_nvrtc(fx);
  static const struct {
    moejit_dtype dtype;
    int exact;
    const char *mma; /* the instruction expected, or NULL for none */
  } paths[] = {
      {MOEJIT_BF16, 0, "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"},
      {MOEJIT_F16, 0, "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"},
      {MOEJIT_F32, 0, "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32"},
      {MOEJIT_F32, 1, NULL},
  };
  for (size_t p = 0; p < sizeof paths / sizeof paths[0]; p++) {
    layer_case c = grid[2];
    c.dtype = paths[p].dtype;
    c.options = paths[p].exact ? EXACT : 0;
    moejit_layer_desc d = desc_of(&c);
    mj_gemm_config cfg[MJ_MAX_GEMM_CONFIGS];
    int ncfg = mj_tune_heuristic(mj_rt_math(&d), "", cfg, MJ_MAX_GEMM_CONFIGS);
    mj_module_src *mods = NULL;
    int n = 0;
    mj_err err;
    int64_t compiles = fx->ctx[0]->compiles;
    moejit_status st = mj_rt_render_modules(fx->ctx[0], &d, cfg, ncfg, &mods, &n, &err);
    if (st != MOEJIT_OK)
      fail_msg("render %s: %s", mj_dtype_name(c.dtype), err.msg);
    /* Rendering alone compiles nothing. */
    for (int i = 0; i < n; i++)
      assert_null(mods[i].cubin.data);
    assert_int_equal(fx->ctx[0]->compiles, compiles);
    char *ptx = compile_ptx(fx, fx->ctx[0]->gen, mods[2].source); /* gemm1, first config */
    if (paths[p].mma) {
      assert_contains(ptx, paths[p].mma);
    } else {
      if (strstr(ptx, "mma.sync"))
        fail_msg("the exact f32 GEMM uses mma.sync");
      assert_contains(ptx, "fma.rn.f32");
    }
    free(ptx);
    mj_rt_modules_free(mods, n);
  }
}

/* ---- the synth template ---------------------------------------------------------------------- */

static void test_synth_compiles(void **state) {
  fixture *fx = *state;
  require_nvrtc(fx);
  mj_spec spec;
  memset(&spec, 0, sizeof spec);
  char *src = NULL;
  mj_err err;
  moejit_status st = mj_gen_render(fx->ctx[0]->gen, "synth", &spec, &src, NULL, &err);
  if (st != MOEJIT_OK)
    fail_msg("render synth: %s", err.msg);
  assert_true(strncmp(src, "// moejit: generated by templates/synth.lua\n// spec:", 52) == 0);
  assert_null(strstr(src, "#include <"));
  for (int a = 0; a < NARCH; a++) {
    mj_cubin cubin;
    st = mj_gen_compile(&fx->nv, fx->ctx[a]->gen, src, "synth", arches[a], 0, &cubin, &err);
    if (st != MOEJIT_OK)
      fail_msg("synth for %s: %s", arches[a], err.msg);
    check_cubin(&cubin, "synth");
    assert_true(cubin_has(&cubin, "moejit_fill_f32"));
    assert_true(cubin_has(&cubin, "moejit_fill_f16"));
    assert_true(cubin_has(&cubin, "moejit_fill_bf16"));
    mj_cubin_free(&cubin);
    assert_null(cubin.data);
  }
  free(src);
}

/* ---- failures, each at its layer ------------------------------------------------------------- */

/* A bad shape is refused by the descriptor check, before anything renders or compiles. */
static void test_bad_shape_rejected_before_rendering(void **state) {
  (void)state;
  moejit_layer_desc d = desc_of(&grid[0]);
  mj_err err;
  d.hidden = 4100;
  assert_int_equal(mj_rt_check_desc(&d, &err), MOEJIT_ERR_INVALID_ARG);
  assert_contains(err.msg, "hidden=4100");
  assert_contains(err.msg, "multiple of 8");

  /* Through the public API, on a fresh context: the plan fails with the detail, and NVRTC was not
   * even loaded. */
  moejit_ctx_options opts;
  moejit_ctx_options_init(&opts);
  opts.offline_arch = "sm_80";
  opts.cache_dir = "";
  moejit_ctx *ctx = NULL;
  assert_int_equal(moejit_create(&ctx, &opts), MOEJIT_OK);
  moejit_plan *plan = (moejit_plan *)&err;
  assert_int_equal(moejit_plan_create(ctx, &d, &plan), MOEJIT_ERR_INVALID_ARG);
  assert_null(plan);
  assert_contains(moejit_last_error(ctx), "hidden=4100");
  assert_null(ctx->nv.lib);

  /* The templates check again if the descriptor check is bypassed. */
  assert_int_equal(ctx->compiles, 0);
  mj_gemm_config cfg[MJ_MAX_GEMM_CONFIGS];
  int ncfg = mj_tune_heuristic(mj_rt_math(&d), "", cfg, MJ_MAX_GEMM_CONFIGS);
  mj_module_src *mods = (mj_module_src *)&err;
  int n = -1;
  assert_int_equal(mj_rt_render_modules(ctx, &d, cfg, ncfg, &mods, &n, &err), MOEJIT_ERR_TEMPLATE);
  assert_null(mods);
  assert_int_equal(n, 0);
  assert_contains(err.msg, "4100");
  assert_contains(err.msg, "templates/gemm.lua:");
  moejit_destroy(ctx);
}

/* The gemm spec of a tensor-core tile. */
static void mma_tile_spec(mj_spec *s, int bm, int bn, int bk, int wm, int wn) {
  memset(s, 0, sizeof *s);
  mj_spec_str(s, "dtype", "bf16");
  mj_spec_str(s, "stage", "gemm1");
  mj_spec_int(s, "hidden", 2880);
  mj_spec_int(s, "intermediate", 2880);
  mj_spec_int(s, "top_k", 4);
  mj_spec_num(s, "alpha", 1.702);
  mj_spec_num(s, "limit", 7.0);
  mj_spec_int(s, "bm", bm);
  mj_spec_int(s, "bn", bn);
  mj_spec_int(s, "bk", bk);
  mj_spec_int(s, "stages", 3);
  mj_spec_int(s, "wm", wm);
  mj_spec_int(s, "wn", wn);
}

static void test_bad_tile_is_a_template_error(void **state) {
  fixture *fx = *state;
  mj_gen *gen = fx->ctx[0]->gen;
  mj_spec spec;
  mj_err err;
  char *src = (char *)"sentinel";

  /* The control: a tile that splits renders. */
  mma_tile_spec(&spec, 64, 128, 32, 2, 2);
  assert_int_equal(mj_gen_render(gen, "gemm", &spec, &src, NULL, &err), MOEJIT_OK);
  free(src);

  mma_tile_spec(&spec, 48, 128, 32, 2, 2); /* 48 rows do not split into 2 warps of 16 */
  src = (char *)"sentinel";
  assert_int_equal(mj_gen_render(gen, "gemm", &spec, &src, NULL, &err), MOEJIT_ERR_TEMPLATE);
  assert_null(src);
  assert_contains(err.msg, "templates/gemm.lua:");
  assert_contains(err.msg, "48x128x32");
  assert_contains(err.msg, "2x2");

  mma_tile_spec(&spec, 256, 256, 32, 8, 8); /* 64 warps: 2048 threads */
  assert_int_equal(mj_gen_render(gen, "gemm", &spec, &src, NULL, &err), MOEJIT_ERR_TEMPLATE);
  assert_contains(err.msg, "2048 threads");

  /* The FFMA path: 5 outputs per thread do not divide 64 rows. */
  memset(&spec, 0, sizeof spec);
  mj_spec_str(&spec, "dtype", "f32");
  mj_spec_str(&spec, "stage", "gemm2");
  mj_spec_int(&spec, "hidden", 64);
  mj_spec_int(&spec, "intermediate", 96);
  mj_spec_int(&spec, "top_k", 2);
  mj_spec_num(&spec, "alpha", 1.702);
  mj_spec_num(&spec, "limit", 7.0);
  mj_spec_int(&spec, "bm", 64);
  mj_spec_int(&spec, "bn", 64);
  mj_spec_int(&spec, "bk", 16);
  mj_spec_int(&spec, "stages", 3);
  mj_spec_int(&spec, "tm", 5);
  mj_spec_int(&spec, "tn", 4);
  assert_int_equal(mj_gen_render(gen, "gemm", &spec, &src, NULL, &err), MOEJIT_ERR_TEMPLATE);
  assert_contains(err.msg, "64x64");
  assert_contains(err.msg, "5x4");
}

/* The sm_90a table of a fused 16-bit layer: wgmma modules (moejit_wgmma, and moejit_gather in
 * GEMM1's) beside the streamed one-token tile and its split-K combine, all compiled by NVRTC. */
static void wgmma_layer(fixture *fx, const layer_case *c) {
  require_nvrtc(fx);
  moejit_layer_desc d = desc_of(c);
  mj_err err;
  int wg = 0, streamed = 0;
  mj_gemm_config cfg[MJ_MAX_GEMM_CONFIGS];
  int ncfg = mj_tune_heuristic(mj_rt_math(&d), arches[1], cfg, MJ_MAX_GEMM_CONFIGS);
  mj_module_src *mods = NULL;
  int n = 0;
  moejit_status st = mj_rt_build_modules(fx->ctx[1], &d, cfg, ncfg, arches[1], 0, &mods, &n, &err);
  if (st != MOEJIT_OK)
    fail_msg("%s: %s: %s", c->name, moejit_status_name(st), err.msg);
  for (int i = 0; i < ncfg; i++) {
    const mj_module_src *g1 = &mods[2 + 2 * i], *g2 = &mods[3 + 2 * i];
    check_cubin(&g1->cubin, g1->name);
    check_cubin(&g2->cubin, g2->name);
    check_contract(fx, g1);
    check_contract(fx, g2);
    if (cfg[i].kind == MJ_GEMM_STREAM) {
      streamed++;
      assert_contains(g1->source, "#define MJ_GEMM_PATH MJ_PATH_STREAM\n");
      assert_contains(g2->source, "#define MJ_GEMM_PATH MJ_PATH_STREAM\n");
    }
    if (cfg[i].kind != MJ_GEMM_WGMMA)
      continue;
    wg++;
    assert_string_equal(g1->template_name, "wgmma");
    assert_true(cubin_has(&g1->cubin, "moejit_wgmma"));
    assert_true(cubin_has(&g1->cubin, "moejit_gather"));
    assert_true(cubin_has(&g2->cubin, "moejit_wgmma"));
    assert_false(cubin_has(&g2->cubin, "moejit_gather"));
  }
  assert_true(wg >= 2);
  assert_int_equal(streamed, 1);
  mj_rt_modules_free(mods, n);
}

static void test_wgmma_layers(void **state) {
  fixture *fx = *state;
  wgmma_layer(fx, &grid[0]); /* gpt-oss-20b bf16 */
  wgmma_layer(fx, &grid[1]); /* f16, f32 biases, expert map, logits */
  layer_case odd = {"odd f16 weight on input",
                    200,
                    136,
                    5,
                    2,
                    MOEJIT_F16,
                    MOEJIT_I32,
                    MOEJIT_F32,
                    MOEJIT_ROUTING_TOPK,
                    WEIGHT_IN,
                    MOEJIT_ACT_SWIGLU_OAI};
  wgmma_layer(fx, &odd);      /* N and K not multiples of 64 */
  wgmma_layer(fx, &grid[10]); /* GELU-tanh fused in the epilogue, no biases */
  layer_case silu = grid[13];
  silu.act = MOEJIT_ACT_SILU_MUL;
  wgmma_layer(fx, &silu); /* SiLU-and-mul, interleaved */
}

/* wgmma specs outside what the kernel takes are template errors naming the key. */
/* MXFP4 weights on the wgmma GEMMs (named configurations; their table has none): both GEMMs of
 * gpt-oss-20b and of a layer with tails compile for sm_90a with MJ_WGMMA_MXFP4, take w and scales
 * after their dense parameters, and bind them. */
static void test_wgmma_mxfp4(void **state) {
  fixture *fx = *state;
  require_nvrtc(fx);
  static const char *const names[] = {"wg_m64n128s3c2", "wg_m64n128s3c2ch", "wg_m128n128s5pp",
                                      "wg_m128n192s4c1", "wg_m128n240s4c1"};
  enum { N = sizeof names / sizeof names[0] };
  static const int shapes[][2] = {{2880, 2880}, {160, 96}}; /* H, I: K tails of 32 */
  for (int l = 0; l < 2; l++) {
    layer_case c = grid[6]; /* gpt-oss-20b mxfp4 */
    c.hidden = shapes[l][0];
    c.intermediate = shapes[l][1];
    moejit_layer_desc d = desc_of(&c);
    mj_gemm_config cfg[N];
    mj_math math;
    for (int i = 0; i < N; i++) {
      assert_int_equal(mj_tune_config_parse(names[i], &cfg[i], &math), 0);
      assert_true(mj_tune_math_takes(MJ_MATH_MXFP4, math, &cfg[i]));
    }
    mj_module_src *mods = NULL;
    int n = 0;
    mj_err err;
    moejit_status st = mj_rt_build_modules(fx->ctx[1], &d, cfg, N, arches[1], 0, &mods, &n, &err);
    if (st != MOEJIT_OK)
      fail_msg("%s: %s", moejit_status_name(st), err.msg);
    for (int i = 0; i < N; i++)
      for (int g = 0; g < 2; g++) {
        const mj_module_src *m = &mods[2 + 2 * i + g];
        assert_string_equal(m->template_name, "wgmma");
        assert_contains(m->source, "#define MJ_WGMMA_MXFP4 1");
        check_cubin(&m->cubin, m->name);
        check_contract(fx, m);
        assert_true(cubin_has(&m->cubin, "moejit_wgmma"));
        const mj_kernel_meta *k = &m->meta.kernel[0];
        assert_string_equal(k->params[k->nparams - 2], "w");
        assert_string_equal(k->params[k->nparams - 1], "scales");
      }
    mj_rt_modules_free(mods, n);
  }
}

static void test_bad_wgmma_specs(void **state) {
  fixture *fx = *state;
  mj_gen *gen = fx->ctx[1]->gen;
  static const struct {
    const char *key, *str;
    int64_t v;
    const char *needle;
  } bad[] = {
      {"dtype", "f32", 0, "f16 or bf16"},
      {"stage", "gemm3", 0, "gemm1 or gemm2"},
      {"bm", NULL, 96, "64 or 128"},
      {"bn", NULL, 100, "multiple of 16"},
      {"ctas", NULL, 2, "ctas"}, /* two blocks per SM need bm = 64 */
      {"pingpong", NULL, 2, "pingpong"},
      {"a_rows", NULL, 48, "a_rows"}, /* does not divide bm = 128 */
  };
  for (size_t i = 0; i <= sizeof bad / sizeof bad[0]; i++) {
    mj_spec spec;
    mj_err err;
    char *src = NULL;
    memset(&spec, 0, sizeof spec);
    const int which = (int)i - 1; /* -1: the control, a spec that renders */
    mj_spec_str(&spec, "dtype", which == 0 ? bad[0].str : "bf16");
    mj_spec_str(&spec, "stage", which == 1 ? bad[1].str : "gemm2");
    mj_spec_int(&spec, "hidden", 2880);
    mj_spec_int(&spec, "intermediate", 2880);
    mj_spec_int(&spec, "top_k", 4);
    mj_spec_num(&spec, "alpha", 1.702);
    mj_spec_num(&spec, "limit", 7.0);
    mj_spec_int(&spec, "bm", which == 2 ? bad[2].v : 128);
    mj_spec_int(&spec, "bn", which == 3 ? bad[3].v : 192);
    mj_spec_int(&spec, "stages", 4);
    if (which == 4)
      mj_spec_int(&spec, "ctas", bad[4].v);
    if (which == 5)
      mj_spec_int(&spec, "pingpong", bad[5].v);
    if (which == 6)
      mj_spec_int(&spec, "a_rows", bad[6].v);
    moejit_status st = mj_gen_render(gen, "wgmma", &spec, &src, NULL, &err);
    if (which < 0) {
      assert_int_equal(st, MOEJIT_OK);
      free(src);
      continue;
    }
    assert_int_equal(st, MOEJIT_ERR_TEMPLATE);
    assert_null(src);
    assert_contains(err.msg, "templates/wgmma.lua:");
    assert_contains(err.msg, bad[which].needle);
  }
}

static void test_broken_source_is_a_compile_error(void **state) {
  fixture *fx = *state;
  require_nvrtc(fx);
  const mj_gen *gen = fx->ctx[0]->gen;
  mj_cubin cubin;
  mj_err err;

  /* The control: a minimal kernel compiles. */
  static const char good[] = "#include \"prelude.cuh\"\n"
                             "extern \"C\" __global__ void moejit_ok(float *p) { p[0] = 1.0f; }\n";
  assert_int_equal(mj_gen_compile(&fx->nv, gen, good, "good", "sm_80", 0, &cubin, &err), MOEJIT_OK);
  check_cubin(&cubin, "good");
  assert_true(cubin_has(&cubin, "moejit_ok"));
  mj_cubin_free(&cubin);

  static const char broken[] = "extern \"C\" __global__ void moejit_broken(float *p) {\n"
                               "  p[0] = undeclared_value;\n"
                               "}\n";
  err.msg[0] = '\0';
  assert_int_equal(mj_gen_compile(&fx->nv, gen, broken, "broken", "sm_90a", 0, &cubin, &err),
                   MOEJIT_ERR_COMPILE);
  assert_contains(err.msg, "error");
  assert_contains(err.msg, "undeclared_value");
  assert_contains(err.msg, "broken.cu");
  assert_contains(err.msg, "sm_90a");
  assert_null(cubin.data);
  assert_int_equal(cubin.size, 0);
  assert_non_null(cubin.log);
  assert_contains(cubin.log, "error");
  mj_cubin_free(&cubin);

  /* A header that is not among the templates' is not found. */
  static const char outside[] = "#include \"mj_no_such_header.cuh\"\n__global__ void k() {}\n";
  assert_int_equal(mj_gen_compile(&fx->nv, gen, outside, "outside", "sm_80", 0, &cubin, &err),
                   MOEJIT_ERR_COMPILE);
  assert_contains(err.msg, "mj_no_such_header.cuh");
  mj_cubin_free(&cubin);
}

/* ---- the decode pieces: one-launch routing, split-K GEMM2, programmatic dependent launch ----- */

/* Changes the value of a string entry already in the spec (keys keep their place). */
static void spec_set_str(mj_spec *s, const char *key, const char *v) {
  for (int i = 0; i < s->count; i++)
    if (!strcmp(s->e[i].key, key)) {
      snprintf(s->e[i].s, sizeof s->e[i].s, "%s", v);
      return;
    }
  fail_msg("spec has no key %s", key);
}

/* Renders a spec that must render; returns the source (malloc'd). */
static char *render_ok(fixture *fx, const char *name, const mj_spec *spec) {
  char *src = NULL;
  mj_err err;
  moejit_status st = mj_gen_render(fx->ctx[0]->gen, name, spec, &src, NULL, &err);
  if (st != MOEJIT_OK)
    fail_msg("render %s: %s: %s", name, moejit_status_name(st), err.msg);
  assert_null(strstr(src, "#include <"));
  return src;
}

/* render_ok, with the launch contract into *meta. */
static char *render_meta(fixture *fx, const char *name, const mj_spec *spec, mj_module_meta *meta) {
  char *src = NULL;
  mj_err err;
  moejit_status st = mj_gen_render(fx->ctx[0]->gen, name, spec, &src, meta, &err);
  if (st != MOEJIT_OK)
    fail_msg("render %s: %s: %s", name, moejit_status_name(st), err.msg);
  return src;
}

/* Renders a spec that must be refused, and checks that the message names what is wrong. */
static void render_refused(fixture *fx, const char *name, const mj_spec *spec, const char *needle) {
  char *src = (char *)"sentinel";
  mj_err err;
  err.msg[0] = '\0';
  assert_int_equal(mj_gen_render(fx->ctx[0]->gen, name, spec, &src, NULL, &err),
                   MOEJIT_ERR_TEMPLATE);
  assert_null(src);
  assert_containsf(err.msg, "templates/%s.lua:", name);
  assert_contains(err.msg, needle);
}

/* Compiles src for both arches and checks that each cubin holds the named entry points. */
static void compile_both(fixture *fx, const char *src, const char *what,
                         const char *const *entries) {
  require_nvrtc(fx);
  for (int a = 0; a < NARCH; a++) {
    mj_cubin cubin;
    mj_err err;
    moejit_status st =
        mj_gen_compile(&fx->nv, fx->ctx[a]->gen, src, what, arches[a], 0, &cubin, &err);
    if (st != MOEJIT_OK)
      fail_msg("%s for %s: %s", what, arches[a], err.msg);
    check_cubin(&cubin, what);
    for (const char *const *e = entries; *e; e++)
      if (!cubin_has(&cubin, *e))
        fail_msg("%s for %s: no entry point %s", what, arches[a], *e);
    mj_cubin_free(&cubin);
  }
}

/* Programmatic dependent launch shows in the PTX for sm_90 only, and only when asked for. */
static void check_pdl_ptx(fixture *fx, const char *src, int pdl) {
  static const char *const virt[NARCH] = {"compute_80", "compute_90a"};
  for (int a = 0; a < NARCH; a++) {
    char *ptx = compile_ptx_for(fx, fx->ctx[0]->gen, src, virt[a]);
    int want = pdl && a == 1;
    if (!!strstr(ptx, "griddepcontrol.wait") != want ||
        !!strstr(ptx, "griddepcontrol.launch_dependents") != want)
      fail_msg("pdl=%d on %s: griddepcontrol %s expected", pdl, virt[a], want ? "is" : "is not");
    free(ptx);
  }
}

static void route_small_spec(mj_spec *s, int experts, int global, const char *ids,
                             const char *weights, const char *routing, int capped) {
  memset(s, 0, sizeof *s);
  mj_spec_int(s, "experts", experts);
  mj_spec_int(s, "global_experts", global);
  mj_spec_int(s, "mapped", global > experts);
  mj_spec_int(s, "capped", capped);
  mj_spec_int(s, "top_k", 4);
  mj_spec_int(s, "chunk", 256);
  mj_spec_str(s, "ids", ids);
  mj_spec_str(s, "weights", weights);
  mj_spec_str(s, "routing", routing);
  if (!strcmp(routing, "logits"))
    mj_spec_str(s, "logits", "bf16");
}

/* moejit_route_small is in every route module, at the edges of its shared memory (1024 local
 * experts) and of its forms; with logits routing moejit_route_small_logits joins it. */
static void test_route_small_variants(void **state) {
  fixture *fx = *state;
  require_nvrtc(fx);
  static const struct {
    int experts, global;
    const char *ids, *weights, *routing;
    int capped, pdl;
  } cases[] = {
      {1024, 1024, "i64", "bf16", "topk", 1, 1},  {1000, 1024, "i32", "f32", "dense", 0, 0},
      {1, 1, "i32", "f16", "dense", 1, 0},        {128, 256, "i64", "f16", "logits", 1, 1},
      {1024, 1024, "i32", "f32", "logits", 0, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    mj_spec spec;
    route_small_spec(&spec, cases[i].experts, cases[i].global, cases[i].ids, cases[i].weights,
                     cases[i].routing, cases[i].capped);
    if (cases[i].pdl)
      mj_spec_int(&spec, "pdl", 1);
    char *src = render_ok(fx, "route", &spec);
    int logits = !strcmp(cases[i].routing, "logits");
    const char *const plain[] = {"moejit_route_count", "moejit_route_scan", "moejit_route_scatter",
                                 "moejit_route_small", NULL};
    const char *const with_logits[] = {"moejit_route_topk", "moejit_route_small",
                                       "moejit_route_small_logits", NULL};
    compile_both(fx, src, "route_small", logits ? with_logits : plain);
    assert_int_equal(strstr(src, "#define MJ_PDL 1") != NULL, cases[i].pdl);
    if (i < 2)
      check_pdl_ptx(fx, src, cases[i].pdl);
    free(src);
  }
  /* pdl is 0 or 1 */
  mj_spec spec;
  route_small_spec(&spec, 32, 32, "i32", "f32", "topk", 0);
  mj_spec_int(&spec, "pdl", 2);
  render_refused(fx, "route", &spec, "spec.pdl=2");
}

/* The gemm spec of GEMM2 for a math path: bf16 tensor cores, f32 TF32 or exact f32 FFMA, or bf16
 * streamed (which takes no warp or thread layout); k is its K, the layer's intermediate size. */
static void down_spec(mj_spec *s, const char *math, int k, int bk) {
  int ffma = !strcmp(math, "ffma");
  memset(s, 0, sizeof *s);
  mj_spec_str(s, "dtype", strcmp(math, "mma") && strcmp(math, "stream") ? "f32" : "bf16");
  mj_spec_str(s, "math", math);
  mj_spec_str(s, "stage", "gemm2");
  mj_spec_int(s, "hidden", 2880);
  mj_spec_int(s, "intermediate", k);
  mj_spec_int(s, "top_k", 4);
  mj_spec_num(s, "alpha", 1.702);
  mj_spec_num(s, "limit", 7.0);
  mj_spec_int(s, "bm", 16);
  mj_spec_int(s, "bn", 128);
  mj_spec_int(s, "bk", bk);
  mj_spec_int(s, "stages", 4);
  if (!strcmp(math, "stream"))
    return;
  mj_spec_int(s, ffma ? "tm" : "wm", ffma ? 1 : 1);
  mj_spec_int(s, ffma ? "tn" : "wn", ffma ? 8 : 4);
}

/* The combine spec of a GPT-OSS layer (H=2880, top-4). */
static void combine_spec(mj_spec *s, const char *dtype) {
  memset(s, 0, sizeof *s);
  mj_spec_str(s, "dtype", dtype);
  mj_spec_int(s, "hidden", 2880);
  mj_spec_int(s, "top_k", 4);
}

/* Split-K GEMM2 on every math path: the contract's splits (gridDim.z) and the kernel reads
 * split_stride, the distance of the partial arrays; without splits (or with splits=1) it does
 * not. */
static void test_gemm_split_k(void **state) {
  fixture *fx = *state;
  require_nvrtc(fx);
  static const struct {
    const char *math;
    int splits, pdl;
  } cases[] = {{"mma", 2, 0}, {"mma", 4, 1}, {"mma", 7, 0}, {"tf32", 3, 0}, {"ffma", 5, 1}};
  const char *const entries[] = {"moejit_gemm", NULL};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    mj_spec spec;
    down_spec(&spec, cases[i].math, 2880, 32);
    mj_spec_int(&spec, "splits", cases[i].splits);
    if (cases[i].pdl)
      mj_spec_int(&spec, "pdl", 1);
    mj_module_meta meta;
    char *src = render_meta(fx, "gemm", &spec, &meta);
    assert_containsf(src, "#define MJ_GEMM_SPLITS %d\n", cases[i].splits);
    assert_int_equal(meta.kernel[0].splits, cases[i].splits);
    compile_both(fx, src, "gemm_split", entries);
    char *ptx = compile_ptx(fx, fx->ctx[0]->gen, src);
    assert_contains(ptx, "[moejit_gemm_param_12]"); /* split_stride, a long long, is read */
    free(ptx);
    if (i == 1)
      check_pdl_ptx(fx, src, 1);
    free(src);
  }
  /* splits=1 and pdl=0 said out loud render what leaving them out renders, but for the spec line */
  mj_spec spec;
  mj_module_meta meta;
  down_spec(&spec, "mma", 2880, 32);
  char *plain = render_meta(fx, "gemm", &spec, &meta);
  assert_int_equal(meta.kernel[0].splits, 1);
  mj_spec_int(&spec, "splits", 1);
  mj_spec_int(&spec, "pdl", 0);
  char *explicit_ = render_ok(fx, "gemm", &spec);
  const char *a = strchr(strstr(plain, "// spec:"), '\n'),
             *b = strchr(strstr(explicit_, "// spec:"), '\n');
  assert_string_equal(a, b);
  assert_contains(explicit_, " splits=1 pdl=0\n");
  char *ptx = compile_ptx(fx, fx->ctx[0]->gen, plain);
  assert_null(strstr(ptx, "[moejit_gemm_param_12]")); /* split_stride is never read */
  free(ptx);
  check_pdl_ptx(fx, plain, 0);
  free(plain);
  free(explicit_);
}

/* The gemm spec of a streamed GEMM2 tile. */
static void streamed_spec(mj_spec *s, const char *dtype, int bm, int bn, int stages) {
  down_spec(s, "stream", 2880, 8);
  mj_spec_str(s, "dtype", dtype);
  mj_spec_int(s, "bm", bm);
  mj_spec_int(s, "bn", bn);
  mj_spec_int(s, "stages", stages);
}

/* The streamed path on every dtype, both GEMMs, split or not, self-routed: it compiles
 * for both arches, streams its weights with non-caching 16-byte loads and uses no tensor core;
 * tiles it cannot cut into 128 threads are template errors. */
static void test_gemm_streamed(void **state) {
  fixture *fx = *state;
  require_nvrtc(fx);
  static const struct {
    const char *dtype, *stage, *activation;
    int bm, bn, stages, splits;
  } cases[] = {{"bf16", "gemm1", "swiglu", 1, 64, 6, 1}, {"bf16", "gemm2", NULL, 1, 64, 6, 2},
               {"f16", "gemm1", "none", 4, 128, 8, 1},   {"f16", "gemm2", NULL, 8, 32, 2, 3},
               {"f32", "gemm1", "swiglu", 2, 32, 16, 1}, {"f32", "gemm2", NULL, 3, 64, 4, 2}};
  const char *const entries[] = {"moejit_gemm", NULL};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    mj_spec spec;
    streamed_spec(&spec, cases[i].dtype, cases[i].bm, cases[i].bn, cases[i].stages);
    spec_set_str(&spec, "stage", cases[i].stage);
    if (cases[i].activation)
      mj_spec_str(&spec, "activation", cases[i].activation);
    mj_spec_int(&spec, "pdl", 1);
    if (cases[i].splits > 1)
      mj_spec_int(&spec, "splits", cases[i].splits);
    if (cases[i].activation) {
      mj_spec_str(&spec, "self_route", i % 2 ? "i32" : "i64");
      mj_spec_int(&spec, "experts", 32);
    }
    mj_module_meta meta;
    char *src = render_meta(fx, "gemm", &spec, &meta);
    assert_contains(src, "#define MJ_GEMM_PATH MJ_PATH_STREAM\n");
    assert_int_equal(meta.kernel[0].threads, 128);
    assert_int_equal(meta.kernel[0].smem, 0); /* weights in registers */
    assert_contains(src, "static constexpr int kThreads = 128;");
    assert_null(strstr(src, "kWM"));
    assert_null(strstr(src, "kTM"));
    compile_both(fx, src, "gemm_streamed", entries);
    char *ptx = compile_ptx_for(fx, fx->ctx[0]->gen, src, "compute_90a");
    assert_contains(ptx, "ld.global.nc.L1::no_allocate.v4.u32");
    assert_contains(ptx, "griddepcontrol.wait");
    assert_null(strstr(ptx, "mma.sync"));
    assert_null(strstr(ptx, "cp.async"));
    free(ptx);
    free(src);
  }
  static const struct {
    const char *dtype;
    int bm, bn, stages;
    const char *needle;
  } bad[] = {{"bf16", 9, 64, 8, "at most 8 rows"},
             {"bf16", 1, 48, 8, "16-byte column pieces of 48 columns"},
             {"f32", 1, 20, 8, "16-byte column pieces of 20 columns"},
             {"bf16", 1, 64, 17, "spec.stages=17"}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    mj_spec spec;
    streamed_spec(&spec, bad[i].dtype, bad[i].bm, bad[i].bn, bad[i].stages);
    render_refused(fx, "gemm", &spec, bad[i].needle);
  }
}

/* combine with splits sums each slot's partials (it reads split_stride only then); the unfused
 * activation kernel comes along. */
static void test_combine_splits(void **state) {
  fixture *fx = *state;
  require_nvrtc(fx);
  for (int unfused = 0; unfused < 2; unfused++) {
    mj_spec spec;
    combine_spec(&spec, unfused ? "f16" : "bf16");
    if (unfused) {
      mj_spec_int(&spec, "intermediate", 2880);
      mj_spec_int(&spec, "experts", 32);
      mj_spec_num(&spec, "alpha", 1.702);
      mj_spec_num(&spec, "limit", 7.0);
    }
    char *plain = render_ok(fx, "combine", &spec);
    mj_spec_int(&spec, "splits", 3);
    mj_spec_int(&spec, "pdl", 1);
    char *src = render_ok(fx, "combine", &spec);
    assert_contains(src, "#define MJ_COMBINE_SPLITS 3\n");
    assert_contains(src, "#define MJ_PDL 1\n");
    const char *const entries[] = {"moejit_combine", unfused ? "moejit_activation" : NULL, NULL};
    compile_both(fx, src, "combine_split", entries);
    char *ptx = compile_ptx(fx, fx->ctx[0]->gen, src);
    assert_contains(ptx, "[moejit_combine_param_3]"); /* long long split_stride, read */
    free(ptx);
    ptx = compile_ptx(fx, fx->ctx[0]->gen, plain);
    assert_null(strstr(ptx, "[moejit_combine_param_3]"));
    free(ptx);
    check_pdl_ptx(fx, src, 1);
    check_pdl_ptx(fx, plain, 0);
    free(plain);
    free(src);
  }
}

/* Bad splits and pdl values are refused by the templates, naming the key and the value. */
static void test_bad_split_specs(void **state) {
  fixture *fx = *state;
  mj_spec spec;
  down_spec(&spec, "mma", 2880, 32);
  mj_spec_int(&spec, "splits", 0);
  render_refused(fx, "gemm", &spec, "spec.splits=0");
  down_spec(&spec, "mma", 2880, 32);
  mj_spec_int(&spec, "splits", 65);
  render_refused(fx, "gemm", &spec, "spec.splits=65");
  down_spec(&spec, "mma", 2880, 32);
  mj_spec_str(&spec, "splits", "2");
  render_refused(fx, "gemm", &spec, "spec.splits must be an integer");

  /* split-K is GEMM2's only: GEMM1 (fused or raw) has no partial sums to add up */
  mma_tile_spec(&spec, 64, 128, 32, 2, 2);
  mj_spec_int(&spec, "splits", 2);
  render_refused(fx, "gemm", &spec, "spec.splits=2 needs stage gemm2");
  mma_tile_spec(&spec, 64, 128, 32, 2, 2);
  mj_spec_str(&spec, "activation", "none");
  mj_spec_int(&spec, "splits", 3);
  render_refused(fx, "gemm", &spec, "spec.splits=3 needs stage gemm2");

  /* 64 in steps of 32 cut three ways would leave the third empty: the contract says two splits
   * of 32, which the source builds */
  mj_module_meta meta;
  down_spec(&spec, "mma", 64, 32);
  mj_spec_int(&spec, "splits", 3);
  char *src = render_meta(fx, "gemm", &spec, &meta);
  assert_int_equal(meta.kernel[0].splits, 2);
  assert_contains(src, "#define MJ_GEMM_SPLITS 2\n");
  assert_contains(src, "static constexpr int kKSplit = 32;");
  free(src);

  down_spec(&spec, "mma", 2880, 32);
  mj_spec_int(&spec, "pdl", 2);
  render_refused(fx, "gemm", &spec, "spec.pdl=2");

  combine_spec(&spec, "bf16");
  mj_spec_int(&spec, "splits", 0);
  render_refused(fx, "combine", &spec, "spec.splits=0");
  combine_spec(&spec, "bf16");
  mj_spec_int(&spec, "pdl", -1);
  render_refused(fx, "combine", &spec, "spec.pdl=-1");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bad_shape_rejected_before_rendering),
      cmocka_unit_test(test_bad_tile_is_a_template_error),
      cmocka_unit_test(test_broken_source_is_a_compile_error),
      cmocka_unit_test(test_synth_compiles),
      cmocka_unit_test(test_gemm_math_path),
      cmocka_unit_test(test_route_small_variants),
      cmocka_unit_test(test_gemm_split_k),
      cmocka_unit_test(test_gemm_streamed),
      cmocka_unit_test(test_combine_splits),
      cmocka_unit_test(test_bad_split_specs),
      cmocka_unit_test(test_wgmma_layers),
      cmocka_unit_test(test_bad_wgmma_specs),
      cmocka_unit_test(test_wgmma_mxfp4),
      cmocka_unit_test(test_layer_gpt_oss_20b_bf16),
      cmocka_unit_test(test_layer_gpt_oss_120b_f16),
      cmocka_unit_test(test_layer_small_f32_dense),
      cmocka_unit_test(test_layer_tiny_f32_i64_dense),
      cmocka_unit_test(test_layer_odd_bf16_dense),
      cmocka_unit_test(test_layer_wide_f16_i64),
      cmocka_unit_test(test_layer_gpt_oss_20b_mxfp4),
      cmocka_unit_test(test_layer_gpt_oss_120b_mxfp4_f16),
      cmocka_unit_test(test_layer_small_mxfp4_logits),
      cmocka_unit_test(test_layer_mixtral_like_silu_halves),
      cmocka_unit_test(test_layer_gelu_tanh),
      cmocka_unit_test(test_layer_swiglu_step_up_gate_mxfp4),
      cmocka_unit_test(test_layer_relu2_no_mul),
      cmocka_unit_test(test_layer_gelu_erf),
  };
  return cmocka_run_group_tests_name("gen_templates", tests, group_setup, group_teardown);
}
