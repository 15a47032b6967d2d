/* launch.c: launches from a kernel's launch contract: the parameters a template names, bound to
 * the forward's values by name, and the block and shared memory it states; and entering the
 * context's CUDA context. Uses runtime/driver. */
#include <string.h>

#include "runtime/internal.h"

/* The forward's values by the names the templates' contracts give them. */
static const struct {
  const char *name;
  size_t offset;
} values[] = {
#define MJ_VALUE_(field)                                                                           \
  { #field, offsetof(mj_values, field) }
    MJ_VALUE_(tmap_a),
    MJ_VALUE_(tmap_b),
    MJ_VALUE_(x),
    MJ_VALUE_(topk_ids),
    MJ_VALUE_(routing_weights),
    MJ_VALUE_(router_logits),
    MJ_VALUE_(expert_map),
    MJ_VALUE_(device_tokens),
    MJ_VALUE_(y),
    MJ_VALUE_(flags),
    MJ_VALUE_(num_tiles),
    MJ_VALUE_(expert_offsets),
    MJ_VALUE_(ready),
    MJ_VALUE_(chunk_counts),
    MJ_VALUE_(chunk_base),
    MJ_VALUE_(tiles),
    MJ_VALUE_(row_slot),
    MJ_VALUE_(slot_row),
    MJ_VALUE_(row_weight),
    MJ_VALUE_(route_ids),
    MJ_VALUE_(route_weights),
    MJ_VALUE_(gate_up),
    MJ_VALUE_(x_sorted),
    MJ_VALUE_(h),
    MJ_VALUE_(y_slot),
    MJ_VALUE_(ids),
    MJ_VALUE_(weights),
    MJ_VALUE_(a),
    MJ_VALUE_(w),
    MJ_VALUE_(bias),
    MJ_VALUE_(out),
    MJ_VALUE_(own_ids),
    MJ_VALUE_(tokens),
    MJ_VALUE_(nslots),
    MJ_VALUE_(nchunks),
    MJ_VALUE_(tile_rows),
    MJ_VALUE_(capacity),
    MJ_VALUE_(accumulate),
    MJ_VALUE_(token_base),
    MJ_VALUE_(slab_major),
    MJ_VALUE_(own_slots),
    MJ_VALUE_(wait_ready),
    MJ_VALUE_(split_stride),
#undef MJ_VALUE_
};

moejit_status mj_rt_bind(mj_kernel *k, mj_err *err) {
  for (int i = 0; i < k->meta.nparams; i++) {
    size_t j = 0;
    while (j < sizeof values / sizeof values[0] && strcmp(values[j].name, k->meta.params[i]) != 0)
      j++;
    if (j == sizeof values / sizeof values[0])
      return mj_errf(err, MOEJIT_ERR_TEMPLATE,
                     "kernel %s takes a parameter '%s' (its contract's param %d), and a forward "
                     "has no value of that name",
                     k->meta.entry, k->meta.params[i], i + 1);
    k->arg[i] = (uint16_t)values[j].offset;
  }
  return MOEJIT_OK;
}

moejit_status mj_rt_launch_args(const moejit_ctx *ctx, const mj_kernel *k, unsigned gx, unsigned gy,
                                unsigned gz, void **args, CUstream stream, int pdl, mj_err *err) {
  moejit_status st = MOEJIT_OK;
  const mj_cu *cu = &ctx->cu;
  const unsigned threads = (unsigned)k->meta.threads, smem = (unsigned)k->meta.smem;
  if (!pdl) {
    MJ_CU(cu, LaunchKernel(k->fn, gx, gy, gz, threads, 1, 1, smem, stream, args, NULL), err);
    return st;
  }
  mj_launch_attr attr;
  memset(&attr, 0, sizeof attr);
  attr.id = MJ_CU_LAUNCH_ATTR_PDL;
  attr.v.value = 1;
  const mj_launch_config config = {{gx, gy, gz}, {threads, 1, 1}, smem, stream, &attr, 1};
  MJ_CU(cu, LaunchKernelEx(&config, k->fn, args, NULL), err);
fail:
  return st;
}

moejit_status mj_rt_launch(const moejit_ctx *ctx, const mj_kernel *k, unsigned gx, unsigned gy,
                           unsigned gz, const mj_values *v, CUstream stream, int pdl, mj_err *err) {
  void *args[MJ_KERNEL_PARAMS];
  for (int i = 0; i < k->meta.nparams; i++)
    args[i] = (char *)v + k->arg[i];
  return mj_rt_launch_args(ctx, k, gx, gy, gz, args, stream, pdl, err);
}

moejit_status mj_rt_enter(moejit_ctx *ctx, int *pushed, mj_err *err) {
  moejit_status st = MOEJIT_OK;
  CUcontext cur = NULL;
  *pushed = 0;
  MJ_CU(&ctx->cu, CtxGetCurrent(&cur), err);
  if (cur != ctx->cuctx) {
    MJ_CU(&ctx->cu, CtxPushCurrent(ctx->cuctx), err);
    *pushed = 1;
  }
fail:
  return st;
}

void mj_rt_leave(moejit_ctx *ctx, int pushed) {
  CUcontext popped;
  if (pushed)
    ctx->cu.CtxPopCurrent(&popped);
}
