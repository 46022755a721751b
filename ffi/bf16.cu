// fp32 ↔ bf16 storage (round to nearest, ties to even). Training with bf16 matmuls keeps the
// activations that matmuls read as packed bf16 (lib/residual_stack.ts): mb_matmul reads them as
// they are, and backward unpacks what other ops need in fp32.
#include "bf16.cuh"
#include "common.cuh"

namespace {

constexpr int kThreads = 256;

// Four values per thread and step, 16-byte loads and 8-byte stores: in and out aligned so.
__global__ void pack_bf16_vec4_kernel(uint2* out, const float4* in, int64_t quads) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < quads; q += stride) {
    const float4 v = in[q];
    const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
    out[q] = make_uint2(*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi));
  }
}

// Values [from, n) one per thread: the tail after the vector kernel, or everything when unaligned.
__global__ void pack_bf16_kernel(__nv_bfloat16* out, const float* in, int64_t from, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = from + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = __float2bfloat16_rn(in[i]);
  }
}

__global__ void unpack_bf16_vec4_kernel(float4* out, const uint2* in, int64_t quads) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < quads; q += stride) {
    const uint2 w = in[q];
    const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w.x));
    const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w.y));
    out[q] = make_float4(lo.x, lo.y, hi.x, hi.y);
  }
}

__global__ void unpack_bf16_kernel(float* out, const __nv_bfloat16* in, int64_t from, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = from + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = __bfloat162float(in[i]);
  }
}

// Whether both addresses allow the vector kernels (16-byte floats, 8-byte bf16 quads).
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

}  // namespace

void mb_enqueue_pack_bf16(__nv_bfloat16* out, const float* in, int64_t n) {
  enqueue_conversion(pack_bf16_vec4_kernel, pack_bf16_kernel, out, in, n, vector_aligned(in, out));
}

extern "C" int mb_pack_bf16(uint64_t dst, uint64_t src, int64_t n) {
  if (mb_require_init()) return 1;
  if (n <= 0) return 0;
  mb_enqueue_pack_bf16(mb_ptr<__nv_bfloat16>(dst), mb_ptr<const float>(src), n);
  MB_LAUNCHED("pack_bf16");
  return 0;
}

extern "C" int mb_unpack_bf16(uint64_t dst, uint64_t src, int64_t n) {
  if (mb_require_init()) return 1;
  if (n <= 0) return 0;
  float* out = mb_ptr<float>(dst);
  const __nv_bfloat16* in = mb_ptr<const __nv_bfloat16>(src);
  enqueue_conversion(unpack_bf16_vec4_kernel, unpack_bf16_kernel, out, in, n, vector_aligned(out, in));
  MB_LAUNCHED("unpack_bf16");
  return 0;
}
