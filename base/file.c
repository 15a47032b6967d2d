/* file.c: files that may be hostile: opened only when regular, replaced through a temporary
 * file (see file.h). */
#include "base/file.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *kind(mode_t m) {
  return S_ISDIR(m)    ? "a folder"
         : S_ISFIFO(m) ? "a FIFO"
         : S_ISCHR(m)  ? "a character device"
         : S_ISBLK(m)  ? "a block device"
         : S_ISSOCK(m) ? "a socket"
                       : "not a regular file";
}

moejit_status mj_file_target(const char *path, char *out, size_t cap, mj_err *err) {
  struct stat sb;
  char real[PATH_MAX];
  if (lstat(path, &sb) != 0) {
    if (errno != ENOENT)
      return mj_errf(err, MOEJIT_ERR_IO, "%s: %s", path, strerror(errno));
  } else if (S_ISLNK(sb.st_mode)) {
    if (!realpath(path, real) || stat(real, &sb) != 0)
      return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "%s is a link to nothing (%s); not replaced",
                     path, strerror(errno));
    if (!S_ISREG(sb.st_mode))
      return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "%s is a link to %s, %s; not replaced", path,
                     real, kind(sb.st_mode));
    path = real;
  } else if (!S_ISREG(sb.st_mode)) {
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "%s is %s; not replaced", path, kind(sb.st_mode));
  }
  if (strlen(path) >= cap)
    return mj_errf(err, MOEJIT_ERR_INVALID_ARG, "%s: path too long", path);
  memcpy(out, path, strlen(path) + 1);
  return MOEJIT_OK;
}

FILE *mj_file_open_regular(const char *path, struct stat *sb, int *not_regular) {
  *not_regular = 0;
  /* non-blocking until it is known to be a regular file */
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0)
    return NULL;
  FILE *f = NULL;
  if (fstat(fd, sb) == 0) {
    *not_regular = !S_ISREG(sb->st_mode);
    if (!*not_regular && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) == 0)
      f = fdopen(fd, "rb");
  }
  if (!f) {
    int e = errno;
    close(fd);
    errno = *not_regular ? EINVAL : e;
  }
  return f;
}

FILE *mj_file_temp(const char *target, char *tmp, size_t cap) {
  if (snprintf(tmp, cap, "%s.tmp.XXXXXX", target) >= (int)cap) {
    errno = ENAMETOOLONG;
    return NULL;
  }
  int fd = mkstemp(tmp);
  if (fd < 0)
    return NULL;
  FILE *f = fdopen(fd, "wb");
  if (!f) {
    int e = errno;
    close(fd);
    unlink(tmp);
    errno = e;
  }
  return f;
}

int mj_file_commit(FILE *f, const char *tmp, const char *target, int keep) {
  int e = 0, before = errno;
  if (keep && (fflush(f) != 0 || fsync(fileno(f)) != 0))
    e = errno ? errno : EIO;
  if (fclose(f) != 0 && keep && !e)
    e = errno ? errno : EIO;
  if (keep && !e && (chmod(tmp, 0644) != 0 || rename(tmp, target) != 0))
    e = errno;
  if (e || !keep)
    unlink(tmp);
  errno = keep ? e : before;
  return e;
}
