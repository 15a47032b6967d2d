/* route.c: the routing kernels (templates/route.lua): their spec, and the route stage, which
 * leaves the rows sorted by expert, the tile list and the bad-id flags in the workspace. */
#include <string.h>

#include "base/half.h"
#include "runtime/internal.h"

void mj_rt_route_spec(const moejit_layer_desc *d, mj_spec *s) {
  static const char *const forms[] = {"topk", "dense", "logits"};
  memset(s, 0, sizeof *s);
  mj_spec_int(s, "experts", d->experts);
  mj_spec_int(s, "global_experts", d->global_experts ? d->global_experts : d->experts);
  mj_spec_int(s, "mapped", d->global_experts > 0);
  mj_spec_int(s, "capped", d->expert_capacity > 0);
  mj_spec_int(s, "top_k", d->top_k);
  mj_spec_str(s, "ids", mj_dtype_name(d->ids_dtype));
  mj_spec_str(s, "weights", mj_dtype_name(d->weights_dtype));
  mj_spec_str(s, "routing", forms[d->routing]);
  if (d->routing == MOEJIT_ROUTING_LOGITS)
    mj_spec_str(s, "logits", mj_dtype_name(d->logits_dtype));
  mj_spec_int(s, "pdl", 1); /* griddepcontrol on sm_90+, for launches with plan->pdl */
}

moejit_status mj_rt_route(const moejit_plan *plan, mj_values *v, const mj_layout *l, int accumulate,
                          CUstream stream, int pdl, mj_err *err) {
  moejit_status st;
  const moejit_ctx *ctx = plan->ctx;
  const mj_route_kernels *k = &plan->route;
  int logits = plan->desc.routing == MOEJIT_ROUTING_LOGITS;
  v->ids = logits ? v->route_ids : v->topk_ids;
  v->weights = logits ? v->route_weights : v->routing_weights;
  v->accumulate = accumulate;
  /* few slots: count, scan and scatter (and top-k) in one block, one launch; a later chunk adds
   * its bad ids to the flags, which the three kernels do */
  if (l->nslots <= k->small.meta.max_slots && !accumulate)
    return mj_rt_launch(ctx, &k->small, (unsigned)k->small.meta.max_blocks, 1, 1, v, stream, 0,
                        err);
  /* logits: top-k and softmax into the workspace, which the rest of routing reads; the caller's
   * ids and weights get copies when given */
  if (logits &&
      (st = mj_rt_launch(ctx, &k->topk, (unsigned)mj_ceil_div(v->tokens, k->topk.meta.per_block), 1,
                         1, v, stream, 0, err)))
    return st;
  /* count and scatter: a block a chunk of per_block slots (l->nchunks, which the layout counts
   * with count's per_block; scatter's is the same chunk) */
  if ((st = mj_rt_launch(ctx, &k->count, (unsigned)l->nchunks, 1, 1, v, stream, pdl && logits,
                         err)) ||
      (st = mj_rt_launch(ctx, &k->scan, (unsigned)k->scan.meta.max_blocks, 1, 1, v, stream, pdl,
                         err)))
    return st;
  return mj_rt_launch(ctx, &k->scatter, (unsigned)l->nchunks, 1, 1, v, stream, pdl, err);
}
