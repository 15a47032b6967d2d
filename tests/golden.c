/* golden.c: reader of the golden test vectors (see golden.h); uses POSIX dirent/stat and ref.h. */
#define _POSIX_C_SOURCE 200809L

#include "golden.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tools/ref.h"

#ifndef MOEJIT_SOURCE_DIR
#error "MOEJIT_SOURCE_DIR (the repository root) must be defined when compiling golden.c"
#endif

/* A case folder's path fits DIR_LEN; a file's path adds at most FILE_LEN for "/name.bin". */
enum { DIR_LEN = 4096, FILE_LEN = 64 };

const char *mj_golden_root(void) {
  const char *env = getenv("MOEJIT_GOLDEN_DIR");
  return env && *env ? env : MOEJIT_SOURCE_DIR "/../shared/golden";
}

const char *mj_golden_act_root(void) {
  const char *env = getenv("MOEJIT_GOLDEN_ACT_DIR");
  return env && *env ? env : MOEJIT_SOURCE_DIR "/tests/golden-act";
}

const char *mj_golden_mxfp4_root(void) {
  const char *env = getenv("MOEJIT_GOLDEN_MXFP4_DIR");
  return env && *env ? env : MOEJIT_SOURCE_DIR "/../shared/golden-mxfp4";
}

static int cmp_name(const void *a, const void *b) { return strcmp(a, b); }

static int is_case_dir(const char *root, const char *name) {
  char path[DIR_LEN + FILE_LEN];
  struct stat st;
  if (snprintf(path, sizeof path, "%s/%s/meta.txt", root, name) >= (int)sizeof path)
    return 0;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int mj_golden_list(const char *root, char names[][64], int max) {
  DIR *dir = root ? opendir(root) : NULL;
  if (!dir)
    return -1;
  char(*all)[64] = NULL; /* every case found: [n][64], sorted before the first max are copied */
  int n = 0, cap = 0, rc = -1;
  for (struct dirent *d; (d = readdir(dir)) != NULL;) {
    if (d->d_name[0] == '.' || strlen(d->d_name) >= 64 || !is_case_dir(root, d->d_name))
      continue;
    if (n == cap) {
      cap = cap ? 2 * cap : 16;
      void *grown = realloc(all, (size_t)cap * sizeof *all);
      if (!grown)
        goto done;
      all = grown;
    }
    strcpy(all[n++], d->d_name);
  }
  if (n > 0)
    qsort(all, (size_t)n, sizeof *all, cmp_name);
  rc = n < max ? n : (max > 0 ? max : 0);
  if (rc > 0)
    memcpy(names, all, (size_t)rc * sizeof *all);
done:
  free(all);
  closedir(dir);
  return rc;
}

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
  if (!err || errlen == 0)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

/* a * b, or -1 when either is negative or the product overflows int64. */
static int64_t mul(int64_t a, int64_t b) {
  if (a < 0 || b < 0 || (b != 0 && a > INT64_MAX / b))
    return -1;
  return a * b;
}

/* Parses meta.txt ("key value" lines; unknown keys ignored) into g's shapes and dtype. */
static int read_meta(const char *dir, mj_golden *g, char *err, size_t errlen) {
  static const struct {
    const char *name;
    moejit_dtype dt;
  } dtypes[] = {{"f32", MOEJIT_F32}, {"f16", MOEJIT_F16}, {"bf16", MOEJIT_BF16}};
  struct {
    const char *key;
    int64_t *dst;
  } ints[] = {{"tokens", &g->tokens},
              {"hidden", &g->hidden},
              {"intermediate", &g->intermediate},
              {"experts", &g->experts},
              {"top_k", &g->top_k}};
  struct {
    const char *key;
    float *dst;
  } floats[] = {{"alpha", &g->alpha}, {"limit", &g->limit}};
  enum { NINT = sizeof ints / sizeof ints[0], NFLOAT = sizeof floats / sizeof floats[0] };
  int seen_int[NINT] = {0}, seen_float[NFLOAT] = {0}, seen_dtype = 0;

  char path[DIR_LEN + FILE_LEN], line[1024], key[64], value[256];
  snprintf(path, sizeof path, "%s/meta.txt", dir);
  FILE *f = fopen(path, "r");
  if (!f) {
    set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    return -1;
  }
  int rc = -1;
  while (fgets(line, sizeof line, f)) {
    if (sscanf(line, "%63s %255s", key, value) != 2)
      continue;
    char *end;
    for (int i = 0; i < NINT; i++) {
      if (strcmp(key, ints[i].key) != 0)
        continue;
      long long v = strtoll(value, &end, 10);
      if (*end || v <= 0) {
        set_err(err, errlen, "%s: %s=%s is not a positive integer", path, key, value);
        goto done;
      }
      *ints[i].dst = v;
      seen_int[i] = 1;
    }
    for (int i = 0; i < NFLOAT; i++) {
      if (strcmp(key, floats[i].key) != 0)
        continue;
      *floats[i].dst = strtof(value, &end);
      if (*end) {
        set_err(err, errlen, "%s: %s=%s is not a number", path, key, value);
        goto done;
      }
      seen_float[i] = 1;
    }
    if (strcmp(key, "activation") == 0) {
      static const char *const acts[] = {"swiglu",      "silu_mul", "gelu_mul", "gelu_tanh_mul",
                                         "swiglu_step", "silu",     "gelu",     "relu2"};
      int found = 0;
      for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++)
        if (strcmp(value, acts[i]) == 0)
          g->activation = (moejit_activation)i, found = 1;
      if (!found) {
        set_err(err, errlen, "%s: activation=%s is not one of moejit.h's", path, value);
        goto done;
      }
    }
    if (strcmp(key, "gate_up_layout") == 0) {
      static const char *const layouts[] = {"interleaved", "gate_up", "up_gate"};
      int found = 0;
      for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++)
        if (strcmp(value, layouts[i]) == 0)
          g->gate_up_layout = (moejit_gate_up_layout)i, found = 1;
      if (!found) {
        set_err(err, errlen, "%s: gate_up_layout=%s is not interleaved, gate_up or up_gate", path,
                value);
        goto done;
      }
    }
    if (strcmp(key, "bias") == 0) {
      if (strcmp(value, "none") != 0) {
        set_err(err, errlen, "%s: bias=%s is not none", path, value);
        goto done;
      }
      g->no_bias = 1;
    }
    if (strcmp(key, "weights") == 0) {
      if (strcmp(value, "mxfp4") != 0) {
        set_err(err, errlen, "%s: weights=%s is not mxfp4", path, value);
        goto done;
      }
      g->mxfp4 = 1;
    }
    if (strcmp(key, "dtype") == 0) {
      seen_dtype = 0;
      for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (strcmp(value, dtypes[i].name) == 0)
          g->dtype = dtypes[i].dt, seen_dtype = 1;
      if (!seen_dtype) {
        set_err(err, errlen, "%s: dtype=%s is not f32, f16 or bf16", path, value);
        goto done;
      }
    }
  }
  for (int i = 0; i < NINT; i++)
    if (!seen_int[i]) {
      set_err(err, errlen, "%s: key %s is missing", path, ints[i].key);
      goto done;
    }
  for (int i = 0; i < NFLOAT; i++)
    if (!seen_float[i]) {
      set_err(err, errlen, "%s: key %s is missing", path, floats[i].key);
      goto done;
    }
  if (!seen_dtype) {
    set_err(err, errlen, "%s: key dtype is missing", path);
    goto done;
  }
  rc = 0;
done:
  fclose(f);
  return rc;
}

/* Reads dir/file, which must hold exactly `bytes` bytes, into a new buffer; NULL on failure. */
static void *read_array(const char *dir, const char *file, const char *shape, int64_t bytes,
                        char *err, size_t errlen) {
  char path[DIR_LEN + FILE_LEN];
  snprintf(path, sizeof path, "%s/%s", dir, file);
  if (bytes <= 0) {
    set_err(err, errlen, "%s: shape %s from meta.txt is too large", path, shape);
    return NULL;
  }
  FILE *f = fopen(path, "rb");
  if (!f) {
    set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    return NULL;
  }
  void *buf = NULL;
  long size = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
  if (size != bytes) {
    set_err(err, errlen, "%s: %ld bytes, expected %lld for %s", path, size, (long long)bytes,
            shape);
    goto done;
  }
  rewind(f);
  buf = malloc((size_t)bytes);
  if (!buf) {
    set_err(err, errlen, "%s: out of memory for %lld bytes", path, (long long)bytes);
    goto done;
  }
  if (fread(buf, 1, (size_t)bytes, f) != (size_t)bytes) {
    set_err(err, errlen, "%s: short read", path);
    free(buf);
    buf = NULL;
  }
done:
  fclose(f);
  return buf;
}

int mj_golden_load(const char *root, const char *name, mj_golden *g, char *err, size_t errlen) {
  if (!g)
    return -1;
  memset(g, 0, sizeof *g);
  if (!root || !name) {
    set_err(err, errlen, "golden: root and name are required");
    return -1;
  }
  char dir[DIR_LEN];
  if (snprintf(dir, sizeof dir, "%s/%s", root, name) >= (int)sizeof dir) {
    set_err(err, errlen, "golden: path of case %s is too long", name);
    return -1;
  }
  snprintf(g->name, sizeof g->name, "%s", name);
  if (read_meta(dir, g, err, errlen) != 0)
    goto fail;

  const int64_t T = g->tokens, H = g->hidden, I = g->intermediate, E = g->experts, K = g->top_k;
  const int64_t ds = (int64_t)mj_dtype_size(g->dtype);
  /* each array's size in bytes from the meta shapes; mul() turns an overflow into -1 */
  /* GEMM1's outputs: 2I, or I for an activation without mul */
  const int64_t n1 = g->activation >= MOEJIT_ACT_SILU ? I : mul(2, I);
  const int64_t th = mul(T, H), tk4 = mul(mul(T, K), 4), gu = mul(E, n1);
  if (!(g->x = read_array(dir, "x.bin", "[T, H] dtype", mul(th, ds), err, errlen)) ||
      !(g->topk_ids = read_array(dir, "topk_ids.bin", "[T, K] int32", tk4, err, errlen)) ||
      !(g->topk_weights = read_array(dir, "topk_weights.bin", "[T, K] f32", tk4, err, errlen)) ||
      !(g->dense_weights =
            read_array(dir, "dense_weights.bin", "[T, E] f32", mul(mul(T, E), 4), err, errlen)) ||
      !(g->gate_up_proj = read_array(dir, "gate_up_proj.bin", "[E, H, 2I] dtype",
                                     mul(mul(gu, H), ds), err, errlen)) ||
      (!g->no_bias &&
       !(g->gate_up_proj_bias = read_array(dir, "gate_up_proj_bias.bin", "[E, 2I] dtype",
                                           mul(gu, ds), err, errlen))) ||
      !(g->down_proj = read_array(dir, "down_proj.bin", "[E, I, H] dtype",
                                  mul(mul(mul(E, I), H), ds), err, errlen)) ||
      (!g->no_bias && !(g->down_proj_bias = read_array(dir, "down_proj_bias.bin", "[E, H] dtype",
                                                       mul(mul(E, H), ds), err, errlen))) ||
      !(g->expected = read_array(dir, "expected.bin", "[T, H] f32", mul(th, 4), err, errlen)))
    goto fail;
  if (g->mxfp4 && (H % 32 != 0 || I % 32 != 0)) {
    set_err(err, errlen, "%s: an MXFP4 case needs H=%lld and I=%lld multiples of 32", dir,
            (long long)H, (long long)I);
    goto fail;
  }
  /* MXFP4: a block of 32 weights is 16 bytes and one scale byte */
  const int64_t gu_blocks = mul(gu, H / 32), down_blocks = mul(mul(E, H), I / 32);
  if (g->mxfp4 &&
      (!(g->gate_up_proj_blocks = read_array(dir, "gate_up_proj_blocks.bin", "[E, 2I, H/32, 16] u8",
                                             mul(gu_blocks, 16), err, errlen)) ||
       !(g->gate_up_proj_scales = read_array(dir, "gate_up_proj_scales.bin", "[E, 2I, H/32] u8",
                                             gu_blocks, err, errlen)) ||
       !(g->down_proj_blocks = read_array(dir, "down_proj_blocks.bin", "[E, H, I/32, 16] u8",
                                          mul(down_blocks, 16), err, errlen)) ||
       !(g->down_proj_scales =
             read_array(dir, "down_proj_scales.bin", "[E, H, I/32] u8", down_blocks, err, errlen))))
    goto fail;
  return 0;
fail:
  mj_golden_free(g);
  return -1;
}

void mj_golden_free(mj_golden *g) {
  if (!g)
    return;
  free(g->x);
  free(g->gate_up_proj);
  free(g->gate_up_proj_bias);
  free(g->down_proj);
  free(g->down_proj_bias);
  free(g->topk_ids);
  free(g->topk_weights);
  free(g->dense_weights);
  free(g->expected);
  free(g->gate_up_proj_blocks);
  free(g->gate_up_proj_scales);
  free(g->down_proj_blocks);
  free(g->down_proj_scales);
  memset(g, 0, sizeof *g);
}
