/* records.h: tuning records, plain text, one line per (GPU architecture and SM count, layer shape,
 * activation dtype, kernel, token bucket, library version) with the winning configuration and its
 * measured time. Readable, diffable, shippable with a deployment. Two writers merge, never clobber:
 * the file is rewritten under a lock from what is on disk plus the new lines. Uses base/ only. */
#ifndef MJ_TUNE_RECORDS_H
#define MJ_TUNE_RECORDS_H
#include <stdint.h>
#include <stdio.h>

#include "moejit.h"
#include "base/error.h"

#define MJ_RECORDS_FILE "records.txt"

typedef struct mj_record {
  char arch[16];
  int sms;
  int64_t hidden, intermediate, experts, top_k;
  char dtype[8];
  char kernel[64]; /* "gemm_<math>[_<choices>]": the GEMM1 + GEMM2 tile configuration of layers
                     that make the same choices of activation, gate/up layout, fusion and batch
                     invariance (runtime/plan.c, mj_rt_record_key) */
  int64_t bucket;  /* tokens: a power of two, or an exact count the user tuned */
  char version[16];
  char config[40];     /* mj_tune_config_name */
  double ms;           /* measured forward time with it */
  double heuristic_ms; /* the heuristic's time on the same data (0: not measured) */
} mj_record;

/* Same (arch, sms, shape, dtype, kernel, bucket, version). */
int mj_tune_record_same_key(const mj_record *a, const mj_record *b);
/* One line, no newline; the times in the fewest digits that read back exactly. */
void mj_tune_record_format(const mj_record *r, char *buf, size_t len);
/* Parses one line; 0, or -1 when it is not a record: 13 words, the counts positive integers
 * within range (the SM count an int), the times finite (ms > 0, heuristic_ms >= 0). */
int mj_tune_record_parse(const char *line, mj_record *r);

/* Loads every record of a file. A missing file is no records; one that is not a regular file (a
 * FIFO would block) is MOEJIT_ERR_IO. Damaged or unknown lines are skipped
 * with a warning "path:line: ..." through log. *out is malloc'd (may be NULL when *n is 0). */
moejit_status mj_tune_records_load(const char *path, mj_record **out, int *n, moejit_log_fn log,
                                   void *log_user, mj_err *err);
/* The same from an open stream (an export's records, say); name is what warnings call it. */
moejit_status mj_tune_records_read(FILE *f, const char *name, mj_record **out, int *n,
                                   moejit_log_fn log, void *log_user, mj_err *err);
/* Merges records into the file under an exclusive lock (path + ".lock"): a line with the same key
 * is replaced, all others are kept (one line per key, the last given, in O(n log n)); written to
 * a temporary file and renamed into place. A link is written through; a path that is neither a
 * regular file nor a link to one (a folder, a FIFO, a device) is refused, never replaced. */
moejit_status mj_tune_records_merge(const char *path, const mj_record *add, int n,
                                    moejit_log_fn log, void *log_user, mj_err *err);

#endif
