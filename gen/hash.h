/* hash.h: a streaming 128-bit non-cryptographic hash, for cache keys (generated source, headers,
 * NVRTC options and version, arch, library version) and file checksums. Uses nothing else. */
#ifndef MJ_GEN_HASH_H
#define MJ_GEN_HASH_H
#include <stddef.h>
#include <stdint.h>

typedef struct mj_hash {
  uint64_t h1, h2, len;
  uint8_t tail[8];
  int ntail;
} mj_hash;

void mj_hash_init(mj_hash *h, uint64_t seed);
void mj_hash_bytes(mj_hash *h, const void *data, size_t n);
/* Hashes the string and its terminating NUL, so ("ab","c") and ("a","bc") differ. */
void mj_hash_str(mj_hash *h, const char *s);
void mj_hash_u64(mj_hash *h, uint64_t v);
void mj_hash_final(const mj_hash *h, uint8_t out[16]);
/* 32 lowercase hex digits and a NUL. */
void mj_hash_hex(const uint8_t key[16], char out[33]);

#endif
