/* cache.c: the cubin cache (see cache.h). */
#include "tune/cache.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/file.h"
#include "gen/hash.h"

/* On-disk header, little-endian as written by this host. */
typedef struct file_header {
  char magic[8];
  uint32_t format;
  uint32_t header_bytes;
  uint8_t key[16];
  uint64_t length;
  uint8_t checksum[16];
} file_header;

typedef struct entry {
  uint8_t key[16];
  void *data; /* NULL while its compile is in progress */
  size_t size;
  int busy;
} entry;

struct mj_cache {
  char *dir; /* NULL: memory only */
  moejit_log_fn log;
  void *log_user;
  pthread_mutex_t lock;
  pthread_cond_t done;
  entry *entries;
  int n, cap;
  int warned_write;
  mj_cache_stats stats;
};

int mj_tune_cache_default_dir(char *buf, size_t len) {
  const char *v;
  if ((v = getenv("MOEJIT_CACHE_DIR")) && *v)
    return snprintf(buf, len, "%s", v) < (int)len ? 0 : -1;
  if ((v = getenv("XDG_CACHE_HOME")) && *v)
    return snprintf(buf, len, "%s/moejit", v) < (int)len ? 0 : -1;
  if ((v = getenv("HOME")) && *v)
    return snprintf(buf, len, "%s/.cache/moejit", v) < (int)len ? 0 : -1;
  return -1;
}

/* mkdir -p */
static int make_dirs(const char *path) {
  char tmp[4096];
  if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp)
    return -1;
  for (char *p = tmp + 1; *p; p++)
    if (*p == '/') {
      *p = '\0';
      if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
        return -1;
      *p = '/';
    }
  return mkdir(tmp, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

moejit_status mj_tune_cache_open(mj_cache **out, const char *dir, moejit_log_fn log, void *log_user,
                                 mj_err *err) {
  mj_cache *c = calloc(1, sizeof *c);
  *out = NULL;
  if (!c)
    return mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory opening the cubin cache");
  c->log = log;
  c->log_user = log_user;
  pthread_mutex_init(&c->lock, NULL);
  pthread_cond_init(&c->done, NULL);
  if (dir && *dir) {
    char sub[4096];
    snprintf(sub, sizeof sub, "%s/cubin", dir);
    if (make_dirs(sub) != 0 || access(sub, W_OK | X_OK) != 0) {
      mj_logf(c->log, c->log_user, MOEJIT_LOG_WARN,
              "cache directory %s cannot be created or written (%s); kernels are compiled in "
              "memory only",
              dir, strerror(errno));
    } else if (!(c->dir = strdup(dir))) {
      mj_tune_cache_close(c);
      return mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory opening the cubin cache");
    }
  }
  *out = c;
  return MOEJIT_OK;
}

void mj_tune_cache_close(mj_cache *c) {
  if (!c)
    return;
  for (int i = 0; i < c->n; i++)
    free(c->entries[i].data);
  free(c->entries);
  free(c->dir);
  pthread_mutex_destroy(&c->lock);
  pthread_cond_destroy(&c->done);
  free(c);
}

const char *mj_tune_cache_dir(const mj_cache *c) { return c ? c->dir : NULL; }

mj_cache_stats mj_tune_cache_stats(const mj_cache *c) { return c->stats; }

void mj_tune_cache_key(const char *source, const mj_gen_file *headers, int nheaders,
                       const char *options, int nvrtc_major, int nvrtc_minor, const char *arch,
                       uint8_t key[16]) {
  mj_hash h;
  mj_hash_init(&h, MJ_CACHE_FORMAT);
  mj_hash_str(&h, source);
  for (int i = 0; i < nheaders; i++) {
    mj_hash_str(&h, headers[i].name);
    mj_hash_u64(&h, headers[i].len);
    mj_hash_bytes(&h, headers[i].text, headers[i].len);
  }
  mj_hash_str(&h, options);
  mj_hash_u64(&h, (uint64_t)nvrtc_major << 32 | (uint32_t)nvrtc_minor);
  mj_hash_str(&h, arch);
  mj_hash_str(&h, moejit_version_string());
  mj_hash_final(&h, key);
}

void mj_tune_cache_path(const char *dir, const uint8_t key[16], char *buf, size_t len) {
  char hex[33];
  mj_hash_hex(key, hex);
  snprintf(buf, len, "%s/cubin/%s.cubin", dir, hex);
}

static void checksum(const void *data, size_t size, uint8_t out[16]) {
  mj_hash h;
  mj_hash_init(&h, 0x6d6f656a6974ull);
  mj_hash_bytes(&h, data, size);
  mj_hash_final(&h, out);
}

const char *mj_tune_cache_file_error(mj_cache_file_status s) {
  static const char *const text[] = {"ok",
                                     "cannot be read",
                                     "truncated",
                                     "not a moejit cubin (bad magic)",
                                     "written by another cache format version",
                                     "its key does not match its name",
                                     "checksum mismatch",
                                     "trailing bytes after the cubin",
                                     "not a regular file",
                                     "names a cubin larger than any kernel's (64 MiB)"};
  return (unsigned)s < sizeof text / sizeof text[0] ? text[s] : "unknown";
}

mj_cache_file_status mj_tune_cache_read_file(const char *path, const uint8_t *expect_key,
                                             void **data, size_t *size, uint8_t key_out[16]) {
  mj_cache_file_status st = MJ_CACHE_FILE_OK;
  file_header h;
  uint8_t sum[16];
  void *buf = NULL;
  *data = NULL;
  *size = 0;
  struct stat sb;
  int not_regular;
  FILE *f = mj_file_open_regular(path, &sb, &not_regular);
  if (!f)
    return not_regular ? MJ_CACHE_FILE_NOT_REGULAR : MJ_CACHE_FILE_IO;
  if ((size_t)sb.st_size < sizeof h || fread(&h, 1, sizeof h, f) != sizeof h) {
    st = MJ_CACHE_FILE_SHORT;
    goto done;
  }
  if (key_out)
    memcpy(key_out, h.key, 16);
  if (memcmp(h.magic, MJ_CACHE_MAGIC, 8) != 0) {
    st = MJ_CACHE_FILE_BAD_MAGIC;
    goto done;
  }
  if (h.format != MJ_CACHE_FORMAT || h.header_bytes != sizeof h) {
    st = MJ_CACHE_FILE_BAD_VERSION;
    goto done;
  }
  if (expect_key && memcmp(expect_key, h.key, 16) != 0) {
    st = MJ_CACHE_FILE_BAD_KEY;
    goto done;
  }
  if (h.length > MJ_CACHE_MAX_CUBIN) {
    st = MJ_CACHE_FILE_TOO_LARGE;
    goto done;
  }
  if ((uint64_t)sb.st_size < sizeof h + h.length || h.length == 0) {
    st = MJ_CACHE_FILE_SHORT;
    goto done;
  }
  if ((uint64_t)sb.st_size > sizeof h + h.length) {
    st = MJ_CACHE_FILE_LONG;
    goto done;
  }
  buf = malloc((size_t)h.length);
  if (!buf || fread(buf, 1, (size_t)h.length, f) != h.length) {
    st = MJ_CACHE_FILE_IO;
    goto done;
  }
  checksum(buf, (size_t)h.length, sum);
  if (memcmp(sum, h.checksum, 16) != 0) {
    st = MJ_CACHE_FILE_BAD_CHECKSUM;
    goto done;
  }
  *data = buf;
  *size = (size_t)h.length;
  buf = NULL;
done:
  free(buf);
  fclose(f);
  return st;
}

int mj_tune_cache_write_file(const char *dir, const uint8_t key[16], const void *data,
                             size_t size) {
  char path[4096], tmp[4200];
  file_header h;
  memset(&h, 0, sizeof h);
  memcpy(h.magic, MJ_CACHE_MAGIC, 8);
  h.format = MJ_CACHE_FORMAT;
  h.header_bytes = sizeof h;
  memcpy(h.key, key, 16);
  h.length = size;
  checksum(data, size, h.checksum);
  mj_tune_cache_path(dir, key, path, sizeof path);
  FILE *f = mj_file_temp(path, tmp, sizeof tmp);
  if (!f)
    return -1;
  int ok = fwrite(&h, 1, sizeof h, f) == sizeof h && fwrite(data, 1, size, f) == size;
  return mj_file_commit(f, tmp, path, ok) == 0 && ok ? 0 : -1;
}

static entry *find(mj_cache *c, const uint8_t key[16]) {
  for (int i = 0; i < c->n; i++)
    if (memcmp(c->entries[i].key, key, 16) == 0)
      return &c->entries[i];
  return NULL;
}

static void *copy(const void *data, size_t size) {
  void *p = malloc(size);
  if (p)
    memcpy(p, data, size);
  return p;
}

static void publish(mj_cache *c, const uint8_t key[16], const void *data, size_t size, int to_disk);

int mj_tune_cache_acquire(mj_cache *c, const uint8_t key[16], void **data, size_t *size) {
  *data = NULL;
  *size = 0;
  pthread_mutex_lock(&c->lock);
  entry *e;
  while ((e = find(c, key)) && e->busy)
    pthread_cond_wait(&c->done, &c->lock);
  if (e && e->data && (*data = copy(e->data, e->size))) {
    *size = e->size;
    c->stats.memory_hits++;
    pthread_mutex_unlock(&c->lock);
    return 1;
  }
  /* Claim the key, then look on disk without holding the lock. */
  if (!e) {
    if (c->n == c->cap) {
      int cap = c->cap ? 2 * c->cap : 32;
      entry *grown = realloc(c->entries, (size_t)cap * sizeof *grown);
      if (!grown) {
        pthread_mutex_unlock(&c->lock);
        return 0; /* compile without the table; put/abandon find nothing to update */
      }
      c->entries = grown;
      c->cap = cap;
    }
    e = &c->entries[c->n++];
    memset(e, 0, sizeof *e);
    memcpy(e->key, key, 16);
  }
  e->busy = 1;
  pthread_mutex_unlock(&c->lock);
  if (c->dir) {
    char path[4096];
    mj_tune_cache_path(c->dir, key, path, sizeof path);
    mj_cache_file_status fs = mj_tune_cache_read_file(path, key, data, size, NULL);
    if (fs == MJ_CACHE_FILE_OK) {
      pthread_mutex_lock(&c->lock);
      c->stats.disk_hits++;
      pthread_mutex_unlock(&c->lock);
      publish(c, key, *data, *size, 0);
      return 1;
    }
    if (fs != MJ_CACHE_FILE_IO || access(path, F_OK) == 0) {
      pthread_mutex_lock(&c->lock);
      c->stats.damaged++;
      pthread_mutex_unlock(&c->lock);
      mj_logf(c->log, c->log_user, MOEJIT_LOG_WARN,
              "cache file %s is damaged (%s); recompiling and replacing it", path,
              mj_tune_cache_file_error(fs));
    }
  }
  pthread_mutex_lock(&c->lock);
  c->stats.misses++;
  pthread_mutex_unlock(&c->lock);
  return 0;
}

/* Stores in the table and wakes waiters; with to_disk, also writes the file. */
static void publish(mj_cache *c, const uint8_t key[16], const void *data, size_t size,
                    int to_disk) {
  pthread_mutex_lock(&c->lock);
  entry *e = find(c, key);
  if (e) {
    if (!e->data && (e->data = copy(data, size)))
      e->size = size;
    e->busy = 0;
    pthread_cond_broadcast(&c->done);
  }
  pthread_mutex_unlock(&c->lock);
  if (!c->dir || !to_disk)
    return;
  if (mj_tune_cache_write_file(c->dir, key, data, size) != 0) {
    pthread_mutex_lock(&c->lock);
    int first = !c->warned_write;
    c->warned_write = 1;
    pthread_mutex_unlock(&c->lock);
    if (first)
      mj_logf(c->log, c->log_user, MOEJIT_LOG_WARN,
              "cannot write to the cache directory %s (%s); compiled kernels stay in memory",
              c->dir, strerror(errno));
  }
}

void mj_tune_cache_put(mj_cache *c, const uint8_t key[16], const void *data, size_t size) {
  publish(c, key, data, size, 1);
}

void mj_tune_cache_abandon(mj_cache *c, const uint8_t key[16]) {
  pthread_mutex_lock(&c->lock);
  entry *e = find(c, key);
  if (e) {
    e->busy = 0;
    pthread_cond_broadcast(&c->done);
  }
  pthread_mutex_unlock(&c->lock);
}
