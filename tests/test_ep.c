/* test_ep.c: expert parallelism's index math (runtime/ep.h) on a simulated world, no GPU: every
 * rank's tokens dispatched, received, run on the ranks that own their slots' experts (the CPU
 * reference, one slot at a time, through each rank's expert map and its own experts' weights),
 * returned and summed in slot order give, bit for bit, the reference's forward of each rank's
 * tokens on one device that holds every expert. Worlds of 1 to 9 ranks (some owning no expert),
 * experts in blocks and round robin, ranks with no tokens, ids repeated in a token and out of
 * range. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "runtime/ep.h"
#include "tools/ref.h"

enum { H = 32, I = 32, G = 8, K = 3, MAX_R = 9, MAX_T = 8 };

static uint64_t rng = 1;
static float urand(void) { /* [0, 1) */
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  return (float)(rng >> 40) / 16777216.0f;
}

/* The layer's weights for all G experts (bf16), and each rank's tokens. */
typedef struct world {
  uint16_t w1[G * H * 2 * I], b1[G * 2 * I], w2[G * I * H], b2[G * H];
  int ranks;
  int32_t owner[G];
  int64_t T[MAX_R];
  uint16_t x[MAX_R][MAX_T * H];
  int32_t ids[MAX_R][MAX_T * K];
  float wt[MAX_R][MAX_T * K];
} world;

static void fill(uint16_t *a, int64_t n, float scale) {
  for (int64_t i = 0; i < n; i++)
    a[i] = mj_f32_to_bf16(scale * (2.0f * urand() - 1.0f));
}

static mj_ref_layer layer(const world *w, int64_t T, const void *x, const int32_t *ids,
                          const float *wt) {
  mj_ref_layer L;
  memset(&L, 0, sizeof L);
  L.tokens = T, L.hidden = H, L.intermediate = I, L.experts = G, L.top_k = K;
  L.dtype = MOEJIT_BF16, L.alpha = 1.702f, L.limit = 7.0f;
  L.x = x, L.topk_ids = ids, L.topk_weights = wt;
  L.gate_up_proj = w->w1, L.gate_up_proj_bias = w->b1, L.down_proj = w->w2,
  L.down_proj_bias = w->b2;
  return L;
}

/* One rank's forward of one received token's slot k on its own experts: a layer of its n local
 * experts (their weights copied out in local order), global ids mapped by its expert map. */
static void slot_row(const world *w, const int32_t *map, int64_t n, const uint16_t *x,
                     const int32_t *ids, const float *wt, int64_t k, float *row) {
  static uint16_t w1[G * H * 2 * I], b1[G * 2 * I], w2[G * I * H], b2[G * H];
  for (int64_t g = 0; g < G; g++)
    if (map[g] >= 0) {
      const int64_t l = map[g];
      memcpy(w1 + l * H * 2 * I, w->w1 + g * H * 2 * I, sizeof(uint16_t) * H * 2 * I);
      memcpy(b1 + l * 2 * I, w->b1 + g * 2 * I, sizeof(uint16_t) * 2 * I);
      memcpy(w2 + l * I * H, w->w2 + g * I * H, sizeof(uint16_t) * I * H);
      memcpy(b2 + l * H, w->b2 + g * H, sizeof(uint16_t) * H);
    }
  int32_t one[K];
  for (int64_t j = 0; j < K; j++)
    one[j] = j == k ? ids[k] : -1; /* the other slots contribute nothing */
  mj_ref_layer L;
  memset(&L, 0, sizeof L);
  L.tokens = 1, L.hidden = H, L.intermediate = I, L.experts = n, L.top_k = K;
  L.dtype = MOEJIT_BF16, L.alpha = 1.702f, L.limit = 7.0f;
  L.x = x, L.topk_ids = one, L.topk_weights = wt;
  L.gate_up_proj = w1, L.gate_up_proj_bias = b1, L.down_proj = w2, L.down_proj_bias = b2;
  L.expert_map = map, L.global_experts = G;
  assert_int_equal(mj_ref_forward(&L, NULL, 1, row), 0);
}

static void run_world(world *w) {
  const int R = w->ranks;
  static int64_t counts[MAX_R][MAX_R], send_off[MAX_R][MAX_R + 1], tokens[MAX_R][MAX_T * K];
  int64_t C[MAX_R * MAX_R];
  for (int s = 0; s < R; s++) {
    int64_t n =
        mj_ep_dispatch(R, w->owner, G, w->T[s], K, w->ids[s], counts[s], send_off[s], tokens[s]);
    assert_true(n <= w->T[s] * (K < R ? K : R));
    for (int o = 0; o < R; o++)
      C[s * R + o] = counts[s][o];
  }
  /* each rank's slot rows, as the returns leave them; have: the slot got a row */
  static float yslot[MAX_R][MAX_T * K][H];
  static int have[MAX_R][MAX_T * K];
  memset(have, 0, sizeof have);
  for (int o = 0; o < R; o++) {
    int32_t map[G];
    const int64_t nlocal = mj_ep_expert_map(w->owner, G, o, map);
    int64_t recv_off[MAX_R + 1];
    const int64_t batch = mj_ep_receive(R, C, o, recv_off);
    int64_t b = 0; /* o's batch, row by row: source s's group in order */
    for (int s = 0; s < R; s++) {
      assert_int_equal(recv_off[s], b);
      int64_t slots[MAX_T * K];
      const int64_t nret =
          mj_ep_return_slots(w->owner, G, K, w->ids[s], send_off[s], tokens[s], o, slots);
      int64_t r = 0; /* the rows o returns to s, in o's order */
      for (int64_t i = send_off[s][o]; i < send_off[s][o + 1]; i++, b++) {
        const int64_t t = tokens[s][i];
        for (int64_t k = 0; k < K; k++) {
          if (mj_ep_owner(w->owner, G, w->ids[s][t * K + k]) != o)
            continue;
          assert_true(r < nret);
          float row[H];
          slot_row(w, map, nlocal, w->x[s] + t * H, w->ids[s] + t * K, w->wt[s] + t * K, k, row);
          const int64_t slot = slots[r++];
          assert_int_equal(slot, t * K + k); /* where the source puts the row */
          assert_false(have[s][slot]);
          memcpy(yslot[s][slot], row, sizeof row);
          have[s][slot] = 1;
        }
      }
      assert_int_equal(r, nret);
    }
    assert_int_equal(b, batch);
  }
  /* each source sums its tokens' slot rows in slot order, as combine does */
  for (int s = 0; s < R; s++) {
    const int64_t T = w->T[s];
    if (T == 0)
      continue;
    float want[MAX_T * H];
    mj_ref_layer L = layer(w, T, w->x[s], w->ids[s], w->wt[s]);
    assert_int_equal(mj_ref_forward(&L, NULL, T, want), 0);
    for (int64_t t = 0; t < T; t++)
      for (int64_t j = 0; j < H; j++) {
        float acc = 0.0f;
        for (int64_t k = 0; k < K; k++)
          if (have[s][t * K + k])
            acc += yslot[s][t * K + k][j];
        if (memcmp(&acc, &want[t * H + j], sizeof acc) != 0)
          fail_msg("%d ranks: rank %d token %lld output %lld: %a after the exchange, %a on one "
                   "device",
                   R, s, (long long)t, (long long)j, (double)acc, (double)want[t * H + j]);
      }
  }
}

static void test_simulated_worlds(void **state) {
  (void)state;
  static world w;
  fill(w.w1, G * H * 2 * I, 0.2f);
  fill(w.b1, G * 2 * I, 0.1f);
  fill(w.w2, G * I * H, 0.2f);
  fill(w.b2, G * H, 0.1f);
  static const int sizes[] = {1, 2, 3, 4, 5, 9};
  int worlds = 0;
  for (size_t r = 0; r < sizeof sizes / sizeof sizes[0]; r++)
    for (int round_robin = 0; round_robin < 2; round_robin++, worlds++) {
      w.ranks = sizes[r];
      for (int64_t g = 0; g < G; g++)
        w.owner[g] = (int32_t)(round_robin ? g % w.ranks : g * w.ranks / G);
      for (int s = 0; s < w.ranks; s++) {
        w.T[s] = (s * 3 + 2 + worlds) % (MAX_T + 1); /* some ranks have no tokens */
        fill(w.x[s], w.T[s] * H, 1.0f);
        for (int64_t i = 0; i < w.T[s] * K; i++) {
          /* ids in [-1, G]: out of range at both ends, repeats within a token */
          w.ids[s][i] = (int32_t)(urand() * (G + 2)) - 1;
          w.wt[s][i] = 0.25f + urand();
        }
      }
      run_world(&w);
    }
  print_message("%d worlds of 1 to 9 ranks: each token's output after the exchange is the one "
                "device's, bit for bit\n",
                worlds);
}

/* The index math's own cases: who sends what, how batches line up, the expert maps. */
static void test_dispatch_layout(void **state) {
  (void)state;
  const int32_t owner[4] = {1, 0, 1, 2};                /* 3 ranks, rank 1 owns experts 0 and 2 */
  const int32_t ids[4 * 2] = {0, 2, 1, 3, -1, 4, 2, 1}; /* token 2 goes nowhere */
  int64_t counts[3], offsets[4], tokens[8];
  assert_int_equal(mj_ep_dispatch(3, owner, 4, 4, 2, ids, counts, offsets, tokens), 5);
  assert_int_equal(counts[0], 2); /* tokens 1, 3 */
  assert_int_equal(counts[1], 2); /* tokens 0, 3 (token 0 once, though two slots) */
  assert_int_equal(counts[2], 1); /* token 1, whose expert 3 is rank 2's */
  int64_t want[5] = {1, 3, 0, 3, 1};
  assert_memory_equal(tokens, want, sizeof want);
  int32_t map[4];
  assert_int_equal(mj_ep_expert_map(owner, 4, 1, map), 2);
  assert_int_equal(map[0], 0);
  assert_int_equal(map[1], -1);
  assert_int_equal(map[2], 1);
  int64_t slots[8];
  assert_int_equal(mj_ep_return_slots(owner, 4, 2, ids, offsets, tokens, 1, slots), 3);
  assert_int_equal(slots[0], 0);         /* token 0, slot 0 */
  assert_int_equal(slots[1], 1);         /* token 0, slot 1 */
  assert_int_equal(slots[2], 6);         /* token 3, slot 0 */
  const int64_t C[2 * 2] = {3, 1, 2, 5}; /* counts[s * R + o] */
  int64_t recv[3];
  assert_int_equal(mj_ep_receive(2, C, 1, recv), 6);
  assert_int_equal(recv[1], 1);
  assert_int_equal(recv[2], 6);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_dispatch_layout),
      cmocka_unit_test(test_simulated_worlds),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
