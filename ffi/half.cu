// fp32 ↔ 16-bit storage, bf16 or f16 (round to nearest, ties to even). Training with 16-bit
// matmuls keeps the activations that matmuls read packed in the matmuls' format
// (lib/residual_stack.ts): mb_matmul reads them as they are, and backward unpacks what other
// ops need in fp32.
#include "common.cuh"
#include "half.cuh"

namespace {

constexpr int kThreads = 256;

// Four values per thread and step, 16-byte loads and 8-byte stores: in and out aligned so.
template <typename H>
__global__ void pack_vec4_kernel(uint2* out, const float4* in, int64_t quads) {
  using Ops = HalfOps<H>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < quads; q += stride) {
    const float4 v = in[q];
    const typename Ops::Pair lo = Ops::from2(v.x, v.y), hi = Ops::from2(v.z, v.w);
    out[q] = make_uint2(*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi));
  }
}

// Values [from, n) one per thread: the tail after the vector kernel, or everything when unaligned.
template <typename H>
__global__ void pack_kernel(H* out, const float* in, int64_t from, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = from + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = HalfOps<H>::from(in[i]);
  }
}

template <typename H>
__global__ void unpack_vec4_kernel(float4* out, const uint2* in, int64_t quads) {
  using Ops = HalfOps<H>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < quads; q += stride) {
    const uint2 w = in[q];
    const float2 lo = Ops::to2(*reinterpret_cast<const typename Ops::Pair*>(&w.x));
    const float2 hi = Ops::to2(*reinterpret_cast<const typename Ops::Pair*>(&w.y));
    out[q] = make_float4(lo.x, lo.y, hi.x, hi.y);
  }
}

template <typename H>
__global__ void unpack_kernel(float* out, const H* in, int64_t from, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = from + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = HalfOps<H>::to(in[i]);
  }
}

// Whether both addresses allow the vector kernels (16-byte floats, 8-byte quads of 16-bit values).
bool vector_aligned(const void* floats, const void* halves) {
  return reinterpret_cast<uintptr_t>(floats) % 16 == 0 && reinterpret_cast<uintptr_t>(halves) % 8 == 0;
}

// The quad kernel over the whole quads of n values where `aligned`, the scalar one over the rest.
template <typename Out, typename In, typename OutQuad, typename InQuad>
void enqueue_conversion(void (*quad_kernel)(OutQuad*, const InQuad*, int64_t),
                        void (*tail_kernel)(Out*, const In*, int64_t, int64_t), Out* out, const In* in, int64_t n,
                        bool aligned) {
  const int64_t quads = aligned ? n / 4 : 0;
  if (quads > 0) {
    quad_kernel<<<mb_blocks(quads, kThreads), kThreads, 0, mb_stream()>>>(reinterpret_cast<OutQuad*>(out),
                                                                          reinterpret_cast<const InQuad*>(in), quads);
  }
  if (4 * quads < n) {
    tail_kernel<<<mb_blocks(n - 4 * quads, kThreads), kThreads, 0, mb_stream()>>>(out, in, 4 * quads, n);
  }
}

template <typename H>
void enqueue_unpack(float* out, const H* in, int64_t n) {
  enqueue_conversion(unpack_vec4_kernel<H>, unpack_kernel<H>, out, in, n, vector_aligned(out, in));
}

// 0 when `format` is MB_HALF_BF16 or MB_HALF_F16, else 1 with the error set.
int check_format(const char* op, int format) {
  if (format == MB_HALF_BF16 || format == MB_HALF_F16) return 0;
  return mb_fail("%s: unknown 16-bit format %d (%d bf16, %d f16)", op, format, MB_HALF_BF16, MB_HALF_F16);
}

}  // namespace

template <typename H>
void mb_enqueue_pack_half(H* out, const float* in, int64_t n) {
  enqueue_conversion(pack_vec4_kernel<H>, pack_kernel<H>, out, in, n, vector_aligned(in, out));
}
template void mb_enqueue_pack_half<__nv_bfloat16>(__nv_bfloat16*, const float*, int64_t);
template void mb_enqueue_pack_half<__half>(__half*, const float*, int64_t);

extern "C" int mb_pack_half(uint64_t dst, uint64_t src, int64_t n, int format) {
  if (mb_require_init() || check_format("pack_half", format)) return 1;
  if (n <= 0) return 0;
  const float* in = mb_ptr<const float>(src);
  if (format == MB_HALF_F16) {
    mb_enqueue_pack_half(mb_ptr<__half>(dst), in, n);
  } else {
    mb_enqueue_pack_half(mb_ptr<__nv_bfloat16>(dst), in, n);
  }
  MB_LAUNCHED("pack_half");
  return 0;
}

extern "C" int mb_unpack_half(uint64_t dst, uint64_t src, int64_t n, int format) {
  if (mb_require_init() || check_format("unpack_half", format)) return 1;
  if (n <= 0) return 0;
  float* out = mb_ptr<float>(dst);
  if (format == MB_HALF_F16) {
    enqueue_unpack(out, mb_ptr<const __half>(src), n);
  } else {
    enqueue_unpack(out, mb_ptr<const __nv_bfloat16>(src), n);
  }
  MB_LAUNCHED("unpack_half");
  return 0;
}
