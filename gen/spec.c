/* spec.c: building kernel specs (see spec.h). */
#include "gen/spec.h"

#include <string.h>

static mj_spec_entry *slot(mj_spec *s, const char *key, mj_spec_kind kind) {
  for (int i = 0; i < s->count; i++)
    if (strcmp(s->e[i].key, key) == 0) {
      s->e[i].kind = kind;
      return &s->e[i];
    }
  if (s->count == MJ_SPEC_MAX) {
    s->overflow = 1;
    return NULL;
  }
  mj_spec_entry *e = &s->e[s->count++];
  memset(e, 0, sizeof *e);
  e->key = key;
  e->kind = kind;
  return e;
}

void mj_spec_int(mj_spec *s, const char *key, int64_t v) {
  mj_spec_entry *e = slot(s, key, MJ_SPEC_INT);
  if (e)
    e->i = v;
}

void mj_spec_num(mj_spec *s, const char *key, double v) {
  mj_spec_entry *e = slot(s, key, MJ_SPEC_NUM);
  if (e)
    e->n = v;
}

void mj_spec_str(mj_spec *s, const char *key, const char *v) {
  mj_spec_entry *e = slot(s, key, MJ_SPEC_STR);
  if (e) {
    strncpy(e->s, v, sizeof e->s - 1);
    e->s[sizeof e->s - 1] = '\0';
  }
}

const mj_spec_entry *mj_spec_get(const mj_spec *s, const char *key) {
  for (int i = 0; i < s->count; i++)
    if (strcmp(s->e[i].key, key) == 0)
      return &s->e[i];
  return NULL;
}
