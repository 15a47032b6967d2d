/* driver.h: the CUDA Driver API, loaded with dlopen so the library starts without a GPU.
 * Provides a table of the driver entry points moejit uses and the few driver types and constants,
 * declared here so no toolkit header is needed. Uses nothing else of the library. */
#ifndef MJ_RUNTIME_DRIVER_H
#define MJ_RUNTIME_DRIVER_H
#include <stddef.h>

#include "base/error.h"

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUevent_st *CUevent;
typedef struct CUgraph_st *CUgraph;
typedef struct CUgraphExec_st *CUgraphExec;
/* CUstream comes from moejit.h. */

enum {
  MJ_CU_SUCCESS = 0,
  MJ_CU_ERROR_NO_DEVICE = 100,
  MJ_CU_ATTR_SM_COUNT = 16,
  MJ_CU_ATTR_CC_MAJOR = 75,
  MJ_CU_ATTR_CC_MINOR = 76,
  MJ_CU_ATTR_SMEM_OPTIN = 97,
  MJ_CU_ATTR_SMEM_PER_SM = 81,
  MJ_CU_FUNC_SHARED_SIZE_BYTES = 1,
  MJ_CU_FUNC_LOCAL_SIZE_BYTES = 3,
  MJ_CU_FUNC_NUM_REGS = 4,
  MJ_CU_FUNC_MAX_DYNAMIC_SHARED = 8,
  MJ_CU_STREAM_NON_BLOCKING = 1,
  MJ_CU_CAPTURE_MODE_THREAD_LOCAL = 1,
  MJ_CU_LAUNCH_ATTR_PDL = 6, /* CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION */
  MJ_CU_TMAP_FLOAT16 = 6,
  MJ_CU_TMAP_BFLOAT16 = 9,
  MJ_CU_TMAP_SWIZZLE_128B = 3,
  MJ_CU_TMAP_L2_256B = 3,
};

/* A tensor map for the bulk tensor copy engine: opaque, 64-byte aligned, passed by value. */
typedef struct mj_tmap {
  _Alignas(64) unsigned long long opaque[16];
} mj_tmap;

/* cuLaunchKernelEx's configuration, with room for the one attribute the runtime sets:
 * programmatic stream serialisation (MJ_CU_LAUNCH_ATTR_PDL, value 1), which lets the kernel start
 * while the one before it in the stream still runs; the kernel's griddepcontrol.wait then orders
 * its reads after that kernel (see mj_pdl_begin in templates/prelude.cuh). */
typedef struct mj_launch_attr {
  int id;
  int pad;
  union {
    char bytes[64];
    int value;
    void *align_;
  } v;
} mj_launch_attr;

typedef struct mj_launch_config {
  unsigned grid[3], block[3], smem;
  CUstream stream;
  mj_launch_attr *attrs;
  unsigned num_attrs;
} mj_launch_config;

_Static_assert(sizeof(mj_launch_attr) == 72 && sizeof(mj_launch_config) == 56,
               "cuLaunchKernelEx's CUlaunchAttribute and CUlaunchConfig layouts");

/* X(field, symbol, (parameters)) */
#define MJ_CU_FUNCTIONS(X)                                                                         \
  X(Init, "cuInit", (unsigned flags))                                                              \
  X(DriverGetVersion, "cuDriverGetVersion", (int *v))                                              \
  X(DeviceGetCount, "cuDeviceGetCount", (int *n))                                                  \
  X(DeviceGet, "cuDeviceGet", (CUdevice * d, int ordinal))                                         \
  X(DeviceGetName, "cuDeviceGetName", (char *name, int len, CUdevice d))                           \
  X(DeviceGetAttribute, "cuDeviceGetAttribute", (int *v, int attr, CUdevice d))                    \
  X(DevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", (CUcontext * c, CUdevice d))               \
  X(DevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2", (CUdevice d))                         \
  X(CtxGetCurrent, "cuCtxGetCurrent", (CUcontext * c))                                             \
  X(CtxPushCurrent, "cuCtxPushCurrent_v2", (CUcontext c))                                          \
  X(CtxPopCurrent, "cuCtxPopCurrent_v2", (CUcontext * c))                                          \
  X(CtxSynchronize, "cuCtxSynchronize", (void))                                                    \
  X(ModuleLoadData, "cuModuleLoadData", (CUmodule * m, const void *image))                         \
  X(ModuleUnload, "cuModuleUnload", (CUmodule m))                                                  \
  X(ModuleGetFunction, "cuModuleGetFunction", (CUfunction * f, CUmodule m, const char *name))      \
  X(FuncSetAttribute, "cuFuncSetAttribute", (CUfunction f, int attr, int value))                   \
  X(FuncGetAttribute, "cuFuncGetAttribute", (int *v, int attr, CUfunction f))                      \
  X(LaunchKernel, "cuLaunchKernel",                                                                \
    (CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,   \
     unsigned smem, CUstream s, void **params, void **extra))                                      \
  X(LaunchKernelEx, "cuLaunchKernelEx",                                                            \
    (const mj_launch_config *config, CUfunction f, void **params, void **extra))                   \
  X(TensorMapEncodeTiled, "cuTensorMapEncodeTiled",                                                \
    (mj_tmap * map, int dtype, unsigned rank, void *address, const unsigned long long *dims,       \
     const unsigned long long *strides, const unsigned *box, const unsigned *element_strides,      \
     int interleave, int swizzle, int l2_promotion, int oob_fill))                                 \
  X(MemAlloc, "cuMemAlloc_v2", (CUdeviceptr * p, size_t bytes))                                    \
  X(MemFree, "cuMemFree_v2", (CUdeviceptr p))                                                      \
  X(MemGetInfo, "cuMemGetInfo_v2", (size_t * free_bytes, size_t * total))                          \
  X(MemcpyHtoD, "cuMemcpyHtoD_v2", (CUdeviceptr dst, const void *src, size_t bytes))               \
  X(MemcpyDtoH, "cuMemcpyDtoH_v2", (void *dst, CUdeviceptr src, size_t bytes))                     \
  X(MemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2", (void *dst, CUdeviceptr src, size_t n, CUstream s))   \
  X(MemsetD8, "cuMemsetD8_v2", (CUdeviceptr dst, unsigned char v, size_t n))                       \
  X(MemsetD32Async, "cuMemsetD32Async", (CUdeviceptr dst, unsigned v, size_t n, CUstream s))       \
  X(StreamCreate, "cuStreamCreate", (CUstream * s, unsigned flags))                                \
  X(StreamDestroy, "cuStreamDestroy_v2", (CUstream s))                                             \
  X(StreamSynchronize, "cuStreamSynchronize", (CUstream s))                                        \
  X(StreamBeginCapture, "cuStreamBeginCapture_v2", (CUstream s, int mode))                         \
  X(StreamEndCapture, "cuStreamEndCapture", (CUstream s, CUgraph * g))                             \
  X(GraphInstantiate, "cuGraphInstantiateWithFlags",                                               \
    (CUgraphExec * e, CUgraph g, unsigned long long flags))                                        \
  X(GraphLaunch, "cuGraphLaunch", (CUgraphExec e, CUstream s))                                     \
  X(GraphExecDestroy, "cuGraphExecDestroy", (CUgraphExec e))                                       \
  X(GraphDestroy, "cuGraphDestroy", (CUgraph g))                                                   \
  X(EventCreate, "cuEventCreate", (CUevent * e, unsigned flags))                                   \
  X(EventDestroy, "cuEventDestroy_v2", (CUevent e))                                                \
  X(EventRecord, "cuEventRecord", (CUevent e, CUstream s))                                         \
  X(EventSynchronize, "cuEventSynchronize", (CUevent e))                                           \
  X(EventElapsedTime, "cuEventElapsedTime_v2", (float *ms, CUevent a, CUevent b))                  \
  X(GetErrorName, "cuGetErrorName", (CUresult r, const char **s))                                  \
  X(GetErrorString, "cuGetErrorString", (CUresult r, const char **s))

typedef struct mj_cu {
  void *lib;
#define MJ_CU_FIELD_(field, symbol, params) CUresult(*field) params;
  MJ_CU_FUNCTIONS(MJ_CU_FIELD_)
#undef MJ_CU_FIELD_
} mj_cu;

/* Loads libcuda.so.1 and every entry point, then cuInit(0). MOEJIT_ERR_NO_DEVICE when the library
 * is absent, an entry point is missing, cuInit fails or no device is present; the reason is in err.
 */
moejit_status mj_rt_driver_load(mj_cu *cu, mj_err *err);
void mj_rt_driver_unload(mj_cu *cu);

/* Formats "call failed: CUDA_ERROR_X (text) at file:line" into err and returns MOEJIT_ERR_CUDA. */
moejit_status mj_rt_cu_fail(const mj_cu *cu, CUresult r, const char *call, const char *file,
                            int line, mj_err *err);

/* Runs a driver call; on failure records it and jumps to `fail` with `st` set. */
#define MJ_CU(cu, call, err)                                                                       \
  do {                                                                                             \
    CUresult mj_r_ = (cu)->call;                                                                   \
    if (mj_r_ != MJ_CU_SUCCESS) {                                                                  \
      st = mj_rt_cu_fail((cu), mj_r_, #call, __FILE__, __LINE__, (err));                           \
      goto fail;                                                                                   \
    }                                                                                              \
  } while (0)

#endif
