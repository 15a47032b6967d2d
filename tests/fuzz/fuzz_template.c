/* fuzz_template.c: template rendering. The input picks a layer (shape, dtype, routing, fusing)
 * and one configuration of its math's search space; every module renders, or the layer is
 * refused as an invalid argument: a template never fails on a layer the API accepts. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime.h"
#include "tune/heuristic.h"

static moejit_ctx *ctx;

static uint32_t take(const uint8_t **p, const uint8_t *end, int bytes) {
  uint32_t v = 0;
  for (int i = 0; i < bytes; i++)
    v = v << 8 | (*p < end ? *(*p)++ : 0);
  return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!ctx) {
    moejit_ctx_options o;
    moejit_ctx_options_init(&o);
    o.offline_arch = "sm_90a";
    o.cache_dir = "";
    if (moejit_create(&ctx, &o) != MOEJIT_OK)
      abort();
  }
  const uint8_t *p = data, *end = data + size;
  moejit_layer_desc d;
  moejit_layer_desc_init(&d);
  d.hidden = 8 * (1 + (int64_t)(take(&p, end, 2) % 1024));
  d.intermediate = 8 * (1 + (int64_t)(take(&p, end, 2) % 1024));
  d.experts = 1 + take(&p, end, 2) % 1024;
  d.top_k = 1 + take(&p, end, 1) % 32;
  d.max_tokens = 1 + take(&p, end, 3) % 65536;
  uint32_t bits = take(&p, end, 1);
  d.dtype = (moejit_dtype)(bits % 3);
  d.ids_dtype = bits & 4 ? MOEJIT_I64 : MOEJIT_I32;
  d.routing = (moejit_routing)((bits >> 3) % 3);
  d.unfused = (bits >> 5) & 1;
  d.exact_f32 = (bits >> 6) & 1;
  d.global_experts = bits >> 7 ? d.experts + take(&p, end, 1) % 64 : 0;
  mj_err err;
  if (mj_rt_check_desc(&d, &err) != MOEJIT_OK)
    return 0;
  mj_gemm_config space[2 * MJ_MAX_GEMM_CONFIGS];
  int n = mj_tune_search_space(mj_rt_math(&d), d.unfused ? "" : "sm_90a", NULL, NULL, space,
                               2 * MJ_MAX_GEMM_CONFIGS);
  if (n <= 0)
    __builtin_trap();
  const mj_gemm_config *c = &space[take(&p, end, 2) % (uint32_t)n];
  mj_module_src *mods = NULL;
  int nmods = 0;
  moejit_status st = mj_rt_render_modules(ctx, &d, c, 1, &mods, &nmods, &err);
  if (st != MOEJIT_OK && st != MOEJIT_ERR_INVALID_ARG)
    __builtin_trap();
  mj_rt_modules_free(mods, nmods);
  return 0;
}
