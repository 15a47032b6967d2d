/* heuristic.h: the GEMM math paths and tile configurations a plan compiles, the choice among them
 * by the average rows per expert of a forward (until tuned records exist), and the tuner's search
 * space. Data, not branches: one table per math path. Uses nothing but the public header. */
#ifndef MJ_TUNE_HEURISTIC_H
#define MJ_TUNE_HEURISTIC_H
#include <stddef.h>
#include <stdint.h>

#include "moejit.h"

/* How a GEMM multiplies: f16/bf16 tensor cores, f32 on TF32 tensor cores, exact f32 FFMA, or
 * f16/bf16 tensor cores on MXFP4 weights decoded in the kernel (mma.sync and streamed tiles). */
typedef enum mj_math {
  MJ_MATH_MMA = 0,
  MJ_MATH_TF32 = 1,
  MJ_MATH_FFMA = 2,
  MJ_MATH_MXFP4 = 3
} mj_math;

/* Which template a configuration instantiates: gemm (mma.sync / FFMA, sm_80+), wgmma (sm_90a:
 * TMA + wgmma, warp-specialised, persistent), or gemm's streamed path (sm_80+, any dtype: weights
 * loaded straight into registers and fp32 FFMA, for tiles of at most 8 rows; "stream" in names,
 * specs and gemm.cuh's MJ_PATH_STREAM). */
typedef enum mj_gemm_kind { MJ_GEMM_SYNC = 0, MJ_GEMM_WGMMA = 1, MJ_GEMM_STREAM = 2 } mj_gemm_kind;

/* A GEMM tile configuration. Its name spells every field (mj_tune_config_name, parsed back by
 * mj_tune_config_parse):
 *   mma_m<bm>n<bn>k<bk>s<stages>w<wm>x<wn>[z<splits>]  mma.sync, f16/bf16 ("tf32_" for TF32,
 *                                                      "mxfp4_" on MXFP4 weights)
 *   ffma_m<bm>n<bn>k<bk>s<stages>t<tm>x<tn>[z<splits>] exact f32 FFMA
 *   wg_m<bm>n<bn>s<stages>c<blocks an SM>[ch]          wgmma, sm_90a ("ch": GEMM2 chained)
 *   wg_m<bm>n<bn>s<stages>pp                           wgmma, the two consumers in turn
 *   stream_m<bm>n<bn>u<loads in flight>[z<splits>]     the streamed path (f16/bf16 weights, or
 *                                                      MXFP4: parsed as MJ_MATH_MMA, offered to
 *                                                      both)
 * z<splits>: GEMM2 split along K. */
typedef struct mj_gemm_config {
  char name[40];          /* "mma_m64n128k32s4w2x2", "ffma_m64n64k16s3t4x4", "wg_m128n192s4c1",
                           * "wg_m128n128s5pp", "stream_m1n64u6z2" */
  int bm, bn, bk, stages; /* MJ_GEMM_STREAM: stages is the loads in flight a thread ("u"), bk 8 */
  int wm, wn;             /* tensor-core paths: warps along M and N */
  int tm, tn;             /* FFMA path: outputs per thread along M and N */
  /* Chosen while T * K / E is at most this; the last entry takes everything above. */
  int64_t max_avg_rows;
  mj_gemm_kind kind; /* MJ_GEMM_WGMMA: bk is 64 and wm, wn, tm, tn are unused */
  int ctas;          /* MJ_GEMM_WGMMA: resident blocks per SM (1, or 2 for 64-row tiles) */
  /* MJ_GEMM_SYNC, MJ_GEMM_STREAM: GEMM2 split along K into that many partial sums (0, 1: no) */
  int splits;
  int pingpong; /* MJ_GEMM_WGMMA, bm 128: the two consumers take whole items in turn ("pp") */
  /* And, when not 0, while T * K (the slots) is at most this: the first entries of a table tell
   * forwards of one or two tokens apart, which T * K / E rounded up cannot. */
  int64_t max_slots;
  /* MJ_GEMM_WGMMA, bm 64 ("ch"): GEMM2's items wait for their own expert's rows of h, which GEMM1
   * counts, rather than for all of GEMM1 (wgmma.cuh's kChain); they then stream their weights
   * under GEMM1's last round. */
  int chain;
} mj_gemm_config;

/* The math path of a layer: MXFP4 weights -> MXFP4; f16/bf16 -> MMA; f32 -> TF32, or FFMA when
 * exact_f32. */
mj_math mj_tune_math(moejit_dtype dtype, int exact_f32, moejit_weight_format weights);
const char *mj_tune_math_name(mj_math math); /* "mma", "tf32", "ffma", "mxfp4" */
/* Whether a configuration named as math `parsed` (mj_tune_config_parse) serves a layer of math
 * `layer`: the same path, a streamed tile (f16/bf16 and MXFP4 layers both take them), or for an
 * MXFP4 layer a wgmma tile (decoded into its weight stages, sm_90a; named, not in its table). */
int mj_tune_math_takes(mj_math layer, mj_math parsed, const mj_gemm_config *c);
/* Whether an arch ("sm_90a") runs the wgmma template: Hopper's arch-specific target only. */
int mj_tune_arch_wgmma(const char *arch);
/* The heuristic's table for a math path on an arch, named, into out: on sm_90a, f16/bf16 layers
 * take wgmma kernels from a few rows per expert up; elsewhere the portable table. Ordered by
 * max_avg_rows (and max_slots within one max_avg_rows). Returns the count (at most max). */
int mj_tune_heuristic(mj_math math, const char *arch, mj_gemm_config *out, int max);
/* Whether configuration c belongs to the batch-invariant family of a plan (moejit_layer_desc's
 * batch_invariant): tiles whose every output sums K in one order, whatever their shape: wgmma
 * tiles where the plan takes them (wgmma_plan), else mma.sync / TF32 / FFMA ones; never a
 * streamed tile (FFMA sums a lane's rows, then the lanes) nor GEMM2 split along K. */
int mj_tune_invariant(const mj_gemm_config *c, int wgmma_plan);
/* Writes the configuration's name (it encodes every field) into c->name. */
void mj_tune_config_name(mj_gemm_config *c, mj_math math);
/* Parses a name back; returns 0 and its math path, or -1 when it is not one. max_avg_rows is 0. */
int mj_tune_config_parse(const char *name, mj_gemm_config *c, mj_math *math);
/* The tuner's search space for a math path on an arch (wgmma shapes too on sm_90a): every
 * configuration, named, that keep (NULL: all) keeps; whether a configuration fits a device is
 * its kernels' launch contracts' to say (runtime/build.c, mj_rt_config_fits). Returns the count
 * written (at most max). */
int mj_tune_search_space(mj_math math, const char *arch,
                         int (*keep)(void *user, const mj_gemm_config *c), void *user,
                         mj_gemm_config *out, int max);
/* Index into the table for a forward of `tokens` tokens. */
int mj_tune_pick(const mj_gemm_config *configs, int count, int64_t tokens, int64_t top_k,
                 int64_t experts);

#endif
