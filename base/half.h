/* half.h: host conversions between f32 and f16/bf16 (round to nearest even), element access by
 * dtype, dtype sizes and names. Used by every layer. */
#ifndef MJ_BASE_HALF_H
#define MJ_BASE_HALF_H
#include <stddef.h>
#include <stdint.h>

#include "moejit.h"

/* Host conversions: round to nearest even, NaN stays NaN, overflow goes to infinity. */
uint16_t mj_f32_to_bf16(float f);
float mj_bf16_to_f32(uint16_t h);
uint16_t mj_f32_to_f16(float f); /* f16 subnormals and infinities included */
float mj_f16_to_f32(uint16_t h);

/* Element i of an F32/F16/BF16 array (NaN for any other dtype). */
float mj_load_f32(moejit_dtype dt, const void *base, int64_t i);
/* Rounds v to dt and stores it as element i (F32/F16/BF16; other dtypes are left untouched). */
void mj_store_f32(moejit_dtype dt, void *base, int64_t i, float v);
/* Bytes per element: F32 4, F16 2, BF16 2, I32 4, I64 8; 0 for an unknown value. */
size_t mj_dtype_size(moejit_dtype dt);
/* "f32", "f16", "bf16", "i32", "i64"; "?" for an unknown value. */
const char *mj_dtype_name(moejit_dtype dt);

#endif
