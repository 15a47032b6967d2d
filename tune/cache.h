/* cache.h: the cubin cache. Content-addressed files on disk (a header with magic, format version,
 * key, length and checksum; written to a temporary file, flushed and renamed into place; checked
 * on every read, a damaged file is a miss) and, in front of them, an in-process table so that one
 * key is compiled at most once per context even when threads ask for it together.
 * Uses gen/hash for keys and checksums. */
#ifndef MJ_TUNE_CACHE_H
#define MJ_TUNE_CACHE_H
#include <stddef.h>
#include <stdint.h>

#include "gen/gen.h"
#include "moejit.h"
#include "base/error.h"

#define MJ_CACHE_MAGIC "MJCUBIN\0"
#define MJ_CACHE_FORMAT 1u
/* The largest cubin a file may hold: the kernels' are well under a megabyte, so a header naming
 * more is damage, refused before anything is allocated or read. */
#define MJ_CACHE_MAX_CUBIN ((uint64_t)64 << 20)

typedef struct mj_cache mj_cache;

/* The folder a context uses: $MOEJIT_CACHE_DIR, else $XDG_CACHE_HOME/moejit, else
 * $HOME/.cache/moejit. Returns 0, or -1 when none can be named. */
int mj_tune_cache_default_dir(char *buf, size_t len);

/* Opens the cache on `dir` (created if missing). A folder that cannot be created or written
 * leaves the cache in memory only, with one warning through `log`; only running out of memory
 * fails (MOEJIT_ERR_OUT_OF_MEMORY). dir NULL: memory only, silently. */
moejit_status mj_tune_cache_open(mj_cache **c, const char *dir, moejit_log_fn log, void *log_user,
                                 mj_err *err);
void mj_tune_cache_close(mj_cache *c);
/* The folder in use, or NULL when the cache is in memory only. */
const char *mj_tune_cache_dir(const mj_cache *c);

/* The key of a cubin: everything that changes its bytes. */
void mj_tune_cache_key(const char *source, const mj_gen_file *headers, int nheaders,
                       const char *options, int nvrtc_major, int nvrtc_minor, const char *arch,
                       uint8_t key[16]);

/* Looks a key up in memory, then on disk. Returns 1 with a malloc'd copy of the cubin; or 0, and
 * then the caller owns the compile of this key and must call mj_tune_cache_put or
 * mj_tune_cache_abandon. Blocks while another thread compiles the same key. */
int mj_tune_cache_acquire(mj_cache *c, const uint8_t key[16], void **data, size_t *size);
/* Publishes a compiled cubin: memory, then disk (atomically; a failed write only warns). */
void mj_tune_cache_put(mj_cache *c, const uint8_t key[16], const void *data, size_t size);
void mj_tune_cache_abandon(mj_cache *c, const uint8_t key[16]);

/* Counts since open: hits from memory and from disk, compiles owned, damaged files seen. */
typedef struct mj_cache_stats {
  int64_t memory_hits, disk_hits, misses, damaged;
} mj_cache_stats;
mj_cache_stats mj_tune_cache_stats(const mj_cache *c);

/* ---- files, for the CLI (ls, verify, clear, export, import) and the tests ---- */
typedef enum mj_cache_file_status {
  MJ_CACHE_FILE_OK = 0,
  MJ_CACHE_FILE_IO,
  MJ_CACHE_FILE_SHORT, /* shorter than its header, or than the length it names */
  MJ_CACHE_FILE_BAD_MAGIC,
  MJ_CACHE_FILE_BAD_VERSION,
  MJ_CACHE_FILE_BAD_KEY, /* the header's key is not the file's name / the key asked for */
  MJ_CACHE_FILE_BAD_CHECKSUM,
  MJ_CACHE_FILE_LONG,        /* bytes after the payload */
  MJ_CACHE_FILE_NOT_REGULAR, /* a FIFO, a device, a folder: never opened for reading */
  MJ_CACHE_FILE_TOO_LARGE,   /* names a cubin of more than MJ_CACHE_MAX_CUBIN bytes */
} mj_cache_file_status;
const char *mj_tune_cache_file_error(mj_cache_file_status s);

/* Path of a key's file under dir. */
void mj_tune_cache_path(const char *dir, const uint8_t key[16], char *buf, size_t len);
/* Reads and checks one file: a regular file (anything else is refused without blocking on it) of
 * one cubin of at most MJ_CACHE_MAX_CUBIN bytes. expect_key may be NULL (then the key is only
 * reported). On OK *data (malloc'd) and *size hold the cubin. */
mj_cache_file_status mj_tune_cache_read_file(const char *path, const uint8_t *expect_key,
                                             void **data, size_t *size, uint8_t key_out[16]);
/* Writes a key's file under dir: temporary file, fsync, rename. Returns 0 or -1 (errno kept). */
int mj_tune_cache_write_file(const char *dir, const uint8_t key[16], const void *data, size_t size);

#endif
