// The causal depthwise conv1d + SiLU decode step of one channel, shared by the conv step kernel
// (conv.cu) and the GEMV epilogue that fuses it after in_proj (gemv.cuh).
#pragma once

#include "common.cuh"

// The widest conv (d_conv) the library takes: the forward and backward kernels keep their windows
// in registers.
constexpr int kConvMaxWidth = 8;

// Channel c of one sequence at one position x: returns silu(bias[c] + Σ_k w[c, k] · state[k] +
// w[c, K-1] · x) with weight (C, K), bias (C) or null and state the channel's K-1 previous
// inputs, oldest first; then state shifts left and takes x.
__device__ inline float conv_step(float* state, const float* weight, const float* bias, int c, int width, float x) {
  const int S = width - 1;
  float acc = bias ? bias[c] : 0.0f;
  for (int k = 0; k < S; k++) acc += weight[c * width + k] * state[k];
  acc += weight[c * width + S] * x;
  for (int k = 0; k + 1 < S; k++) state[k] = state[k + 1];
  if (S > 0) state[S - 1] = x;
  return acc * mb_sigmoid(acc);
}
