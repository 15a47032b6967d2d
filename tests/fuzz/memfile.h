/* memfile.h: a fuzz input as a file the library opens by path (an anonymous memory file). */
#ifndef MJ_FUZZ_MEMFILE_H
#define MJ_FUZZ_MEMFILE_H
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

/* The descriptor of a memory file holding data, its path in path; -1 when it cannot be made. */
static inline int mem_file(const uint8_t *data, size_t size, char path[64]) {
  int fd = memfd_create("fuzz", 0);
  if (fd >= 0 && write(fd, data, size) != (ssize_t)size) {
    close(fd);
    fd = -1;
  }
  snprintf(path, 64, "/proc/self/fd/%d", fd);
  return fd;
}

#endif
