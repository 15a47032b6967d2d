/* error.h: the detail buffer every internal call writes its failure into (argument, value, log).
 * Used by gen/, runtime/ and tune/; the context copies it out through moejit_last_error. */
#ifndef MJ_RUNTIME_ERROR_H
#define MJ_RUNTIME_ERROR_H
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#include "moejit.h"

#define MJ_ERR_CAP 16384

typedef struct mj_err {
  char msg[MJ_ERR_CAP];
} mj_err;

/* Writes the message (when err is not NULL) and returns s, so a call reads
 * `return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "hidden=%lld is not a multiple of 8", h);` */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static inline moejit_status mj_errf(mj_err *err, moejit_status s, const char *fmt, ...) {
  if (err) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
  }
  return s;
}

#endif
