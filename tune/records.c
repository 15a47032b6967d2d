/* records.c: tuning records on disk (see records.h). */
#include "tune/records.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEADER                                                                                     \
  "# moejit tuning records: arch sms hidden intermediate experts top_k dtype kernel bucket "       \
  "version config ms heuristic_ms\n"

int mj_tune_record_same_key(const mj_record *a, const mj_record *b) {
  return !strcmp(a->arch, b->arch) && a->sms == b->sms && a->hidden == b->hidden &&
         a->intermediate == b->intermediate && a->experts == b->experts && a->top_k == b->top_k &&
         !strcmp(a->dtype, b->dtype) && !strcmp(a->kernel, b->kernel) && a->bucket == b->bucket &&
         !strcmp(a->version, b->version);
}

void mj_tune_record_format(const mj_record *r, char *buf, size_t len) {
  snprintf(buf, len, "%s %d %lld %lld %lld %lld %s %s %lld %s %s %.6f %.6f", r->arch, r->sms,
           (long long)r->hidden, (long long)r->intermediate, (long long)r->experts,
           (long long)r->top_k, r->dtype, r->kernel, (long long)r->bucket, r->version, r->config,
           r->ms, r->heuristic_ms);
}

int mj_tune_record_parse(const char *line, mj_record *r) {
  mj_record p;
  long long h, i, e, k, b;
  int used = 0;
  memset(&p, 0, sizeof p);
  int got = sscanf(line, "%15s %d %lld %lld %lld %lld %7s %15s %lld %15s %39s %lf %lf %n", p.arch,
                   &p.sms, &h, &i, &e, &k, p.dtype, p.kernel, &b, p.version, p.config, &p.ms,
                   &p.heuristic_ms, &used);
  if (got != 13 || line[used] != '\0')
    return -1;
  if (strncmp(p.arch, "sm_", 3) != 0 || p.sms <= 0 || h <= 0 || i <= 0 || e <= 0 || k <= 0 ||
      b <= 0 || !(p.ms > 0.0) || p.heuristic_ms < 0.0)
    return -1;
  p.hidden = h;
  p.intermediate = i;
  p.experts = e;
  p.top_k = k;
  p.bucket = b;
  *r = p;
  return 0;
}

static moejit_status load_stream(FILE *f, const char *path, mj_record **out, int *n,
                                 moejit_log_fn log, void *user, mj_err *err) {
  char line[1024];
  int cap = 0, lineno = 0;
  while (fgets(line, sizeof line, f)) {
    lineno++;
    size_t len = strlen(line);
    int whole = len > 0 && line[len - 1] == '\n';
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' '))
      line[--len] = '\0';
    if (!whole && !feof(f)) { /* longer than any record: skip the rest of it */
      int c;
      while ((c = fgetc(f)) != EOF && c != '\n')
        ;
      mj_logf(log, user, MOEJIT_LOG_WARN, "%s:%d: line too long; skipped", path, lineno);
      continue;
    }
    if (len == 0 || line[0] == '#')
      continue;
    mj_record r;
    if (mj_tune_record_parse(line, &r) != 0) {
      mj_logf(log, user, MOEJIT_LOG_WARN, "%s:%d: not a tuning record; skipped", path, lineno);
      continue;
    }
    if (*n == cap) {
      cap = cap ? 2 * cap : 64;
      mj_record *grown = realloc(*out, (size_t)cap * sizeof *grown);
      if (!grown)
        return mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory reading %s", path);
      *out = grown;
    }
    (*out)[(*n)++] = r;
  }
  return MOEJIT_OK;
}

moejit_status mj_tune_records_load(const char *path, mj_record **out, int *n, moejit_log_fn log,
                                   void *log_user, mj_err *err) {
  *out = NULL;
  *n = 0;
  FILE *f = fopen(path, "r");
  if (!f)
    return errno == ENOENT ? MOEJIT_OK
                           : mj_errf(err, MOEJIT_ERR_IO, "records %s: %s", path, strerror(errno));
  moejit_status st = load_stream(f, path, out, n, log, log_user, err);
  fclose(f);
  if (st != MOEJIT_OK) {
    free(*out);
    *out = NULL;
    *n = 0;
  }
  return st;
}

moejit_status mj_tune_records_merge(const char *path, const mj_record *add, int n,
                                    moejit_log_fn log, void *log_user, mj_err *err) {
  moejit_status st = MOEJIT_OK;
  char lock_path[4200], tmp[4200];
  mj_record *all = NULL;
  int count = 0, lock_fd = -1, fd = -1;
  FILE *f = NULL;
  snprintf(lock_path, sizeof lock_path, "%s.lock", path);
  lock_fd = open(lock_path, O_RDWR | O_CREAT, 0644);
  if (lock_fd < 0 || flock(lock_fd, LOCK_EX) != 0) {
    st = mj_errf(err, MOEJIT_ERR_IO, "records lock %s: %s", lock_path, strerror(errno));
    goto done;
  }
  if ((st = mj_tune_records_load(path, &all, &count, log, log_user, err)) != MOEJIT_OK)
    goto done;
  for (int i = 0; i < n; i++) {
    int j = 0;
    while (j < count && !mj_tune_record_same_key(&all[j], &add[i]))
      j++;
    if (j == count) {
      mj_record *grown = realloc(all, (size_t)(count + 1) * sizeof *grown);
      if (!grown) {
        st = mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory merging records");
        goto done;
      }
      all = grown;
      count++;
    }
    all[j] = add[i];
  }
  snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path);
  if ((fd = mkstemp(tmp)) < 0 || !(f = fdopen(fd, "w"))) {
    st = mj_errf(err, MOEJIT_ERR_IO, "records %s: cannot create a temporary file: %s", path,
                 strerror(errno));
    if (fd >= 0)
      unlink(tmp);
    goto done;
  }
  fd = -1;
  fputs(HEADER, f);
  for (int i = 0; i < count; i++) {
    char line[512];
    mj_tune_record_format(&all[i], line, sizeof line);
    fprintf(f, "%s\n", line);
  }
  int ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
  ok = fclose(f) == 0 && ok;
  f = NULL;
  if (!ok || chmod(tmp, 0644) != 0 || rename(tmp, path) != 0) {
    st = mj_errf(err, MOEJIT_ERR_IO, "records %s: cannot write: %s", path, strerror(errno));
    unlink(tmp);
  }
done:
  if (f)
    fclose(f);
  if (fd >= 0)
    close(fd);
  if (lock_fd >= 0)
    close(lock_fd); /* releases the lock */
  free(all);
  return st;
}
