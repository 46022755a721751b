// Row-major matmul through cuBLAS (column-major): C (M, N) = op(A) · op(B) is computed as
// Cᵀ (N, M) = op(B)ᵀ · op(A)ᵀ, i.e. with the operands swapped and the same transpose flags.
// Decode's few-row products go to the GEMV kernel instead (gemv.cuh).
#include "common.cuh"
#include "cublas_api.cuh"
#include "gemv.cuh"

extern "C" int mb_matmul(uint64_t c, uint64_t a, uint64_t b, int m, int n, int k, int trans_a, int trans_b,
                         int accumulate, int lda, int ldb, int ldc) {
  if (mb_require_init()) return 1;
  if (m <= 0 || n <= 0) return 0;
  int gemv = mb_gemv(mb_ptr<float>(c), mb_ptr<const float>(a), mb_ptr<const float>(b), m, n, k, trans_a, trans_b,
                     accumulate, lda, ldb, ldc);
  if (gemv >= 0) return gemv;
  MbCublas* cb = mb_cublas();
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  cublasStatus_t status =
      cb->sgemm(cb->handle, trans_b ? MB_CUBLAS_OP_T : MB_CUBLAS_OP_N, trans_a ? MB_CUBLAS_OP_T : MB_CUBLAS_OP_N,
                n, m, k, &alpha, mb_ptr<const float>(b), ldb, mb_ptr<const float>(a), lda, &beta,
                mb_ptr<float>(c), ldc);
  if (status != 0) {
    const char* text = cb->status_string ? cb->status_string(status) : "";
    return mb_fail("cublasSgemm (M=%d N=%d K=%d transA=%d transB=%d lda=%d ldb=%d ldc=%d) failed: status %d %s",
                   m, n, k, trans_a, trans_b, lda, ldb, ldc, status, text);
  }
  return 0;
}
