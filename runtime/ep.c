/* ep.c: expert parallelism's index math (ep.h). */
#include "runtime/ep.h"

int64_t mj_ep_expert_map(const int32_t *owner, int64_t G, int rank, int32_t *map) {
  int64_t local = 0;
  for (int64_t g = 0; g < G; g++)
    map[g] = owner[g] == rank ? (int32_t)local++ : -1;
  return local;
}

/* Whether token t has a slot owned by rank o. */
static int goes_to(const int32_t *owner, int64_t G, int64_t K, const int32_t *ids, int64_t t,
                   int o) {
  for (int64_t k = 0; k < K; k++)
    if (mj_ep_owner(owner, G, ids[t * K + k]) == o)
      return 1;
  return 0;
}

int64_t mj_ep_dispatch(int ranks, const int32_t *owner, int64_t G, int64_t T, int64_t K,
                       const int32_t *ids, int64_t *counts, int64_t *offsets, int64_t *tokens) {
  int64_t n = 0;
  for (int o = 0; o < ranks; o++) {
    offsets[o] = n;
    for (int64_t t = 0; t < T; t++)
      if (goes_to(owner, G, K, ids, t, o))
        tokens[n++] = t;
    counts[o] = n - offsets[o];
  }
  offsets[ranks] = n;
  return n;
}

int64_t mj_ep_receive(int ranks, const int64_t *counts, int o, int64_t *offsets) {
  int64_t n = 0;
  for (int s = 0; s < ranks; s++) {
    offsets[s] = n;
    n += counts[(int64_t)s * ranks + o];
  }
  offsets[ranks] = n;
  return n;
}

int64_t mj_ep_return_slots(const int32_t *owner, int64_t G, int64_t K, const int32_t *ids,
                           const int64_t *offsets, const int64_t *tokens, int o, int64_t *slots) {
  int64_t n = 0;
  for (int64_t i = offsets[o]; i < offsets[o + 1]; i++)
    for (int64_t k = 0; k < K; k++)
      if (mj_ep_owner(owner, G, ids[tokens[i] * K + k]) == o)
        slots[n++] = tokens[i] * K + k;
  return n;
}
