// 16-bit storage of fp32 values, bf16 or f16: the packing shared by mb_pack_half and the matmul's
// operand copies.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// A 16-bit format's conversions, each rounding to nearest, ties to even: one value, and two.
template <typename H>
struct HalfOps;

template <>
struct HalfOps<__nv_bfloat16> {
  using Pair = __nv_bfloat162;
  static __device__ __nv_bfloat16 from(float x) { return __float2bfloat16_rn(x); }
  static __device__ float to(__nv_bfloat16 h) { return __bfloat162float(h); }
  static __device__ Pair from2(float a, float b) { return __floats2bfloat162_rn(a, b); }
  static __device__ float2 to2(Pair p) { return __bfloat1622float2(p); }
};

template <>
struct HalfOps<__half> {
  using Pair = __half2;
  static __device__ __half from(float x) { return __float2half_rn(x); }
  static __device__ float to(__half h) { return __half2float(h); }
  static __device__ Pair from2(float a, float b) { return __floats2half2_rn(a, b); }
  static __device__ float2 to2(Pair p) { return __half22float2(p); }
};

// out (n values of H: __nv_bfloat16 or __half) = in (n floats) rounded to nearest, ties to even
// (f16 beyond its range: ±infinity); enqueued on the library's stream. Launch errors are left
// for MB_LAUNCHED.
template <typename H>
void mb_enqueue_pack_half(H* out, const float* in, int64_t n);
