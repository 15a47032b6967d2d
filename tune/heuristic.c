/* heuristic.c: the GEMM configuration tables, the pick by rows per expert and the tuner's search
 * space (see heuristic.h). */
#include "tune/heuristic.h"

#include <stdio.h>
#include <string.h>

/* f16 / bf16: mma.sync m16n8k16. A 16-row tile for decode, 64 and 128 rows for prefill. */
static const mj_gemm_config mma_configs[] = {
    {"mma_m16n128k64s4w1x4", 16, 128, 64, 4, 1, 4, 0, 0, 24, MJ_GEMM_SYNC, 0, 0, 0, 0, 0},
    {"mma_m64n128k32s4w2x2", 64, 128, 32, 4, 2, 2, 0, 0, 96, MJ_GEMM_SYNC, 0, 0, 0, 0, 0},
    {"mma_m128n128k32s3w2x4", 128, 128, 32, 3, 2, 4, 0, 0, INT64_MAX, MJ_GEMM_SYNC, 0, 0, 0, 0, 0},
};

/* f16 / bf16 on sm_90a, by rows per expert (forwards on the H100, moejit bench --config, E = 32
 * and 128, top-4; figures E = 32 | E = 128, ms).
 * - One token (4 slots): the streamed path (gemm.cuh's path 3) in one-row tiles of 64 columns, 6
 *   loads a thread in flight, GEMM2 split along K in two: 0.0740 | 0.0740, against 0.0747 | 0.0748
 *   with 8 loads, 0.0761 | 0.0760 with 4 (0.0759 | 0.0762 split in three), 0.0829 | 0.0828 with 2,
 *   0.0858 | 0.0858 with 128 columns, 0.0876 | 0.0875 with 32, and 0.0812 | 0.0819 for the mma.sync
 *   16-row tile it replaces (64-column slabs, 6 stages, GEMM2 split in two, GEMM1 self-routed as
 *   this one is), whose shared-memory ring and tensor-core steps cost more per byte than registers
 *   and FFMA where one row of the tile is real (the 128- and 32-column, 2-load and mma.sync figures
 *   were taken before GEMM2 loaded two batches ahead of its wait). The wgmma tiles took 0.089 to
 *   0.095 (their gather is one more launch in the chain). From two tokens on the streamed tiles
 *   lose (2 | 8 | 64 tokens, gv_m4n64u6z2: 0.1324 | 0.3784 | 0.8736 at E = 32 against 0.1305 |
 *   0.3640 | 0.5371 below).
 * - From two tokens to 32 rows: 64 x 128, two blocks a SM, 3 stages (chained in between, below).
 *   Since a 64-row tile reads only the 8-row A boxes that hold its rows (mj_tune_wgmma_a_rows)
 *   and two tokens' items are shared evenly (wgmma.cuh's item_blocks), it beats every other
 *   64-row tile from 2 tokens to 64:
 *   at 2 tokens 0.1303 | 0.1437 against 0.1325 | 0.1470 for 64 x 192 with 4 stages, one block a SM
 *   (the pick before); at 8 tokens 0.3689 | 0.5083 against 0.3749 | 0.5196 for 64 x 256 with 3
 *   stages, one block a SM (the pick before), 0.3768 | 0.5125 for 64 x 64 with 12; at 64 tokens
 *   0.5392 | 1.909 against 0.5481 | 1.925. Its weights stream in by TMA, which beats the 16-row
 *   mma.sync tile although most of its rows are empty.
 * - From three tokens to 8 rows per expert, the same tile with GEMM2 chained to GEMM1 ("ch"):
 *   GEMM2's items wait for their own expert's h, so they stream their weights while GEMM1's last
 *   round, which few blocks run, still does. Unchained -> chained (a219ef7): 3 tokens 0.1770 |
 *   0.2265 -> 0.1725 | 0.2084; 8 tokens 0.3687 | 0.5088 -> 0.3642 | 0.4944; 64 tokens 0.5393 |
 *   1.9092 -> 0.5363 | 1.8991. At two tokens, whose items item_blocks already shares evenly, it
 *   gains nothing (0.1304 | 0.1439 -> 0.1316 | 0.1441); past 8 rows it ties or loses at E = 128
 *   (384 tokens 2.1598 -> 2.1652, 512 tokens 2.1805 -> 2.1894), where GEMM2's blocks then start
 *   and end staggered, though it still gains at E = 32 (96 tokens 0.5450 -> 0.5402).
 * - Past 32 rows the ping-pong tile (128 x 128 a consumer warpgroup, the two taking whole items in
 *   turn) beats two blocks of 64 x 192 a SM by up to 8 % (E = 32 and 2048 tokens 0.898 against
 *   0.968 ms, E = 128 and 2048 tokens 2.448 against 2.590) and ties at 128 rows; with 4 stages up to
 *   64 rows (E = 32 and 512 tokens 0.598 against 0.607 with 5, E = 128 and 2048 tokens 2.394
 *   against 2.448) and 5 above (at 128 rows 4 lose: 0.723 against 0.693, 2.797 against 2.667).
 * - Past 256 rows the cooperative 128 x 192 tile, whose slabs divide both GEMMs of GPT-OSS (5760
 *   and 2880), wins: E = 32, 16384 tokens 5.70 against 6.74 ms, where the ping-pong GEMM1 read
 *   6.9 GB from HBM against 2.5 (bench/device/kernels.py). */
static const mj_gemm_config wgmma_configs[] = {
    {"gv_m1n64u6z2", 1, 64, 8, 6, 0, 0, 0, 0, 1, MJ_GEMM_STREAM, 0, 2, 0, 4, 0},
    {"wg_m64n128s3c2", 64, 128, 64, 3, 0, 0, 0, 0, 1, MJ_GEMM_WGMMA, 2, 0, 0, 8, 0},
    {"wg_m64n128s3c2ch", 64, 128, 64, 3, 0, 0, 0, 0, 8, MJ_GEMM_WGMMA, 2, 0, 0, 0, 1},
    {"wg_m64n128s3c2", 64, 128, 64, 3, 0, 0, 0, 0, 32, MJ_GEMM_WGMMA, 2, 0, 0, 0, 0},
    {"wg_m128n128s4pp", 128, 128, 64, 4, 0, 0, 0, 0, 64, MJ_GEMM_WGMMA, 1, 0, 1, 0, 0},
    {"wg_m128n128s5pp", 128, 128, 64, 5, 0, 0, 0, 0, 256, MJ_GEMM_WGMMA, 1, 0, 1, 0, 0},
    {"wg_m128n192s4c1", 128, 192, 64, 4, 0, 0, 0, 0, INT64_MAX, MJ_GEMM_WGMMA, 1, 0, 0, 0, 0},
};

/* f32 on TF32 tensor cores: mma.sync m16n8k8. */
static const mj_gemm_config tf32_configs[] = {
    {"tf32_m16n128k32s4w1x4", 16, 128, 32, 4, 1, 4, 0, 0, 24, MJ_GEMM_SYNC, 0, 0, 0, 0, 0},
    {"tf32_m64n128k32s3w2x2", 64, 128, 32, 3, 2, 2, 0, 0, 96, MJ_GEMM_SYNC, 0, 0, 0, 0, 0},
    {"tf32_m128n128k32s3w2x4", 128, 128, 32, 3, 2, 4, 0, 0, INT64_MAX, MJ_GEMM_SYNC, 0, 0, 0, 0, 0},
};

/* f32, exact: FFMA. */
static const mj_gemm_config ffma_configs[] = {
    {"ffma_m16n128k16s3t1x8", 16, 128, 16, 3, 0, 0, 1, 8, 24, MJ_GEMM_SYNC, 0, 0, 0, 0, 0},
    {"ffma_m64n64k16s3t4x4", 64, 64, 16, 3, 0, 0, 4, 4, INT64_MAX, MJ_GEMM_SYNC, 0, 0, 0, 0, 0},
};

static const char *const math_names[] = {"mma", "tf32", "ffma"};

mj_math mj_tune_math(moejit_dtype dtype, int exact_f32) {
  if (dtype == MOEJIT_F16 || dtype == MOEJIT_BF16)
    return MJ_MATH_MMA;
  return exact_f32 ? MJ_MATH_FFMA : MJ_MATH_TF32;
}

const char *mj_tune_math_name(mj_math math) { return math_names[math]; }

const mj_gemm_config *mj_tune_gemm_configs(mj_math math, int *count) {
  switch (math) {
  case MJ_MATH_MMA:
    *count = (int)(sizeof mma_configs / sizeof mma_configs[0]);
    return mma_configs;
  case MJ_MATH_TF32:
    *count = (int)(sizeof tf32_configs / sizeof tf32_configs[0]);
    return tf32_configs;
  case MJ_MATH_FFMA:
    break;
  }
  *count = (int)(sizeof ffma_configs / sizeof ffma_configs[0]);
  return ffma_configs;
}

int mj_tune_arch_wgmma(const char *arch) { return arch && !strcmp(arch, "sm_90a"); }

const mj_gemm_config *mj_tune_gemm_configs_for(mj_math math, const char *arch, int *count) {
  if (math == MJ_MATH_MMA && mj_tune_arch_wgmma(arch)) {
    *count = (int)(sizeof wgmma_configs / sizeof wgmma_configs[0]);
    return wgmma_configs;
  }
  return mj_tune_gemm_configs(math, count);
}

int mj_tune_gemm_threads(const mj_gemm_config *c, mj_math math) {
  if (c->kind == MJ_GEMM_WGMMA) /* a producer warpgroup and one consumer per 64 rows */
    return 128 * (1 + c->bm / 64);
  if (c->kind == MJ_GEMM_STREAM) /* gemm.lua's kStreamThreads */
    return 128;
  if (math != MJ_MATH_FFMA)
    return 32 * c->wm * c->wn;
  return (c->bm / c->tm) * (c->bn / c->tn);
}

int mj_tune_wgmma_a_rows(const mj_gemm_config *c) { return c->bm == 64 ? 8 : c->bm; }

size_t mj_tune_gemm_smem(const mj_gemm_config *c, moejit_dtype dtype) {
  size_t elem = dtype == MOEJIT_F32 ? 4 : 2;
  size_t vec = 16 / elem;
  if (c->kind == MJ_GEMM_WGMMA) {
    /* weights come in 64-column boxes, so a slab's stage is rounded up to whole boxes */
    size_t staging = (size_t)(c->bm / 64) * 4 * 16 * (size_t)(c->bn / 2 + 8) * elem;
    size_t b_cols = ((size_t)c->bn + 63) / 64 * 64;
    return (size_t)c->stages * ((size_t)c->bm + b_cols) * 64 * elem + staging + 1024;
  }
  if (c->kind == MJ_GEMM_STREAM) /* registers, and static shared memory for the lanes' sums */
    return 0;
  return (size_t)c->stages * ((size_t)c->bm * (c->bk + vec) + (size_t)c->bk * (c->bn + vec)) * elem;
}

int mj_tune_pick(const mj_gemm_config *configs, int count, int64_t tokens, int64_t top_k,
                 int64_t experts) {
  int64_t avg = (tokens * top_k + experts - 1) / experts;
  for (int i = 0; i < count; i++)
    if (avg <= configs[i].max_avg_rows &&
        (configs[i].max_slots == 0 || tokens * top_k <= configs[i].max_slots))
      return i;
  return count - 1;
}

void mj_tune_config_name(mj_gemm_config *c, mj_math math) {
  if (c->kind == MJ_GEMM_WGMMA && c->pingpong)
    snprintf(c->name, sizeof c->name, "wg_m%dn%ds%dpp", c->bm, c->bn, c->stages);
  else if (c->kind == MJ_GEMM_WGMMA)
    snprintf(c->name, sizeof c->name, "wg_m%dn%ds%dc%d", c->bm, c->bn, c->stages, c->ctas);
  else if (c->kind == MJ_GEMM_STREAM)
    snprintf(c->name, sizeof c->name, "gv_m%dn%du%d", c->bm, c->bn, c->stages);
  else if (math != MJ_MATH_FFMA)
    snprintf(c->name, sizeof c->name, "%s_m%dn%dk%ds%dw%dx%d", math_names[math], c->bm, c->bn,
             c->bk, c->stages, c->wm, c->wn);
  else
    snprintf(c->name, sizeof c->name, "ffma_m%dn%dk%ds%dt%dx%d", c->bm, c->bn, c->bk, c->stages,
             c->tm, c->tn);
  if (c->kind != MJ_GEMM_WGMMA && c->splits > 1) { /* GEMM2 split along K */
    size_t len = strlen(c->name);
    snprintf(c->name + len, sizeof c->name - len, "z%d", c->splits);
  }
  if (c->kind == MJ_GEMM_WGMMA && c->chain) {
    size_t len = strlen(c->name);
    snprintf(c->name + len, sizeof c->name - len, "ch");
  }
}

int mj_tune_config_parse(const char *name, mj_gemm_config *c, mj_math *math) {
  mj_gemm_config p;
  char tail, base[40];
  mj_math m;
  memset(&p, 0, sizeof p);
  /* a trailing z<splits> (GEMM2 split along K) comes off first */
  snprintf(base, sizeof base, "%s", name);
  char *z = strrchr(base, 'z');
  if (z && z[1] >= '1' && z[1] <= '9' && sscanf(z + 1, "%d%c", &p.splits, &tail) == 1) {
    if (p.splits < 2 || p.splits > 64)
      return -1;
    *z = '\0';
  } else {
    p.splits = 0;
  }
  /* and a trailing ch (GEMM2 chained to GEMM1) */
  size_t len = strlen(base);
  if (len > 2 && !strcmp(base + len - 2, "ch")) {
    p.chain = 1;
    base[len - 2] = '\0';
  }
  const char *whole = name;
  name = base;
  if (sscanf(name, "mma_m%dn%dk%ds%dw%dx%d%c", &p.bm, &p.bn, &p.bk, &p.stages, &p.wm, &p.wn,
             &tail) == 6)
    m = MJ_MATH_MMA;
  else if (sscanf(name, "wg_m%dn%ds%dc%d%c", &p.bm, &p.bn, &p.stages, &p.ctas, &tail) == 4 ||
           (sscanf(name, "wg_m%dn%ds%dpp%c", &p.bm, &p.bn, &p.stages, &tail) == 3 &&
            (p.pingpong = p.ctas = 1))) {
    m = MJ_MATH_MMA;
    p.kind = MJ_GEMM_WGMMA;
    p.bk = 64;
    p.wm = 1; /* passes the check below; unused */
  }
  else if (sscanf(name, "gv_m%dn%du%d%c", &p.bm, &p.bn, &p.stages, &tail) == 3) {
    m = MJ_MATH_MMA; /* offered to f16/bf16 layers (the template takes f32 too) */
    p.kind = MJ_GEMM_STREAM;
    p.bk = 8;
    p.wm = 1; /* passes the check below; unused */
  }
  else if (sscanf(name, "tf32_m%dn%dk%ds%dw%dx%d%c", &p.bm, &p.bn, &p.bk, &p.stages, &p.wm, &p.wn,
                  &tail) == 6)
    m = MJ_MATH_TF32;
  else if (sscanf(name, "ffma_m%dn%dk%ds%dt%dx%d%c", &p.bm, &p.bn, &p.bk, &p.stages, &p.tm, &p.tn,
                  &tail) == 6)
    m = MJ_MATH_FFMA;
  else
    return -1;
  if (p.bm <= 0 || p.bn <= 0 || p.bk <= 0 || p.stages < 2 || (p.wm <= 0 && p.tm <= 0))
    return -1;
  if (p.kind == MJ_GEMM_WGMMA) {
    if ((p.bm != 64 && p.bm != 128) || p.bn % 16 != 0 || p.bn < 64 || p.bn > 256 || p.stages > 16 ||
        p.ctas < 1 || p.ctas > (p.bm == 64 ? 2 : 1) || (p.pingpong && p.bm != 128) ||
        (p.chain && p.bm != 64))
      return -1;
    p.wm = 0;
  }
  if (p.kind == MJ_GEMM_STREAM) {
    if (p.bm > 8 || (p.bn != 32 && p.bn != 64 && p.bn != 128) || p.stages > 16)
      return -1;
    p.wm = 0;
  }
  if ((p.kind == MJ_GEMM_WGMMA && p.splits) || (p.kind != MJ_GEMM_WGMMA && p.chain))
    return -1;
  mj_tune_config_name(&p, m);
  if (strcmp(p.name, whole) != 0) /* one spelling per configuration */
    return -1;
  *c = p;
  *math = m;
  return 0;
}

/* The search space, as data: tile shapes with their warp (or thread) layout, times BK and stages. */
typedef struct shape {
  int bm, bn, a, b; /* wm, wn (tensor cores) or tm, tn (FFMA) */
} shape;

static const shape mma_shapes[] = {
    {16, 64, 1, 4},   {16, 128, 1, 4},  {16, 256, 1, 8},  {32, 128, 2, 2},
    {32, 256, 2, 4},  {64, 64, 2, 2},   {64, 128, 2, 2},  {64, 256, 2, 4},
    {128, 64, 4, 1},  {128, 128, 2, 4}, {128, 256, 2, 4},
};
static const shape ffma_shapes[] = {
    {16, 128, 1, 8}, {32, 64, 2, 4}, {64, 64, 4, 4}, {64, 128, 4, 8}, {128, 128, 8, 8},
};

typedef struct space {
  const shape *shapes;
  int nshapes;
  int bk[2], stages[2];
} space;

static const space spaces[] = {
    [MJ_MATH_MMA] = {mma_shapes, sizeof mma_shapes / sizeof mma_shapes[0], {32, 64}, {3, 4}},
    [MJ_MATH_TF32] = {mma_shapes, sizeof mma_shapes / sizeof mma_shapes[0], {16, 32}, {3, 4}},
    [MJ_MATH_FFMA] = {ffma_shapes, sizeof ffma_shapes / sizeof ffma_shapes[0], {16, 32}, {2, 3}},
};

/* wgmma shapes on sm_90a: rows (one or two consumer warpgroups), columns, and ring depths. 240
 * columns divide GPT-OSS's 5760 and 2880 like 192 do, in fewer, wider slabs. */
static const int wg_bm[] = {64, 128}, wg_bn[] = {128, 192, 240, 256}, wg_stages[] = {3, 4, 5, 6};

int mj_tune_search_space(mj_math math, moejit_dtype dtype, const char *arch, size_t smem_limit,
                         mj_gemm_config *out, int max) {
  const space *sp = &spaces[math];
  int n = 0;
  /* per shape and depth, up to three forms: one block a SM; two (64 rows); ping-pong (128 x 128:
   * a consumer holds all 128 rows, and 128 accumulators a thread is as many as fit); the 64-row
   * forms both with GEMM2 chained to GEMM1 and without */
  if (math == MJ_MATH_MMA && mj_tune_arch_wgmma(arch))
    for (int i = 0; i < 2; i++)
      for (int j = 0; j < 4; j++)
        for (int s = 0; s < 4; s++)
          for (int form = 0; form < 3 && n < max; form++) {
            if ((form == 1 && wg_bm[i] != 64) || (form == 2 && (wg_bm[i] != 128 || wg_bn[j] != 128)))
              continue;
            mj_gemm_config c;
            memset(&c, 0, sizeof c);
            c.kind = MJ_GEMM_WGMMA;
            c.bm = wg_bm[i];
            c.bn = wg_bn[j];
            c.bk = 64;
            c.stages = wg_stages[s];
            c.ctas = form == 1 ? 2 : 1;
            c.pingpong = form == 2;
            c.max_avg_rows = INT64_MAX;
            /* the block's own barriers (static, under 256 bytes) come on top, and each resident
             * block keeps 1 KB of the SM's 228 KB for itself */
            size_t block = mj_tune_gemm_smem(&c, dtype) + 256;
            if (block > smem_limit || (block + 1024) * (size_t)c.ctas > 228 * 1024)
              continue;
            mj_tune_config_name(&c, math);
            out[n++] = c;
            if (c.bm == 64 && n < max) {
              c.chain = 1;
              mj_tune_config_name(&c, math);
              out[n++] = c;
            }
          }
  /* the streamed path for tiles of one row (one token) and of up to four, 64 columns a block (32
   * and 128 lose by 10 % and more at one token), 4, 6 or 8 loads a thread in flight, GEMM2 whole
   * and split in two */
  static const int gv_loads[] = {4, 6, 8};
  if (math == MJ_MATH_MMA)
    for (int i = 0; i < 12 && n < max; i++) {
      mj_gemm_config c;
      memset(&c, 0, sizeof c);
      c.kind = MJ_GEMM_STREAM;
      c.bm = i & 1 ? 4 : 1;
      c.bn = 64;
      c.bk = 8;
      c.stages = gv_loads[i / 4];
      c.splits = i & 2 ? 2 : 0;
      c.max_avg_rows = INT64_MAX;
      mj_tune_config_name(&c, math);
      out[n++] = c;
    }
  for (int i = 0; i < sp->nshapes; i++)
    for (int k = 0; k < 2; k++)
      for (int s = 0; s < 2 && n < max; s++) {
        mj_gemm_config c;
        memset(&c, 0, sizeof c);
        c.bm = sp->shapes[i].bm;
        c.bn = sp->shapes[i].bn;
        c.bk = sp->bk[k];
        c.stages = sp->stages[s];
        if (math != MJ_MATH_FFMA) {
          c.wm = sp->shapes[i].a;
          c.wn = sp->shapes[i].b;
        } else {
          c.tm = sp->shapes[i].a;
          c.tn = sp->shapes[i].b;
        }
        c.max_avg_rows = INT64_MAX;
        if (mj_tune_gemm_smem(&c, dtype) + 1024 > smem_limit)
          continue;
        mj_tune_config_name(&c, math);
        out[n++] = c;
        if (c.bm == 16 && n < max) { /* decode tiles also split GEMM2 along K, for more blocks (in
                                      * as many parts as the table's: a plan has one split count) */
          c.splits = 2;
          mj_tune_config_name(&c, math);
          out[n++] = c;
        }
      }
  return n;
}
