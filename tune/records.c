/* records.c: tuning records on disk (see records.h). */
#include "tune/records.h"

#include <errno.h>
#include <ctype.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/file.h"

#define HEADER                                                                                     \
  "# moejit tuning records: arch sms hidden intermediate experts top_k dtype kernel bucket "       \
  "version config ms heuristic_ms\n"

/* Orders records by key: arch, SM count, shape, dtype, kernel, bucket, version. */
static int key_order(const mj_record *a, const mj_record *b) {
  int c;
  if ((c = strcmp(a->arch, b->arch)) != 0)
    return c;
  const int64_t ka[] = {a->sms, a->hidden, a->intermediate, a->experts, a->top_k};
  const int64_t kb[] = {b->sms, b->hidden, b->intermediate, b->experts, b->top_k};
  for (int i = 0; i < 5; i++)
    if (ka[i] != kb[i])
      return ka[i] < kb[i] ? -1 : 1;
  if ((c = strcmp(a->dtype, b->dtype)) != 0 || (c = strcmp(a->kernel, b->kernel)) != 0)
    return c;
  if (a->bucket != b->bucket)
    return a->bucket < b->bucket ? -1 : 1;
  return strcmp(a->version, b->version);
}

int mj_tune_record_same_key(const mj_record *a, const mj_record *b) { return key_order(a, b) == 0; }

/* The shortest decimal that reads back as v exactly. */
static void format_double(double v, char *buf, size_t len) {
  for (int digits = 6; digits <= 17; digits++) {
    snprintf(buf, len, "%.*g", digits, v);
    if (strtod(buf, NULL) == v)
      return;
  }
}

void mj_tune_record_format(const mj_record *r, char *buf, size_t len) {
  char ms[32], heuristic_ms[32];
  format_double(r->ms, ms, sizeof ms);
  format_double(r->heuristic_ms, heuristic_ms, sizeof heuristic_ms);
  snprintf(buf, len, "%s %d %lld %lld %lld %lld %s %s %lld %s %s %s %s", r->arch, r->sms,
           (long long)r->hidden, (long long)r->intermediate, (long long)r->experts,
           (long long)r->top_k, r->dtype, r->kernel, (long long)r->bucket, r->version, r->config,
           ms, heuristic_ms);
}

/* The next space-separated word of *s into out (cap bytes with its NUL); 0 when there is none or
 * it does not fit. */
static int word(const char **s, char *out, size_t cap) {
  const char *p = *s;
  while (*p == ' ' || *p == '\t')
    p++;
  size_t n = strcspn(p, " \t");
  if (n == 0 || n >= cap)
    return 0;
  memcpy(out, p, n);
  out[n] = '\0';
  *s = p + n;
  return 1;
}

/* A positive integer of at most max, the whole word. */
static int positive(const char **s, int64_t max, int64_t *v) {
  char w[32], *end;
  if (!word(s, w, sizeof w) || !isdigit((unsigned char)w[0]))
    return 0;
  errno = 0;
  long long x = strtoll(w, &end, 10);
  if (errno != 0 || *end != '\0' || x <= 0 || x > max)
    return 0;
  *v = x;
  return 1;
}

/* A finite number, the whole word. */
static int number(const char **s, double *v) {
  char w[64], *end;
  if (!word(s, w, sizeof w))
    return 0;
  *v = strtod(w, &end);
  return *end == '\0' && isfinite(*v);
}

int mj_tune_record_parse(const char *line, mj_record *r) {
  mj_record p;
  int64_t sms;
  memset(&p, 0, sizeof p);
  const char *s = line;
  int ok = word(&s, p.arch, sizeof p.arch) && positive(&s, INT_MAX, &sms) &&
           positive(&s, INT64_MAX, &p.hidden) && positive(&s, INT64_MAX, &p.intermediate) &&
           positive(&s, INT64_MAX, &p.experts) && positive(&s, INT64_MAX, &p.top_k) &&
           word(&s, p.dtype, sizeof p.dtype) && word(&s, p.kernel, sizeof p.kernel) &&
           positive(&s, INT64_MAX, &p.bucket) && word(&s, p.version, sizeof p.version) &&
           word(&s, p.config, sizeof p.config) && number(&s, &p.ms) && number(&s, &p.heuristic_ms);
  s += strspn(s, " \t");
  if (!ok || *s != '\0' || strncmp(p.arch, "sm_", 3) != 0 || !(p.ms > 0.0) || p.heuristic_ms < 0.0)
    return -1;
  p.sms = (int)sms;
  *r = p;
  return 0;
}

/* Reads one line into buf without its newline; its length, or -1 at the end of the file. *bad
 * says why the line cannot be a record: it holds a NUL byte, or it is longer than buf. */
static long read_line(FILE *f, char *buf, size_t cap, const char **bad) {
  size_t n = 0;
  int c;
  *bad = NULL;
  while ((c = getc(f)) != EOF && c != '\n') {
    if (c == '\0')
      *bad = "holds a NUL byte";
    else if (n + 1 >= cap)
      *bad = "line too long";
    else
      buf[n++] = (char)c;
  }
  if (c == EOF && n == 0 && !*bad)
    return -1;
  buf[n] = '\0';
  return (long)n;
}

static moejit_status load_stream(FILE *f, const char *path, mj_record **out, int *n,
                                 moejit_log_fn log, void *user, mj_err *err) {
  char line[1024];
  const char *bad;
  int cap = 0, lineno = 0;
  long len;
  while ((len = read_line(f, line, sizeof line, &bad)) >= 0) {
    lineno++;
    if (bad) {
      mj_logf(log, user, MOEJIT_LOG_WARN, "%s:%d: %s; skipped", path, lineno, bad);
      continue;
    }
    while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == ' '))
      line[--len] = '\0';
    if (len == 0 || line[0] == '#')
      continue;
    mj_record r;
    if (mj_tune_record_parse(line, &r) != 0) {
      mj_logf(log, user, MOEJIT_LOG_WARN, "%s:%d: not a tuning record; skipped", path, lineno);
      continue;
    }
    if (*n == cap) {
      if (cap > INT_MAX / 2)
        return mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "%s: too many records", path);
      cap = cap ? 2 * cap : 64;
      mj_record *grown = realloc(*out, (size_t)cap * sizeof *grown);
      if (!grown)
        return mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory reading %s", path);
      *out = grown;
    }
    (*out)[(*n)++] = r;
  }
  if (ferror(f))
    return mj_errf(err, MOEJIT_ERR_IO, "records %s: %s", path, strerror(errno));
  return MOEJIT_OK;
}

moejit_status mj_tune_records_load(const char *path, mj_record **out, int *n, moejit_log_fn log,
                                   void *log_user, mj_err *err) {
  *out = NULL;
  *n = 0;
  struct stat sb;
  int not_regular;
  FILE *f = mj_file_open_regular(path, &sb, &not_regular);
  if (!f && not_regular)
    return mj_errf(err, MOEJIT_ERR_IO, "records %s: not a regular file", path);
  if (!f)
    return errno == ENOENT ? MOEJIT_OK
                           : mj_errf(err, MOEJIT_ERR_IO, "records %s: %s", path, strerror(errno));
  moejit_status st = mj_tune_records_read(f, path, out, n, log, log_user, err);
  fclose(f);
  return st;
}

moejit_status mj_tune_records_read(FILE *f, const char *name, mj_record **out, int *n,
                                   moejit_log_fn log, void *log_user, mj_err *err) {
  *out = NULL;
  *n = 0;
  moejit_status st = load_stream(f, name, out, n, log, log_user, err);
  if (st != MOEJIT_OK) {
    free(*out);
    *out = NULL;
    *n = 0;
  }
  return st;
}

/* A record and where it stands: its index in the file, then among the new ones. */
typedef struct placed {
  const mj_record *r;
  int at;
} placed;

static int placed_order(const void *a, const void *b) {
  const placed *x = a, *y = b;
  int c = key_order(x->r, y->r);
  return c ? c : (x->at > y->at) - (x->at < y->at);
}

/* Appends add to the *count records of *all, then keeps one line per key: the last one given,
 * at the place of the first. O(n log n): a sort by key finds the lines that share one. */
static moejit_status merge(mj_record **all, int *count, const mj_record *add, int n, mj_err *err) {
  if (n > INT_MAX - *count)
    return mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "too many records to merge");
  int total = *count + n;
  mj_record *rec = realloc(*all, (size_t)(total > 0 ? total : 1) * sizeof *rec);
  placed *order = malloc((size_t)(total > 0 ? total : 1) * sizeof *order);
  char *keep = malloc((size_t)(total > 0 ? total : 1));
  if (rec)
    *all = rec;
  if (!rec || !order || !keep) {
    free(order);
    free(keep);
    return mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory merging records");
  }
  memcpy(rec + *count, add, (size_t)n * sizeof *rec);
  for (int i = 0; i < total; i++) {
    order[i] = (placed){&rec[i], i};
    keep[i] = 1;
  }
  qsort(order, (size_t)total, sizeof *order, placed_order);
  for (int g = 0, e; g < total; g = e) {
    for (e = g + 1; e < total && key_order(order[g].r, order[e].r) == 0; e++)
      keep[order[e].at] = 0;
    rec[order[g].at] = rec[order[e - 1].at];
  }
  int kept = 0;
  for (int i = 0; i < total; i++)
    if (keep[i])
      rec[kept++] = rec[i];
  *count = kept;
  free(order);
  free(keep);
  return MOEJIT_OK;
}

moejit_status mj_tune_records_merge(const char *path, const mj_record *add, int n,
                                    moejit_log_fn log, void *log_user, mj_err *err) {
  moejit_status st = MOEJIT_OK;
  char target[4096], lock_path[4200], tmp[4200];
  mj_record *all = NULL;
  int count = 0, lock_fd = -1;
  if (n < 0 || (!add && n > 0))
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "records %s: n=%d records to merge", path, n);
  if ((st = mj_file_target(path, target, sizeof target, err)) != MOEJIT_OK)
    return st;
  path = target; /* a link is written through */
  snprintf(lock_path, sizeof lock_path, "%s.lock", path);
  lock_fd = open(lock_path, O_RDWR | O_CREAT, 0644);
  if (lock_fd < 0 || flock(lock_fd, LOCK_EX) != 0) {
    st = mj_errf(err, MOEJIT_ERR_IO, "records lock %s: %s", lock_path, strerror(errno));
    goto done;
  }
  if ((st = mj_tune_records_load(path, &all, &count, log, log_user, err)) != MOEJIT_OK ||
      (st = merge(&all, &count, add, n, err)) != MOEJIT_OK)
    goto done;
  FILE *f = mj_file_temp(path, tmp, sizeof tmp);
  if (!f) {
    st = mj_errf(err, MOEJIT_ERR_IO, "records %s: cannot create a temporary file: %s", path,
                 strerror(errno));
    goto done;
  }
  fputs(HEADER, f);
  for (int i = 0; i < count; i++) {
    char line[512];
    mj_tune_record_format(&all[i], line, sizeof line);
    fprintf(f, "%s\n", line);
  }
  int e = mj_file_commit(f, tmp, path, 1); /* a failed write shows at the flush */
  if (e)
    st = mj_errf(err, MOEJIT_ERR_IO, "records %s: cannot write: %s", path, strerror(e));
done:
  if (lock_fd >= 0)
    close(lock_fd); /* releases the lock */
  free(all);
  return st;
}
