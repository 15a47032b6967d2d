/* golden.h: reader of the golden test vectors in shared/golden/ and shared/golden-mxfp4/ (format:
 * their README.md). */
#ifndef MJ_GOLDEN_H
#define MJ_GOLDEN_H

#include <stddef.h>
#include <stdint.h>

#include "moejit.h"

/* One case, loaded into host memory owned by the struct (release with mj_golden_free). */
typedef struct mj_golden {
  char name[64];                                        /* the case's folder name */
  int64_t tokens, hidden, intermediate, experts, top_k; /* T H I E K */
  float alpha, limit;
  moejit_dtype dtype;      /* F32, F16 or BF16 */
  void *x;                 /* [T, H] dtype */
  void *gate_up_proj;      /* [E, H, 2I] dtype: gate even, up odd columns */
  void *gate_up_proj_bias; /* [E, 2I] dtype */
  void *down_proj;         /* [E, I, H] dtype */
  void *down_proj_bias;    /* [E, H] dtype */
  int32_t *topk_ids;       /* [T, K] */
  float *topk_weights;     /* [T, K] */
  float *dense_weights;    /* [T, E] */
  float *expected;         /* [T, H] */
  /* MXFP4 cases (meta.txt: weights mxfp4), beside gate_up_proj and down_proj dequantised: */
  int mxfp4;
  uint8_t *gate_up_proj_blocks; /* [E, 2I, H/32, 16] */
  uint8_t *gate_up_proj_scales; /* [E, 2I, H/32] */
  uint8_t *down_proj_blocks;    /* [E, H, I/32, 16] */
  uint8_t *down_proj_scales;    /* [E, H, I/32] */
  /* The cases of tests/golden-act (meta.txt: activation, gate_up_layout, bias none): the layer's
   * activation and gate/up layout (gate_up_proj is [E, H, I] without mul), and no_bias (then both
   * bias arrays are NULL). Defaults: SwiGLU-OAI, interleaved, biases. */
  moejit_activation activation;
  moejit_gate_up_layout gate_up_layout;
  int no_bias;
} mj_golden;

/* $MOEJIT_GOLDEN_DIR when set and not empty, else MOEJIT_SOURCE_DIR "/../shared/golden"
 * (MOEJIT_SOURCE_DIR, the repository root, is a compile definition). */
const char *mj_golden_root(void);
/* The same for the MXFP4 cases: $MOEJIT_GOLDEN_MXFP4_DIR, else
 * MOEJIT_SOURCE_DIR "/../shared/golden-mxfp4". */
const char *mj_golden_mxfp4_root(void);

/* The activation and layout cases made by tests/make_act_cases.py: $MOEJIT_GOLDEN_ACT_DIR, else
 * MOEJIT_SOURCE_DIR "/tests/golden-act". */
const char *mj_golden_act_root(void);

/* Writes the names of the case folders under root (those holding a meta.txt), sorted, into
 * names[0..max); names of 64 characters or more are skipped. Returns how many were written (at most
 * max; the first max in sorted order), or -1 if root cannot be read or memory runs out. */
int mj_golden_list(const char *root, char names[][64], int max);

/* Loads case `name` under root into *g (overwritten). Every file's size is checked against the
 * shapes in meta.txt. Returns 0, or -1 with *g zeroed and a message naming the file and the fault
 * in err[errlen] (err may be NULL). Arrays are read as little-endian, the host's order. */
int mj_golden_load(const char *root, const char *name, mj_golden *g, char *err, size_t errlen);

/* Frees the arrays and zeroes *g; accepts NULL and a zeroed struct. */
void mj_golden_free(mj_golden *g);

#endif /* MJ_GOLDEN_H */
