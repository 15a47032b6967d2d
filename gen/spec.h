/* spec.h: a kernel spec, the ordered key/value list the C side hands to a template as a Lua table.
 * Values are integers, numbers or strings; keys keep their insertion order, so the header comment a
 * template writes (and so the source, and so the cache key) is a pure function of the spec. */
#ifndef MJ_GEN_SPEC_H
#define MJ_GEN_SPEC_H
#include <stdint.h>

#define MJ_SPEC_MAX 48

typedef enum { MJ_SPEC_INT, MJ_SPEC_NUM, MJ_SPEC_STR } mj_spec_kind;

typedef struct mj_spec_entry {
  const char *key; /* static string */
  mj_spec_kind kind;
  int64_t i;
  double n;
  char s[32];
} mj_spec_entry;

typedef struct mj_spec {
  int count;
  int overflow; /* set when more than MJ_SPEC_MAX entries were put: render refuses such a spec */
  mj_spec_entry e[MJ_SPEC_MAX];
} mj_spec;

void mj_spec_int(mj_spec *s, const char *key, int64_t v);
void mj_spec_num(mj_spec *s, const char *key, double v);
void mj_spec_str(mj_spec *s, const char *key, const char *v);
/* The entry for key, or NULL. */
const mj_spec_entry *mj_spec_get(const mj_spec *s, const char *key);

#endif
