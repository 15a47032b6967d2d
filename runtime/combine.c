/* combine.c: the combine and activation kernels (templates/combine.lua): their spec, the combine
 * stage (each token's top-k rows summed in a fixed order into y) and the unfused plans' activation
 * stage. */
#include <string.h>

#include "base/half.h"
#include "runtime/internal.h"

void mj_rt_combine_spec(const moejit_layer_desc *d, int splits, mj_spec *s) {
  memset(s, 0, sizeof *s);
  mj_spec_str(s, "dtype", mj_dtype_name(d->dtype));
  mj_spec_int(s, "hidden", d->hidden);
  mj_spec_int(s, "top_k", d->top_k);
  mj_spec_int(s, "pdl", 1);
  if (mj_rt_split_activation(d)) { /* the activation kernel joins the module */
    static const char *const layouts[] = {"interleaved", "gate_up", "up_gate"};
    mj_spec_int(s, "intermediate", d->intermediate);
    mj_spec_int(s, "experts", d->experts);
    mj_spec_num(s, "alpha", d->alpha);
    mj_spec_num(s, "limit", d->limit);
    mj_spec_str(s, "activation", mj_rt_activation_name(d->activation));
    mj_spec_str(s, "layout", layouts[d->gate_up_layout]);
  }
  if (splits > 1) /* the combine that sums GEMM2's split partials */
    mj_spec_int(s, "splits", splits);
}

moejit_status mj_rt_activation(const moejit_plan *plan, const mj_values *v, const mj_layout *l,
                               CUstream stream, int pdl, mj_err *err) {
  const mj_kernel *k = &plan->activation;
  int64_t blocks = mj_ceil_div(l->nslots * k->meta.cols, k->meta.per_block);
  if (blocks > k->meta.max_blocks)
    blocks = k->meta.max_blocks;
  return mj_rt_launch(plan->ctx, k, (unsigned)blocks, 1, 1, v, stream, pdl, err);
}

moejit_status mj_rt_combine(const moejit_plan *plan, const mj_kernel *k, const mj_values *v,
                            CUstream stream, int pdl, mj_err *err) {
  return mj_rt_launch(plan->ctx, k, (unsigned)v->tokens,
                      (unsigned)mj_ceil_div(k->meta.cols, k->meta.tile_cols), 1, v, stream, pdl,
                      err);
}
