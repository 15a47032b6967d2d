/* gen.h: kernel generation. A sandboxed Lua state renders a template module with a spec into a whole
 * CUDA translation unit; NVRTC (nvrtc.h) compiles it. Uses base/error.h only. */
#ifndef MJ_GEN_GEN_H
#define MJ_GEN_GEN_H
#include <stddef.h>

#include "gen/spec.h"
#include "base/error.h"

typedef struct mj_gen mj_gen;

/* A template source file, embedded or read from a folder. */
typedef struct mj_gen_file {
  char *name; /* "gemm.lua", "prelude.cuh" */
  char *text;
  size_t len;
} mj_gen_file;

/* Opens the sandbox. template_dir NULL: the embedded templates; else every *.lua and *.cuh of that
 * folder, read now. MOEJIT_ERR_OUT_OF_MEMORY, MOEJIT_ERR_IO (folder), MOEJIT_ERR_TEMPLATE. */
moejit_status mj_gen_open(mj_gen **gen, const char *template_dir, mj_err *err);
void mj_gen_close(mj_gen *gen);

/* Renders templates/<name>.lua, a module returning function(spec) -> string, in a fresh environment
 * under an instruction budget. *source is malloc'd, owned by the caller. MOEJIT_ERR_TEMPLATE with
 * the Lua error and traceback in err. */
moejit_status mj_gen_render(mj_gen *gen, const char *name, const mj_spec *spec, char **source,
                            mj_err *err);

/* The *.cuh files, handed to NVRTC as in-memory headers. */
const mj_gen_file *mj_gen_headers(const mj_gen *gen, int *count);

/* Test hook: runs a chunk of Lua in a fresh sandbox environment and returns its first result
 * converted to a string (malloc'd). */
moejit_status mj_gen_eval(mj_gen *gen, const char *chunk, char **result, mj_err *err);

/* Caps the sandbox's memory (bytes) and instruction budget (count); 0 keeps the current value. */
void mj_gen_set_limits(mj_gen *gen, size_t mem_bytes, long instructions);

#endif
