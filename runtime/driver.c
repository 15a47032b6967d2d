/* driver.c: dlopen of libcuda.so.1 and the table of entry points (see driver.h). */
#include "runtime/driver.h"

#include <dlfcn.h>
#include <string.h>

/* dlsym of "cuX" for "cuX_v2" (same signature for the entry points moejit uses). */
static void *dlsym_unversioned(void *lib, const char *symbol) {
  char name[64];
  size_t n = strlen(symbol);
  if (n < 4 || n >= sizeof name || strcmp(symbol + n - 3, "_v2") != 0)
    return NULL;
  memcpy(name, symbol, n - 3);
  name[n - 3] = '\0';
  return dlsym(lib, name);
}

moejit_status mj_rt_driver_load(mj_cu *cu, mj_err *err) {
  memset(cu, 0, sizeof *cu);
  cu->lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!cu->lib)
    return mj_errf(err, MOEJIT_ERR_NO_DEVICE, "no CUDA driver: dlopen(libcuda.so.1) failed: %s",
                   dlerror());
#define MJ_CU_LOAD_(field, symbol, params)                                                         \
  *(void **)(&cu->field) = dlsym(cu->lib, symbol);                                                 \
  if (!cu->field) /* an older driver: the entry point's first version */                           \
    *(void **)(&cu->field) = dlsym_unversioned(cu->lib, symbol);                                   \
  if (!cu->field) {                                                                                \
    mj_rt_driver_unload(cu);                                                                       \
    return mj_errf(err, MOEJIT_ERR_NO_DEVICE, "the CUDA driver lacks %s (driver too old)",         \
                   symbol);                                                                        \
  }
  MJ_CU_FUNCTIONS(MJ_CU_LOAD_)
#undef MJ_CU_LOAD_
  CUresult r = cu->Init(0);
  int n = 0;
  if (r == MJ_CU_SUCCESS)
    r = cu->DeviceGetCount(&n);
  if (r != MJ_CU_SUCCESS || n == 0) {
    const char *name = "no device";
    if (r != MJ_CU_SUCCESS)
      cu->GetErrorName(r, &name);
    mj_rt_driver_unload(cu);
    return mj_errf(err, MOEJIT_ERR_NO_DEVICE, "no CUDA GPU found (cuInit/cuDeviceGetCount: %s)",
                   name ? name : "unknown");
  }
  return MOEJIT_OK;
}

void mj_rt_driver_unload(mj_cu *cu) {
  if (cu->lib)
    dlclose(cu->lib);
  memset(cu, 0, sizeof *cu);
}

moejit_status mj_rt_cu_fail(const mj_cu *cu, CUresult r, const char *call, const char *file,
                            int line, mj_err *err) {
  const char *name = NULL, *text = NULL;
  if (cu->GetErrorName)
    cu->GetErrorName(r, &name);
  if (cu->GetErrorString)
    cu->GetErrorString(r, &text);
  return mj_errf(err, MOEJIT_ERR_CUDA, "%s failed: %s (%s) at %s:%d", call,
                 name ? name : "CUDA_ERROR_UNKNOWN", text ? text : "?", file, line);
}
