// Shared by every translation unit of the library: the context (stream, workspace), error
// reporting into mb_last_error(), launch helpers and the small device math the ops share.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "mambabyte.h"

// ---- errors ----

// Records a formatted message for mb_last_error() and returns 1.
int mb_fail(const char* format, ...);

// Returns nonzero (with the message recorded) when a CUDA call failed.
#define MB_CUDA(call)                                                                  \
  do {                                                                                 \
    cudaError_t mb_err_ = (call);                                                      \
    if (mb_err_ != cudaSuccess) {                                                      \
      return mb_fail("%s: %s (%s)", #call, cudaGetErrorString(mb_err_), cudaGetErrorName(mb_err_)); \
    }                                                                                  \
  } while (0)

// Checks the launch that precedes it (bad configuration, missing kernel image, …).
#define MB_LAUNCHED(name)                                                              \
  do {                                                                                 \
    cudaError_t mb_err_ = cudaGetLastError();                                          \
    if (mb_err_ != cudaSuccess) return mb_fail("%s: %s", name, cudaGetErrorString(mb_err_)); \
  } while (0)

// ---- context ----

// The library's stream (every op and copy runs on it, in order).
cudaStream_t mb_stream(void);
// Fails unless mb_init() succeeded.
int mb_require_init(void);
// Device scratch of at least `bytes` bytes, valid until the next call (grown on demand).
int mb_workspace(uint64_t bytes, void** ptr);

// ---- programmatic dependent launch (sm_90 and later) ----
// The decode step's kernels are launched with mb_launch_dependent: on such a device one may start
// while the kernel ahead of it still runs, so that launching it and reading its weights overlap
// that kernel. Every kernel launched so calls mb_grid_launch_dependents() (the next one may
// start) and mb_grid_wait() (the kernel ahead has finished and its writes are visible) before it
// reads anything an earlier kernel wrote or writes anything; before the wait it only reads (or
// prefetches) weights. Elsewhere both are no-ops and the launch is a plain one.

// Whether the device has programmatic dependent launch (compute capability 9.0 or later).
bool mb_dependent_launch(void);

__device__ inline void mb_grid_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ inline void mb_grid_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Brings the 128-byte line holding p into L2.
__device__ inline void mb_prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// kernel<<<grid, block, shared_bytes>>>(args…) on the library's stream, as a dependent launch where
// the device has them. Launch errors are left for MB_LAUNCHED.
template <typename... Params, typename... Args>
void mb_launch_dependent_shared(void (*kernel)(Params...), unsigned grid, unsigned block, size_t shared_bytes,
                                Args... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(grid);
  config.blockDim = dim3(block);
  config.dynamicSmemBytes = shared_bytes;
  config.stream = mb_stream();
  config.attrs = &attribute;
  config.numAttrs = mb_dependent_launch() ? 1 : 0;
  cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
}

// The same without dynamic shared memory.
template <typename... Params, typename... Args>
void mb_launch_dependent(void (*kernel)(Params...), unsigned grid, unsigned block, Args... args) {
  mb_launch_dependent_shared(kernel, grid, block, 0, args...);
}
// cudaMalloc with an out-of-memory message that says how much was asked and how much is free.
int mb_device_malloc(uint64_t bytes, void** ptr);
// cudaFree of memory from mb_device_malloc (keeps the cap's and the peak's accounting).
int mb_device_free(void* ptr);

template <typename T>
__host__ __device__ inline T* mb_ptr(uint64_t address) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(address));
}

// Blocks of `threads` covering `n` items, capped to keep grid-stride loops cheap.
inline unsigned mb_blocks(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks > 65535 * 16) blocks = 65535 * 16;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

// ---- device math (the CPU reference's definitions) ----

__device__ inline float mb_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ inline float mb_softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
// d silu(s) / ds, given sg = sigmoid(s)
__device__ inline float mb_dsilu_of(float s, float sg) { return sg * (1.0f + s * (1.0f - sg)); }
// d silu(s) / ds
__device__ inline float mb_dsilu(float s) { return mb_dsilu_of(s, mb_sigmoid(s)); }

// Sum over a warp (all 32 lanes active).
__device__ inline float mb_warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}
