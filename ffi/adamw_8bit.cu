// AdamW with 8-bit moments (the code: lib/quant8.ts): one CUDA block of 256 threads per
// quantization block of 256 elements. Dequantize m, v; update them and the parameter exactly as
// adamw_kernel (ops.cu) does; then the block's new absmax of |m| and of v (a fixed-order tree
// reduction in shared memory: deterministic, no atomics) and the new codes, one byte per thread
// (the int32 words of the TypeScript side are these bytes, little-endian).
#include "common.cuh"

namespace {

constexpr int kBlock = 256;

// m ≈ s·sign(c)·(c/127)², c signed
__device__ inline float decode_m(int8_t c, float s) {
  float q = c / 127.0f;
  return s * q * fabsf(q);
}

// v ≈ s·(c/255)⁴
__device__ inline float decode_v(uint8_t c, float s) {
  float q = c / 255.0f, q2 = q * q;
  return s * q2 * q2;
}

// c = sign(m)·round(127·sqrt(|m|/s)); s = 0: 0
__device__ inline int8_t encode_m(float m, float s) {
  if (!(s > 0.0f)) return 0;
  float c = fminf(127.0f, floorf(127.0f * sqrtf(fabsf(m) / s) + 0.5f));
  return static_cast<int8_t>(m < 0.0f ? -c : c);
}

// c = round(255·(v/s)^(1/4)); s = 0: 0
__device__ inline uint8_t encode_v(float v, float s) {
  if (!(s > 0.0f)) return 0;
  return static_cast<uint8_t>(fminf(255.0f, floorf(255.0f * sqrtf(sqrtf(v / s)) + 0.5f)));
}

// max over the block's 256 threads, halving strides in a fixed order (all threads call it).
__device__ inline float block_max(float x, float* scratch) {
  scratch[threadIdx.x] = x;
  __syncthreads();
  for (int stride = kBlock / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) scratch[threadIdx.x] = fmaxf(scratch[threadIdx.x], scratch[threadIdx.x + stride]);
    __syncthreads();
  }
  float result = scratch[0];
  __syncthreads();
  return result;
}

// p, g: (n); m_codes, v_codes: (blocks · 256) bytes; scales: (blocks, 2) = absmax m, absmax v.
__global__ void adamw_8bit_kernel(float* p, const float* g, int8_t* m_codes, uint8_t* v_codes, float* scales,
                                  int64_t n, float lr, float beta1, float beta2, float eps, float decay, float c1,
                                  float c2, float grad_scale) {
  __shared__ float scratch[kBlock];
  int64_t block = blockIdx.x, i = block * kBlock + threadIdx.x;
  bool live = i < n;
  float mi = 0.0f, vi = 0.0f;
  if (live) {
    float gi = g[i] * grad_scale;
    mi = beta1 * decode_m(m_codes[i], scales[2 * block]) + (1.0f - beta1) * gi;
    vi = beta2 * decode_v(v_codes[i], scales[2 * block + 1]) + (1.0f - beta2) * gi * gi;
    p[i] = p[i] * decay - lr * (mi / c1) / (sqrtf(vi / c2) + eps);
  }
  float abs_m = block_max(fabsf(mi), scratch);  // every thread has read the old scales by now
  float abs_v = block_max(vi, scratch);
  if (threadIdx.x == 0) {
    scales[2 * block] = abs_m;
    scales[2 * block + 1] = abs_v;
  }
  m_codes[i] = live ? encode_m(mi, abs_m) : 0;  // padding of the last block: code 0
  v_codes[i] = live ? encode_v(vi, abs_v) : 0;
}

}  // namespace

extern "C" {

int mb_adamw_8bit(uint64_t param, uint64_t grad, uint64_t m_codes, uint64_t v_codes, uint64_t scales, int64_t n,
                  float lr, float beta1, float beta2, float eps, float weight_decay, int step, float grad_scale) {
  if (n <= 0) return 0;
  int64_t blocks = (n + kBlock - 1) / kBlock;
  if (blocks > 0x7fffffff) return mb_fail("adamw_8bit: %lld blocks exceed the grid", (long long)blocks);
  float c1 = (float)(1.0 - pow((double)beta1, step)), c2 = (float)(1.0 - pow((double)beta2, step));
  adamw_8bit_kernel<<<(unsigned)blocks, kBlock, 0, mb_stream()>>>(
      mb_ptr<float>(param), mb_ptr<float>(grad), mb_ptr<int8_t>(m_codes), mb_ptr<uint8_t>(v_codes),
      mb_ptr<float>(scales), n, lr, beta1, beta2, eps, 1.0f - lr * weight_decay, c1, c2, grad_scale);
  MB_LAUNCHED("adamw_8bit");
  return 0;
}

}  // extern "C"
