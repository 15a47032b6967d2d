/* check.c: synthetic layer vs CPU reference on sampled tokens (see check.h). */
#include "tools/check.h"

#include <math.h>
#include <stdlib.h>

#include "tools/ref.h"

moejit_status mj_check_sampled(const mj_synth *s, const mj_synth_layer *L, int64_t samples,
                               mj_check_result *r, mj_err *err) {
  moejit_status st;
  const moejit_layer_desc *d = &L->desc;
  int64_t T = L->tokens, H = d->hidden, n = samples < T ? samples : T;
  mj_synth_host h = {0};
  float *got = NULL, *want = NULL;
  int64_t *tokens = malloc((size_t)(n > 0 ? n : 1) * sizeof *tokens);
  r->sampled = n;
  r->rel_error = 0.0;
  /* TF32 keeps 10 mantissa bits, as f16 does: an f32 layer on TF32 is held to the f16 tolerance */
  r->tolerance = mj_tolerance(d->dtype == MOEJIT_F32 && !d->exact_f32 ? MOEJIT_F16 : d->dtype);
  r->nonfinite = 0;
  if (!tokens)
    return mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory");
  if (n == 0) {
    free(tokens);
    return MOEJIT_OK;
  }
  for (int64_t i = 0; i < n; i++)
    tokens[i] = n == 1 ? 0 : i * (T - 1) / (n - 1);
  if ((st = mj_synth_download(s, L, tokens, n, &h, err)) != MOEJIT_OK)
    goto done;
  got = malloc((size_t)(n * H) * sizeof(float));
  want = malloc((size_t)(n * H) * sizeof(float));
  if (!got || !want) {
    st = mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory");
    goto done;
  }
  /* the desc's activation, gate/up layout, weight format and bias dtype; a synthetic layer's ids
   * name its local experts */
  mj_ref_layer ref = mj_ref_layer_of(d, n);
  ref.activation = d->activation;
  ref.gate_up_layout = d->gate_up_layout;
  ref.global_experts = 0;
  ref.capacity = 0;
  ref.x = h.x;
  ref.gate_up_proj = h.gate_up;
  ref.gate_up_proj_bias = h.gate_up_bias; /* NULL with desc.no_bias: none */
  ref.down_proj = h.down;
  ref.down_proj_bias = h.down_bias;
  ref.mxfp4 = d->weight_format == MOEJIT_WEIGHTS_MXFP4; /* then the weights are blocks + scales */
  ref.gate_up_proj_scales = h.gate_up_scales;
  ref.down_proj_scales = h.down_scales;
  ref.topk_ids = h.ids;
  ref.topk_weights = h.weights;
  if (mj_ref_forward(&ref, NULL, n, want) != 0) {
    st = mj_errf(err, MOEJIT_ERR_INTERNAL, "the CPU reference rejected the layer");
    goto done;
  }
  for (int64_t i = 0; i < n * H; i++) {
    got[i] = mj_load_f32(d->dtype, h.y, i);
    r->nonfinite += !isfinite(got[i]);
  }
  r->rel_error = mj_rel_error(got, want, n * H);
done:
  mj_synth_host_free(&h);
  free(got);
  free(want);
  free(tokens);
  return st;
}
