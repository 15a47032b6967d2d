/* half.c: host conversions between f32 and the 16-bit float types, and dtype sizes (see half.h). */
#include "base/half.h"

#include <math.h>
#include <string.h>

static uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

uint16_t mj_f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even; a carry into the exponent is right */
  return (uint16_t)(u >> 16);
}

float mj_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

/* Rounds m >> shift to nearest even (shift >= 1). */
static uint32_t shift_rne(uint32_t m, int shift) {
  uint32_t r = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
  return r + (rem > half || (rem == half && (r & 1u)));
}

uint16_t mj_f32_to_f16(float f) {
  uint32_t u = f32_bits(f), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u)
    return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu)); /* quiet NaN */
  if (a >= 0x477ff000u)
    return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to infinity */
  if (a >= 0x38800000u) /* normal: rebias the exponent 127 -> 15, round off 13 bits */
    return (uint16_t)(sign | shift_rne(a - 0x38000000u, 13));
  /* subnormal f16 (unit 2^-24): value = m * 2^(e - 150), so the count is m >> (126 - e) */
  int e = (int)(a >> 23);
  if (e < 102)
    return (uint16_t)sign; /* below 2^-25: rounds to zero */
  return (uint16_t)(sign | shift_rne((a & 0x7fffffu) | 0x800000u, 126 - e));
}

float mj_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    float v = (float)m * 0x1p-24f; /* exact */
    return sign ? -v : v;
  }
  if (e == 0x1f)
    return bits_f32(sign | 0x7f800000u | (m << 13));
  return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

float mj_load_f32(moejit_dtype dt, const void *base, int64_t i) {
  switch (dt) {
  case MOEJIT_F32: return ((const float *)base)[i];
  case MOEJIT_F16: return mj_f16_to_f32(((const uint16_t *)base)[i]);
  case MOEJIT_BF16: return mj_bf16_to_f32(((const uint16_t *)base)[i]);
  default: return NAN;
  }
}

void mj_store_f32(moejit_dtype dt, void *base, int64_t i, float v) {
  switch (dt) {
  case MOEJIT_F32: ((float *)base)[i] = v; break;
  case MOEJIT_F16: ((uint16_t *)base)[i] = mj_f32_to_f16(v); break;
  case MOEJIT_BF16: ((uint16_t *)base)[i] = mj_f32_to_bf16(v); break;
  default: break;
  }
}

size_t mj_dtype_size(moejit_dtype dt) {
  static const size_t size[] = {
      [MOEJIT_F32] = 4, [MOEJIT_F16] = 2, [MOEJIT_BF16] = 2, [MOEJIT_I32] = 4, [MOEJIT_I64] = 8};
  return (unsigned)dt < sizeof size / sizeof size[0] ? size[dt] : 0;
}

const char *mj_dtype_name(moejit_dtype dt) {
  static const char *const names[] = {"f32", "f16", "bf16", "i32", "i64"};
  return (unsigned)dt < sizeof names / sizeof names[0] ? names[dt] : "?";
}
