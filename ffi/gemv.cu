// Few-row matmuls for decode (see gemv.cuh): `split` warps per output column n, their lanes
// splitting K (up to kUnroll independent 16-byte loads in flight per lane).
#include <type_traits>

#include "gemv.cuh"

namespace {

// V: floats per load (4: float4, 1: scalar). C[m, n] = Σ_k A[m, k] · B[n, k] (+ C[m, n]); with
// kNorm, C[m, n] = rstd[m] · Σ_k A[m, k] · norm[k] · B[n, k], rmsnorm(A) · Bᵀ; then the conv step,
// if any (gemv_store).
template <int kM, int V, int kSplit, bool kNorm>
__global__ void __launch_bounds__(kGemvThreads) gemv_kernel(float* c, const float* a, const float* b, int n, int k,
                                                            int lda, int ldb, int ldc, bool accumulate,
                                                            const float* norm, float eps, GemvConv conv) {
  using Vec = typename std::conditional<V == 4, float4, float>::type;
  gemv_prefetch_then_wait<kSplit>(b, n, (int64_t)ldb * sizeof(float), (int64_t)k * sizeof(float));
  float rstd[kM];
  if constexpr (kNorm) gemv_rstd<kM>(a, k, lda, eps, rstd);
  const GemvLane t = gemv_lane<kSplit>();
  float acc[kM] = {};
  if (t.row < n) {
    const Vec* brow = reinterpret_cast<const Vec*>(b + (int64_t)t.row * ldb);
#pragma unroll 4
    for (int i = t.part * 32 + t.lane; i < k / V; i += 32 * kSplit) {
      Vec w = __ldg(brow + i);
      if constexpr (kNorm) w = times(w, __ldg(reinterpret_cast<const Vec*>(norm) + i));
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
  }
  gemv_sum<kM, kSplit>(acc);
  if (t.row >= n || t.part != 0) return;
#pragma unroll
  for (int m = 0; m < kM; m++) {
    if (t.lane == m) gemv_store(c, ldc, m, t.row, kNorm ? rstd[m] * acc[m] : acc[m], accumulate, conv);
  }
}

template <int kM, int V, bool kNorm>
void launch_vec(float* c, const float* a, const float* b, int n, int k, int lda, int ldb, int ldc, bool accumulate,
                const float* norm, float eps, const GemvConv& conv) {
  const int split = gemv_split(n, k / V);
  auto kernel = split == 1   ? gemv_kernel<kM, V, 1, kNorm>
                : split == 2 ? gemv_kernel<kM, V, 2, kNorm>
                : split == 4 ? gemv_kernel<kM, V, 4, kNorm>
                             : gemv_kernel<kM, V, 8, kNorm>;
  mb_launch_dependent(kernel, gemv_blocks(n, split), kGemvThreads, c, a, b, n, k, lda, ldb, ldc, accumulate, norm,
                      eps, conv);
}

template <int kM>
void launch(float* c, const float* a, const float* b, int n, int k, int lda, int ldb, int ldc, bool accumulate,
            bool vec, const float* norm, float eps, const GemvConv& conv) {
  if (norm) {
    if (vec) {
      launch_vec<kM, 4, true>(c, a, b, n, k, lda, ldb, ldc, accumulate, norm, eps, conv);
    } else {
      launch_vec<kM, 1, true>(c, a, b, n, k, lda, ldb, ldc, accumulate, norm, eps, conv);
    }
  } else if (vec) {
    launch_vec<kM, 4, false>(c, a, b, n, k, lda, ldb, ldc, accumulate, norm, eps, conv);
  } else {
    launch_vec<kM, 1, false>(c, a, b, n, k, lda, ldb, ldc, accumulate, norm, eps, conv);
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

bool mb_gemv_takes(int m, int n, int k, bool trans_a, bool trans_b, int lda, int ldb, int ldc) {
  if (trans_a || !trans_b || m < 1 || m > kGemvMaxRows || k < 1) return false;
  return lda >= k && ldb >= k && ldc >= n;  // else cuBLAS reports the bad leading dimensions
}

int mb_gemv(float* c, const float* a, const float* b, int m, int n, int k, bool trans_a, bool trans_b,
            bool accumulate, int lda, int ldb, int ldc, const float* norm, float eps, GemvConv conv) {
  if (!mb_gemv_takes(m, n, k, trans_a, trans_b, lda, ldb, ldc)) return -1;
  bool vec = k % 4 == 0 && lda % 4 == 0 && ldb % 4 == 0 && aligned16(a) && aligned16(b) && aligned16(norm);
  switch (m) {
    case 1: launch<1>(c, a, b, n, k, lda, ldb, ldc, accumulate, vec, norm, eps, conv); break;
    case 2: launch<2>(c, a, b, n, k, lda, ldb, ldc, accumulate, vec, norm, eps, conv); break;
    case 3: launch<3>(c, a, b, n, k, lda, ldb, ldc, accumulate, vec, norm, eps, conv); break;
    case 4: launch<4>(c, a, b, n, k, lda, ldb, ldc, accumulate, vec, norm, eps, conv); break;
    case 5: launch<5>(c, a, b, n, k, lda, ldb, ldc, accumulate, vec, norm, eps, conv); break;
    case 6: launch<6>(c, a, b, n, k, lda, ldb, ldc, accumulate, vec, norm, eps, conv); break;
    case 7: launch<7>(c, a, b, n, k, lda, ldb, ldc, accumulate, vec, norm, eps, conv); break;
    default: launch<8>(c, a, b, n, k, lda, ldb, ldc, accumulate, vec, norm, eps, conv); break;
  }
  MB_LAUNCHED(norm ? "rmsnorm_matmul (gemv)" : "matmul (gemv)");
  return 0;
}

extern "C" int mb_rmsnorm_matmul(uint64_t c, uint64_t a, uint64_t norm, uint64_t w, int m, int n, int k, float eps,
                                 uint64_t conv_out, uint64_t conv_state, uint64_t conv_weight, uint64_t conv_bias,
                                 int conv_channels, int conv_width) {
  GemvConv conv;
  if (gemv_check_decode("rmsnorm_matmul", m, n, k, conv_out, conv_state, conv_weight, conv_bias, conv_channels,
                        conv_width, &conv)) {
    return 1;
  }
  return mb_gemv(mb_ptr<float>(c), mb_ptr<const float>(a), mb_ptr<const float>(w), m, n, k, false, true, false, k, k,
                 n, mb_ptr<const float>(norm), eps, conv);
}
