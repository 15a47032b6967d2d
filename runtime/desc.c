/* desc.c: the layer descriptor's checks, and the versions of the public structs: a caller built
 * against an older header passes a shorter struct, whose missing fields take their defaults. */
#include <limits.h>
#include <math.h>
#include <string.h>

#include "base/half.h"
#include "runtime/internal.h"

int mj_rt_upgrade(const void *in, size_t in_size, const size_t *sizes, int n, void *full,
                  size_t full_size) {
  for (int i = 0; i < n; i++)
    if (in_size == sizes[i] && in_size <= full_size) {
      memcpy(full, in, in_size);
      *(size_t *)full = full_size; /* struct_size, every struct's first field */
      return 0;
    }
  return -1;
}

moejit_status mj_rt_desc_full(const moejit_layer_desc *d, moejit_layer_desc *full, mj_err *err) {
  /* the sizes this header has had, each ending at a field appended later, or (0.3) padded past
   * its last field (the padding, zero from that version's init, reads as the next fields'
   * defaults) */
  static const size_t sizes[] = {offsetof(moejit_layer_desc, logits_dtype),
                                 offsetof(moejit_layer_desc, bias_f32),
                                 offsetof(moejit_layer_desc, exact_f32),
                                 offsetof(moejit_layer_desc, unfused),
                                 offsetof(moejit_layer_desc, weight_format),
                                 MJ_DESC_SIZE_0_3,
                                 sizeof(moejit_layer_desc)};
  if (!d)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "desc is NULL");
  moejit_layer_desc_init(full);
  if (mj_rt_upgrade(d, d->struct_size, sizes, (int)(sizeof sizes / sizeof sizes[0]), full,
                    sizeof *full) != 0)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "desc->struct_size=%zu is not the size of any version of moejit_layer_desc "
                   "(this one: %zu; call moejit_layer_desc_init)",
                   d->struct_size, sizeof *d);
  return MOEJIT_OK;
}

moejit_status mj_rt_check_desc(const moejit_layer_desc *d, mj_err *err) {
  moejit_layer_desc full; /* the fields a shorter struct lacks, at their defaults */
  moejit_status st = mj_rt_desc_full(d, &full, err);
  if (st != MOEJIT_OK)
    return st;
  d = &full;
  const struct {
    const char *name;
    int64_t v, lo, hi, multiple;
  } ints[] = {
      {"hidden", d->hidden, 8, 1 << 20, 8},
      {"intermediate", d->intermediate, 8, 1 << 20, 8},
      {"experts", d->experts, 1, 1024, 1},
      {"top_k", d->top_k, 1, 32, 1},
      {"max_tokens", d->max_tokens, 1, INT32_MAX / 32, 1},
  };
  for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
    if (ints[i].v < ints[i].lo || ints[i].v > ints[i].hi)
      return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "desc->%s=%lld is outside [%lld, %lld]",
                     ints[i].name, (long long)ints[i].v, (long long)ints[i].lo,
                     (long long)ints[i].hi);
    if (ints[i].v % ints[i].multiple != 0)
      return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "desc->%s=%lld is not a multiple of %lld",
                     ints[i].name, (long long)ints[i].v, (long long)ints[i].multiple);
  }
  if (d->max_tokens * d->top_k > INT32_MAX - 4096) /* row indices are 32-bit on the GPU */
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "desc->max_tokens=%lld times top_k=%lld exceeds %d slots",
                   (long long)d->max_tokens, (long long)d->top_k, INT32_MAX - 4096);
  if (d->dtype != MOEJIT_F32 && d->dtype != MOEJIT_F16 && d->dtype != MOEJIT_BF16)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "desc->dtype=%d is not MOEJIT_F32, F16 or BF16",
                   (int)d->dtype);
  if (d->ids_dtype != MOEJIT_I32 && d->ids_dtype != MOEJIT_I64)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "desc->ids_dtype=%d is not MOEJIT_I32 or I64",
                   (int)d->ids_dtype);
  if (d->weights_dtype != MOEJIT_F32 && d->weights_dtype != MOEJIT_F16 &&
      d->weights_dtype != MOEJIT_BF16)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "desc->weights_dtype=%d is not MOEJIT_F32, F16 or BF16", (int)d->weights_dtype);
  if (d->routing != MOEJIT_ROUTING_TOPK && d->routing != MOEJIT_ROUTING_DENSE &&
      d->routing != MOEJIT_ROUTING_LOGITS)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "desc->routing=%d is not a moejit_routing",
                   (int)d->routing);
  if (!isfinite(d->alpha) || !isfinite(d->limit) || d->limit <= 0.0f)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "desc->alpha=%g and desc->limit=%g must be finite, limit > 0", d->alpha,
                   d->limit);
  if (d->expert_capacity < 0 || d->expert_capacity > INT32_MAX)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "desc->expert_capacity=%lld is outside [0, %d] (0 = dropless)",
                   (long long)d->expert_capacity, INT32_MAX);
  if (d->global_experts != 0 && (d->global_experts < d->experts || d->global_experts > 1024))
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "desc->global_experts=%lld is outside [experts=%lld, 1024] (0 = no expert map)",
                   (long long)d->global_experts, (long long)d->experts);
  int64_t scored = d->global_experts ? d->global_experts : d->experts;
  if (d->routing == MOEJIT_ROUTING_LOGITS) {
    if (d->logits_dtype != MOEJIT_F32 && d->logits_dtype != MOEJIT_F16 &&
        d->logits_dtype != MOEJIT_BF16)
      return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                     "desc->logits_dtype=%d is not MOEJIT_F32, F16 or BF16", (int)d->logits_dtype);
    if (d->top_k > scored)
      return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                     "desc->top_k=%lld exceeds the %lld experts the router logits score",
                     (long long)d->top_k, (long long)scored);
  }
  if (d->bias_f32 != 0 && d->bias_f32 != 1)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "desc->bias_f32=%d is not 0 or 1", d->bias_f32);
  if (d->exact_f32 != 0 && d->exact_f32 != 1)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "desc->exact_f32=%d is not 0 or 1", d->exact_f32);
  if (d->unfused != 0 && d->unfused != 1)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "desc->unfused=%d is not 0 or 1", d->unfused);
  if (d->apply_router_weight_on_input != 0 && d->apply_router_weight_on_input != 1)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "desc->apply_router_weight_on_input=%d is not 0 or 1",
                   d->apply_router_weight_on_input);
  if ((int)d->activation < MOEJIT_ACT_SWIGLU_OAI || (int)d->activation > MOEJIT_ACT_RELU2)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "desc->activation=%d is not a moejit_activation",
                   (int)d->activation);
  if ((int)d->gate_up_layout < MOEJIT_GATE_UP_INTERLEAVED ||
      (int)d->gate_up_layout > MOEJIT_UP_GATE_HALVES)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "desc->gate_up_layout=%d is not a moejit_gate_up_layout",
                   (int)d->gate_up_layout);
  if (d->no_bias != 0 && d->no_bias != 1)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "desc->no_bias=%d is not 0 or 1", d->no_bias);
  if (d->no_bias && d->bias_f32)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "desc->bias_f32=1 with desc->no_bias=1: a layer without biases has no bias "
                   "dtype");
  if (d->batch_invariant != 0 && d->batch_invariant != 1)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "desc->batch_invariant=%d is not 0 or 1",
                   d->batch_invariant);
  if (d->batch_invariant && d->expert_capacity > 0)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "desc->batch_invariant=1 with desc->expert_capacity=%lld: which slots an expert "
                   "keeps depends on the tokens before them, so no token's output can be the same "
                   "in every batch",
                   (long long)d->expert_capacity);
  if (d->weight_format != MOEJIT_WEIGHTS_DENSE && d->weight_format != MOEJIT_WEIGHTS_MXFP4)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                   "desc->weight_format=%d is not MOEJIT_WEIGHTS_DENSE or MOEJIT_WEIGHTS_MXFP4",
                   (int)d->weight_format);
  if (d->weight_format == MOEJIT_WEIGHTS_MXFP4) {
    if (d->dtype != MOEJIT_F16 && d->dtype != MOEJIT_BF16)
      return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                     "desc->dtype=%s with MXFP4 weights: the activations must be MOEJIT_BF16 or "
                     "MOEJIT_F16",
                     mj_dtype_name(d->dtype));
    if (d->hidden % 32 != 0 || d->intermediate % 32 != 0)
      return mj_errf(err, MOEJIT_ERR_INVALID_ARG,
                     "desc->hidden=%lld and desc->intermediate=%lld must be multiples of 32 with "
                     "MXFP4 weights (32 weights a scale block)",
                     (long long)d->hidden, (long long)d->intermediate);
  }
  return MOEJIT_OK;
}

static int gated(moejit_activation act) { return act <= MOEJIT_ACT_SWIGLU_STEP; }

int mj_rt_split_activation(const moejit_layer_desc *d) {
  return d->unfused || !gated(d->activation) || d->gate_up_layout != MOEJIT_GATE_UP_INTERLEAVED;
}

int64_t mj_rt_gate_up_cols(const moejit_layer_desc *d) {
  return gated(d->activation) ? 2 * d->intermediate : d->intermediate;
}

const char *mj_rt_activation_name(moejit_activation act) {
  static const char *const names[] = {"swiglu",      "silu_mul", "gelu_mul", "gelu_tanh_mul",
                                      "swiglu_step", "silu",     "gelu",     "relu2"};
  return (int)act >= 0 && (int)act < (int)(sizeof names / sizeof names[0]) ? names[act] : "?";
}
