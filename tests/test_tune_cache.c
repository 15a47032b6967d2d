/* test_tune_cache.c: the cubin cache and the tuning records, without a GPU: key sensitivity,
 * round trips, every kind of damaged file recompiled, several processes filling one folder, an
 * unwritable folder, one compile per key across threads, records merging and damaged lines, plans
 * following the records. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gen/hash.h"
#include "runtime/internal.h"
#include "tune/cache.h"
#include "tune/records.h"

static char g_root[256];
static int g_case;

static int setup(void **state) {
  (void)state;
  snprintf(g_root, sizeof g_root, "/tmp/moejit-test-cache-XXXXXX");
  return mkdtemp(g_root) ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
  return system(cmd) == 0 ? 0 : -1;
}

/* A fresh folder for one test. */
static void fresh_dir(char *buf, size_t len) {
  snprintf(buf, len, "%s/case%d", g_root, ++g_case);
  mkdir(buf, 0755);
}

typedef struct logbook {
  int warnings;
  char last[1024];
} logbook;

static void log_cb(void *user, moejit_log_level level, const char *msg) {
  logbook *b = user;
  if (level == MOEJIT_LOG_WARN) {
    b->warnings++;
    snprintf(b->last, sizeof b->last, "%s", msg);
  }
}

static moejit_ctx *offline_ctx(const char *dir, logbook *book) {
  moejit_ctx_options o;
  moejit_ctx_options_init(&o);
  o.offline_arch = "sm_90a";
  o.cache_dir = dir;
  o.log = log_cb;
  o.log_user = book;
  moejit_ctx *ctx = NULL;
  assert_int_equal(moejit_create(&ctx, &o), MOEJIT_OK);
  return ctx;
}

/* A small bf16 layer whose offline sm_90a plan takes the wgmma path. */
static moejit_layer_desc bf16_layer(void) {
  moejit_layer_desc d;
  moejit_layer_desc_init(&d);
  d.hidden = 256;
  d.intermediate = 192;
  d.experts = 16;
  d.top_k = 4;
  d.max_tokens = 1024;
  return d;
}

static moejit_layer_desc small_layer(void) {
  moejit_layer_desc d;
  moejit_layer_desc_init(&d);
  d.hidden = 64;
  d.intermediate = 96;
  d.experts = 5;
  d.top_k = 2;
  d.max_tokens = 64;
  d.dtype = MOEJIT_F32;
  return d;
}

/* Compiles the small layer on a fresh context over dir; returns how many NVRTC compiles it took. */
static int64_t compiles_for_plan(const char *dir, logbook *book) {
  moejit_ctx *ctx = offline_ctx(dir, book);
  moejit_layer_desc d = small_layer();
  moejit_plan *plan = NULL;
  assert_int_equal(moejit_plan_create(ctx, &d, &plan), MOEJIT_OK);
  int64_t n = ctx->compiles;
  moejit_plan_destroy(plan);
  moejit_destroy(ctx);
  return n;
}

static int list_cubins(const char *dir, char names[][64], int max) {
  char sub[512];
  snprintf(sub, sizeof sub, "%s/cubin", dir);
  DIR *d = opendir(sub);
  int n = 0;
  struct dirent *de;
  while (d && (de = readdir(d)) != NULL)
    if (de->d_name[0] != '.' && n < max)
      snprintf(names[n++], 64, "%.63s", de->d_name);
  if (d)
    closedir(d);
  return n;
}

/* ---- keys ---- */

static void test_key_sensitivity(void **state) {
  (void)state;
  mj_gen_file hdr[2] = {{"a.cuh", "int a;", 6}, {"b.cuh", "int b;", 6}};
  mj_gen_file hdr2[2] = {{"a.cuh", "int a;", 6}, {"b.cuh", "int c;", 6}};
  uint8_t base[16], k[16];
  mj_tune_cache_key("source", hdr, 2, "-arch", 13, 0, "sm_90a", base);
  mj_tune_cache_key("source", hdr, 2, "-arch", 13, 0, "sm_90a", k);
  assert_memory_equal(base, k, 16); /* a pure function */
  mj_tune_cache_key("sourcf", hdr, 2, "-arch", 13, 0, "sm_90a", k);
  assert_memory_not_equal(base, k, 16);
  mj_tune_cache_key("source", hdr2, 2, "-arch", 13, 0, "sm_90a", k);
  assert_memory_not_equal(base, k, 16);
  mj_tune_cache_key("source", hdr, 1, "-arch", 13, 0, "sm_90a", k);
  assert_memory_not_equal(base, k, 16);
  mj_tune_cache_key("source", hdr, 2, "-arch -G", 13, 0, "sm_90a", k);
  assert_memory_not_equal(base, k, 16);
  mj_tune_cache_key("source", hdr, 2, "-arch", 12, 0, "sm_90a", k);
  assert_memory_not_equal(base, k, 16);
  mj_tune_cache_key("source", hdr, 2, "-arch", 13, 1, "sm_90a", k);
  assert_memory_not_equal(base, k, 16);
  mj_tune_cache_key("source", hdr, 2, "-arch", 13, 0, "sm_80", k);
  assert_memory_not_equal(base, k, 16);
  /* boundaries between fields matter */
  mj_tune_cache_key("sourc", hdr, 2, "e-arch", 13, 0, "sm_90a", k);
  assert_memory_not_equal(base, k, 16);
}

/* ---- files ---- */

static void write_bytes(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, n, f), n);
  fclose(f);
}

static size_t read_bytes(const char *path, unsigned char *buf, size_t cap) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  size_t n = fread(buf, 1, cap, f);
  fclose(f);
  return n;
}

static void test_file_round_trip_and_damage(void **state) {
  (void)state;
  char dir[300], path[600];
  fresh_dir(dir, sizeof dir);
  char sub[320];
  snprintf(sub, sizeof sub, "%s/cubin", dir);
  mkdir(sub, 0755);
  uint8_t key[16], other[16], got_key[16];
  unsigned char payload[3000];
  for (size_t i = 0; i < sizeof payload; i++)
    payload[i] = (unsigned char)(i * 131 + 7);
  mj_hash h;
  mj_hash_init(&h, 1);
  mj_hash_str(&h, "k");
  mj_hash_final(&h, key);
  memcpy(other, key, 16);
  other[3] ^= 1;
  assert_int_equal(mj_tune_cache_write_file(dir, key, payload, sizeof payload), 0);
  mj_tune_cache_path(dir, key, path, sizeof path);
  void *data;
  size_t size;
  assert_int_equal(mj_tune_cache_read_file(path, key, &data, &size, got_key), MJ_CACHE_FILE_OK);
  assert_int_equal(size, sizeof payload);
  assert_memory_equal(data, payload, size);
  assert_memory_equal(got_key, key, 16);
  free(data);
  assert_int_equal(mj_tune_cache_read_file(path, other, &data, &size, NULL), MJ_CACHE_FILE_BAD_KEY);

  unsigned char good[4096], bad[4200];
  size_t n = read_bytes(path, good, sizeof good);
  assert_true(n > sizeof payload);
  struct {
    const char *what;
    size_t cut; /* length kept, or 0 for all */
    long flip;  /* byte to flip, -1 none */
    int append; /* trailing bytes */
    mj_cache_file_status want;
  } cases[] = {
      {"zero length", 1, -1, 0, MJ_CACHE_FILE_SHORT},
      {"half a header", 20, -1, 0, MJ_CACHE_FILE_SHORT},
      {"header only", n - sizeof payload, -1, 0, MJ_CACHE_FILE_SHORT},
      {"truncated payload", n - 1, -1, 0, MJ_CACHE_FILE_SHORT},
      {"wrong magic", 0, 0, 0, MJ_CACHE_FILE_BAD_MAGIC},
      {"wrong version", 0, 8, 0, MJ_CACHE_FILE_BAD_VERSION},
      {"key bit flipped", 0, 16 + 5, 0, MJ_CACHE_FILE_BAD_KEY},
      {"payload bit flipped", 0, (long)n - 100, 0, MJ_CACHE_FILE_BAD_CHECKSUM},
      {"checksum bit flipped", 0, 40 + 3, 0, MJ_CACHE_FILE_BAD_CHECKSUM},
      {"trailing bytes", 0, -1, 1, MJ_CACHE_FILE_LONG},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    size_t len = cases[i].cut == 1 ? 0 : cases[i].cut ? cases[i].cut : n;
    memcpy(bad, good, n);
    if (cases[i].flip >= 0)
      bad[cases[i].flip] ^= 0x10;
    if (cases[i].append) {
      bad[n] = 0;
      len = n + 1;
    }
    write_bytes(path, bad, len);
    mj_cache_file_status fs = mj_tune_cache_read_file(path, key, &data, &size, NULL);
    if (fs != cases[i].want)
      print_message("%s: got %s\n", cases[i].what, mj_tune_cache_file_error(fs));
    assert_int_equal(fs, cases[i].want);
    assert_null(data);
  }
}

/* Files named like a cubin that are not one: a FIFO (opening it for reading would wait for a
 * writer: the reader and the cache treat it as a miss at once; alarm() fails a hang), a folder,
 * and a sparse file whose header names a cubin of 6 GiB (refused before any allocation). */
static void test_hostile_files(void **state) {
  (void)state;
  char dir[300], sub[320], path[600];
  fresh_dir(dir, sizeof dir);
  snprintf(sub, sizeof sub, "%s/cubin", dir);
  mkdir(sub, 0755);
  uint8_t key[16];
  mj_hash h;
  mj_hash_init(&h, 2);
  mj_hash_str(&h, "hostile");
  mj_hash_final(&h, key);
  mj_tune_cache_path(dir, key, path, sizeof path);
  void *data = (void *)1;
  size_t size = 1;
  alarm(20);
  assert_int_equal(mkfifo(path, 0644), 0);
  assert_int_equal(mj_tune_cache_read_file(path, key, &data, &size, NULL),
                   MJ_CACHE_FILE_NOT_REGULAR);
  assert_null(data);
  mj_cache *c = NULL;
  mj_err err;
  assert_int_equal(mj_tune_cache_open(&c, dir, NULL, NULL, &err), MOEJIT_OK);
  assert_int_equal(mj_tune_cache_acquire(c, key, &data, &size), 0); /* a miss, not a hang */
  mj_tune_cache_abandon(c, key);
  mj_tune_cache_close(c);
  unlink(path);
  assert_int_equal(mkdir(path, 0755), 0);
  assert_int_equal(mj_tune_cache_read_file(path, key, &data, &size, NULL),
                   MJ_CACHE_FILE_NOT_REGULAR);
  rmdir(path);
  alarm(0);

  unsigned char payload[64] = {1};
  assert_int_equal(mj_tune_cache_write_file(dir, key, payload, sizeof payload), 0);
  const uint64_t claim = (uint64_t)6 << 30; /* the header's length field: bytes 32..39 */
  int fd = open(path, O_RDWR);
  assert_true(fd >= 0);
  assert_int_equal(pwrite(fd, &claim, sizeof claim, 32), (ssize_t)sizeof claim);
  assert_int_equal(ftruncate(fd, (off_t)(56 + claim)), 0);
  close(fd);
  assert_int_equal(mj_tune_cache_read_file(path, key, &data, &size, NULL), MJ_CACHE_FILE_TOO_LARGE);
  assert_null(data);
  unlink(path);
}

/* A plan over a damaged file recompiles that one module, replaces the file and warns. */
static void test_damaged_files_recompiled(void **state) {
  (void)state;
  char dir[300];
  fresh_dir(dir, sizeof dir);
  logbook book = {0};
  int64_t cold = compiles_for_plan(dir, &book);
  assert_true(cold >= 4);
  assert_int_equal(book.warnings, 0);
  assert_int_equal(compiles_for_plan(dir, &book), 0); /* warm: all from disk */
  char names[64][64];
  int n = list_cubins(dir, names, 64);
  assert_int_equal(n, cold);
  static const char *const damage[] = {"truncate", "zero", "flip", "magic", "version"};
  for (size_t i = 0; i < sizeof damage / sizeof damage[0]; i++) {
    char path[800];
    snprintf(path, sizeof path, "%.300s/cubin/%.63s", dir, names[i % n]);
    unsigned char buf[1 << 17];
    size_t len = read_bytes(path, buf, sizeof buf);
    if (!strcmp(damage[i], "truncate"))
      len /= 2;
    else if (!strcmp(damage[i], "zero"))
      len = 0;
    else if (!strcmp(damage[i], "flip"))
      buf[len - 10] ^= 1;
    else if (!strcmp(damage[i], "magic"))
      buf[1] = 'X';
    else
      buf[8] = 99;
    write_bytes(path, buf, len);
    book.warnings = 0;
    assert_int_equal(compiles_for_plan(dir, &book), 1);
    assert_int_equal(book.warnings, 1);
    assert_non_null(strstr(book.last, "damaged"));
    void *data;
    size_t size;
    assert_int_equal(mj_tune_cache_read_file(path, NULL, &data, &size, NULL), MJ_CACHE_FILE_OK);
    free(data);
    assert_int_equal(compiles_for_plan(dir, &book), 0);
  }
}

/* Several processes fill one empty folder at once: every file left is whole. */
static void test_concurrent_processes(void **state) {
  (void)state;
  char dir[300];
  fresh_dir(dir, sizeof dir);
  enum { NPROC = 4 };
  pid_t pids[NPROC];
  for (int i = 0; i < NPROC; i++) {
    pids[i] = fork();
    assert_true(pids[i] >= 0);
    if (pids[i] == 0) {
      moejit_ctx_options o;
      moejit_ctx_options_init(&o);
      o.offline_arch = "sm_90a";
      o.cache_dir = dir;
      moejit_ctx *ctx = NULL;
      moejit_plan *plan = NULL;
      moejit_layer_desc d = small_layer();
      int ok =
          moejit_create(&ctx, &o) == MOEJIT_OK && moejit_plan_create(ctx, &d, &plan) == MOEJIT_OK;
      moejit_plan_destroy(plan);
      moejit_destroy(ctx);
      _exit(ok ? 0 : 1);
    }
  }
  for (int i = 0; i < NPROC; i++) {
    int status = 0;
    assert_int_equal(waitpid(pids[i], &status, 0), pids[i]);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  char names[64][64];
  int n = list_cubins(dir, names, 64);
  logbook book = {0};
  int64_t expect = compiles_for_plan(dir, &book); /* 0 if every module is cached and valid */
  assert_int_equal(expect, 0);
  for (int i = 0; i < n; i++) {
    assert_null(strstr(names[i], ".tmp")); /* no temporary file left behind */
    char path[800];
    snprintf(path, sizeof path, "%.300s/cubin/%.63s", dir, names[i]);
    void *data;
    size_t size;
    assert_int_equal(mj_tune_cache_read_file(path, NULL, &data, &size, NULL), MJ_CACHE_FILE_OK);
    free(data);
  }
}

/* A folder that cannot be created: one warning, compiles in memory, plans still work. */
static void test_unwritable_dir(void **state) {
  (void)state;
  char dir[300], file[320], below[400];
  fresh_dir(dir, sizeof dir);
  snprintf(file, sizeof file, "%s/a-file", dir);
  write_bytes(file, "x", 1);
  snprintf(below, sizeof below, "%s/cache", file); /* a folder under a regular file */
  logbook book = {0};
  moejit_ctx *ctx = offline_ctx(below, &book);
  assert_int_equal(book.warnings, 1);
  assert_non_null(strstr(book.last, "memory only"));
  assert_null(mj_tune_cache_dir(ctx->cache));
  moejit_layer_desc d = small_layer();
  moejit_plan *plan = NULL;
  assert_int_equal(moejit_plan_create(ctx, &d, &plan), MOEJIT_OK);
  int64_t first = ctx->compiles;
  moejit_plan *again = NULL;
  assert_int_equal(moejit_plan_create(ctx, &d, &again), MOEJIT_OK);
  assert_int_equal(ctx->compiles, first); /* the in-memory table serves the second plan */
  assert_int_equal(book.warnings, 1);
  moejit_plan_destroy(plan);
  moejit_plan_destroy(again);
  moejit_destroy(ctx);
}

/* Two threads asking for one key: one compiles, the other waits and gets its cubin. */
typedef struct racer {
  mj_cache *cache;
  uint8_t key[16];
  int compiled;
  size_t got;
} racer;

static void *race(void *arg) {
  racer *r = arg;
  void *data;
  size_t size;
  if (mj_tune_cache_acquire(r->cache, r->key, &data, &size)) {
    r->got = size;
    free(data);
  } else {
    usleep(100000); /* a slow compile */
    static const char cubin[] = "pretend cubin";
    mj_tune_cache_put(r->cache, r->key, cubin, sizeof cubin);
    r->compiled = 1;
    r->got = sizeof cubin;
  }
  return NULL;
}

static void test_one_compile_per_key(void **state) {
  (void)state;
  char dir[300];
  fresh_dir(dir, sizeof dir);
  mj_cache *c;
  mj_err err;
  assert_int_equal(mj_tune_cache_open(&c, dir, NULL, NULL, &err), MOEJIT_OK);
  racer r[4];
  pthread_t th[4];
  for (int i = 0; i < 4; i++) {
    memset(&r[i], 0, sizeof r[i]);
    r[i].cache = c;
    memset(r[i].key, 0xAB, 16);
    assert_int_equal(pthread_create(&th[i], NULL, race, &r[i]), 0);
  }
  int compiled = 0;
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    compiled += r[i].compiled;
    assert_int_equal(r[i].got, sizeof "pretend cubin");
  }
  assert_int_equal(compiled, 1);
  mj_cache_stats s = mj_tune_cache_stats(c);
  assert_int_equal(s.misses, 1);
  assert_int_equal(s.memory_hits, 3);
  mj_tune_cache_close(c);
}

/* ---- records ---- */

static mj_record record(const char *arch, int64_t bucket, const char *config, double ms) {
  mj_record r;
  memset(&r, 0, sizeof r);
  snprintf(r.arch, sizeof r.arch, "%s", arch);
  r.sms = 132;
  r.hidden = r.intermediate = 2880;
  r.experts = 32;
  r.top_k = 4;
  snprintf(r.dtype, sizeof r.dtype, "bf16");
  snprintf(r.kernel, sizeof r.kernel, "gemm_mma");
  r.bucket = bucket;
  snprintf(r.version, sizeof r.version, "%s", moejit_version_string());
  snprintf(r.config, sizeof r.config, "%s", config);
  r.ms = ms;
  r.heuristic_ms = 2 * ms;
  return r;
}

static void test_records_format_and_merge(void **state) {
  (void)state;
  char dir[300], path[400];
  fresh_dir(dir, sizeof dir);
  snprintf(path, sizeof path, "%s/records.txt", dir);
  mj_record a = record("sm_90a", 64, "mma_m32n128k32s3w2x2", 0.5), back;
  char line[512];
  mj_tune_record_format(&a, line, sizeof line);
  assert_int_equal(mj_tune_record_parse(line, &back), 0);
  assert_true(mj_tune_record_same_key(&a, &back));
  assert_string_equal(back.config, a.config);
  assert_int_equal(mj_tune_record_parse("sm_90a 132 2880", &back), -1);
  strcat(line, " extra");
  assert_int_equal(mj_tune_record_parse(line, &back), -1);

  mj_record first[] = {record("sm_90a", 1, "mma_m16n128k64s4w1x4", 0.1),
                       record("sm_90a", 64, "mma_m32n128k32s3w2x2", 0.5)};
  mj_record second[] = {record("sm_90a", 64, "mma_m64n128k32s4w2x2", 0.4),
                        record("sm_80", 64, "mma_m64n128k32s4w2x2", 0.9)};
  mj_err err;
  assert_int_equal(mj_tune_records_merge(path, first, 2, NULL, NULL, &err), MOEJIT_OK);
  assert_int_equal(mj_tune_records_merge(path, second, 2, NULL, NULL, &err), MOEJIT_OK);
  mj_record *all = NULL;
  int n = 0;
  assert_int_equal(mj_tune_records_load(path, &all, &n, NULL, NULL, &err), MOEJIT_OK);
  assert_int_equal(n, 3); /* one key replaced, the rest kept */
  int replaced = 0;
  for (int i = 0; i < n; i++)
    if (all[i].bucket == 64 && !strcmp(all[i].arch, "sm_90a")) {
      assert_string_equal(all[i].config, "mma_m64n128k32s4w2x2");
      replaced++;
    }
  assert_int_equal(replaced, 1);
  free(all);

  /* damaged lines are skipped with a warning naming the line */
  FILE *f = fopen(path, "a");
  fputs("garbage line\nsm_90a 132 2880 2880 32 4 bf16 gemm\n\n# a comment\n", f);
  fclose(f);
  logbook book = {0};
  assert_int_equal(mj_tune_records_load(path, &all, &n, log_cb, &book, &err), MOEJIT_OK);
  assert_int_equal(n, 3);
  assert_int_equal(book.warnings, 2);
  assert_non_null(strstr(book.last, "records.txt:"));
  free(all);
}

/* Lines an attacker or a damaged disk writes: each is refused or read exactly, never misread. */
static void test_records_hostile_lines(void **state) {
  (void)state;
  mj_record r = record("sm_90a", 64, "mma_m32n128k32s3w2x2", 1e300), back;
  char line[512], good[512];
  /* times read back bit for bit, from the largest to the smallest (subnormal) */
  const double times[] = {1e300, 1e-300, 0.1, 1.0 / 3.0, 5e-324, 123456.789};
  for (size_t i = 0; i < sizeof times / sizeof *times; i++) {
    r.ms = times[i];
    r.heuristic_ms = times[(i + 1) % 6];
    mj_tune_record_format(&r, line, sizeof line);
    assert_int_equal(mj_tune_record_parse(line, &back), 0);
    assert_true(back.ms == r.ms && back.heuristic_ms == r.heuristic_ms);
  }
  r.ms = 0.5;
  r.heuristic_ms = 0.25;
  mj_tune_record_format(&r, good, sizeof good);
  assert_non_null(strstr(good, " 0.5 0.25")); /* and in the fewest digits */

  /* one word of the good line replaced: each must be refused */
  static const struct {
    int word;
    const char *text;
  } bad[] = {
      {1, "4294967297"},
      {1, "2147483648"},
      {1, "0"},
      {1, "-132"},
      {1, "+132"},
      {1, "0x84"},
      {1, "132abc"},
      {2, "99999999999999999999"},
      {8, "9223372036854775808"},
      {11, "nan"},
      {11, "inf"},
      {11, "-inf"},
      {11, "1e999"},
      {11, "0"},
      {11, "-1"},
      {12, "NaN"},
      {12, "-0.5"},
      {0, "sm_90a_and_more_than_16"},
      {6, "bfloat16"},
      {10, "a_config_name_longer_than_forty_characters_x"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    char out[600] = "";
    const char *p = good;
    for (int w = 0; w < 13; w++) {
      size_t n = strcspn(p, " ");
      strcat(out, w ? " " : "");
      if (w == bad[i].word)
        strcat(out, bad[i].text);
      else
        strncat(out, p, n);
      p += n + (p[n] == ' ');
    }
    assert_int_equal(mj_tune_record_parse(out, &back), -1);
  }
  /* the largest values that fit are read */
  r.sms = 2147483647;
  r.bucket = INT64_MAX;
  mj_tune_record_format(&r, line, sizeof line);
  assert_int_equal(mj_tune_record_parse(line, &back), 0);
  assert_true(back.sms == 2147483647 && back.bucket == INT64_MAX);

  /* a NUL byte spoils its own line only */
  char dir[300], path[400];
  fresh_dir(dir, sizeof dir);
  snprintf(path, sizeof path, "%s/records.txt", dir);
  FILE *f = fopen(path, "wb");
  fputs("sm_90a 132", f);
  fputc('\0', f);
  fputs(" junk\n", f);
  fprintf(f, "%s\n%s", good, good); /* the last line without its newline */
  fclose(f);
  logbook book = {0};
  mj_record *all = NULL;
  int n = 0;
  mj_err err;
  assert_int_equal(mj_tune_records_load(path, &all, &n, log_cb, &book, &err), MOEJIT_OK);
  assert_int_equal(n, 2);
  assert_int_equal(book.warnings, 1);
  assert_non_null(strstr(book.last, "records.txt:1: holds a NUL byte"));
  free(all);
}

/* Merging many records into many keeps one line per key, the newest, in the file's order. */
static void test_records_large_merge(void **state) {
  (void)state;
  char dir[300], path[400];
  fresh_dir(dir, sizeof dir);
  snprintf(path, sizeof path, "%s/records.txt", dir);
  enum { N = 40000 };
  mj_record *recs = malloc(N * sizeof *recs);
  assert_non_null(recs);
  for (int i = 0; i < N; i++)
    recs[i] = record("sm_90a", 1 + 2 * i, "mma_m32n128k32s3w2x2", 1.0);
  mj_err err;
  assert_int_equal(mj_tune_records_merge(path, recs, N, NULL, NULL, &err), MOEJIT_OK);
  /* the second half again with new times, and as many new keys, one of them given twice */
  for (int i = 0; i < N; i++) {
    recs[i] =
        record("sm_90a", i < N / 2 ? 1 + 2 * (N / 2 + i) : 2 * i, "mma_m64n128k32s4w2x2", 2.0 + i);
  }
  recs[N - 1] = recs[N - 2];
  recs[N - 1].ms = 7.0;
  assert_int_equal(mj_tune_records_merge(path, recs, N, NULL, NULL, &err), MOEJIT_OK);
  mj_record *all = NULL;
  int n = 0;
  assert_int_equal(mj_tune_records_load(path, &all, &n, NULL, NULL, &err), MOEJIT_OK);
  assert_int_equal(n, N + N / 2 - 1);
  for (int i = 0; i < N; i++) { /* the old keys first, in their order, the second half replaced */
    assert_int_equal(all[i].bucket, 1 + 2 * i);
    assert_true(all[i].ms == (i < N / 2 ? 1.0 : 2.0 + (i - N / 2)));
  }
  for (int i = N; i < n; i++)
    assert_int_equal(all[i].bucket, 2 * (N / 2 + (i - N)));
  assert_true(all[n - 1].ms == 7.0); /* the last given of a key wins */
  free(all);
  free(recs);
}

/* The records file is replaced only where it is a regular file; a link is written through. */
static void test_records_file_kinds(void **state) {
  (void)state;
  char dir[300], path[400], real[400];
  fresh_dir(dir, sizeof dir);
  mj_record r = record("sm_90a", 64, "mma_m32n128k32s3w2x2", 0.5);
  mj_err err;
  snprintf(path, sizeof path, "%s/fifo", dir);
  assert_int_equal(mkfifo(path, 0644), 0);
  mj_record *all = NULL;
  int n = 0;
  assert_int_equal(mj_tune_records_load(path, &all, &n, NULL, NULL, &err), MOEJIT_ERR_IO);
  assert_non_null(strstr(err.msg, "not a regular file")); /* at once: a FIFO blocks an open */
  assert_int_equal(mj_tune_records_merge(path, &r, 1, NULL, NULL, &err), MOEJIT_ERR_INVALID_ARG);
  assert_non_null(strstr(err.msg, "is a FIFO; not replaced"));
  struct stat sb;
  assert_true(lstat(path, &sb) == 0 && S_ISFIFO(sb.st_mode));
  assert_int_equal(mj_tune_records_merge(dir, &r, 1, NULL, NULL, &err), MOEJIT_ERR_INVALID_ARG);
  assert_non_null(strstr(err.msg, "is a folder"));
  snprintf(path, sizeof path, "%s/link", dir);
  snprintf(real, sizeof real, "%s/real.txt", dir);
  assert_int_equal(symlink("nowhere", path), 0);
  assert_int_equal(mj_tune_records_merge(path, &r, 1, NULL, NULL, &err), MOEJIT_ERR_INVALID_ARG);
  unlink(path);
  assert_int_equal(symlink("real.txt", path), 0);
  FILE *f = fopen(real, "w");
  fclose(f);
  assert_int_equal(mj_tune_records_merge(path, &r, 1, NULL, NULL, &err), MOEJIT_OK);
  assert_true(lstat(path, &sb) == 0 && S_ISLNK(sb.st_mode)); /* still the link */
  assert_int_equal(mj_tune_records_load(real, &all, &n, NULL, NULL, &err), MOEJIT_OK);
  assert_int_equal(n, 1);
  free(all);
}

static void test_records_concurrent_writers(void **state) {
  (void)state;
  char dir[300], path[400];
  fresh_dir(dir, sizeof dir);
  snprintf(path, sizeof path, "%s/records.txt", dir);
  enum { NPROC = 4, EACH = 8 };
  pid_t pids[NPROC];
  for (int p = 0; p < NPROC; p++) {
    pids[p] = fork();
    assert_true(pids[p] >= 0);
    if (pids[p] == 0) {
      int ok = 1;
      for (int i = 0; i < EACH; i++) {
        mj_record r = record("sm_90a", 1 + p * EACH + i, "mma_m64n128k32s4w2x2", 1.0);
        mj_err err;
        ok &= mj_tune_records_merge(path, &r, 1, NULL, NULL, &err) == MOEJIT_OK;
      }
      _exit(ok ? 0 : 1);
    }
  }
  for (int p = 0; p < NPROC; p++) {
    int status = 0;
    waitpid(pids[p], &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  mj_record *all = NULL;
  int n = 0;
  mj_err err;
  assert_int_equal(mj_tune_records_load(path, &all, &n, NULL, NULL, &err), MOEJIT_OK);
  assert_int_equal(n, NPROC * EACH); /* nobody's lines were lost */
  free(all);
}

/* A plan follows the records of its arch and shape; a record naming no valid config is ignored. */
static void test_plan_follows_records(void **state) {
  (void)state;
  char dir[300], path[400];
  fresh_dir(dir, sizeof dir);
  snprintf(path, sizeof path, "%s/records.txt", dir);
  moejit_layer_desc d = bf16_layer();
  mj_gemm_config space[2 * MJ_MAX_GEMM_CONFIGS];
  int nspace =
      mj_tune_search_space(MJ_MATH_MMA, "sm_90a", NULL, NULL, space, 2 * MJ_MAX_GEMM_CONFIGS);
  const char *split = NULL; /* a configuration that splits GEMM2 */
  for (int i = 0; i < nspace && !split; i++)
    if (space[i].splits > 1)
      split = space[i].name;
  assert_non_null(split);
  mj_record recs[6];
  recs[0] = record("sm_90a", 64, "mma_m32n128k32s3w2x2", 0.5);
  recs[1] = record("sm_90a", 300, "mma_m64n64k32s3w2x2", 0.7);  /* an exact count */
  recs[2] = record("sm_90a", 8, "ffma_m64n64k16s3t4x4", 0.2);   /* not a bf16 config */
  recs[3] = record("sm_90a", 16, "mma_m8n128k32s4w1x4", 0.2);   /* not in the search space */
  recs[4] = record("sm_90a", 32, "tf32_m64n128k32s3w2x2", 0.2); /* another math path's key */
  snprintf(recs[4].kernel, sizeof recs[4].kernel, "gemm_tf32");
  recs[5] = record("sm_90a", INT64_MAX, split, 0.2); /* too many slots to split: ignored */
  for (int i = 0; i < 6; i++) {
    recs[i].hidden = 256;
    recs[i].intermediate = 192;
    recs[i].experts = 16;
  }
  mj_err err;
  assert_int_equal(mj_tune_records_merge(path, recs, 6, NULL, NULL, &err), MOEJIT_OK);
  logbook book = {0};
  moejit_ctx *ctx = offline_ctx(dir, &book);
  moejit_plan *plan = NULL;
  assert_int_equal(moejit_plan_create(ctx, &d, &plan), MOEJIT_OK);
  int b64 = mj_rt_bucket(64);
  assert_int_equal(b64, 6);
  assert_true(plan->tuned[b64]);
  assert_string_equal(plan->configs[plan->pick[b64]].name, "mma_m32n128k32s3w2x2");
  assert_false(plan->tuned[mj_rt_bucket(8)]);
  assert_int_equal(plan->nexact, 1);
  assert_int_equal(plan->exact_tokens[0], 300);
  assert_string_equal(plan->configs[plan->exact_pick[0]].name, "mma_m64n64k32s3w2x2");
  /* the f32 config, the one outside the search space, the split one for 2^63 - 1 tokens */
  assert_int_equal(book.warnings, 3);
  assert_non_null(strstr(book.last, "splits GEMM2"));
  assert_false(plan->tuned[mj_rt_bucket(16)]);
  assert_false(plan->tuned[mj_rt_bucket(32)]); /* a TF32 record is not a bf16 layer's */
  moejit_plan_destroy(plan);
  moejit_destroy(ctx);
}

/* `moejit compile`'s build (with the ptxas report) fills the cache with the cubins a plan would
 * compile, byte for byte, under the plan's keys: a plan made afterwards compiles nothing. (The
 * report's own cubins differ from a plan's in a few hundred bytes: they are not what it caches.) */
static void test_compile_fills_cache(void **state) {
  (void)state;
  char filled[300], planned[300];
  fresh_dir(filled, sizeof filled);
  fresh_dir(planned, sizeof planned);
  moejit_layer_desc d = bf16_layer();
  logbook book = {0};
  moejit_ctx *ctx = offline_ctx(filled, &book);
  mj_gemm_config cfg[MJ_MAX_GEMM_CONFIGS];
  int ncfg = mj_tune_heuristic(mj_rt_math(&d), "sm_90a", cfg, MJ_MAX_GEMM_CONFIGS);
  mj_module_src *mods = NULL;
  int nmods = 0;
  mj_err err;
  assert_int_equal(mj_rt_build_modules(ctx, &d, cfg, ncfg, "sm_90a", MJ_COMPILE_PTXAS_VERBOSE,
                                       &mods, &nmods, &err),
                   MOEJIT_OK);
  mj_rt_modules_free(mods, nmods);
  moejit_destroy(ctx);

  ctx = offline_ctx(planned, &book); /* a fresh cache: the plan compiles all it needs */
  moejit_plan *plan = NULL;
  assert_int_equal(moejit_plan_create(ctx, &d, &plan), MOEJIT_OK);
  assert_true(ctx->compiles > 0);
  moejit_plan_destroy(plan);
  moejit_destroy(ctx);
  char sub[400];
  snprintf(sub, sizeof sub, "%s/cubin", planned);
  DIR *dir = opendir(sub);
  assert_non_null(dir);
  int compared = 0;
  struct dirent *de;
  while ((de = readdir(dir)) != NULL) {
    if (de->d_name[0] == '.')
      continue;
    char a[800], b[800];
    snprintf(a, sizeof a, "%s/cubin/%s", filled, de->d_name);
    snprintf(b, sizeof b, "%s/cubin/%s", planned, de->d_name);
    static unsigned char da[1 << 21], db[1 << 21];
    assert_int_equal(access(a, F_OK), 0); /* the plan's key is in the filled cache */
    size_t la = read_bytes(a, da, sizeof da), lb = read_bytes(b, db, sizeof db);
    assert_true(la == lb && la < sizeof da);
    assert_memory_equal(da, db, la);
    compared++;
  }
  closedir(dir);
  assert_true(compared > 0);

  ctx = offline_ctx(filled, &book);
  assert_int_equal(moejit_plan_create(ctx, &d, &plan), MOEJIT_OK);
  assert_int_equal(ctx->compiles, 0);
  moejit_plan_destroy(plan);
  moejit_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_key_sensitivity),
      cmocka_unit_test(test_file_round_trip_and_damage),
      cmocka_unit_test(test_hostile_files),
      cmocka_unit_test(test_damaged_files_recompiled),
      cmocka_unit_test(test_concurrent_processes),
      cmocka_unit_test(test_unwritable_dir),
      cmocka_unit_test(test_one_compile_per_key),
      cmocka_unit_test(test_records_format_and_merge),
      cmocka_unit_test(test_records_hostile_lines),
      cmocka_unit_test(test_records_large_merge),
      cmocka_unit_test(test_records_file_kinds),
      cmocka_unit_test(test_records_concurrent_writers),
      cmocka_unit_test(test_plan_follows_records),
      cmocka_unit_test(test_compile_fills_cache),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
