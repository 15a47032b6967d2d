/* cmd_cache.c: `moejit cache ls|verify|clear|export|import`: the cubin cache and tuning records
 * folder. An export is one file a deployment ships: every valid cubin and the records. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "tools/tools.h"

static const char cache_usage[] =
    "usage: moejit cache ls|verify|clear|export FILE|import FILE [--dir DIR]\n"
    "\n"
    "  ls       list the cached cubins (key, bytes, age) and the tuning records\n"
    "  verify   check every cubin (magic, version, key, length, checksum); exit 1 if any is bad\n"
    "  clear    remove every cubin and the tuning records\n"
    "  export   write the valid cubins and the records into FILE (\"-\": standard output); FILE\n"
    "           is replaced only where it is a regular file (a link: the file it names)\n"
    "  import   add FILE's cubins (each checked as a read would) and merge its records (\"-\":\n"
    "           standard input)\n"
    "\n"
    "--dir DIR: the cache folder; default $MOEJIT_CACHE_DIR, else $XDG_CACHE_HOME/moejit, else\n"
    "~/.cache/moejit. Exit status: 0; 1 when something failed (said on stderr); 2 for bad\n"
    "arguments.\n";

/* An export: the magic, then entries (an 8-byte kind, a 64-bit length, the bytes): "cubin" (its
 * key and its cache file), "records" (the records file), and last "end" (the count of entries
 * before it), so that a cut is seen. MJCACHE1, older, has no end mark. */
#define EXPORT_MAGIC "MJCACHE2"
#define EXPORT_MAGIC_V1 "MJCACHE1"
#define EXPORT_MAX_ENTRY ((uint64_t)128 << 20) /* a cubin is at most 64 MiB */

static int is_cubin_name(const char *name, uint8_t key[16]) {
  size_t n = strlen(name);
  if (n != 32 + 6 || strcmp(name + 32, ".cubin") != 0)
    return 0;
  for (int i = 0; i < 16; i++) {
    unsigned v;
    if (sscanf(name + 2 * i, "%2x", &v) != 1)
      return 0;
    key[i] = (uint8_t)v;
  }
  char hex[33];
  mj_hash_hex(key, hex);
  return strncmp(hex, name, 32) == 0;
}

/* Calls fn for each cubin file of dir; returns the count, or -1 after saying (for verb) that the
 * folder cannot be read. */
static int each_cubin(const char *dir, const char *verb,
                      void (*fn)(void *, const char *, const char *, const uint8_t *), void *user) {
  char sub[4200];
  snprintf(sub, sizeof sub, "%s/cubin", dir);
  DIR *d = opendir(sub);
  if (!d && errno == ENOENT)
    return 0;
  if (!d) {
    fprintf(stderr, "moejit cache %s: cannot read %s: %s\n", verb, sub, strerror(errno));
    return -1;
  }
  int n = 0;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    uint8_t key[16];
    if (!is_cubin_name(de->d_name, key))
      continue;
    char path[sizeof sub + 300];
    snprintf(path, sizeof path, "%s/%s", sub, de->d_name);
    fn(user, path, de->d_name, key);
    n++;
  }
  closedir(d);
  return n;
}

typedef struct walk {
  int bad; /* cubins that failed a check (or could not be removed) */
  long long bytes;
  FILE *out;
  int written;
  int write_failed; /* errno of the first failed write to out, or 0 */
} walk;

static void ls_one(void *user, const char *path, const char *name, const uint8_t *key) {
  walk *w = user;
  struct stat sb;
  (void)key;
  if (stat(path, &sb) == 0) {
    w->bytes += sb.st_size;
    printf("  %.32s  %9lld B  %s", name, (long long)sb.st_size, ctime(&sb.st_mtime));
  }
}

static void verify_one(void *user, const char *path, const char *name, const uint8_t *key) {
  walk *w = user;
  void *data;
  size_t size;
  mj_cache_file_status fs = mj_tune_cache_read_file(path, key, &data, &size, NULL);
  if (fs != MJ_CACHE_FILE_OK) {
    printf("  BAD %.32s: %s\n", name, mj_tune_cache_file_error(fs));
    w->bad++;
  } else {
    free(data);
  }
}

static void clear_one(void *user, const char *path, const char *name, const uint8_t *key) {
  walk *w = user;
  (void)name;
  (void)key;
  if (unlink(path) != 0) {
    fprintf(stderr, "moejit cache clear: cannot remove %s: %s\n", path, strerror(errno));
    w->bad++;
  }
}

static int write_blob(FILE *f, const char *kind, const void *data, uint64_t size) {
  char tag[8] = {0};
  memcpy(tag, kind, strlen(kind) < 8 ? strlen(kind) : 8);
  return fwrite(tag, 1, 8, f) == 8 && fwrite(&size, 1, 8, f) == 8 &&
         fwrite(data, 1, (size_t)size, f) == size;
}

static int read_file(const char *path, char **text, size_t *len);

/* Only files that pass the cache's checks are exported: each as its key and its whole file. */
static void export_one(void *user, const char *path, const char *name, const uint8_t *key) {
  walk *w = user;
  void *data;
  size_t size;
  char *file = NULL;
  size_t flen = 0;
  (void)name;
  if (mj_tune_cache_read_file(path, key, &data, &size, NULL) != MJ_CACHE_FILE_OK ||
      read_file(path, &file, &flen) != 0) {
    w->bad++;
    return;
  }
  free(data);
  unsigned char *blob = malloc(16 + flen);
  if (!blob) {
    w->write_failed = w->write_failed ? w->write_failed : ENOMEM;
  } else if (!w->write_failed) {
    memcpy(blob, key, 16);
    memcpy(blob + 16, file, flen);
    if (write_blob(w->out, "cubin", blob, 16 + flen))
      w->written++;
    else
      w->write_failed = errno ? errno : EIO;
  }
  free(blob);
  free(file);
}

/* Writes an imported cache file next to its place, checks it as a read would, then renames it in.
 * NULL, or why it was not taken. */
static const char *import_cubin(const char *dir, const uint8_t key[16], const void *file,
                                size_t len) {
  char path[4200], tmp[4300];
  mj_tune_cache_path(dir, key, path, sizeof path);
  snprintf(tmp, sizeof tmp, "%s.import.XXXXXX", path);
  int fd = mkstemp(tmp);
  if (fd < 0)
    return strerror(errno);
  const char *why = NULL;
  if (write(fd, file, len) != (ssize_t)len)
    why = strerror(errno ? errno : EIO);
  if (close(fd) != 0 && !why)
    why = strerror(errno);
  void *data = NULL;
  size_t size = 0;
  mj_cache_file_status fs =
      why ? MJ_CACHE_FILE_OK : mj_tune_cache_read_file(tmp, key, &data, &size, NULL);
  free(data);
  if (!why && fs != MJ_CACHE_FILE_OK)
    why = mj_tune_cache_file_error(fs);
  if (!why && (chmod(tmp, 0644) != 0 || rename(tmp, path) != 0))
    why = strerror(errno);
  if (why)
    unlink(tmp);
  return why;
}

/* Merges an export's records entry into the folder's records (read from memory, no temporary
 * file). 0, or 1 after saying why not. */
static int import_records(const char *dir, const char *file, void *blob, size_t size) {
  char rpath[4200], name[4300];
  snprintf(rpath, sizeof rpath, "%s/%s", dir, MJ_RECORDS_FILE);
  snprintf(name, sizeof name, "%s (records)", file);
  mj_record *recs = NULL;
  int n = 0, rc = 0;
  mj_err err;
  FILE *f = size > 0 ? fmemopen(blob, size, "rb") : NULL;
  if (size > 0 && !f) {
    fprintf(stderr, "moejit cache import: records: %s\n", strerror(errno));
    return 1;
  }
  if (f && (mj_tune_records_read(f, name, &recs, &n, cli_log, NULL, &err) != MOEJIT_OK ||
            (n > 0 && mj_tune_records_merge(rpath, recs, n, cli_log, NULL, &err) != MOEJIT_OK))) {
    fprintf(stderr, "moejit cache import: records: %s\n", err.msg);
    rc = 1;
  } else {
    printf("merged %d tuning records into %s\n", n, rpath);
  }
  if (f)
    fclose(f);
  free(recs);
  return rc;
}

/* Reads a regular file whole (never blocks on a FIFO). 0; -1 when there is none (ENOENT); -2
 * when it cannot be read (errno says why; EINVAL: not a regular file). */
static int read_file(const char *path, char **text, size_t *len) {
  struct stat sb;
  int not_regular;
  *text = NULL;
  FILE *f = mj_file_open_regular(path, &sb, &not_regular);
  if (!f)
    return errno == ENOENT && !not_regular ? -1 : -2;
  size_t n = (size_t)sb.st_size;
  *text = malloc(n + 1);
  int ok = *text && fread(*text, 1, n, f) == n;
  int e = ok ? 0 : errno ? errno : EIO;
  fclose(f);
  if (!ok) {
    free(*text);
    *text = NULL;
    errno = e;
    return -2;
  }
  (*text)[n] = '\0';
  *len = n;
  return 0;
}

static int do_import(const char *dir, const char *file) {
  int from_stdin = !strcmp(file, "-");
  FILE *f = from_stdin ? stdin : fopen(file, "rb");
  char magic[8];
  int added = 0, rejected = 0, rc = 0;
  if (!f) {
    fprintf(stderr, "moejit cache import: cannot read %s: %s\n", file, strerror(errno));
    return 1;
  }
  int v1 = 0;
  if (fread(magic, 1, 8, f) != 8 ||
      (memcmp(magic, EXPORT_MAGIC, 8) != 0 && !(v1 = !memcmp(magic, EXPORT_MAGIC_V1, 8)))) {
    fprintf(stderr, "moejit cache import: %s is not a moejit cache export\n", file);
    if (!from_stdin)
      fclose(f);
    return 1;
  }
  /* what is left of a regular file bounds each entry's claimed length */
  struct stat fs;
  int64_t left = fstat(fileno(f), &fs) == 0 && S_ISREG(fs.st_mode) ? (int64_t)fs.st_size - 8 : -1;
  char mk[4200];
  snprintf(mk, sizeof mk, "%s/cubin", dir);
  for (char *p = mk + 1; *p; p++)
    if (*p == '/') {
      *p = '\0';
      mkdir(mk, 0755);
      *p = '/';
    }
  struct stat sb;
  if (mkdir(mk, 0755) != 0 && (errno != EEXIST || stat(mk, &sb) != 0 || !S_ISDIR(sb.st_mode))) {
    fprintf(stderr, "moejit cache import: cannot make %s: %s\n", mk, strerror(errno));
    if (!from_stdin)
      fclose(f);
    return 1;
  }
  char tag[8];
  uint64_t size, entries = 0;
  size_t got;
  int ended = 0;
  while (!ended && (got = fread(tag, 1, 8, f)) == 8) {
    if (fread(&size, 1, 8, f) != 8 || size > EXPORT_MAX_ENTRY ||
        (left >= 0 && (int64_t)size > (left -= 16))) {
      fprintf(stderr, "moejit cache import: %s is truncated or damaged (an entry of %llu bytes)\n",
              file, (unsigned long long)size);
      rc = 1;
      break;
    }
    if (left >= 0)
      left -= (int64_t)size;
    unsigned char *blob = malloc((size_t)size + 1);
    if (!blob || fread(blob, 1, (size_t)size, f) != size) {
      fprintf(stderr, "moejit cache import: %s is truncated\n", file);
      free(blob);
      rc = 1;
      break;
    }
    if (!memcmp(tag, "end\0\0\0\0", 8)) {
      uint64_t count = 0;
      if (size == sizeof count)
        memcpy(&count, blob, sizeof count);
      if (size != sizeof count || count != entries || fgetc(f) != EOF) {
        fprintf(stderr, "moejit cache import: %s is damaged: its end mark does not close it\n",
                file);
        rc = 1;
      }
      ended = 1;
      free(blob);
      break;
    }
    entries++;
    if (!memcmp(tag, "cubin", 6) && size > 16) {
      const char *why = import_cubin(dir, blob, blob + 16, (size_t)size - 16);
      if (why) {
        char hex[33];
        mj_hash_hex(blob, hex);
        fprintf(stderr, "moejit cache import: cubin %s rejected: %s\n", hex, why);
        rejected++;
      } else {
        added++;
      }
    } else if (!memcmp(tag, "records", 8)) {
      rc |= import_records(dir, file, blob, (size_t)size);
    } else {
      fprintf(stderr, "moejit cache import: %s: an entry of unknown kind '%.8s' skipped\n", file,
              tag);
      rejected++;
    }
    free(blob);
  }
  if (!ended && !rc) {
    if (ferror(f) || got != 0 || !v1) {
      fprintf(stderr, "moejit cache import: %s is truncated%s\n", file,
              ferror(f)  ? " (a read failed)"
              : got != 0 ? ""
                         : " (no end mark)");
      rc = 1;
    } else {
      fprintf(stderr,
              "moejit cache import: %s is an MJCACHE1 export, which has no end mark: a "
              "cut at an entry's end cannot be seen\n",
              file);
    }
  }
  if (!from_stdin)
    fclose(f);
  printf("imported %d cubins into %s (%d rejected)\n", added, dir, rejected);
  return rc || rejected;
}

/* Writes the export to FILE through a temporary file renamed into place (FILE "-": standard output,
 * which is not a terminal). Every write is checked: a full disk leaves no archive and exits 1. */
static int do_export(const char *dir, const char *records, const char *file) {
  int to_stdout = !strcmp(file, "-");
  char target[4096], tmp[4200];
  mj_err err;
  walk w = {0};
  FILE *status = to_stdout ? stderr : stdout; /* where the summary goes */
  if (to_stdout) {
    if (isatty(STDOUT_FILENO)) {
      fprintf(stderr, "moejit cache export: standard output is a terminal; redirect it\n");
      return 2;
    }
    w.out = stdout;
  } else {
    moejit_status st = mj_file_target(file, target, sizeof target, &err);
    if (st != MOEJIT_OK) { /* a FIFO, a device, a folder: refused, never replaced */
      fprintf(stderr, "moejit cache export: %s\n", err.msg);
      return st == MOEJIT_ERR_INVALID_ARG ? 2 : 1;
    }
    if (!(w.out = mj_file_temp(target, tmp, sizeof tmp))) {
      fprintf(stderr, "moejit cache export: cannot write %s: %s\n", file, strerror(errno));
      return 1;
    }
  }
  if (fwrite(EXPORT_MAGIC, 1, 8, w.out) != 8)
    w.write_failed = errno ? errno : EIO;
  int n = each_cubin(dir, "export", export_one, &w), failed = n < 0;
  char *text = NULL;
  size_t len = 0;
  int rr = read_file(records, &text, &len), has_records = rr == 0;
  if (rr == -2) {
    fprintf(stderr, "moejit cache export: cannot read %s: %s\n", records,
            errno == EINVAL ? "not a regular file" : strerror(errno));
    failed = 1;
  }
  if (has_records && !w.write_failed && !write_blob(w.out, "records", text, len))
    w.write_failed = errno ? errno : EIO;
  free(text);
  if (!w.write_failed && !failed) { /* the end mark: how many entries came before it */
    uint64_t entries = (uint64_t)w.written + (uint64_t)has_records;
    if (!write_blob(w.out, "end", &entries, sizeof entries))
      w.write_failed = errno ? errno : EIO;
  }
  if (to_stdout) {
    if (!w.write_failed && fflush(stdout) != 0)
      w.write_failed = errno ? errno : EIO;
  } else { /* renamed into place only when whole */
    int e = mj_file_commit(w.out, tmp, target, !w.write_failed && !failed);
    if (e && !w.write_failed)
      w.write_failed = e;
  }
  if (failed && !w.write_failed) {
    fprintf(stderr, "moejit cache export: %s\n",
            to_stdout ? "the export on standard output is incomplete" : "nothing was written");
    return 1;
  }
  if (w.write_failed) {
    fprintf(stderr, "moejit cache export: cannot write %s: %s%s\n", file, strerror(w.write_failed),
            to_stdout ? "" : "; nothing was written");
    return 1;
  }
  fprintf(status, "exported %d cubins%s to %s (%d skipped as damaged)\n", w.written,
          has_records ? " and the records" : "", file, w.bad);
  return 0;
}

int cmd_cache(int argc, char **argv) {
  cli_layer L;
  const char *words[2];
  int nwords, rc;
  if (argc < 1) {
    fputs(cache_usage, stderr);
    return 2;
  }
  if ((rc = cli_parse(argc, argv, CLI_CACHE, cache_usage, &L, words, 2, &nwords)) != 0)
    return rc == 1 ? 0 : rc;
  const char *verb = nwords > 0 ? words[0] : "", *file = nwords > 1 ? words[1] : NULL;
  const char *dir = L.dir;
  int takes_file = !strcmp(verb, "export") || !strcmp(verb, "import");
  if (!takes_file && strcmp(verb, "ls") && strcmp(verb, "verify") && strcmp(verb, "clear")) {
    fprintf(stderr, "moejit cache: unknown verb '%s'\n\n%s", verb, cache_usage);
    return 2;
  }
  if (takes_file != (file != NULL)) {
    if (takes_file)
      fprintf(stderr, "moejit cache %s: needs a FILE\n", verb);
    else
      fprintf(stderr, "moejit cache %s: unexpected argument '%s'\n", verb, file);
    return 2;
  }
  char dbuf[4096];
  if (!dir) {
    if (mj_tune_cache_default_dir(dbuf, sizeof dbuf) != 0) {
      fprintf(stderr, "moejit cache: no cache folder: set MOEJIT_CACHE_DIR or HOME\n");
      return 1;
    }
    dir = dbuf;
  }
  char records[4200];
  snprintf(records, sizeof records, "%s/%s", dir, MJ_RECORDS_FILE);
  walk w = {0};
  if (!strcmp(verb, "ls")) {
    printf("cache folder %s\n", dir);
    int n = each_cubin(dir, "ls", ls_one, &w);
    mj_record *recs = NULL;
    int nrec = 0;
    mj_err err;
    if (mj_tune_records_load(records, &recs, &nrec, cli_log, NULL, &err) != MOEJIT_OK) {
      fprintf(stderr, "moejit cache ls: %s\n", err.msg);
      n = -1;
    }
    printf("%d cubins, %lld bytes; %d tuning records in %s\n", n < 0 ? 0 : n, w.bytes, nrec,
           records);
    for (int r = 0; r < nrec; r++) {
      char line[512];
      mj_tune_record_format(&recs[r], line, sizeof line);
      printf("  %s\n", line);
    }
    free(recs);
    return n < 0;
  }
  if (!strcmp(verb, "verify")) {
    int n = each_cubin(dir, "verify", verify_one, &w);
    printf("%d cubins checked in %s: %d bad\n", n < 0 ? 0 : n, dir, w.bad);
    return n < 0 || w.bad > 0;
  }
  if (!strcmp(verb, "clear")) {
    int n = each_cubin(dir, "clear", clear_one, &w);
    int rec = unlink(records) == 0;
    if (!rec && errno != ENOENT) {
      fprintf(stderr, "moejit cache clear: cannot remove %s: %s\n", records, strerror(errno));
      w.bad++;
    }
    printf("removed %d cubins%s from %s\n", n < 0 ? 0 : n - w.bad, rec ? " and the records" : "",
           dir);
    return n < 0 || w.bad > 0;
  }
  if (!strcmp(verb, "export"))
    return do_export(dir, records, file);
  return do_import(dir, file);
}
