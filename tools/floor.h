/* floor.h: the two rates of a forward's floor, measured on the context's device in the same run
 * as the forwards they bound: the HBM read bandwidth (a read-only reduction, templates/bench.lua)
 * and cuBLAS's dense GEMM rate (loaded with dlopen) in a layer's math. Used by `moejit bench`.
 * Uses runtime/runtime.h (the bandwidth kernel's module, the driver), tools/synth, tools/timing. */
#ifndef MJ_TOOLS_FLOOR_H
#define MJ_TOOLS_FLOOR_H
#include "runtime/runtime.h"
#include "tools/synth.h"

enum {
  MJ_FLOOR_BW_PASSES = 10,  /* reductions timed for the bandwidth, median */
  MJ_FLOOR_GEMM_CALLS = 10, /* GEMMs timed for the rate, median */
  MJ_FLOOR_GEMM_N = 8192,   /* M = N = K of those GEMMs */
  MJ_FLOOR_WARMUP = 3,      /* untimed runs before either */
};

/* HBM read bandwidth, TB/s: the median of MJ_FLOOR_BW_PASSES reductions over `bytes` (a multiple
 * of 16; the buffer is allocated here) on stream. The context is current. */
moejit_status mj_floor_bandwidth(moejit_ctx *ctx, CUstream stream, int64_t bytes, double *tbps,
                                 mj_err *err);
/* Compiles the bandwidth kernel for the context's arch (and loads it, then unloads it, on a GPU):
 * what an offline `moejit bench` builds. */
moejit_status mj_floor_compile(moejit_ctx *ctx, mj_err *err);
/* The GEMM of a layer's floor: "bf16", "f16" (f32 accumulation), "tf32" or "f32" (exact_f32).
 * MXFP4 weights: the activations' dense GEMM, "bf16" or "f16" (the kernels decode the weights and
 * multiply on those tensor cores). */
const char *mj_floor_gemm_math(const moejit_layer_desc *desc);
/* The bytes a forward reads of one expert's weights, biases left out (a layer may have none; at
 * gpt-oss shapes they are under 0.1% of it): dense, (H*N1 + I*H) * sizeof(dtype) with N1 =
 * mj_rt_gate_up_cols (2I, or I for an activation without mul); MXFP4, the blocks and scales of
 * both, (H*N1 + I*H)/2 + (H*N1 + I*H)/32 (13,219,200 bytes at H = I = 2880, gated). */
double mj_floor_expert_bytes(const moejit_layer_desc *desc);
/* The FLOPs of one routed slot (a token through one expert, dropless): 2*(H*N1 + I*H). */
double mj_floor_slot_flops(const moejit_layer_desc *desc);
/* Dense GEMM rate, TFLOP/s: the median of MJ_FLOOR_GEMM_CALLS cuBLAS GEMMs of MJ_FLOOR_GEMM_N^3
 * in the layer's math, on operands syn fills with random values. cublas_path NULL:
 * libcublas.so.13, .so.12, then the same in /usr/local/cuda/lib64; MOEJIT_ERR_UNSUPPORTED naming
 * what was tried when none loads. The context is current. */
moejit_status mj_floor_gemm(moejit_ctx *ctx, const mj_synth *syn, CUstream stream,
                            const moejit_layer_desc *desc, const char *cublas_path, double *tflops,
                            mj_err *err);

#endif
