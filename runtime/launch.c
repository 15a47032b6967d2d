/* launch.c: launches from a kernel's launch contract: the parameters a template names, bound to
 * the forward's values by name, and the block and shared memory it states; and entering the
 * context's CUDA context. Uses runtime/driver. */
#include <string.h>

#include "base/field.h"
#include "runtime/internal.h"

/* The forward's values by the names the templates' contracts give them. */
#define V(field) MJ_FIELD(mj_values, field)
static const mj_field values[] = {
    V(tmap_a),
    V(gate_up_proj),
    V(gate_up_proj_bias),
    V(down_proj),
    V(down_proj_bias),
    V(gate_up_proj_scales),
    V(down_proj_scales),
    V(tmap_b),
    V(x),
    V(topk_ids),
    V(routing_weights),
    V(router_logits),
    V(expert_map),
    V(device_tokens),
    V(y),
    V(flags),
    V(num_tiles),
    V(expert_offsets),
    V(ready),
    V(chunk_counts),
    V(chunk_base),
    V(tiles),
    V(row_slot),
    V(slot_row),
    V(row_weight),
    V(route_ids),
    V(route_weights),
    V(gate_up),
    V(x_sorted),
    V(h),
    V(y_slot),
    V(ids),
    V(weights),
    V(a),
    V(w),
    V(bias),
    V(out),
    V(own_ids),
    V(scales),
    V(tokens),
    V(nslots),
    V(nchunks),
    V(tile_rows),
    V(capacity),
    V(accumulate),
    V(token_base),
    V(slab_major),
    V(own_slots),
    V(wait_ready),
    V(split_stride),
};
#undef V

size_t mj_rt_value_size(const char *name) {
  const mj_field *f = mj_field_find(values, sizeof values / sizeof values[0], name);
  return f ? f->size : 0;
}

moejit_status mj_rt_bind(mj_kernel *k, mj_err *err) {
  for (int i = 0; i < k->meta.nparams; i++) {
    const mj_field *f = mj_field_find(values, sizeof values / sizeof values[0], k->meta.params[i]);
    if (!f)
      return mj_errf(err, MOEJIT_ERR_TEMPLATE,
                     "kernel %s takes a parameter '%s' (its contract's param %d), and a forward "
                     "has no value of that name",
                     k->meta.entry, k->meta.params[i], i + 1);
    k->arg[i] = (uint16_t)f->offset;
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
  if (ctx->offline)
    return mj_errf(err, MOEJIT_ERR_NO_DEVICE, "the context is offline (%s): it has no device",
                   ctx->arch);
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
