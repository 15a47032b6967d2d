/* ep.h: expert parallelism's index math, the same on every rank and free of the GPU: which of a
 * rank's tokens go to which rank, where each lands in its receiver's batch, which local expert a
 * global id is there, and where each slot's row comes home, so that every rank runs its own experts
 * on the tokens routed to it and each token's K slot rows come back to be summed in slot order, as
 * one GPU's forward sums them (bitwise so when the plans are batch-invariant, the rows then being
 * the bits a single forward computes).
 *
 * The world: R ranks; G global experts, expert g owned by rank owner[g]. A rank's tokens: T of
 * them, ids [T, K] of global ids (an id outside [0, G) goes nowhere and contributes nothing).
 *   Dispatch: token t goes once to each rank that owns one of its slots' experts; a rank's send
 *     buffer is grouped by destination rank (in rank order), tokens ascending within a group.
 *   Receive: rank o's batch is rank 0's group for o, then rank 1's, and so on; its plan maps the
 *     global ids of a received token to its local experts or -1 (mj_ep_expert_map) and so runs
 *     exactly the slots it owns.
 *   Return: rank o sends back, for its batch's tokens in order, the rows of the slots it owns, in
 *     slot order; the source puts each at slot t * K + k of its own slot rows (mj_ep_return_slots).
 * Uses nothing but stdint. */
#ifndef MJ_RUNTIME_EP_H
#define MJ_RUNTIME_EP_H
#include <stdint.h>

/* The rank that owns global expert g, or -1 for an id outside [0, G). */
static inline int mj_ep_owner(const int32_t *owner, int64_t G, int64_t g) {
  return g >= 0 && g < G ? owner[g] : -1;
}

/* Rank `rank`'s local id of each global expert (its owned experts numbered in global order), -1
 * for the others, into map [G]; returns how many it owns. */
int64_t mj_ep_expert_map(const int32_t *owner, int64_t G, int rank, int32_t *map);

/* A rank's dispatch: counts [R] tokens to each rank, offsets [R + 1] where each group starts,
 * tokens [at most T * min(K, R)] the token of each row of the send buffer. Returns the rows. */
int64_t mj_ep_dispatch(int ranks, const int32_t *owner, int64_t G, int64_t T, int64_t K,
                       const int32_t *ids, int64_t *counts, int64_t *offsets, int64_t *tokens);

/* Where rank o's batch takes each source's group: counts [R * R] (counts[s * R + o], tokens rank s
 * sends rank o) into offsets [R + 1] (source s's tokens are rows [offsets[s], offsets[s + 1]) of
 * o's batch). Returns o's batch size. */
int64_t mj_ep_receive(int ranks, const int64_t *counts, int o, int64_t *offsets);

/* The slot rows rank o returns for one source, in order, and the slot t * K + k each lands in at
 * the source: the source's group for o (tokens [offsets[o], offsets[o + 1]) of its send buffer),
 * each token's slots owned by o in slot order. slots gets them; returns how many. */
int64_t mj_ep_return_slots(const int32_t *owner, int64_t G, int64_t K, const int32_t *ids,
                           const int64_t *offsets, const int64_t *tokens, int o, int64_t *slots);

#endif
