/* file.h: files that may be hostile. A reader opens only regular files: opening a FIFO blocks
 * until a writer comes, a device feeds without end. A writer puts a temporary file next to its
 * target and renames it into place; renaming onto a link, a FIFO or a device would replace it
 * instead of writing to it. Uses nothing else. */
#ifndef MJ_BASE_FILE_H
#define MJ_BASE_FILE_H
#include <stddef.h>
#include <stdio.h>
#include <sys/stat.h>

#include "base/error.h"

/* The path to rename a new version of path onto, into out (cap bytes): path itself where nothing
 * or a regular file is, the file a symbolic link resolves to where that is a regular file.
 * MOEJIT_ERR_INVALID_ARG, with a message naming path, where it is anything else (a folder, a
 * FIFO, a device, a link to nothing); MOEJIT_ERR_IO where it cannot be looked at. */
moejit_status mj_file_target(const char *path, char *out, size_t cap, mj_err *err);

/* A new temporary file beside target for writing ("wb"): target.tmp.XXXXXX, its name in tmp
 * (cap bytes). NULL with errno set when it cannot be made. */
FILE *mj_file_temp(const char *target, char *tmp, size_t cap);
/* Ends a file mj_file_temp made. With keep: flushes, syncs and closes f, then renames tmp onto
 * target (mode 0644); returns 0, or the errno of the first step that failed (tmp is then
 * removed). Without keep: closes f, removes tmp, returns 0 and leaves errno as it was. */
int mj_file_commit(FILE *f, const char *tmp, const char *target, int keep);

/* Opens path for reading ("rb") where it is a regular file, with its stat in *sb. NULL otherwise,
 * with *not_regular 1 where something else is there (errno says why where nothing could be
 * opened). Never blocks. */
FILE *mj_file_open_regular(const char *path, struct stat *sb, int *not_regular);

#endif
