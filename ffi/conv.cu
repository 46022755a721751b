// Causal depthwise conv1d + SiLU: forward, backward (recomputing the pre-activation) and the
// single decode step. x is (B, L, C) with row stride x_stride; weight (C, K); bias (C) or null.
//
// Forward and backward give each thread one channel and a run of kRun consecutive steps, so every
// input is loaded once and the K-wide window slides through registers. Windows are indexed from
// the current step backwards (hx[j] = x[t - j]) and padded to kK ≥ K with zero weights, so every
// register index is a compile-time constant.
#include "common.cuh"
#include "conv_step.cuh"

namespace {

constexpr int kRun = 16;       // steps per thread
constexpr int kChannels = 32;  // threads along x: channels (coalesced)
constexpr int kRunsY = 8;      // threads along y: runs of steps

struct ConvShape {
  int batch, length, channels, width, x_stride;
};

// Where this thread sits: channel c, steps [t0, t0 + kRun) of sequence b; valid when in range.
struct ConvSlot {
  int c, b, t0;
  bool valid;
};

__device__ inline ConvSlot conv_slot(const ConvShape& s) {
  int runs = (s.length + kRun - 1) / kRun;
  int64_t run = (int64_t)blockIdx.y * kRunsY + threadIdx.y;  // over B · runs
  ConvSlot q;
  q.c = blockIdx.x * kChannels + threadIdx.x;
  q.b = run / runs;
  q.t0 = (run % runs) * kRun;
  q.valid = q.c < s.channels && q.b < s.batch;
  return q;
}

__device__ inline float load_x(const float* x, const ConvShape& s, const ConvSlot& q, int t) {
  return (t >= 0 && t < s.length) ? __ldg(x + ((int64_t)q.b * s.length + t) * s.x_stride + q.c) : 0.0f;
}

// w[k] (k < K) and zeros up to kK; `reversed`: wr[j] = w[K - 1 - j], the weight of x[t - j].
template <int kK>
__device__ inline void load_weights(const float* weight, const ConvShape& s, int c, bool reversed, float (&w)[kK]) {
#pragma unroll
  for (int k = 0; k < kK; k++) {
    w[k] = k < s.width ? __ldg(weight + c * s.width + (reversed ? s.width - 1 - k : k)) : 0.0f;
  }
}

// Pre-activation at the step whose window is hx: bias + Σ_j wr[j] · x[t - j].
template <int kK>
__device__ inline float window_pre(const float (&wr)[kK], const float (&hx)[kK], float bias) {
  float acc = bias;
#pragma unroll
  for (int j = 0; j < kK; j++) acc += wr[j] * hx[j];
  return acc;
}

// hx[j] = x[t0 - 1 - j]: the window just before the run's first step.
template <int kK>
__device__ inline void load_window(const float* x, const ConvShape& s, const ConvSlot& q, float (&hx)[kK]) {
#pragma unroll
  for (int j = 0; j < kK; j++) hx[j] = load_x(x, s, q, q.t0 - 1 - j);
}

template <int kK>
__device__ inline void slide(float (&h)[kK], float value) {
#pragma unroll
  for (int j = kK - 1; j > 0; j--) h[j] = h[j - 1];
  h[0] = value;
}

template <int kK>
__global__ void conv_kernel(float* out, const float* x, const float* weight, const float* bias, ConvShape s) {
  ConvSlot q = conv_slot(s);
  if (!q.valid) return;
  float wr[kK], hx[kK];
  load_weights<kK>(weight, s, q.c, true, wr);
  load_window<kK>(x, s, q, hx);
  float b = bias ? __ldg(bias + q.c) : 0.0f;
  int t1 = min(q.t0 + kRun, s.length);
  for (int t = q.t0; t < t1; t++) {
    slide<kK>(hx, load_x(x, s, q, t));
    float pre = window_pre<kK>(wr, hx, b);
    out[((int64_t)q.b * s.length + t) * s.channels + q.c] = pre * mb_sigmoid(pre);
  }
}

// g[t] = dout · silu'(pre[t]); dx[t'] = Σ_k w[k] · g[t' + K - 1 - k], emitted once g up to
// t' + K - 1 is known (gw[k] = g[t - k]); dweight and dbias summed over the thread's run, then
// over the block in shared memory, then atomically.
template <int kK>
__global__ void conv_backward_kernel(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                                     const float* weight, const float* bias, ConvShape s) {
  __shared__ float partial[kRunsY][kK + 1][kChannels];
  ConvSlot q = conv_slot(s);
  float dw[kK] = {}, db = 0.0f;  // dw[j]: gradient of w[K - 1 - j] (the weight of x[t - j])
  if (q.valid) {
    float w[kK], wr[kK], hx[kK], gw[kK] = {};
    load_weights<kK>(weight, s, q.c, false, w);
    load_weights<kK>(weight, s, q.c, true, wr);
    load_window<kK>(x, s, q, hx);
    float b = bias ? __ldg(bias + q.c) : 0.0f;
    int t1 = min(q.t0 + kRun, s.length);
    for (int t = q.t0; t < t1 + s.width - 1; t++) {
      float g = 0.0f;
      slide<kK>(hx, load_x(x, s, q, t));
      if (t < s.length) {
        float pre = window_pre<kK>(wr, hx, b);
        g = __ldg(dout + ((int64_t)q.b * s.length + t) * s.channels + q.c) * mb_dsilu(pre);
      }
      slide<kK>(gw, g);
      if (t < t1) {
        db += g;
#pragma unroll
        for (int j = 0; j < kK; j++) dw[j] += g * hx[j];
      }
      int target = t - (s.width - 1);
      if (target >= q.t0 && target < t1) {
        float acc = 0.0f;
#pragma unroll
        for (int k = 0; k < kK; k++) acc += w[k] * gw[k];
        dx[((int64_t)q.b * s.length + target) * s.x_stride + q.c] = acc;
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kK; j++) partial[threadIdx.y][j][threadIdx.x] = dw[j];
  partial[threadIdx.y][kK][threadIdx.x] = db;
  __syncthreads();
  if (threadIdx.y != 0 || q.c >= s.channels) return;
  for (int j = 0; j <= kK; j++) {
    if (j < s.width || (j == kK && dbias)) {
      float sum = 0.0f;
      for (int y = 0; y < kRunsY; y++) sum += partial[y][j][threadIdx.x];
      atomicAdd(j == kK ? dbias + q.c : dweight + q.c * s.width + (s.width - 1 - j), sum);
    }
  }
}

// One position: out (B, C) = silu(conv over [state (B, C, K-1), x]); state shifts left and takes x.
// A dependent launch (common.cuh).
__global__ void conv_step_kernel(float* out, float* state, const float* x, const float* w, const float* bias,
                                 int batch, int channels, int width, int x_stride) {
  mb_grid_launch_dependents();
  mb_grid_wait();
  int64_t n = (int64_t)batch * channels;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int c = i % channels, b = i / channels;
    out[i] = conv_step(state + i * (width - 1), w, bias, c, width, x[(int64_t)b * x_stride + c]);
  }
}

dim3 conv_grid(const ConvShape& s) {
  int64_t runs = (int64_t)s.batch * ((s.length + kRun - 1) / kRun);
  return dim3((s.channels + kChannels - 1) / kChannels, (unsigned)((runs + kRunsY - 1) / kRunsY));
}

}  // namespace

extern "C" {

int mb_conv1d_silu(uint64_t out, uint64_t x, uint64_t weight, uint64_t bias, int batch, int length, int channels,
                   int width, int x_stride) {
  if (width > kConvMaxWidth) return mb_fail("conv1d_silu: d_conv %d is above the supported %d", width, kConvMaxWidth);
  if ((int64_t)batch * length * channels <= 0) return 0;
  ConvShape s{batch, length, channels, width, x_stride};
  dim3 block(kChannels, kRunsY);
  auto o = mb_ptr<float>(out);
  auto xp = mb_ptr<const float>(x), wp = mb_ptr<const float>(weight), bp = mb_ptr<const float>(bias);
  if (width <= 4) {
    conv_kernel<4><<<conv_grid(s), block, 0, mb_stream()>>>(o, xp, wp, bp, s);
  } else {
    conv_kernel<kConvMaxWidth><<<conv_grid(s), block, 0, mb_stream()>>>(o, xp, wp, bp, s);
  }
  MB_LAUNCHED("conv1d_silu");
  return 0;
}

int mb_conv1d_silu_backward(uint64_t dx, uint64_t dweight, uint64_t dbias, uint64_t dout, uint64_t x,
                            uint64_t weight, uint64_t bias, int batch, int length, int channels, int width,
                            int x_stride) {
  if (width > kConvMaxWidth) {
    return mb_fail("conv1d_silu_backward: d_conv %d is above the supported %d", width, kConvMaxWidth);
  }
  if ((int64_t)batch * length * channels <= 0) return 0;
  ConvShape s{batch, length, channels, width, x_stride};
  dim3 block(kChannels, kRunsY);
  auto dxp = mb_ptr<float>(dx), dwp = mb_ptr<float>(dweight), dbp = mb_ptr<float>(dbias);
  auto dop = mb_ptr<const float>(dout), xp = mb_ptr<const float>(x);
  auto wp = mb_ptr<const float>(weight), bp = mb_ptr<const float>(bias);
  if (width <= 4) {
    conv_backward_kernel<4><<<conv_grid(s), block, 0, mb_stream()>>>(dxp, dwp, dbp, dop, xp, wp, bp, s);
  } else {
    conv_backward_kernel<kConvMaxWidth><<<conv_grid(s), block, 0, mb_stream()>>>(dxp, dwp, dbp, dop, xp, wp, bp, s);
  }
  MB_LAUNCHED("conv1d_silu_backward");
  return 0;
}

int mb_conv1d_silu_step(uint64_t out, uint64_t state, uint64_t x, uint64_t weight, uint64_t bias, int batch,
                        int channels, int width, int x_stride) {
  int64_t n = (int64_t)batch * channels;
  if (n <= 0) return 0;
  mb_launch_dependent(conv_step_kernel, mb_blocks(n, 256), 256, mb_ptr<float>(out), mb_ptr<float>(state),
                      mb_ptr<float>(x), mb_ptr<float>(weight), mb_ptr<float>(bias), batch, channels, width, x_stride);
  MB_LAUNCHED("conv1d_silu_step");
  return 0;
}

}  // extern "C"
