/* nvrtc.h: NVRTC loaded with dlopen, and the compile of one generated translation unit to a cubin.
 * Uses gen.h for the in-memory headers. */
#ifndef MJ_GEN_NVRTC_H
#define MJ_GEN_NVRTC_H
#include <stddef.h>

#include "gen/gen.h"

typedef struct mj_nvrtc {
  void *lib;
  int major, minor;
  int (*Version)(int *major, int *minor);
  int (*CreateProgram)(void **prog, const char *src, const char *name, int num_headers,
                       const char *const *headers, const char *const *include_names);
  int (*CompileProgram)(void *prog, int num_options, const char *const *options);
  int (*GetProgramLogSize)(void *prog, size_t *size);
  int (*GetProgramLog)(void *prog, char *log);
  int (*GetCUBINSize)(void *prog, size_t *size);
  int (*GetCUBIN)(void *prog, char *cubin);
  int (*DestroyProgram)(void **prog);
  const char *(*GetErrorString)(int result);
} mj_nvrtc;

/* Loads NVRTC (libnvrtc.so.13, else .12, else libnvrtc.so in each place): $MOEJIT_NVRTC, a path,
 * alone when set (its failure is an error, nothing stands in); else $CUDA_HOME/lib64,
 * /usr/local/cuda/lib64, the loader's path (LD_LIBRARY_PATH, the ldconfig cache), then each
 * folder of $MOEJIT_NVRTC_SEARCH (colon-separated; the Python package puts the
 * nvidia-cuda-nvrtc wheel's and torch's there). MOEJIT_ERR_NO_COMPILER lists where it looked. */
moejit_status mj_gen_nvrtc_load(mj_nvrtc *nv, mj_err *err);
void mj_gen_nvrtc_unload(mj_nvrtc *nv);

enum {
  MJ_COMPILE_PTXAS_VERBOSE = 1, /* ptxas resource report (registers, spills, shared) into the log */
  MJ_COMPILE_LINEINFO = 2,
};

typedef struct mj_cubin {
  void *data;
  size_t size;
  char *log; /* NVRTC log (may be empty), malloc'd */
} mj_cubin;

/* Compiles `source` (named name.cu in messages) for arch ("sm_80", "sm_90a") with the generator's
 * headers. On MOEJIT_ERR_COMPILE the NVRTC log is in err and in out->log. Free with mj_cubin_free.
 */
moejit_status mj_gen_compile(const mj_nvrtc *nv, const mj_gen *gen, const char *source,
                             const char *name, const char *arch, int flags, mj_cubin *out,
                             mj_err *err);
void mj_cubin_free(mj_cubin *c);

/* The NVRTC options used for an arch and flags, for cache keys and messages: writes a
 * space-separated list into buf. */
void mj_gen_compile_options(const char *arch, int flags, char *buf, size_t len);

#endif
