/* gemm.c: the GEMMs of templates/gemm.lua (mma.sync, TF32, exact FFMA and the streamed path, all
 * sm_80+): their spec, and the launch of GEMM1 (x -> h, or gate_up in unfused plans) and GEMM2
 * (h -> y_slot) over routing's tile list. */
#include <string.h>

#include "base/half.h"
#include "runtime/internal.h"

int mj_rt_can_self_route(const moejit_layer_desc *d, const mj_gemm_config *c) {
  return c->kind != MJ_GEMM_WGMMA && d->routing != MOEJIT_ROUTING_LOGITS &&
         d->global_experts == 0 && d->expert_capacity == 0 && !d->apply_router_weight_on_input;
}

void mj_rt_gemm_shape_spec(const moejit_layer_desc *d, const mj_gemm_config *c, moejit_stage stage,
                           mj_spec *s) {
  memset(s, 0, sizeof *s);
  mj_spec_str(s, "dtype", mj_dtype_name(d->dtype));
  if (d->weight_format == MOEJIT_WEIGHTS_MXFP4)
    mj_spec_str(s, "weights", "mxfp4");
  mj_spec_str(s, "bias", d->no_bias ? "none" : mj_dtype_name(d->bias_f32 ? MOEJIT_F32 : d->dtype));
  mj_spec_str(s, "stage", stage == MOEJIT_STAGE_GEMM1 ? "gemm1" : "gemm2");
  if (stage == MOEJIT_STAGE_GEMM1) { /* the activation fused, or GEMM1's raw output */
    mj_spec_str(s, "activation",
                mj_rt_split_activation(d) ? "none" : mj_rt_activation_name(d->activation));
    if (mj_rt_gate_up_cols(d) == d->intermediate)
      mj_spec_int(s, "no_mul", 1);
  }
  mj_spec_int(s, "hidden", d->hidden);
  mj_spec_int(s, "intermediate", d->intermediate);
  mj_spec_int(s, "top_k", d->top_k);
  mj_spec_num(s, "alpha", d->alpha);
  mj_spec_num(s, "limit", d->limit);
  mj_spec_int(s, "weight_on_input", d->apply_router_weight_on_input);
  mj_spec_int(s, "bm", c->bm);
  mj_spec_int(s, "bn", c->bn);
  mj_spec_int(s, "stages", c->stages);
}

void mj_rt_gemm_spec(const moejit_layer_desc *d, const mj_gemm_config *c, moejit_stage stage,
                     mj_spec *s) {
  mj_math math = mj_rt_math(d);
  int stream = c->kind == MJ_GEMM_STREAM, tc = math != MJ_MATH_FFMA;
  mj_rt_gemm_shape_spec(d, c, stage, s);
  /* MXFP4 layers: f16/bf16 tensor cores (the template decodes the weights, spec key weights) */
  mj_spec_str(s, "math",
              stream                  ? "stream"
              : math == MJ_MATH_MXFP4 ? "mma"
                                      : mj_tune_math_name(math));
  mj_spec_int(s, "bk", c->bk);
  if (stage == MOEJIT_STAGE_GEMM2 && c->splits > 1)
    mj_spec_int(s, "splits", c->splits);
  if (!stream) {
    mj_spec_int(s, tc ? "wm" : "tm", tc ? c->wm : c->tm);
    mj_spec_int(s, tc ? "wn" : "tn", tc ? c->wn : c->tn);
  }
  mj_spec_int(s, "pdl", 1);
  if (stage == MOEJIT_STAGE_GEMM1 && mj_rt_can_self_route(d, c)) { /* chosen per forward */
    mj_spec_str(s, "self_route", mj_dtype_name(d->ids_dtype));
    mj_spec_int(s, "experts", d->experts);
  }
}

/* The block order: slab-major once the blocks fill the GPU more than twice over; below that the
 * order makes no difference or costs a little (docs/experiments.md#slab-major). */
static int slab_major(const moejit_plan *plan, const mj_layout *l, const mj_kernel *k) {
  int splits = k->meta.splits > 1 ? k->meta.splits : 1;
  return l->max_tiles * mj_ceil_div(k->meta.cols, k->meta.tile_cols) * splits >
         2 * (int64_t)plan->ctx->sm_count;
}

moejit_status mj_rt_gemm(const moejit_plan *plan, int cfg, moejit_stage stage, mj_values *v,
                         const mj_layout *l, int self_route, CUstream stream, int pdl,
                         mj_err *err) {
  const moejit_layer_desc *d = &plan->desc;
  int gemm1 = stage == MOEJIT_STAGE_GEMM1;
  const mj_kernel *k = gemm1 ? &plan->gemm1[cfg] : &plan->gemm2[cfg];
  /* a tile holds one slot at least, so a forward of few slots has fewer tiles than the
   * workspace's worst case */
  int64_t tiles = l->nslots < l->max_tiles ? l->nslots : l->max_tiles;
  v->a = gemm1 ? v->x : v->h;
  v->w = gemm1 ? v->gate_up_proj : v->down_proj;
  v->bias = gemm1 ? v->gate_up_proj_bias : v->down_proj_bias;
  v->scales = gemm1 ? v->gate_up_proj_scales : v->down_proj_scales;
  v->out = gemm1 ? (mj_rt_split_activation(d) ? v->gate_up : v->h) : v->y_slot;
  v->slab_major = slab_major(plan, l, k);
  /* Few slots: GEMM1's blocks, launched as routing starts, work out their tiles from the caller's
   * ids and start at once (gemm.cuh, MJ_GEMM_SELF_ROUTE), or, where an expert has more slots than
   * a tile has rows, take routing's. */
  v->own_slots = gemm1 && self_route && k->meta.max_slots > 0 && l->nslots <= k->meta.max_slots
                     ? (int)l->nslots
                     : 0;
  v->own_ids = v->own_slots ? v->topk_ids : 0;
  return mj_rt_launch(plan->ctx, k, (unsigned)tiles,
                      (unsigned)mj_ceil_div(k->meta.cols, k->meta.tile_cols),
                      k->meta.splits > 1 ? (unsigned)k->meta.splits : 1, v, stream, pdl, err);
}
