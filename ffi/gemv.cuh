// Matmuls with few rows (decode: M = batch ≤ kGemvMaxRows) against a weight read row by row:
// C (M, N) [+]= A (M, K) · Bᵀ with B (N, K) — the model's `x · Wᵀ` with transB. cuBLAS spends
// more time launching than reading the weights at this size; here one warp reads one row of B
// once (16-byte loads where the operands allow) for all M rows of A.
#pragma once

#include "common.cuh"

constexpr int kGemvMaxRows = 8;

// Enqueues the product when it has the shape above; returns 0 when done, -1 when the shape is
// not one for this kernel (the caller uses cuBLAS), 1 on a launch failure.
int mb_gemv(float* c, const float* a, const float* b, int m, int n, int k, bool trans_a, bool trans_b,
            bool accumulate, int lda, int ldb, int ldc);
