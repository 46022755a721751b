// Causal depthwise conv1d + SiLU: forward, backward (recomputing the pre-activation) and the
// single decode step. x is (B, L, C) with row stride x_stride; weight (C, K); bias (C) or null.
#include "common.cuh"

namespace {

constexpr int kThreads = 256;

struct ConvShape {
  int batch, length, channels, width, x_stride;
};

// Pre-activation at (b, t, c): bias[c] + Σ_k w[c, k] · x[b, t - K + 1 + k, c], x = 0 before t = 0.
__device__ inline float conv_pre(const float* x, const float* w, const float* bias, ConvShape s, int b, int t,
                                 int c) {
  float acc = bias ? bias[c] : 0.0f;
  for (int k = 0; k < s.width; k++) {
    int ts = t - s.width + 1 + k;
    if (ts >= 0) acc += w[c * s.width + k] * x[((int64_t)b * s.length + ts) * s.x_stride + c];
  }
  return acc;
}

__global__ void conv_kernel(float* out, const float* x, const float* w, const float* bias, ConvShape s) {
  int64_t n = (int64_t)s.batch * s.length * s.channels;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int c = i % s.channels;
    int64_t row = i / s.channels;
    int t = row % s.length, b = row / s.length;
    float pre = conv_pre(x, w, bias, s, b, t, c);
    out[i] = pre * mb_sigmoid(pre);
  }
}

// dx[b, ts, c] = Σ_k g[b, ts + K - 1 - k, c] · w[c, k] with g = dout · silu'(pre).
__global__ void conv_backward_dx_kernel(float* dx, const float* dout, const float* x, const float* w,
                                        const float* bias, ConvShape s) {
  int64_t n = (int64_t)s.batch * s.length * s.channels;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int c = i % s.channels;
    int64_t row = i / s.channels;
    int ts = row % s.length, b = row / s.length;
    float acc = 0.0f;
    for (int k = 0; k < s.width; k++) {
      int t = ts + s.width - 1 - k;
      if (t >= s.length) continue;
      float g = dout[((int64_t)b * s.length + t) * s.channels + c] * mb_dsilu(conv_pre(x, w, bias, s, b, t, c));
      acc += g * w[c * s.width + k];
    }
    dx[row * s.x_stride + c] = acc;
  }
}

// dweight[c, k] += Σ_{b,t} g · x[b, t - K + 1 + k, c]; dbias[c] += Σ_{b,t} g. Threads along x walk
// channels; rows (b, t) are split over threads along y and the grid's y dimension.
constexpr int kMaxWidth = 8;
constexpr int kRowsY = 8;

__global__ void conv_backward_params_kernel(float* dw, float* dbias, const float* dout, const float* x,
                                            const float* w, const float* bias, ConvShape s) {
  __shared__ float partial[kRowsY][kMaxWidth + 1][32];
  int c = blockIdx.x * 32 + threadIdx.x;
  float acc[kMaxWidth + 1] = {};
  int64_t rows = (int64_t)s.batch * s.length;
  if (c < s.channels) {
    for (int64_t row = blockIdx.y * kRowsY + threadIdx.y; row < rows; row += (int64_t)gridDim.y * kRowsY) {
      int t = row % s.length, b = row / s.length;
      float g = dout[row * s.channels + c] * mb_dsilu(conv_pre(x, w, bias, s, b, t, c));
      acc[kMaxWidth] += g;
      for (int k = 0; k < s.width; k++) {
        int ts = t - s.width + 1 + k;
        if (ts >= 0) acc[k] += g * x[((int64_t)b * s.length + ts) * s.x_stride + c];
      }
    }
  }
  for (int k = 0; k <= kMaxWidth; k++) partial[threadIdx.y][k][threadIdx.x] = acc[k];
  __syncthreads();
  if (threadIdx.y != 0 || c >= s.channels) return;
  for (int k = 0; k <= kMaxWidth; k++) {
    if (k < s.width || (k == kMaxWidth && dbias)) {
      float sum = 0.0f;
      for (int y = 0; y < kRowsY; y++) sum += partial[y][k][threadIdx.x];
      atomicAdd(k == kMaxWidth ? dbias + c : dw + c * s.width + k, sum);
    }
  }
}

// One position: out (B, C) = silu(conv over [state (B, C, K-1), x]); state shifts left and takes x.
__global__ void conv_step_kernel(float* out, float* state, const float* x, const float* w, const float* bias,
                                 int batch, int channels, int width, int x_stride) {
  int64_t n = (int64_t)batch * channels;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int c = i % channels, b = i / channels, S = width - 1;
    float* st = state + i * S;
    float xv = x[(int64_t)b * x_stride + c];
    float acc = bias ? bias[c] : 0.0f;
    for (int k = 0; k < S; k++) acc += w[c * width + k] * st[k];
    acc += w[c * width + S] * xv;
    out[i] = acc * mb_sigmoid(acc);
    for (int k = 0; k + 1 < S; k++) st[k] = st[k + 1];
    if (S > 0) st[S - 1] = xv;
  }
}

}  // namespace

extern "C" {

int mb_conv1d_silu(uint64_t out, uint64_t x, uint64_t weight, uint64_t bias, int batch, int length, int channels,
                   int width, int x_stride) {
  ConvShape s{batch, length, channels, width, x_stride};
  int64_t n = (int64_t)batch * length * channels;
  if (n <= 0) return 0;
  conv_kernel<<<mb_blocks(n, kThreads), kThreads, 0, mb_stream()>>>(
      mb_ptr<float>(out), mb_ptr<float>(x), mb_ptr<float>(weight), mb_ptr<float>(bias), s);
  MB_LAUNCHED("conv1d_silu");
  return 0;
}

int mb_conv1d_silu_backward(uint64_t dx, uint64_t dweight, uint64_t dbias, uint64_t dout, uint64_t x,
                            uint64_t weight, uint64_t bias, int batch, int length, int channels, int width,
                            int x_stride) {
  if (width > kMaxWidth) return mb_fail("conv1d_silu_backward: d_conv %d is above the supported %d", width, kMaxWidth);
  ConvShape s{batch, length, channels, width, x_stride};
  int64_t n = (int64_t)batch * length * channels;
  if (n <= 0) return 0;
  conv_backward_dx_kernel<<<mb_blocks(n, kThreads), kThreads, 0, mb_stream()>>>(
      mb_ptr<float>(dx), mb_ptr<float>(dout), mb_ptr<float>(x), mb_ptr<float>(weight), mb_ptr<float>(bias), s);
  MB_LAUNCHED("conv1d_silu_backward (dx)");
  unsigned gx = (channels + 31) / 32;
  int64_t stripes = ((int64_t)batch * length + 16 * kRowsY - 1) / (16 * kRowsY);
  unsigned gy = (unsigned)(stripes < 1 ? 1 : stripes > 4096 / gx ? (4096 / gx < 1 ? 1 : 4096 / gx) : stripes);
  conv_backward_params_kernel<<<dim3(gx, gy), dim3(32, kRowsY), 0, mb_stream()>>>(
      mb_ptr<float>(dweight), mb_ptr<float>(dbias), mb_ptr<float>(dout), mb_ptr<float>(x), mb_ptr<float>(weight),
      mb_ptr<float>(bias), s);
  MB_LAUNCHED("conv1d_silu_backward (weight)");
  return 0;
}

int mb_conv1d_silu_step(uint64_t out, uint64_t state, uint64_t x, uint64_t weight, uint64_t bias, int batch,
                        int channels, int width, int x_stride) {
  int64_t n = (int64_t)batch * channels;
  if (n <= 0) return 0;
  conv_step_kernel<<<mb_blocks(n, kThreads), kThreads, 0, mb_stream()>>>(
      mb_ptr<float>(out), mb_ptr<float>(state), mb_ptr<float>(x), mb_ptr<float>(weight), mb_ptr<float>(bias), batch,
      channels, width, x_stride);
  MB_LAUNCHED("conv1d_silu_step");
  return 0;
}

}  // extern "C"
