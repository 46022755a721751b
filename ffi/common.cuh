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
// d silu(s) / ds
__device__ inline float mb_dsilu(float s) {
  float sg = mb_sigmoid(s);
  return sg * (1.0f + s * (1.0f - sg));
}

// Sum over a warp (all 32 lanes active).
__device__ inline float mb_warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}
