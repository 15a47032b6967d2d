/* hash.c: the streaming 128-bit hash (see hash.h): two 64-bit multiply-rotate lanes over 8-byte
 * words, cross-mixed and finished with the murmur3 64-bit finaliser. */
#include "gen/hash.h"

#include <string.h>

#define P1 0x9E3779B185EBCA87ull
#define P2 0xC2B2AE3D27D4EB4Full
#define P3 0x165667B19E3779F9ull
#define P4 0x85EBCA77C2B2AE63ull

static uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static uint64_t fmix(uint64_t k) {
  k ^= k >> 33;
  k *= 0xFF51AFD7ED558CCDull;
  k ^= k >> 33;
  k *= 0xC4CEB9FE1A85EC53ull;
  k ^= k >> 33;
  return k;
}

static void word(mj_hash *h, uint64_t w) {
  h->h1 = rotl(h->h1 ^ (w * P1), 31) * P2;
  h->h2 = rotl(h->h2 ^ (w * P3), 29) * P4 + h->h1;
}

void mj_hash_init(mj_hash *h, uint64_t seed) {
  memset(h, 0, sizeof *h);
  h->h1 = seed ^ P3;
  h->h2 = seed ^ P4;
}

void mj_hash_bytes(mj_hash *h, const void *data, size_t n) {
  const uint8_t *p = data;
  h->len += n;
  while (n > 0) {
    h->tail[h->ntail++] = *p++;
    n--;
    if (h->ntail == 8) {
      uint64_t w;
      memcpy(&w, h->tail, 8);
      word(h, w);
      h->ntail = 0;
    }
    while (h->ntail == 0 && n >= 8) {
      uint64_t w;
      memcpy(&w, p, 8);
      word(h, w);
      p += 8;
      n -= 8;
    }
  }
}

void mj_hash_str(mj_hash *h, const char *s) { mj_hash_bytes(h, s, strlen(s) + 1); }

void mj_hash_u64(mj_hash *h, uint64_t v) { mj_hash_bytes(h, &v, sizeof v); }

void mj_hash_final(const mj_hash *h, uint8_t out[16]) {
  mj_hash c = *h;
  uint64_t w = 0;
  memcpy(&w, c.tail, (size_t)c.ntail);
  word(&c, w ^ ((uint64_t)c.ntail << 56));
  uint64_t a = fmix(c.h1 ^ c.len), b = fmix(c.h2 + a);
  a = fmix(a + b);
  memcpy(out, &a, 8);
  memcpy(out + 8, &b, 8);
}

void mj_hash_hex(const uint8_t key[16], char out[33]) {
  static const char digits[] = "0123456789abcdef";
  for (int i = 0; i < 16; i++) {
    out[2 * i] = digits[key[i] >> 4];
    out[2 * i + 1] = digits[key[i] & 15];
  }
  out[32] = '\0';
}
