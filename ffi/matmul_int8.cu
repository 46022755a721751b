// int8 weight-only matmul: C (M, N) [+]= A (M, K) · dequant(W)ᵀ in fp32, W (N, K) a Linear weight
// quantized per output channel (lib/quantize.ts): codes (N, KW) int32 words, KW = ceil(K / 4),
// code p of row o in byte p % 4 of word o·KW + p / 4 (little-endian, zero-padded rows);
// dequant(W)[o, p] = scales[o] · code. Each output is scales[o] · Σ_p A[i, p] · code[o, p].
//
// Decode (M ≤ kGemvMaxRows) takes the GEMV of gemv.cuh's shape: `split` warps per row of W, the
// codes dequantized in registers, warp-shuffle sums; every word of W is read once for all M rows
// of A. Tall products with short rows (in_proj) take a warp per row at a time, the row's codes read
// into registers ahead of the wait (the next row's during the one before) and A staged in shared
// memory once per block (gemv_int8_staged_kernel); the rest, a word per lane at a time and A from
// global memory. dp4a does not apply: A is fp32. Larger M (a prompt, evaluation) takes a
// shared-memory tiled kernel. Both run on the library's stream (the GEMV as a dependent launch,
// common.cuh), so both can be captured in a CUDA graph.
#include "common.cuh"
#include "gemv.cuh"

namespace {

// The four codes of a word as floats (byte 0 first), without int-to-float conversions (they issue
// at a fraction of the FP32 rate): each byte, offset by 128, becomes the low byte of the float
// 2²³ + byte, and 2²³ + 128 comes off exactly.
__device__ inline float4 unpack_codes(int word) {
  const unsigned biased = static_cast<unsigned>(word) ^ 0x80808080u, exponent = 0x4B000000u;
  const float offset = 8388608.0f + 128.0f;
  return make_float4(__uint_as_float(__byte_perm(biased, exponent, 0x7540)) - offset,
                     __uint_as_float(__byte_perm(biased, exponent, 0x7541)) - offset,
                     __uint_as_float(__byte_perm(biased, exponent, 0x7542)) - offset,
                     __uint_as_float(__byte_perm(biased, exponent, 0x7543)) - offset);
}

__device__ inline float dot4(float4 x, float4 w) { return x.x * w.x + x.y * w.y + x.z * w.z + x.w * w.w; }

// A[p .. p+3] of one row, zeros from K on (scalar loads: any lda and offset).
__device__ inline float4 load_a(const float* row, int p, int k) {
  return make_float4(p < k ? row[p] : 0.0f, p + 1 < k ? row[p + 1] : 0.0f, p + 2 < k ? row[p + 2] : 0.0f,
                     p + 3 < k ? row[p + 3] : 0.0f);
}

__device__ inline void store_c(float* out, float value, bool accumulate) { *out = accumulate ? *out + value : value; }

// Each lane takes one word of W at a time, lanes on consecutive words, so that the loads of W, of A
// and of norm are each coalesced across the warp (16-byte loads of four words per lane made the
// warp's loads of A 64 bytes apart, four times the cache traffic, and that bounded the kernel).
// V: floats per load of A and norm (4: float4, needing K % 4 == 0, lda % 4 == 0 and 16-byte
// aligned A and norm; 1: scalar loads, zeros past K). kSplit warps per row of W.
// With kNorm, A's rows go through rmsnorm first: the codes are scaled by norm, the sums by rstd.
// Then the conv step, if any (gemv_store).
template <int kM, int V, int kSplit, bool kNorm>
__global__ void __launch_bounds__(kGemvThreads) gemv_int8_kernel(float* c, const float* a, const int* codes,
                                                                 const float* scales, int n, int k, int lda,
                                                                 bool accumulate, const float* norm, float eps,
                                                                 GemvConv conv) {
  const int kw = (k + 3) / 4, stride = 32 * kSplit;
  gemv_prefetch_then_wait<kSplit>(codes, n, (int64_t)kw * sizeof(int), (int64_t)kw * sizeof(int));
  float rstd[kM];
  if constexpr (kNorm) gemv_rstd<kM>(a, k, lda, eps, rstd);
  const GemvLane t = gemv_lane<kSplit>();
  float acc[kM] = {};
  if (t.row < n) {
    const int* row = codes + (int64_t)t.row * kw;
    if constexpr (V == 4) {
#pragma unroll 4
      for (int i = t.part * 32 + t.lane; i < kw; i += stride) {
        float4 w = unpack_codes(__ldg(row + i));
        if constexpr (kNorm) w = times(w, __ldg(reinterpret_cast<const float4*>(norm) + i));
#pragma unroll
        for (int m = 0; m < kM; m++) acc[m] += dot4(__ldg(reinterpret_cast<const float4*>(a + (int64_t)m * lda) + i), w);
      }
    } else {
#pragma unroll 4
      for (int i = t.part * 32 + t.lane; i < kw; i += stride) {
        float4 w = unpack_codes(__ldg(row + i));
        if constexpr (kNorm) w = times(w, load_a(norm, 4 * i, k));
#pragma unroll
        for (int m = 0; m < kM; m++) acc[m] += dot4(load_a(a + (int64_t)m * lda, 4 * i, k), w);
      }
    }
  }
  gemv_sum<kM, kSplit>(acc);
  if (t.row >= n || t.part != 0) return;
  const float scale = scales[t.row];
#pragma unroll
  for (int m = 0; m < kM; m++) {
    if (t.lane == m) gemv_store(c, n, m, t.row, scale * (kNorm ? rstd[m] * acc[m] : acc[m]), accumulate, conv);
  }
}

// The staged GEMV's order of A's quads (4 floats) in shared memory: lane j of a warp takes the 16
// codes of int4 j of a row of W, so quads 4j .. 4j+3 of A; quad q is kept at (q % 4) · K/16 + q / 4,
// so that the warp's reads of each of the four are consecutive float4 (no bank conflicts).
__device__ inline int staged_quad(int q, int k16) { return (q % 4) * k16 + q / 4; }

// The staged GEMV's bounds: int4 of codes per lane (a whole row of W in registers: K ≤ 2048; on
// the H200, reading longer rows in several rounds measured slower than the word-per-lane kernel for
// the 972M model's out_proj and x_proj), rows of W (a warp each: with fewer rows much of the GPU
// idles, where the word-per-lane kernel spreads a row over several warps; a bound not tuned) and
// dynamic shared memory (48 KiB less room for gemv_block_rstd's static partial sums; more would
// need an opt-in and cost blocks per SM).
constexpr int kStagedLoads = 4;
constexpr int kStagedMaxK = 32 * kStagedLoads * 16;
constexpr int kStagedMinRows = 4096;
constexpr size_t kStagedMaxBytes = 47 * 1024;

// A row of W's codes for lane `lane` of its warp: int4 lane + 32i of the row (zeros past the row
// and for rows from N on).
__device__ inline void load_staged_row(int4 (&w)[kStagedLoads], const int4* codes, int row, int n, int k16, int lane) {
#pragma unroll
  for (int i = 0; i < kStagedLoads; i++) {
    const int j = lane + 32 * i;
    w[i] = row < n && j < k16 ? __ldg(codes + (int64_t)row * k16 + j) : make_int4(0, 0, 0, 0);
  }
}

// K % 16 == 0 and K ≤ kStagedMaxK, A and norm read as float4 (lda % 4 == 0, 16-byte aligned), codes
// 16-byte aligned (rows of K bytes: int4 j of row o is codes 16j .. 16j+15), dynamic shared memory
// of M · K floats. Each warp takes rows row0, row0 + S, row0 + 2S, … (S: the grid's warps), its
// lanes holding a whole row's codes in registers: the first row's are loaded before the wait — the
// weights are no earlier kernel's output, so that read overlaps the kernel ahead — and each next
// row's while the warp works on the one before. The block stages A's rows once for all its rows
// (times norm with kNorm, their sums of squares taken on the way for rstd); each int4 meets 16
// staged values of each row of A. The scales, rstd and the conv step as gemv_int8_kernel.
template <int kM, bool kNorm>
__global__ void __launch_bounds__(kGemvThreads) gemv_int8_staged_kernel(float* c, const float* a, const int4* codes,
                                                                        const float* scales, int n, int k, int lda,
                                                                        bool accumulate, const float* norm, float eps,
                                                                        GemvConv conv) {
  extern __shared__ float4 staged[];  // (kM, K/4) quads of A (times norm), in staged_quad's order
  const int k16 = k / 16, quads = k / 4, lane = threadIdx.x % 32, stride = gridDim.x * kGemvWarps;
  int row = blockIdx.x * kGemvWarps + threadIdx.x / 32;
  mb_grid_launch_dependents();
  int4 w[kStagedLoads];
  load_staged_row(w, codes, row, n, k16, lane);
  mb_grid_wait();
  float ss[kM] = {};
#pragma unroll
  for (int m = 0; m < kM; m++) {
    const float4* a_row = reinterpret_cast<const float4*>(a + (int64_t)m * lda);
    for (int q = threadIdx.x; q < quads; q += kGemvThreads) {
      const float4 x = a_row[q];
      ss[m] += dot4(x, x);
      staged[m * quads + staged_quad(q, k16)] = kNorm ? times(x, __ldg(reinterpret_cast<const float4*>(norm) + q))
                                                      : x;
    }
  }
  float rstd[kM];
  if constexpr (kNorm) gemv_block_rstd<kM>(ss, k, eps, rstd);
  __syncthreads();
  for (; row < n; row += stride) {  // the same trip count across a warp
    int4 next[kStagedLoads];
    load_staged_row(next, codes, row + stride, n, k16, lane);
    float acc[kM] = {};
#pragma unroll
    for (int i = 0; i < kStagedLoads; i++) {
      const int j = lane + 32 * i;
      if (j >= k16) break;
      const float4 w0 = unpack_codes(w[i].x), w1 = unpack_codes(w[i].y), w2 = unpack_codes(w[i].z),
                   w3 = unpack_codes(w[i].w);
#pragma unroll
      for (int m = 0; m < kM; m++) {
        const float4* x = staged + m * quads + j;
        acc[m] += dot4(x[0], w0) + dot4(x[k16], w1) + dot4(x[2 * k16], w2) + dot4(x[3 * k16], w3);
      }
    }
    gemv_sum<kM, 1>(acc);
    const float scale = scales[row];
#pragma unroll
    for (int m = 0; m < kM; m++) {
      if (lane == m) gemv_store(c, n, m, row, scale * (kNorm ? rstd[m] * acc[m] : acc[m]), accumulate, conv);
    }
#pragma unroll
    for (int i = 0; i < kStagedLoads; i++) w[i] = next[i];
  }
}

// The staged GEMV's grid: as few blocks as give every warp the same number of rows while all of
// them fit on the device at once (every block stages A; a second wave would wait on the first).
template <typename Kernel>
unsigned staged_blocks(Kernel kernel, int n, size_t shared_bytes) {
  static int sms = 0;
  if (!sms) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  int per_sm = 0;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kGemvThreads, shared_bytes);
  const int64_t resident_warps = (int64_t)std::max(per_sm * sms, 1) * kGemvWarps;
  const int64_t rows_per_warp = (n + resident_warps - 1) / resident_warps;
  return (unsigned)((n + kGemvWarps * rows_per_warp - 1) / (kGemvWarps * rows_per_warp));
}

template <int kM, bool kNorm>
void launch_staged(float* c, const float* a, const int* codes, const float* scales, int n, int k, int lda,
                   bool accumulate, const float* norm, float eps, const GemvConv& conv) {
  auto kernel = gemv_int8_staged_kernel<kM, kNorm>;
  const size_t shared_bytes = (size_t)kM * k * sizeof(float);
  mb_launch_dependent_shared(kernel, staged_blocks(kernel, n, shared_bytes), kGemvThreads, shared_bytes, c, a,
                             reinterpret_cast<const int4*>(codes), scales, n, k, lda, accumulate, norm, eps, conv);
}

template <int kM, int V, bool kNorm>
void launch_split(float* c, const float* a, const int* codes, const float* scales, int n, int k, int lda,
                  bool accumulate, const float* norm, float eps, const GemvConv& conv) {
  const int kw = (k + 3) / 4, split = gemv_split(n, kw);
  auto kernel = split == 1   ? gemv_int8_kernel<kM, V, 1, kNorm>
                : split == 2 ? gemv_int8_kernel<kM, V, 2, kNorm>
                : split == 4 ? gemv_int8_kernel<kM, V, 4, kNorm>
                             : gemv_int8_kernel<kM, V, 8, kNorm>;
  mb_launch_dependent(kernel, gemv_blocks(n, split), kGemvThreads, c, a, codes, scales, n, k, lda, accumulate, norm,
                      eps, conv);
}

template <int kM>
void launch_gemv(float* c, const float* a, const int* codes, const float* scales, int n, int k, int lda,
                 bool accumulate, bool vec, bool staged, const float* norm, float eps, const GemvConv& conv) {
  if (staged) {
    if (norm) {
      launch_staged<kM, true>(c, a, codes, scales, n, k, lda, accumulate, norm, eps, conv);
    } else {
      launch_staged<kM, false>(c, a, codes, scales, n, k, lda, accumulate, norm, eps, conv);
    }
  } else if (norm) {
    if (vec) {
      launch_split<kM, 4, true>(c, a, codes, scales, n, k, lda, accumulate, norm, eps, conv);
    } else {
      launch_split<kM, 1, true>(c, a, codes, scales, n, k, lda, accumulate, norm, eps, conv);
    }
  } else if (vec) {
    launch_split<kM, 4, false>(c, a, codes, scales, n, k, lda, accumulate, norm, eps, conv);
  } else {
    launch_split<kM, 1, false>(c, a, codes, scales, n, k, lda, accumulate, norm, eps, conv);
  }
}

constexpr int kTile = 64;   // outputs per block along M and N
constexpr int kDepth = 16;  // k per stage (a multiple of 4: whole words)

// Any M: 16×16 threads per 64×64 tile of C, 4×4 outputs each (rows ty + 16·r, columns tx + 16·s);
// each stage puts a (kDepth, 64) slice of A and the codes of 64 rows of W, unpacked to floats,
// in shared memory.
__global__ void __launch_bounds__(256) matmul_int8_kernel(float* c, const float* a, const int* codes,
                                                          const float* scales, int m, int n, int k, int lda,
                                                          bool accumulate) {
  __shared__ float tile_a[kDepth][kTile];
  __shared__ float tile_w[kDepth][kTile];
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 16 + tx;
  const int row0 = blockIdx.y * kTile, col0 = blockIdx.x * kTile, kw = (k + 3) / 4;
  float acc[4][4] = {};
  for (int p0 = 0; p0 < k; p0 += kDepth) {
    for (int q = tid; q < kTile * kDepth; q += 256) {
      int i = q / kDepth, p = q % kDepth;
      tile_a[p][i] = row0 + i < m && p0 + p < k ? a[(int64_t)(row0 + i) * lda + p0 + p] : 0.0f;
    }
    {
      int j = tid / (kDepth / 4), word = p0 / 4 + tid % (kDepth / 4), p = 4 * (tid % (kDepth / 4));
      float4 w = col0 + j < n && word < kw ? unpack_codes(codes[(int64_t)(col0 + j) * kw + word])
                                           : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      tile_w[p][j] = w.x;
      tile_w[p + 1][j] = w.y;
      tile_w[p + 2][j] = w.z;
      tile_w[p + 3][j] = w.w;
    }
    __syncthreads();
#pragma unroll
    for (int p = 0; p < kDepth; p++) {
#pragma unroll
      for (int r = 0; r < 4; r++) {
        float x = tile_a[p][ty + 16 * r];
#pragma unroll
        for (int s = 0; s < 4; s++) acc[r][s] = fmaf(x, tile_w[p][tx + 16 * s], acc[r][s]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < 4; r++) {
    int i = row0 + ty + 16 * r;
#pragma unroll
    for (int s = 0; s < 4; s++) {
      int j = col0 + tx + 16 * s;
      if (i < m && j < n) store_c(c + (int64_t)i * n + j, scales[j] * acc[r][s], accumulate);
    }
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// The decode GEMV (M ≤ kGemvMaxRows), rmsnorm fused in when `norm` is given, the conv step after
// it when `conv` has one.
int gemv_int8(float* c, const float* a, const int* codes, const float* scales, int m, int n, int k, int lda,
              bool accumulate, const float* norm, float eps, const GemvConv& conv) {
  bool vec = k % 4 == 0 && lda % 4 == 0 && aligned16(a) && aligned16(norm);
  bool staged = vec && k % 16 == 0 && k <= kStagedMaxK && n >= kStagedMinRows && aligned16(codes) &&
                (size_t)m * k * sizeof(float) <= kStagedMaxBytes;
  switch (m) {
    case 1: launch_gemv<1>(c, a, codes, scales, n, k, lda, accumulate, vec, staged, norm, eps, conv); break;
    case 2: launch_gemv<2>(c, a, codes, scales, n, k, lda, accumulate, vec, staged, norm, eps, conv); break;
    case 3: launch_gemv<3>(c, a, codes, scales, n, k, lda, accumulate, vec, staged, norm, eps, conv); break;
    case 4: launch_gemv<4>(c, a, codes, scales, n, k, lda, accumulate, vec, staged, norm, eps, conv); break;
    case 5: launch_gemv<5>(c, a, codes, scales, n, k, lda, accumulate, vec, staged, norm, eps, conv); break;
    case 6: launch_gemv<6>(c, a, codes, scales, n, k, lda, accumulate, vec, staged, norm, eps, conv); break;
    case 7: launch_gemv<7>(c, a, codes, scales, n, k, lda, accumulate, vec, staged, norm, eps, conv); break;
    default: launch_gemv<8>(c, a, codes, scales, n, k, lda, accumulate, vec, staged, norm, eps, conv); break;
  }
  MB_LAUNCHED(norm ? "rmsnorm_matmul_int8 (gemv)" : "matmul_int8 (gemv)");
  return 0;
}

}  // namespace

extern "C" int mb_matmul_int8(uint64_t c_ptr, uint64_t a_ptr, uint64_t codes_ptr, uint64_t scales_ptr, int m,
                              int n, int k, int lda, int accumulate) {
  if (mb_require_init()) return 1;
  if (m < 0 || n < 0 || k < 0 || lda < k) {
    return mb_fail("matmul_int8: bad shape M=%d N=%d K=%d lda=%d (need sizes >= 0 and lda >= K)", m, n, k, lda);
  }
  if (m == 0 || n == 0) return 0;
  float* c = mb_ptr<float>(c_ptr);
  const float* a = mb_ptr<const float>(a_ptr);
  const int* codes = mb_ptr<const int>(codes_ptr);
  const float* scales = mb_ptr<const float>(scales_ptr);
  if (m > kGemvMaxRows) {
    dim3 grid((n + kTile - 1) / kTile, (m + kTile - 1) / kTile);
    matmul_int8_kernel<<<grid, dim3(16, 16), 0, mb_stream()>>>(c, a, codes, scales, m, n, k, lda, accumulate);
    MB_LAUNCHED("matmul_int8");
    return 0;
  }
  return gemv_int8(c, a, codes, scales, m, n, k, lda, accumulate, nullptr, 0.0f, GemvConv{});
}

extern "C" int mb_rmsnorm_matmul_int8(uint64_t c, uint64_t a, uint64_t norm, uint64_t codes, uint64_t scales, int m,
                                      int n, int k, float eps, uint64_t conv_out, uint64_t conv_state,
                                      uint64_t conv_weight, uint64_t conv_bias, int conv_channels, int conv_width) {
  GemvConv conv;
  if (gemv_check_decode("rmsnorm_matmul_int8", m, n, k, conv_out, conv_state, conv_weight, conv_bias, conv_channels,
                        conv_width, &conv)) {
    return 1;
  }
  return gemv_int8(mb_ptr<float>(c), mb_ptr<const float>(a), mb_ptr<const int>(codes), mb_ptr<const float>(scales),
                   m, n, k, k, false, mb_ptr<const float>(norm), eps, conv);
}
