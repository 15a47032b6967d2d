/* fuzz_records.c: the tuning records parser. Any input, as one line or as a whole file, is a
 * record or refused, never misread: a parsed line formats and parses back to the same record. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "memfile.h"
#include "tune/records.h"

static void same_or_trap(const mj_record *a) {
  char line[512];
  mj_record b;
  mj_tune_record_format(a, line, sizeof line);
  if (mj_tune_record_parse(line, &b) != 0 || !mj_tune_record_same_key(a, &b) ||
      strcmp(a->config, b.config) != 0 || a->ms != b.ms || a->heuristic_ms != b.heuristic_ms)
    __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *line = malloc(size + 1);
  if (!line)
    return 0;
  memcpy(line, data, size);
  line[size] = '\0';
  mj_record r;
  if (mj_tune_record_parse(line, &r) == 0)
    same_or_trap(&r);
  free(line);

  /* the same bytes as a records file */
  char path[64];
  int fd = mem_file(data, size, path);
  if (fd < 0)
    return 0;
  mj_record *all = NULL;
  int n = 0;
  mj_err err;
  if (mj_tune_records_load(path, &all, &n, NULL, NULL, &err) == MOEJIT_OK)
    for (int i = 0; i < n; i++)
      same_or_trap(&all[i]);
  free(all);
  close(fd);
  return 0;
}
