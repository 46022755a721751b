// dst[c] += Σ_r value(r, c) over a (rows, cols) index space: a column reduction shared by the
// parameter-gradient ops (bias, RMSNorm weight). Threads along x walk columns (coalesced), threads
// along y and the grid's y dimension split the rows; each block adds its partial sums atomically.
#pragma once

#include "common.cuh"

constexpr int MB_COLSUM_X = 32, MB_COLSUM_Y = 8;

template <typename Value>
__global__ void column_sum_kernel(float* dst, int rows, int cols, Value value) {
  __shared__ float partial[MB_COLSUM_Y][MB_COLSUM_X];
  int c = blockIdx.x * MB_COLSUM_X + threadIdx.x;
  float s = 0.0f;
  if (c < cols) {
    for (int r = blockIdx.y * MB_COLSUM_Y + threadIdx.y; r < rows; r += gridDim.y * MB_COLSUM_Y) s += value(r, c);
  }
  partial[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    for (int y = 1; y < MB_COLSUM_Y; y++) s += partial[y][threadIdx.x];
    atomicAdd(dst + c, s);
  }
}

// value(r, c) = m[r · cols + c] of a packed (rows, cols) matrix: plain column sums.
struct MbRowValue {
  const float* m;
  int cols;
  __device__ float operator()(int r, int c) const { return m[(int64_t)r * cols + c]; }
};

// Launches column_sum_kernel on the library's stream with enough row stripes to fill the GPU.
template <typename Value>
int mb_column_sum(const char* name, float* dst, int rows, int cols, Value value) {
  if (rows <= 0 || cols <= 0) return 0;
  unsigned gx = (cols + MB_COLSUM_X - 1) / MB_COLSUM_X;
  unsigned stripes = (rows + 4 * MB_COLSUM_Y - 1) / (4 * MB_COLSUM_Y);  // ≥ 4 rows per thread
  unsigned gy = stripes < 1 ? 1 : stripes;
  if (gy * gx > 2048) gy = 2048 / gx < 1 ? 1 : 2048 / gx;
  column_sum_kernel<<<dim3(gx, gy), dim3(MB_COLSUM_X, MB_COLSUM_Y), 0, mb_stream()>>>(dst, rows, cols, value);
  MB_LAUNCHED(name);
  return 0;
}
