/* status.c: names and messages of the status codes, from the one table in moejit.h. */
#include "moejit.h"

#include <stdio.h>

const char *moejit_status_name(moejit_status s) {
  switch (s) {
#define MJ_NAME_(name, value, message)                                                             \
  case name: return #name;
    MOEJIT_STATUS_LIST(MJ_NAME_)
#undef MJ_NAME_
  }
  return "MOEJIT_ERR_UNKNOWN";
}

const char *moejit_status_string(moejit_status s) {
  switch (s) {
#define MJ_MESSAGE_(name, value, message)                                                          \
  case name: return message;
    MOEJIT_STATUS_LIST(MJ_MESSAGE_)
#undef MJ_MESSAGE_
  }
  return "unknown status";
}

#define MJ_STR2_(x) #x
#define MJ_STR_(x) MJ_STR2_(x)

int moejit_version(void) {
  return MOEJIT_VERSION_MAJOR * 10000 + MOEJIT_VERSION_MINOR * 100 + MOEJIT_VERSION_PATCH;
}

const char *moejit_version_string(void) {
  return MJ_STR_(MOEJIT_VERSION_MAJOR) "." MJ_STR_(MOEJIT_VERSION_MINOR) "." MJ_STR_(
      MOEJIT_VERSION_PATCH);
}
