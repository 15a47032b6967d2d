/* wgmma.c: the sm_90a GEMMs of templates/wgmma.lua (persistent, warp-specialised, TMA + wgmma):
 * their spec, the tensor maps they read A and the weights through, the gather of x into sorted
 * order that GEMM1 reads, and the launch of each GEMM. */
#include <string.h>

#include "base/half.h"
#include "runtime/internal.h"

void mj_rt_wgmma_spec(const moejit_layer_desc *d, const mj_gemm_config *c, moejit_stage stage,
                      mj_spec *s) {
  mj_rt_gemm_shape_spec(d, c, stage, s);
  mj_spec_int(s, "ctas", c->ctas);
  if (c->pingpong)
    mj_spec_int(s, "pingpong", 1);
  if (c->chain)
    mj_spec_int(s, "chain", 1);
  mj_spec_int(s, "pdl", 1);
}

/* A tensor map over 16-bit elements, 128-byte swizzled boxes (box[0] = 64 elements = 128 bytes),
 * rows of dims[0] elements; strides[i] is dimension i + 1's, in bytes. */
static moejit_status encode_tmap(const mj_cu *cu, mj_tmap *m, int dtype, CUdeviceptr p,
                                 unsigned rank, const unsigned long long *dims,
                                 const unsigned long long *strides, const unsigned *box,
                                 mj_err *err) {
  moejit_status st = MOEJIT_OK;
  static const unsigned estr[3] = {1, 1, 1};
  MJ_CU(cu,
        TensorMapEncodeTiled(m, dtype, rank, (void *)(uintptr_t)p, dims, strides, box, estr, 0,
                             MJ_CU_TMAP_SWIZZLE_128B, MJ_CU_TMAP_L2_256B, 0),
        err);
fail:
  return st;
}

moejit_status mj_rt_gather(const moejit_plan *plan, const mj_values *v, CUstream stream, int pdl,
                           mj_err *err) {
  const mj_kernel *k = &plan->gather;
  return mj_rt_launch(plan->ctx, k,
                      (unsigned)mj_ceil_div((int64_t)v->tokens * k->meta.cols, k->meta.per_block),
                      1, 1, v, stream, pdl, err);
}

moejit_status mj_rt_wgmma(const moejit_plan *plan, int cfg, moejit_stage stage, mj_values *v,
                          const mj_layout *l, int chained, CUstream stream, int pdl, mj_err *err) {
  moejit_status st;
  const moejit_ctx *ctx = plan->ctx;
  int gemm1 = stage == MOEJIT_STAGE_GEMM1;
  const mj_kernel *k = gemm1 ? &plan->gemm1[cfg] : &plan->gemm2[cfg];
  unsigned long long n = (unsigned long long)k->meta.cols, kk = (unsigned long long)k->meta.depth;
  int dtype = plan->desc.dtype == MOEJIT_BF16 ? MJ_CU_TMAP_BFLOAT16 : MJ_CU_TMAP_FLOAT16;
  v->a = gemm1 ? v->x_sorted : v->h;
  v->w = gemm1 ? v->gate_up_proj : v->down_proj;
  v->bias = gemm1 ? v->gate_up_proj_bias : v->down_proj_bias;
  v->scales = gemm1 ? v->gate_up_proj_scales : v->down_proj_scales;
  v->out = gemm1 ? v->h : v->y_slot;
  v->wait_ready = chained;
  const int mxfp4 = plan->desc.weight_format == MOEJIT_WEIGHTS_MXFP4; /* decoded, no weight map */
  /* A: the rows [nslots, K], boxes of box_cols x box_rows. B: the experts' weights
   * [experts, K, N] in boxes of box_cols x box_cols x 1 (a k block of box_cols rows), three
   * dimensions so that K and N tails read zeros rather than the next expert's rows. */
  const unsigned long long a_dims[2] = {kk, (unsigned long long)l->nslots}, a_strides[1] = {kk * 2},
                           b_dims[3] = {n, kk, (unsigned long long)plan->desc.experts},
                           b_strides[2] = {n * 2, n * kk * 2};
  const unsigned bc = (unsigned)k->meta.box_cols;
  const unsigned a_box[2] = {bc, (unsigned)k->meta.box_rows}, b_box[3] = {bc, bc, 1};
  if ((st = encode_tmap(&ctx->cu, &v->tmap_a, dtype, v->a, 2, a_dims, a_strides, a_box, err)) ||
      (!mxfp4 &&
       (st = encode_tmap(&ctx->cu, &v->tmap_b, dtype, v->w, 3, b_dims, b_strides, b_box, err))))
    return st;
  if (mxfp4)
    memset(&v->tmap_b, 0, sizeof v->tmap_b);
  /* persistent: blocks_per_sm blocks an SM, or fewer when the worst-case item list is shorter */
  int64_t items = l->max_tiles * mj_ceil_div(k->meta.cols, k->meta.tile_cols),
          resident = (int64_t)k->meta.blocks_per_sm * ctx->sm_count;
  return mj_rt_launch(ctx, k, (unsigned)(items < resident ? items : resident), 1, 1, v, stream, pdl,
                      err);
}
