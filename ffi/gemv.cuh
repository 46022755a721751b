// Matmuls with few rows (decode: M = batch ≤ kGemvMaxRows) against a weight read row by row:
// C (M, N) [+]= A (M, K) · Bᵀ with B (N, K) — the model's `x · Wᵀ` with transB. cuBLAS spends
// more time launching than reading the weights at this size; here each row of B is read once
// for all M rows of A, by `split` warps of one block that share its K (gemv_split), their sums
// added in shared memory in a fixed order (gemv_sum).
#pragma once

#include "common.cuh"
#include "conv_step.cuh"

constexpr int kGemvMaxRows = 8;
constexpr int kGemvThreads = 256;
constexpr int kGemvWarps = kGemvThreads / 32;

// The decode conv step fused into the GEMV in front of it (in_proj): the columns
// 0 .. channels-1 of each row m of C are the step's inputs, out (M, channels) = silu(conv over
// [state (M, channels, width-1), C[m, :channels]]) and the state shifts (conv_step.cuh). The lane
// that stores C[m, c] takes channel c of row m, the only one to touch its state. out null: no conv.
struct GemvConv {
  float* out;
  float* state;
  const float* weight;  // (channels, width)
  const float* bias;    // (channels) or null
  int channels, width;
};

// Whether mb_gemv takes a product of this shape (decode's few rows of A, B transposed, sane leading
// dimensions); mb_matmul gives cuBLAS the others.
bool mb_gemv_takes(int m, int n, int k, bool trans_a, bool trans_b, int lda, int ldb, int ldc);

// Enqueues the product when it has the shape above; returns 0 when done, -1 when the shape is
// not one for this kernel (the caller uses cuBLAS), 1 on a launch failure.
// With `norm` (K values, else null), A's rows are taken through rmsnorm first (rmsnorm_matmul);
// with `conv`, the conv step follows in the same kernel.
int mb_gemv(float* c, const float* a, const float* b, int m, int n, int k, bool trans_a, bool trans_b,
            bool accumulate, int lda, int ldb, int ldc, const float* norm = nullptr, float eps = 0.0f,
            GemvConv conv = {});

// The checks of the rmsnorm-fused GEMVs' entry points (`op` names the one in the message): 0 when
// M, N and K make a decode step and the conv operands (out 0: none) fit its N columns, with `conv`
// set from them; 1 with the library's error set otherwise.
inline int gemv_check_decode(const char* op, int m, int n, int k, uint64_t conv_out, uint64_t conv_state,
                             uint64_t conv_weight, uint64_t conv_bias, int channels, int width, GemvConv* conv) {
  if (mb_require_init()) return 1;
  if (m < 1 || m > kGemvMaxRows || n < 1 || k < 1) {
    return mb_fail("%s: M=%d N=%d K=%d (need 1 <= M <= %d, N and K >= 1: a decode step)", op, m, n, k, kGemvMaxRows);
  }
  *conv = {};
  if (!conv_out) return 0;
  if (channels < 1 || channels > n || width < 1 || width > kConvMaxWidth) {
    return mb_fail("%s: conv step of %d channels, width %d (need 1 <= channels <= N=%d and 1 <= width <= %d)", op,
                   channels, width, n, kConvMaxWidth);
  }
  if (!conv_state || !conv_weight) return mb_fail("%s: conv step without its state or weight", op);
  *conv = {mb_ptr<float>(conv_out), mb_ptr<float>(conv_state), mb_ptr<const float>(conv_weight),
           mb_ptr<const float>(conv_bias), channels, width};
  return 0;
}

// Warps per row of B (1, 2, 4 or 8) for N rows of `loads` vector loads each: doubled while the
// grid has fewer than ~8K warps (a full H200 holds 132 × 64) and every lane keeps two loads or
// more, so that short, wide products (out_proj, x_proj) still fill the GPU.
inline int gemv_split(int n, int loads) {
  int split = 1;
  while (split < kGemvWarps && (int64_t)n * split < 8192 && loads >= 2 * 32 * 2 * split) split *= 2;
  return split;
}

// Blocks for N rows at `split` warps each.
inline unsigned gemv_blocks(int n, int split) {
  int rows = kGemvWarps / split;
  return (n + rows - 1) / rows;
}

// The block's row of B this warp works on (may be ≥ N: such warps add zeros) and its part of K.
struct GemvLane {
  int lane, row, part;
};

template <int kSplit>
__device__ inline GemvLane gemv_lane() {
  int warp = threadIdx.x / 32;
  return {static_cast<int>(threadIdx.x % 32), static_cast<int>(blockIdx.x) * (kGemvWarps / kSplit) + warp / kSplit,
          warp % kSplit};
}

// The start of a GEMV launched as a dependent launch (common.cuh): the block's rows of B (N rows
// of `row_bytes` used bytes, `stride` bytes apart) are prefetched into L2 while the kernel ahead
// still runs, then the block waits for that kernel.
template <int kSplit>
__device__ inline void gemv_prefetch_then_wait(const void* b, int n, int64_t stride, int64_t row_bytes) {
  mb_grid_launch_dependents();
  const int rows = kGemvWarps / kSplit, first = blockIdx.x * rows, lines = (int)((row_bytes + 127) / 128);
  for (int i = threadIdx.x; i < rows * lines; i += kGemvThreads) {
    int r = first + i / lines;
    if (r >= n) break;
    mb_prefetch_l2(static_cast<const char*>(b) + r * stride + (int64_t)(i % lines) * 128);
  }
  mb_grid_wait();
}

// Sums each acc[m] over the warp, then over the kSplit warps of the row (every thread of the
// block must call it): afterwards acc[m] is the row's total in part 0's lanes.
template <int kM, int kSplit>
__device__ inline void gemv_sum(float (&acc)[kM]) {
#pragma unroll
  for (int m = 0; m < kM; m++) acc[m] = mb_warp_sum(acc[m]);
  if constexpr (kSplit > 1) {
    __shared__ float partial[kGemvWarps][kM];
    const int warp = threadIdx.x / 32;
    if (threadIdx.x % 32 == 0) {
#pragma unroll
      for (int m = 0; m < kM; m++) partial[warp][m] = acc[m];
    }
    __syncthreads();
    if (warp % kSplit == 0) {
#pragma unroll
      for (int m = 0; m < kM; m++) {
        float total = 0.0f;
#pragma unroll
        for (int p = 0; p < kSplit; p++) total += partial[warp + p][m];
        acc[m] = total;
      }
    }
  }
}

// C[m, row] (rows ldc apart) = value, or += with accumulate; with a conv, a column below its
// channels then takes the conv step of row m.
__device__ inline void gemv_store(float* c, int64_t ldc, int m, int row, float value, bool accumulate,
                                  const GemvConv& conv) {
  float* out = c + m * ldc + row;
  value = accumulate ? *out + value : value;
  *out = value;
  if (conv.out && row < conv.channels) {
    const int64_t i = (int64_t)m * conv.channels + row;
    conv.out[i] = conv_step(conv.state + i * (conv.width - 1), conv.weight, conv.bias, row, conv.width, value);
  }
}

// Elementwise products (the rmsnorm weight applied to a load of W).
__device__ inline float4 times(float4 a, float4 b) { return make_float4(a.x * b.x, a.y * b.y, a.z * b.z, a.w * b.w); }
__device__ inline float times(float a, float b) { return a * b; }

// 1 / √(mean(A[m]²) + eps) of each of kM rows of K values, for every thread of the block (all must
// call it), from each thread's partial sums of squares `ss`: rmsnorm's scale.
template <int kM>
__device__ inline void gemv_block_rstd(const float (&ss)[kM], int k, float eps, float (&rstd)[kM]) {
  __shared__ float partial[kGemvWarps][kM];
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int m = 0; m < kM; m++) {
    float sum = mb_warp_sum(ss[m]);
    if (threadIdx.x % 32 == 0) partial[warp][m] = sum;
  }
  __syncthreads();
#pragma unroll
  for (int m = 0; m < kM; m++) {
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kGemvWarps; w++) total += partial[w][m];
    rstd[m] = rsqrtf(total / k + eps);
  }
}

// gemv_block_rstd of the kM rows of A (K values, lda apart), every thread of the block calling it
// after the wait: the GEMVs that fuse rmsnorm have each block read the rows itself (a few KB, from
// L2) instead of waiting for an rmsnorm launch.
template <int kM>
__device__ inline void gemv_rstd(const float* a, int k, int lda, float eps, float (&rstd)[kM]) {
  float ss[kM] = {};
#pragma unroll
  for (int m = 0; m < kM; m++) {
    for (int i = threadIdx.x; i < k; i += kGemvThreads) {
      float v = a[(int64_t)m * lda + i];
      ss[m] += v * v;
    }
  }
  gemv_block_rstd<kM>(ss, k, eps, rstd);
}
