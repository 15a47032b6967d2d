/* embed.c: moejit embedded as an inference engine would: one context, one plan per layer shape,
 * the engine's own device memory, stream and workspace, and a forward per batch.
 *
 * The engine here takes device memory straight from the CUDA driver (loaded with dlopen so the
 * example builds without a toolkit); a real engine passes the pointers its allocator owns.
 * Without a GPU it says so and exits 0. */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "moejit.h"

/* The few driver calls the "engine" needs for its own memory. */
typedef int (*mem_alloc_fn)(unsigned long long *p, size_t bytes);
typedef int (*mem_free_fn)(unsigned long long p);
typedef int (*memcpy_htod_fn)(unsigned long long dst, const void *src, size_t bytes);
typedef int (*memcpy_dtoh_fn)(void *dst, unsigned long long src, size_t bytes);
typedef int (*ctx_retain_fn)(void **ctx, int dev);
typedef int (*ctx_set_fn)(void *ctx);

static void print_log(void *user, moejit_log_level level, const char *msg) {
  (void)user;
  if (level >= MOEJIT_LOG_INFO)
    fprintf(stderr, "[moejit] %s\n", msg);
}

static uint16_t bf16(float f) { /* round to nearest even */
  union {
    float f;
    uint32_t u;
  } v = {f};
  return (uint16_t)((v.u + 0x7FFF + ((v.u >> 16) & 1)) >> 16);
}

int main(void) {
  /* 1. A context: loads the driver and NVRTC lazily, builds the template sandbox. */
  moejit_ctx_options opts;
  moejit_ctx_options_init(&opts);
  opts.log = print_log;
  moejit_ctx *ctx = NULL;
  moejit_status st = moejit_create(&ctx, &opts);
  if (st == MOEJIT_ERR_NO_DEVICE) {
    printf("embed: no GPU found; nothing to run\n");
    return 0;
  }
  if (st != MOEJIT_OK) {
    fprintf(stderr, "embed: moejit_create: %s\n", moejit_status_string(st));
    return 1;
  }

  /* 2. A plan for the layer shape: every compile happens here, once. */
  moejit_layer_desc desc;
  moejit_layer_desc_init(&desc); /* bf16, int32 ids, f32 top-k weights, alpha 1.702, limit 7 */
  desc.hidden = 256;
  desc.intermediate = 192;
  desc.experts = 8;
  desc.top_k = 2;
  desc.max_tokens = 64;
  moejit_plan *plan = NULL;
  if ((st = moejit_plan_create(ctx, &desc, &plan)) != MOEJIT_OK) {
    fprintf(stderr, "embed: plan: %s: %s\n", moejit_status_name(st), moejit_last_error(ctx));
    moejit_destroy(ctx);
    return 1;
  }

  /* 3. The engine's buffers. */
  void *cuda = dlopen("libcuda.so.1", RTLD_NOW);
  mem_alloc_fn mem_alloc = (mem_alloc_fn)dlsym(cuda, "cuMemAlloc_v2");
  mem_free_fn mem_free = (mem_free_fn)dlsym(cuda, "cuMemFree_v2");
  memcpy_htod_fn htod = (memcpy_htod_fn)dlsym(cuda, "cuMemcpyHtoD_v2");
  memcpy_dtoh_fn dtoh = (memcpy_dtoh_fn)dlsym(cuda, "cuMemcpyDtoH_v2");
  ctx_retain_fn retain = (ctx_retain_fn)dlsym(cuda, "cuDevicePrimaryCtxRetain");
  ctx_set_fn set_current = (ctx_set_fn)dlsym(cuda, "cuCtxSetCurrent");
  void *cu_ctx = NULL;
  retain(&cu_ctx, 0);
  set_current(cu_ctx);

  const int64_t T = 64, H = desc.hidden, I = desc.intermediate, E = desc.experts, K = desc.top_k;
  size_t n_w1 = (size_t)(E * H * 2 * I), n_w2 = (size_t)(E * I * H);
  uint16_t *host = malloc((n_w1 + n_w2 + (size_t)(E * 3 * H) + (size_t)(T * H)) * 2);
  for (size_t i = 0; i < n_w1 + n_w2 + (size_t)(E * 3 * H) + (size_t)(T * H); i++)
    host[i] = bf16((float)((i * 2654435761u) % 1000) / 5000.0f - 0.1f);
  int32_t ids[64 * 2];
  float weights[64 * 2];
  for (int t = 0; t < T; t++)
    for (int k = 0; k < K; k++) {
      ids[t * K + k] = (t + 3 * k) % (int)E;
      weights[t * K + k] = k == 0 ? 0.7f : 0.3f;
    }
  unsigned long long x, w1, b1, w2, b2, d_ids, d_w, y, ws;
  size_t ws_bytes = 0;
  moejit_workspace_size(plan, T, &ws_bytes);
  mem_alloc(&w1, n_w1 * 2);
  mem_alloc(&w2, n_w2 * 2);
  mem_alloc(&b1, (size_t)(E * 2 * I) * 2);
  mem_alloc(&b2, (size_t)(E * H) * 2);
  mem_alloc(&x, (size_t)(T * H) * 2);
  mem_alloc(&y, (size_t)(T * H) * 2);
  mem_alloc(&d_ids, sizeof ids);
  mem_alloc(&d_w, sizeof weights);
  mem_alloc(&ws, ws_bytes);
  htod(w1, host, n_w1 * 2);
  htod(w2, host + n_w1, n_w2 * 2);
  htod(b1, host + n_w1 + n_w2, (size_t)(E * 2 * I) * 2);
  htod(b2, host + n_w1 + n_w2 + E * 2 * I, (size_t)(E * H) * 2);
  htod(x, host + n_w1 + n_w2 + E * 3 * H, (size_t)(T * H) * 2);
  htod(d_ids, ids, sizeof ids);
  htod(d_w, weights, sizeof weights);

  /* 4. A forward: launches only, on the engine's stream (NULL: the default stream). */
  moejit_forward_args args;
  moejit_forward_args_init(&args);
  args.tokens = T;
  args.x = (void *)(uintptr_t)x;
  args.topk_ids = (void *)(uintptr_t)d_ids;
  args.routing_weights = (void *)(uintptr_t)d_w;
  args.gate_up_proj = (void *)(uintptr_t)w1;
  args.gate_up_proj_bias = (void *)(uintptr_t)b1;
  args.down_proj = (void *)(uintptr_t)w2;
  args.down_proj_bias = (void *)(uintptr_t)b2;
  args.y = (void *)(uintptr_t)y;
  st = moejit_forward(plan, &args, (void *)(uintptr_t)ws, ws_bytes, NULL);
  if (st == MOEJIT_OK)
    st = moejit_forward_check(plan, (void *)(uintptr_t)ws, NULL, NULL); /* blocks; optional */
  uint16_t out[4];
  dtoh(out, y, sizeof out);
  printf("embed: forward %s; y[0][0..3] bf16 bits = %04x %04x %04x %04x\n", moejit_status_name(st),
         out[0], out[1], out[2], out[3]);

  unsigned long long bufs[] = {x, w1, b1, w2, b2, d_ids, d_w, y, ws};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
    mem_free(bufs[i]);
  free(host);
  moejit_plan_destroy(plan);
  moejit_destroy(ctx);
  return st == MOEJIT_OK ? 0 : 1;
}
