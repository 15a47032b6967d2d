/* error.h: the detail buffer every internal call writes its failure into (argument, value, log),
 * and the formatting of log messages. Used by every layer; the context copies the
 * detail out through moejit_last_error. */
#ifndef MJ_BASE_ERROR_H
#define MJ_BASE_ERROR_H
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#include "moejit.h"

#define MJ_ERR_CAP 16384

typedef struct mj_err {
  char msg[MJ_ERR_CAP];
} mj_err;

#if defined(__GNUC__)
#define MJ_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define MJ_PRINTF(fmt, args)
#endif

/* Writes the message (when err is not NULL) and returns s, so a call reads
 * `return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "hidden=%lld is not a multiple of 8", h);` */
MJ_PRINTF(3, 4)
static inline moejit_status mj_errf(mj_err *err, moejit_status s, const char *fmt, ...) {
  if (err) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
  }
  return s;
}

/* Formats a message and hands it to a log callback (nothing when log is NULL). */
MJ_PRINTF(4, 5)
static inline void mj_logf(moejit_log_fn log, void *user, moejit_log_level level, const char *fmt,
                           ...) {
  if (!log)
    return;
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  log(user, level, msg);
}

#endif
