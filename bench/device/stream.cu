// stream.cu: how fast a CUDA-graph replay can read the bytes a one-token forward of a GPT-OSS layer
// reads, with nothing else to do: the bound the one-token rows of `moejit bench` are held against.
//   nvcc -std=c++17 -O3 -arch sm_90a -o /tmp/stream bench/device/stream.cu && /tmp/stream
// Each row is the median of 200 replays of a graph of one kernel (or two), each between its own
// pair of events, as `moejit bench` times a forward. Rows:
//   empty       a kernel that does nothing: the cost of a replay itself
//   bulk        blocks read contiguous slices of the buffer as 16 KB bulk copies into a six-deep
//               shared-memory ring (cp.async.bulk on mbarriers), one or two blocks an SM
//   strips      GEMM1's reads at one token: 64-column strips of four experts' [2880, 5760] bf16
//               weights, 64 rows a stage, 16-byte cp.async, six stages, one block a strip (360)
//   bulk 2x     the two GEMMs' bytes as two bulk kernels back to back
// Byte counts: the four experts' weights of both GEMMs (199.1 MB), GEMM1's (132.7 MB), GEMM2's
// (66.4 MB). The buffer is 1 GiB of the device's memory; nothing is flushed between replays (nor
// is it between `moejit bench`'s).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <cuda_runtime.h>

#define CHECK(x)                                                                                  \
  do {                                                                                            \
    cudaError_t e_ = (x);                                                                         \
    if (e_ != cudaSuccess) {                                                                      \
      fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));                 \
      exit(1);                                                                                    \
    }                                                                                             \
  } while (0)

static constexpr int kH = 2880, kN1 = 2 * 2880, kExperts = 4;

__device__ __forceinline__ unsigned smem_addr(const void *p) {
  return (unsigned)__cvta_generic_to_shared(p);
}

// What a block read, folded so that no load can be dropped; written only if it is a value no
// buffer here holds.
__device__ __forceinline__ void keep(unsigned acc, unsigned *out) {
  if (acc == 0x12345678u) out[blockIdx.x] = acc;
}

__global__ void empty_kernel(unsigned *out) { keep(threadIdx.x, out); }

// Block b reads bytes [b * per, (b + 1) * per), per = bytes / gridDim.x rounded down to 16 KB.
template <int kStages, int kChunk>
__global__ void __launch_bounds__(128) bulk_kernel(const char *in, long long bytes, unsigned *out) {
  extern __shared__ __align__(128) char ring[];
  __shared__ __align__(8) unsigned long long full[kStages];
  const long long per = bytes / gridDim.x / kChunk * kChunk;
  const char *src = in + blockIdx.x * per;
  const int chunks = (int)(per / kChunk);
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; s++)
      asm volatile("mbarrier.init.shared.b64 [%0], 1;" ::"r"(smem_addr(&full[s])));
    asm volatile("fence.mbarrier_init.release.cluster;");
  }
  __syncthreads();
  auto issue = [&](int c) {
    const int s = c % kStages;
    asm volatile("mbarrier.arrive.expect_tx.shared.b64 _, [%0], %1;" ::"r"(smem_addr(&full[s])),
                 "r"(kChunk));
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes"
                 " [%0], [%1], %2, [%3];"
                 :: "r"(smem_addr(ring + s * kChunk)), "l"(src + (long long)c * kChunk),
                 "r"(kChunk), "r"(smem_addr(&full[s]))
                 : "memory");
  };
  if (threadIdx.x == 0)
    for (int c = 0; c < kStages && c < chunks; c++) issue(c);
  unsigned acc = 0;
  for (int c = 0; c < chunks; c++) {
    const int s = c % kStages;
    asm volatile("{.reg .pred p; wait: mbarrier.try_wait.parity.shared.b64 p, [%0], %1;"
                 " @!p bra wait;}"
                 :: "r"(smem_addr(&full[s])), "r"((c / kStages) & 1));
    acc += ((const unsigned *)(ring + s * kChunk))[threadIdx.x * 4];
    __syncthreads();  // every thread is done with slot s before it is refilled
    if (threadIdx.x == 0 && c + kStages < chunks) issue(c + kStages);
  }
  keep(acc, out);
}

// Block b reads strip b % 90 of expert b / 90: 64 columns (128 bytes) of each row of a [kH, kN1]
// matrix.
template <int kStages>
__global__ void __launch_bounds__(128) strip_kernel(const char *w, unsigned *out) {
  constexpr int kBN = 64, kBK = 64, kStrips = kN1 / kBN, kSteps = kH / kBK;
  constexpr int kStageBytes = kBK * kBN * 2;
  extern __shared__ __align__(128) char ring[];
  const int e = blockIdx.x / kStrips, n0 = blockIdx.x % kStrips * kBN;
  const char *base = w + (size_t)e * kH * kN1 * 2 + n0 * 2;
  auto load = [&](int step) {
    char *dst = ring + step % kStages * kStageBytes;
    for (int c = threadIdx.x; c < kStageBytes / 16; c += 128) {
      const int r = c / (kBN / 8), col = c % (kBN / 8) * 16;
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;"
                   :: "r"(smem_addr(dst + r * kBN * 2 + col)),
                   "l"(base + (size_t)(step * kBK + r) * kN1 * 2 + col));
    }
  };
  for (int s = 0; s < kStages - 1; s++) {
    load(s);
    asm volatile("cp.async.commit_group;");
  }
  unsigned acc = 0;
  for (int step = 0; step < kSteps; step++) {
    asm volatile("cp.async.wait_group %0;" ::"n"(kStages - 2));
    __syncthreads();
    if (step + kStages - 1 < kSteps) load(step + kStages - 1);
    asm volatile("cp.async.commit_group;");
    acc += ((const unsigned *)(ring + step % kStages * kStageBytes))[threadIdx.x * 4];
  }
  keep(acc, out);
}

// Median of 200 replays of what `launch` enqueues, in microseconds.
template <class F> static float replay_us(F launch, cudaStream_t stream) {
  enum { kWarmup = 10, kRepeat = 200 };
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  launch();
  CHECK(cudaStreamEndCapture(stream, &graph));
  CHECK(cudaGraphInstantiate(&exec, graph, 0));
  std::vector<cudaEvent_t> start(kRepeat), stop(kRepeat);
  for (int i = 0; i < kRepeat; i++) {
    CHECK(cudaEventCreate(&start[i]));
    CHECK(cudaEventCreate(&stop[i]));
  }
  for (int i = 0; i < kWarmup; i++) CHECK(cudaGraphLaunch(exec, stream));
  for (int i = 0; i < kRepeat; i++) {
    CHECK(cudaEventRecord(start[i], stream));
    CHECK(cudaGraphLaunch(exec, stream));
    CHECK(cudaEventRecord(stop[i], stream));
  }
  CHECK(cudaStreamSynchronize(stream));
  std::vector<float> ms(kRepeat);
  for (int i = 0; i < kRepeat; i++) {
    CHECK(cudaEventElapsedTime(&ms[i], start[i], stop[i]));
    CHECK(cudaEventDestroy(start[i]));
    CHECK(cudaEventDestroy(stop[i]));
  }
  CHECK(cudaGraphExecDestroy(exec));
  CHECK(cudaGraphDestroy(graph));
  std::sort(ms.begin(), ms.end());
  return ms[kRepeat / 2] * 1000.0f;
}

static void row(const char *what, double bytes, float us) {
  if (bytes > 0)
    printf("%-34s %8.1f MB %8.1f us %7.3f TB/s\n", what, bytes / 1e6, us, bytes / us / 1e6);
  else
    printf("%-34s %11s %8.1f us\n", what, "", us);
}

int main() {
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  int sms;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  printf("%s, %d SMs\n", prop.name, sms);
  const size_t buffer = (size_t)1 << 30;
  char *buf;
  unsigned *out;
  CHECK(cudaMalloc(&buf, buffer));
  CHECK(cudaMemset(buf, 0x5A, buffer));
  CHECK(cudaMalloc(&out, 1 << 20));
  const long long gemm1 = (long long)kExperts * kH * kN1 * 2;
  const long long gemm2 = (long long)kExperts * kH * kH * 2;

  row("empty", 0, replay_us([&] { empty_kernel<<<1, 32, 0, stream>>>(out); }, stream));
  constexpr int kStages = 6, kChunk = 16384, kRing = kStages * kChunk;
  CHECK(cudaFuncSetAttribute(bulk_kernel<kStages, kChunk>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, kRing));
  const long long counts[] = {gemm1 + gemm2, gemm1, gemm2};
  for (long long bytes : counts)
    for (int per_sm = 1; per_sm <= 2; per_sm++) {
      char what[64];
      snprintf(what, sizeof what, "bulk, %d block%s an SM", per_sm, per_sm > 1 ? "s" : "");
      row(what, (double)bytes, replay_us([&] {
            bulk_kernel<kStages, kChunk><<<sms * per_sm, 128, kRing, stream>>>(buf, bytes, out);
          }, stream));
    }
  constexpr int kStrip = kStages * 64 * 64 * 2;
  CHECK(cudaFuncSetAttribute(strip_kernel<kStages>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             kStrip));
  row("strips (GEMM1 at one token)", (double)gemm1, replay_us([&] {
        strip_kernel<kStages><<<kExperts * kN1 / 64, 128, kStrip, stream>>>(buf, out);
      }, stream));
  row("bulk 2x: GEMM1's bytes, GEMM2's", (double)(gemm1 + gemm2), replay_us([&] {
        bulk_kernel<kStages, kChunk><<<sms * 2, 128, kRing, stream>>>(buf, gemm1, out);
        bulk_kernel<kStages, kChunk><<<sms * 2, 128, kRing, stream>>>(buf + gemm1, gemm2, out);
      }, stream));
  CHECK(cudaGetLastError());
  return 0;
}
