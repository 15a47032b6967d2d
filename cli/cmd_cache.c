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
    "  export   write the valid cubins and the records into FILE\n"
    "  import   add FILE's cubins (each checked as a read would) and merge its records\n"
    "\n"
    "--dir DIR: the cache folder; default $MOEJIT_CACHE_DIR, else $XDG_CACHE_HOME/moejit, else\n"
    "~/.cache/moejit.\n";

#define EXPORT_MAGIC "MJCACHE1"

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

/* Calls fn for each cubin file of dir; returns the count or -1 when the folder cannot be read. */
static int each_cubin(const char *dir,
                      void (*fn)(void *, const char *, const char *, const uint8_t *), void *user) {
  char sub[4200];
  snprintf(sub, sizeof sub, "%s/cubin", dir);
  DIR *d = opendir(sub);
  if (!d)
    return errno == ENOENT ? 0 : -1;
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
  int bad;
  long long bytes;
  FILE *out;
  int written;
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
  w->bad += unlink(path) != 0;
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
  if (blob) {
    memcpy(blob, key, 16);
    memcpy(blob + 16, file, flen);
    if (write_blob(w->out, "cubin", blob, 16 + flen))
      w->written++;
    else
      w->bad++;
  } else {
    w->bad++;
  }
  free(blob);
  free(file);
}

/* Writes an imported cache file next to its place, checks it as a read would, then renames it in.
 */
static int import_cubin(const char *dir, const uint8_t key[16], const void *file, size_t len) {
  char path[4200], tmp[4300];
  mj_tune_cache_path(dir, key, path, sizeof path);
  snprintf(tmp, sizeof tmp, "%s.import.XXXXXX", path);
  int fd = mkstemp(tmp), ok = 0;
  if (fd < 0)
    return -1;
  ok = write(fd, file, len) == (ssize_t)len;
  ok = close(fd) == 0 && ok;
  void *data = NULL;
  size_t size = 0;
  ok = ok && mj_tune_cache_read_file(tmp, key, &data, &size, NULL) == MJ_CACHE_FILE_OK;
  free(data);
  ok = ok && chmod(tmp, 0644) == 0 && rename(tmp, path) == 0;
  if (!ok)
    unlink(tmp);
  return ok ? 0 : -1;
}

static int read_file(const char *path, char **text, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return -1;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  *text = malloc((size_t)(n > 0 ? n : 0) + 1);
  int ok = *text && n >= 0 && fread(*text, 1, (size_t)n, f) == (size_t)n;
  fclose(f);
  if (!ok) {
    free(*text);
    return -1;
  }
  (*text)[n] = '\0';
  *len = (size_t)n;
  return 0;
}

static int do_import(const char *dir, const char *file) {
  FILE *f = fopen(file, "rb");
  char magic[8];
  int added = 0, rejected = 0, rc = 0;
  if (!f || fread(magic, 1, 8, f) != 8 || memcmp(magic, EXPORT_MAGIC, 8) != 0) {
    fprintf(stderr, "moejit cache import: %s is not a moejit cache export\n", file);
    if (f)
      fclose(f);
    return 1;
  }
  char mk[4200];
  snprintf(mk, sizeof mk, "%s/cubin", dir);
  for (char *p = mk + 1; *p; p++)
    if (*p == '/') {
      *p = '\0';
      mkdir(mk, 0755);
      *p = '/';
    }
  mkdir(mk, 0755);
  char tag[8];
  uint64_t size;
  while (fread(tag, 1, 8, f) == 8) {
    if (fread(&size, 1, 8, f) != 8 || size > ((uint64_t)1 << 32)) {
      fprintf(stderr, "moejit cache import: %s is truncated\n", file);
      rc = 1;
      break;
    }
    unsigned char *blob = malloc((size_t)size + 1);
    if (!blob || fread(blob, 1, (size_t)size, f) != size) {
      fprintf(stderr, "moejit cache import: %s is truncated\n", file);
      free(blob);
      rc = 1;
      break;
    }
    if (!memcmp(tag, "cubin", 6) && size > 16) {
      if (import_cubin(dir, blob, blob + 16, (size_t)size - 16) == 0)
        added++;
      else
        rejected++;
    } else if (!memcmp(tag, "records", 8) || !memcmp(tag, "records\0", 8)) {
      char tmp[4200];
      snprintf(tmp, sizeof tmp, "%s/records.import.XXXXXX", dir);
      int fd = mkstemp(tmp);
      mj_record *recs = NULL;
      int n = 0;
      mj_err err;
      if (fd >= 0 && write(fd, blob, (size_t)size) == (ssize_t)size) {
        close(fd);
        char rpath[4200];
        snprintf(rpath, sizeof rpath, "%s/%s", dir, MJ_RECORDS_FILE);
        if (mj_tune_records_load(tmp, &recs, &n, cli_log, NULL, &err) == MOEJIT_OK && n > 0 &&
            mj_tune_records_merge(rpath, recs, n, cli_log, NULL, &err) != MOEJIT_OK) {
          fprintf(stderr, "moejit cache import: records: %s\n", err.msg);
          rc = 1;
        }
        printf("merged %d tuning records\n", n);
      } else if (fd >= 0) {
        close(fd);
      }
      unlink(tmp);
      free(recs);
    } else {
      rejected++;
    }
    free(blob);
  }
  fclose(f);
  printf("imported %d cubins into %s (%d rejected)\n", added, dir, rejected);
  return rc || rejected;
}

int cmd_cache(int argc, char **argv) {
  if (argc < 1 || !strcmp(argv[0], "--help") || !strcmp(argv[0], "-h")) {
    fputs(cache_usage, argc < 1 ? stderr : stdout);
    return argc < 1 ? 2 : 0;
  }
  const char *verb = argv[0], *file = NULL, *dir = NULL;
  int i = 1;
  if (!strcmp(verb, "export") || !strcmp(verb, "import")) {
    if (argc < 2 || argv[1][0] == '-') {
      fprintf(stderr, "moejit cache %s: needs a FILE\n", verb);
      return 2;
    }
    file = argv[1];
    i = 2;
  }
  for (; i < argc; i++) {
    if (!strcmp(argv[i], "--dir") && i + 1 < argc) {
      dir = argv[++i];
    } else {
      fprintf(stderr, "moejit cache: unknown option '%s' (see --help)\n", argv[i]);
      return 2;
    }
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
  walk w = {0, 0, NULL, 0};
  if (!strcmp(verb, "ls")) {
    printf("cache folder %s\n", dir);
    int n = each_cubin(dir, ls_one, &w);
    mj_record *recs = NULL;
    int nrec = 0;
    mj_err err;
    mj_tune_records_load(records, &recs, &nrec, cli_log, NULL, &err);
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
    int n = each_cubin(dir, verify_one, &w);
    printf("%d cubins checked in %s: %d bad\n", n < 0 ? 0 : n, dir, w.bad);
    return n < 0 || w.bad > 0;
  }
  if (!strcmp(verb, "clear")) {
    int n = each_cubin(dir, clear_one, &w);
    int rec = unlink(records) == 0;
    printf("removed %d cubins%s from %s\n", n < 0 ? 0 : n - w.bad, rec ? " and the records" : "",
           dir);
    return n < 0 || w.bad > 0;
  }
  if (!strcmp(verb, "export")) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", file);
    w.out = fopen(tmp, "wb");
    if (!w.out || fwrite(EXPORT_MAGIC, 1, 8, w.out) != 8) {
      fprintf(stderr, "moejit cache export: cannot write %s: %s\n", file, strerror(errno));
      return 1;
    }
    each_cubin(dir, export_one, &w);
    char *text = NULL;
    size_t len = 0;
    int has_records = read_file(records, &text, &len) == 0;
    if (has_records && !write_blob(w.out, "records", text, len))
      w.bad++;
    free(text);
    if (fclose(w.out) != 0 || rename(tmp, file) != 0) {
      fprintf(stderr, "moejit cache export: cannot write %s: %s\n", file, strerror(errno));
      unlink(tmp);
      return 1;
    }
    printf("exported %d cubins%s to %s (%d skipped as damaged)\n", w.written,
           has_records ? " and the records" : "", file, w.bad);
    return 0;
  }
  if (!strcmp(verb, "import"))
    return do_import(dir, file);
  fprintf(stderr, "moejit cache: unknown verb '%s'\n\n%s", verb, cache_usage);
  return 2;
}
