// Few-row matmuls for decode (see gemv.cuh): one warp per output column n, its lanes splitting K
// (up to kUnroll independent 16-byte loads in flight per lane), summed with warp shuffles.
#include <type_traits>

#include "gemv.cuh"

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// V: floats per load (4: float4, 1: scalar). C[m, n] = Σ_k A[m, k] · B[n, k] (+ C[m, n]).
template <int kM, int V>
__global__ void __launch_bounds__(kThreads) gemv_kernel(float* c, const float* a, const float* b, int n, int k,
                                                        int lda, int ldb, int ldc, bool accumulate) {
  using Vec = typename std::conditional<V == 4, float4, float>::type;
  const int lane = threadIdx.x % 32, col = blockIdx.x * kWarps + threadIdx.x / 32;
  if (col >= n) return;  // whole warps: no shuffle is left waiting
  const Vec* brow = reinterpret_cast<const Vec*>(b + (int64_t)col * ldb);
  float acc[kM] = {};
#pragma unroll 4
  for (int i = lane; i < k / V; i += 32) {
    Vec w = __ldg(brow + i);
#pragma unroll
    for (int m = 0; m < kM; m++) {
      Vec x = __ldg(reinterpret_cast<const Vec*>(a + (int64_t)m * lda) + i);
      if constexpr (V == 4) {
        acc[m] += w.x * x.x + w.y * x.y + w.z * x.z + w.w * x.w;
      } else {
        acc[m] += w * x;
      }
    }
  }
#pragma unroll
  for (int m = 0; m < kM; m++) {
    float sum = mb_warp_sum(acc[m]);
    if (lane == m) {
      float* out = c + (int64_t)m * ldc + col;
      *out = accumulate ? *out + sum : sum;
    }
  }
}

template <int kM>
void launch(float* c, const float* a, const float* b, int n, int k, int lda, int ldb, int ldc, bool accumulate,
            bool vec) {
  unsigned blocks = (n + kWarps - 1) / kWarps;
  if (vec) {
    gemv_kernel<kM, 4><<<blocks, kThreads, 0, mb_stream()>>>(c, a, b, n, k, lda, ldb, ldc, accumulate);
  } else {
    gemv_kernel<kM, 1><<<blocks, kThreads, 0, mb_stream()>>>(c, a, b, n, k, lda, ldb, ldc, accumulate);
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

int mb_gemv(float* c, const float* a, const float* b, int m, int n, int k, bool trans_a, bool trans_b,
            bool accumulate, int lda, int ldb, int ldc) {
  if (trans_a || !trans_b || m < 1 || m > kGemvMaxRows || k < 1) return -1;
  if (lda < k || ldb < k || ldc < n) return -1;  // let cuBLAS report bad leading dimensions
  bool vec = k % 4 == 0 && lda % 4 == 0 && ldb % 4 == 0 && aligned16(a) && aligned16(b);
  switch (m) {
    case 1: launch<1>(c, a, b, n, k, lda, ldb, ldc, accumulate, vec); break;
    case 2: launch<2>(c, a, b, n, k, lda, ldb, ldc, accumulate, vec); break;
    case 3: launch<3>(c, a, b, n, k, lda, ldb, ldc, accumulate, vec); break;
    case 4: launch<4>(c, a, b, n, k, lda, ldb, ldc, accumulate, vec); break;
    case 5: launch<5>(c, a, b, n, k, lda, ldb, ldc, accumulate, vec); break;
    case 6: launch<6>(c, a, b, n, k, lda, ldb, ldc, accumulate, vec); break;
    case 7: launch<7>(c, a, b, n, k, lda, ldb, ldc, accumulate, vec); break;
    default: launch<8>(c, a, b, n, k, lda, ldb, ldc, accumulate, vec); break;
  }
  MB_LAUNCHED("matmul (gemv)");
  return 0;
}
