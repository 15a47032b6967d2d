/* fuzz_cubin.c: the cubin cache's file reader. Any file is a cubin whose length and checksum
 * hold, or refused with a status, without reading or allocating more than the file holds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "memfile.h"
#include "tune/cache.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char path[64];
  int fd = mem_file(data, size, path);
  if (fd < 0)
    return 0;
  void *cubin = NULL;
  size_t len = 0;
  uint8_t key[16];
  mj_cache_file_status st = mj_tune_cache_read_file(path, NULL, &cubin, &len, key);
  if (st == MJ_CACHE_FILE_OK && (len == 0 || len > size || !cubin))
    __builtin_trap(); /* a cubin is never longer than its file */
  if (st != MJ_CACHE_FILE_OK && cubin)
    __builtin_trap(); /* a refused file hands nothing out */
  free(cubin);
  if (st == MJ_CACHE_FILE_OK) { /* the key it names is the one it must carry */
    if (mj_tune_cache_read_file(path, key, &cubin, &len, NULL) != MJ_CACHE_FILE_OK)
      __builtin_trap();
    free(cubin);
  }
  close(fd);
  return 0;
}
