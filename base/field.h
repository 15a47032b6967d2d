/* field.h: tables of a struct's fields by name, for the places that read or bind fields by the
 * names a template gives them (gen/template.c's launch contracts, runtime/launch.c's values). */
#ifndef MJ_BASE_FIELD_H
#define MJ_BASE_FIELD_H
#include <stddef.h>
#include <string.h>

typedef struct mj_field {
  const char *name;
  size_t offset, size;
} mj_field;

/* An entry for member `field` of struct type `type`. */
#define MJ_FIELD(type, field)                                                                      \
  { #field, offsetof(type, field), sizeof(((type *)0)->field) }

/* The entry of table[0..n) named `name`, or NULL. */
static inline const mj_field *mj_field_find(const mj_field *table, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(table[i].name, name) == 0)
      return &table[i];
  return NULL;
}

#endif
