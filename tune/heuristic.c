/* heuristic.c: the GEMM configuration tables, the pick by rows per expert and the tuner's search
 * space (see heuristic.h). */
#include "tune/heuristic.h"

#include <stdio.h>
#include <string.h>

/* The heuristic's tables, one a math path (and sm_90a's for f16/bf16): each entry is chosen while
 * T * K / E (rows per expert) is at most its max_avg_rows (and, where set, T * K at most its
 * max_slots); names are derived (mj_tune_config_name). */
#define MMA(m, n, k, s, wm_, wn_, rows)                                                            \
  {                                                                                                \
    .kind = MJ_GEMM_SYNC, .bm = m, .bn = n, .bk = k, .stages = s, .wm = wm_, .wn = wn_,            \
    .max_avg_rows = rows                                                                           \
  }
#define FFMA(m, n, k, s, tm_, tn_, rows)                                                           \
  {                                                                                                \
    .kind = MJ_GEMM_SYNC, .bm = m, .bn = n, .bk = k, .stages = s, .tm = tm_, .tn = tn_,            \
    .max_avg_rows = rows                                                                           \
  }
/* a wgmma tile: m x n, s stages, b blocks an SM, pingpong, GEMM2 chained; chosen up to rows rows
 * an expert and, where slots > 0, that many slots. WG(128, 192, 4, 1, 0, 0, ...) is named
 * wg_m128n192s4c1; WG(64, 128, 3, 2, 0, 1, ...) wg_m64n128s3c2ch (heuristic.h has the grammar). */
#define WG(m, n, s, b, pp, ch, rows, slots)                                                        \
  {                                                                                                \
    .kind = MJ_GEMM_WGMMA, .bm = m, .bn = n, .bk = 64, .stages = s, .ctas = b, .pingpong = pp,     \
    .chain = ch, .max_avg_rows = rows, .max_slots = slots                                          \
  }
/* a streamed tile: m x n, u loads a thread in flight, GEMM2 split z ways: stream_m1n64u6z2 */
#define STREAM(m, n, u, z, rows, slots)                                                            \
  {                                                                                                \
    .kind = MJ_GEMM_STREAM, .bm = m, .bn = n, .bk = 8, .stages = u, .splits = z,                   \
    .max_avg_rows = rows, .max_slots = slots                                                       \
  }

/* f16 / bf16: mma.sync m16n8k16. A 16-row tile for decode, 64 and 128 rows for prefill. */
static const mj_gemm_config mma_configs[] = {
    MMA(16, 128, 64, 4, 1, 4, 24),
    MMA(64, 128, 32, 4, 2, 2, 96),
    MMA(128, 128, 32, 3, 2, 4, INT64_MAX),
};

/* f16 / bf16 on sm_90a, by rows per expert; what each entry beat: docs/experiments.md#wgmma-tiles.
 * One token, the streamed path; two tokens to 32 rows, 64 x 128 tiles two blocks an SM (GEMM2
 * chained to GEMM1 from three tokens to 8 rows); to 256 rows the ping-pong 128 x 128 tile; then
 * the cooperative 128 x 192 tile. */
static const mj_gemm_config wgmma_configs[] = {
    STREAM(1, 64, 6, 2, 1, 4),
    WG(64, 128, 3, 2, 0, 0, 1, 8),
    WG(64, 128, 3, 2, 0, 1, 8, 0),
    WG(64, 128, 3, 2, 0, 0, 32, 0),
    WG(128, 128, 4, 1, 1, 0, 64, 0),
    WG(128, 128, 5, 1, 1, 0, 256, 0),
    WG(128, 192, 4, 1, 0, 0, INT64_MAX, 0),
};

/* f32 on TF32 tensor cores: mma.sync m16n8k8. */
static const mj_gemm_config tf32_configs[] = {
    MMA(16, 128, 32, 4, 1, 4, 24),
    MMA(64, 128, 32, 3, 2, 2, 96),
    MMA(128, 128, 32, 3, 2, 4, INT64_MAX),
};

/* f16 / bf16 activations on MXFP4 weights (decoded in the kernel): one token streamed, 32 columns
 * a block and GEMM2 split in two; then mma.sync tiles with 64-deep K steps (two scale blocks). */
static const mj_gemm_config mxfp4_configs[] = {
    STREAM(1, 32, 4, 2, 1, 4),
    MMA(16, 128, 64, 4, 1, 4, 24),
    MMA(64, 128, 64, 3, 2, 2, 96),
    MMA(128, 128, 64, 3, 2, 4, INT64_MAX),
};

/* f32, exact: FFMA. */
static const mj_gemm_config ffma_configs[] = {
    FFMA(16, 128, 16, 3, 1, 8, 24),
    FFMA(64, 64, 16, 3, 4, 4, INT64_MAX),
};
#undef MMA
#undef FFMA
#undef WG
#undef STREAM

static const char *const math_names[] = {"mma", "tf32", "ffma", "mxfp4"};

mj_math mj_tune_math(moejit_dtype dtype, int exact_f32, moejit_weight_format weights) {
  if (weights == MOEJIT_WEIGHTS_MXFP4)
    return MJ_MATH_MXFP4;
  if (dtype == MOEJIT_F16 || dtype == MOEJIT_BF16)
    return MJ_MATH_MMA;
  return exact_f32 ? MJ_MATH_FFMA : MJ_MATH_TF32;
}

const char *mj_tune_math_name(mj_math math) { return math_names[math]; }

int mj_tune_math_takes(mj_math layer, mj_math parsed, const mj_gemm_config *c) {
  return layer == parsed || (layer == MJ_MATH_MXFP4 && c->kind != MJ_GEMM_SYNC) ||
         (layer == MJ_MATH_MMA && c->kind == MJ_GEMM_STREAM);
}

int mj_tune_arch_wgmma(const char *arch) { return arch && !strcmp(arch, "sm_90a"); }

#define COUNT(a) (int)(sizeof(a) / sizeof((a)[0]))

int mj_tune_heuristic(mj_math math, const char *arch, mj_gemm_config *out, int max) {
  static const struct {
    const mj_gemm_config *configs;
    int count;
  } tables[] = {[MJ_MATH_MMA] = {mma_configs, COUNT(mma_configs)},
                [MJ_MATH_TF32] = {tf32_configs, COUNT(tf32_configs)},
                [MJ_MATH_FFMA] = {ffma_configs, COUNT(ffma_configs)},
                [MJ_MATH_MXFP4] = {mxfp4_configs, COUNT(mxfp4_configs)}};
  const mj_gemm_config *t = tables[math].configs;
  int n = tables[math].count;
  if (math == MJ_MATH_MMA && mj_tune_arch_wgmma(arch)) {
    t = wgmma_configs;
    n = COUNT(wgmma_configs);
  }
  for (int i = 0; i < n && i < max; i++) {
    out[i] = t[i];
    mj_tune_config_name(&out[i], math);
  }
  return n < max ? n : max;
}

int mj_tune_invariant(const mj_gemm_config *c, int wgmma_plan) {
  return c->splits <= 1 && c->kind == (wgmma_plan ? MJ_GEMM_WGMMA : MJ_GEMM_SYNC);
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
    snprintf(c->name, sizeof c->name, "stream_m%dn%du%d", c->bm, c->bn, c->stages);
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
  } else if (sscanf(name, "stream_m%dn%du%d%c", &p.bm, &p.bn, &p.stages, &tail) == 3) {
    m = MJ_MATH_MMA; /* offered to f16/bf16 layers (the template takes f32 too) */
    p.kind = MJ_GEMM_STREAM;
    p.bk = 8;
    p.wm = 1; /* passes the check below; unused */
  } else if (sscanf(name, "tf32_m%dn%dk%ds%dw%dx%d%c", &p.bm, &p.bn, &p.bk, &p.stages, &p.wm, &p.wn,
                    &tail) == 6)
    m = MJ_MATH_TF32;
  else if (sscanf(name, "mxfp4_m%dn%dk%ds%dw%dx%d%c", &p.bm, &p.bn, &p.bk, &p.stages, &p.wm, &p.wn,
                  &tail) == 6)
    m = MJ_MATH_MXFP4;
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
    if (p.bm > 8 || (p.bn != 16 && p.bn != 32 && p.bn != 64 && p.bn != 128) || p.stages > 16)
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

/* The search space, as data: tile shapes with their warp (or thread) layout, times BK and stages.
 */
typedef struct shape {
  int bm, bn, a, b; /* wm, wn (tensor cores) or tm, tn (FFMA) */
} shape;

static const shape mma_shapes[] = {
    {16, 64, 1, 4},  {16, 128, 1, 4},  {16, 256, 1, 8},  {32, 128, 2, 2},
    {32, 256, 2, 4}, {64, 64, 2, 2},   {64, 128, 2, 2},  {64, 256, 2, 4},
    {128, 64, 4, 1}, {128, 128, 2, 4}, {128, 256, 2, 4},
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
    /* MXFP4: K steps of whole 32-weight scale blocks */
    [MJ_MATH_MXFP4] = {mma_shapes, sizeof mma_shapes / sizeof mma_shapes[0], {32, 64}, {3, 4}},
};

/* wgmma shapes on sm_90a: rows (one or two consumer warpgroups), columns, and ring depths. 240
 * columns divide GPT-OSS's 5760 and 2880 like 192 do, in fewer, wider slabs. */
static const int wg_bm[] = {64, 128}, wg_bn[] = {128, 192, 240, 256}, wg_stages[] = {3, 4, 5, 6};

/* Appends c, named, to out when keep keeps it; returns the new count. */
static int offer(mj_gemm_config *c, mj_math math, int (*keep)(void *, const mj_gemm_config *),
                 void *user, mj_gemm_config *out, int n, int max) {
  mj_tune_config_name(c, math);
  if (n < max && (!keep || keep(user, c)))
    out[n++] = *c;
  return n;
}

int mj_tune_search_space(mj_math math, const char *arch,
                         int (*keep)(void *user, const mj_gemm_config *c), void *user,
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
            if ((form == 1 && wg_bm[i] != 64) ||
                (form == 2 && (wg_bm[i] != 128 || wg_bn[j] != 128)))
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
            n = offer(&c, math, keep, user, out, n, max);
            if (c.bm == 64) {
              c.chain = 1;
              n = offer(&c, math, keep, user, out, n, max);
            }
          }
  /* The streamed path, as data: tiles of one row (one token) and of up to four; dense weights 64
   * columns a block (docs/experiments.md#one-token), 4, 6 or 8 loads a thread in flight; MXFP4 one
   * 16-byte block (32 weights) a load, 16, 32 or 64 columns a block of 128 threads (so 8, 4 or 2
   * threads read a row's consecutive blocks), 4 or 8 loads in flight; GEMM2 whole and split in
   * two. */
  static const struct {
    mj_math math;
    int cols[3], ncols, loads[3], nloads;
  } streams[] = {{MJ_MATH_MMA, {64}, 1, {4, 6, 8}, 3}, {MJ_MATH_MXFP4, {16, 32, 64}, 3, {4, 8}, 2}};
  for (size_t t = 0; t < sizeof streams / sizeof streams[0]; t++)
    for (int col = 0; streams[t].math == math && col < streams[t].ncols; col++)
      for (int u = 0; u < streams[t].nloads; u++)
        for (int i = 0; i < 4 && n < max; i++) {
          mj_gemm_config c;
          memset(&c, 0, sizeof c);
          c.kind = MJ_GEMM_STREAM;
          c.bm = i & 1 ? 4 : 1;
          c.bn = streams[t].cols[col];
          c.bk = 8;
          c.stages = streams[t].loads[u];
          c.splits = i & 2 ? 2 : 0;
          c.max_avg_rows = INT64_MAX;
          n = offer(&c, math, keep, user, out, n, max);
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
        n = offer(&c, math, keep, user, out, n, max);
        if (c.bm == 16) { /* decode tiles also split GEMM2 along K, for more blocks (in as many
                           * parts as the table's: a plan has one split count) */
          c.splits = 2;
          n = offer(&c, math, keep, user, out, n, max);
        }
      }
  return n;
}
