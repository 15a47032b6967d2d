/* layout.c: the workspace of a forward: where routing's outputs, the intermediates and the flags
 * live, moejit_workspace_size and moejit_workspace_view_get. */
#include <string.h>

#include "runtime/internal.h"

#define ALIGN256(x) (((x) + 255) & ~(size_t)255)

void mj_rt_layout(const moejit_plan *plan, int64_t tokens, mj_layout *l) {
  const moejit_layer_desc *d = &plan->desc;
  size_t act = d->dtype == MOEJIT_F32 ? 4 : 2;
  memset(l, 0, sizeof *l);
  if (tokens > MJ_CHUNK_TOKENS) /* longer forwards run in chunks that reuse the workspace */
    tokens = MJ_CHUNK_TOKENS;
  l->nslots = tokens * d->top_k;
  l->nchunks = mj_ceil_div(l->nslots, plan->route.count.meta.per_block);
  l->max_tiles =
      mj_ceil_div(l->nslots, plan->min_bm) + (l->nslots < d->experts ? l->nslots : d->experts);
  size_t at = 0;
#define MJ_PLACE_(field, bytes)                                                                    \
  l->field = at;                                                                                   \
  at = ALIGN256(at + (size_t)(bytes))
  MJ_PLACE_(flags, 4 * sizeof(int));
  MJ_PLACE_(num_tiles, sizeof(int));
  MJ_PLACE_(expert_offsets, (size_t)(d->experts + 1) * sizeof(int));
  MJ_PLACE_(ready, (size_t)d->experts * sizeof(int));
  MJ_PLACE_(chunk_counts, (size_t)l->nchunks * (size_t)(d->experts + 1) * sizeof(int));
  MJ_PLACE_(chunk_base, (size_t)l->nchunks * (size_t)d->experts * sizeof(int));
  MJ_PLACE_(tiles, (size_t)l->max_tiles * 4 * sizeof(int));
  MJ_PLACE_(row_slot, (size_t)l->nslots * sizeof(int));
  MJ_PLACE_(slot_row, (size_t)l->nslots * sizeof(int));
  MJ_PLACE_(row_weight, (size_t)l->nslots * sizeof(float));
  int logits = d->routing == MOEJIT_ROUTING_LOGITS;
  MJ_PLACE_(route_ids, logits ? (size_t)l->nslots * sizeof(int) : 0);
  MJ_PLACE_(route_weights, logits ? (size_t)l->nslots * sizeof(float) : 0);
  MJ_PLACE_(gate_up, mj_rt_split_activation(d)
                         ? (size_t)l->nslots * (size_t)mj_rt_gate_up_cols(d) * act
                         : 0);
  MJ_PLACE_(x_sorted, plan->wgmma ? (size_t)l->nslots * (size_t)d->hidden * act : 0);
  MJ_PLACE_(h, (size_t)l->nslots * (size_t)d->intermediate * act);
  int64_t split_slots = l->nslots < MJ_SPLIT_SLOTS ? l->nslots : MJ_SPLIT_SLOTS;
  l->split_stride = l->nslots * d->hidden; /* a split GEMM2's partials follow y_slot's rows */
  MJ_PLACE_(y_slot, (size_t)(l->nslots + (plan->splits - 1) * split_slots) * (size_t)d->hidden *
                        sizeof(float));
#undef MJ_PLACE_
  l->total = at;
}

void moejit_workspace_view_init(moejit_workspace_view *view) {
  memset(view, 0, sizeof *view);
  view->struct_size = sizeof *view;
}

moejit_status moejit_workspace_view_get(const moejit_plan *plan, int64_t tokens,
                                        moejit_workspace_view *view) {
  mj_err err;
  if (!plan)
    return MOEJIT_ERR_INVALID_ARG;
  if (!view || view->struct_size != sizeof *view)
    return mj_rt_fail(plan->ctx,
                      mj_errf(&err, MOEJIT_ERR_INVALID_ARG,
                              "view is NULL or its struct_size is not %zu (call "
                              "moejit_workspace_view_init)",
                              sizeof *view),
                      &err);
  if (tokens < 0 || tokens > plan->desc.max_tokens)
    return mj_rt_fail(plan->ctx,
                      mj_errf(&err, MOEJIT_ERR_INVALID_ARG,
                              "tokens=%lld is outside [0, desc->max_tokens=%lld]",
                              (long long)tokens, (long long)plan->desc.max_tokens),
                      &err);
  mj_layout l;
  mj_rt_layout(plan, tokens, &l);
  view->expert_offsets = l.expert_offsets;
  view->row_slot = l.row_slot;
  view->slot_row = l.slot_row;
  view->row_weight = l.row_weight;
  view->gate_up = mj_rt_split_activation(&plan->desc) ? l.gate_up : (size_t)-1;
  view->h = l.h;
  view->y_slot = l.y_slot;
  return MOEJIT_OK;
}

moejit_status moejit_workspace_size(const moejit_plan *plan, int64_t max_tokens, size_t *bytes) {
  if (!plan || !bytes)
    return MOEJIT_ERR_INVALID_ARG;
  if (max_tokens < 0 || max_tokens > plan->desc.max_tokens) {
    mj_err err;
    mj_errf(&err, MOEJIT_ERR_INVALID_ARG, "max_tokens=%lld is outside [0, desc->max_tokens=%lld]",
            (long long)max_tokens, (long long)plan->desc.max_tokens);
    return mj_rt_fail(plan->ctx, MOEJIT_ERR_INVALID_ARG, &err);
  }
  mj_layout l;
  mj_rt_layout(plan, max_tokens, &l);
  *bytes = l.total;
  return MOEJIT_OK;
}
