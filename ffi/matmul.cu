// Row-major matmul through cuBLAS (column-major): C (M, N) = op(A) · op(B) is computed as
// Cᵀ (N, M) = op(B)ᵀ · op(A)ᵀ, i.e. with the operands swapped and the same transpose flags.
// Exact FP32 and TF32 go through cublasSgemm (TF32 as the handle's math mode, set when it
// changes); bf16 rounds A and B to packed bf16 copies in the workspace (round to nearest even)
// and multiplies them with cublasGemmEx on tensor cores, C and the sums in fp32. Decode's
// few-row products go to the GEMV kernel instead (gemv.cuh).
#include <cuda_bf16.h>

#include "common.cuh"
#include "cublas_api.cuh"
#include "gemv.cuh"

namespace {

const char* precision_name(int precision) {
  return precision == MB_MATMUL_BF16 ? "bf16" : precision == MB_MATMUL_TF32 ? "tf32" : "fp32";
}

// The handle's math mode for sgemm: TF32 tensor ops or the default (exact FP32).
cublasStatus_t use_math_mode(MbCublas* cb, bool tf32) {
  static int current = MB_CUBLAS_DEFAULT_MATH;  // as runtime.cu creates the handle
  const int wanted = tf32 ? MB_CUBLAS_TF32_TENSOR_OP_MATH : MB_CUBLAS_DEFAULT_MATH;
  if (wanted == current) return 0;
  cublasStatus_t status = cb->set_math_mode(cb->handle, wanted);
  if (status == 0) current = wanted;
  return status;
}

// out (rows, cols), packed = in (rows, cols) with rows ld apart, rounded to bf16.
__global__ void to_bf16_kernel(__nv_bfloat16* out, const float* in, int rows, int cols, int ld) {
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
      out[(int64_t)r * cols + c] = __float2bfloat16_rn(in[(int64_t)r * ld + c]);
    }
  }
}

// A packed bf16 copy of a stored matrix, and its leading dimension (its number of columns).
struct Bf16Matrix {
  const __nv_bfloat16* data;
  int ld;
};

// Packed bf16 copies of the stored matrices of op(A) and op(B) in the workspace: A is (M, K), or
// (K, M) when transposed; B (K, N), or (N, K). Returns 0, or 1 with the error recorded.
int bf16_operands(int op_a, int op_b, int m, int n, int k, const float* a, int lda, const float* b, int ldb,
                  Bf16Matrix* a16, Bf16Matrix* b16) {
  const int a_rows = op_a == MB_CUBLAS_OP_T ? k : m, a_cols = op_a == MB_CUBLAS_OP_T ? m : k;
  const int b_rows = op_b == MB_CUBLAS_OP_T ? n : k, b_cols = op_b == MB_CUBLAS_OP_T ? k : n;
  const uint64_t a_bytes = ((uint64_t)a_rows * a_cols * sizeof(__nv_bfloat16) + 255) / 256 * 256;
  void* ws = nullptr;
  if (mb_workspace(a_bytes + (uint64_t)b_rows * b_cols * sizeof(__nv_bfloat16), &ws)) return 1;
  auto* a_copy = static_cast<__nv_bfloat16*>(ws);
  auto* b_copy = reinterpret_cast<__nv_bfloat16*>(static_cast<char*>(ws) + a_bytes);
  to_bf16_kernel<<<mb_blocks(a_rows, 1), 128, 0, mb_stream()>>>(a_copy, a, a_rows, a_cols, lda);
  to_bf16_kernel<<<mb_blocks(b_rows, 1), 128, 0, mb_stream()>>>(b_copy, b, b_rows, b_cols, ldb);
  MB_LAUNCHED("matmul (rounding the inputs to bf16)");
  *a16 = {a_copy, a_cols};
  *b16 = {b_copy, b_cols};
  return 0;
}

}  // namespace

extern "C" int mb_matmul(uint64_t c, uint64_t a, uint64_t b, int m, int n, int k, int trans_a, int trans_b,
                         int accumulate, int lda, int ldb, int ldc, int precision) {
  if (mb_require_init()) return 1;
  if (precision < MB_MATMUL_FP32 || precision > MB_MATMUL_BF16) {
    return mb_fail("matmul: unknown precision %d (0 fp32, 1 tf32, 2 bf16)", precision);
  }
  if (m <= 0 || n <= 0) return 0;
  int gemv = mb_gemv(mb_ptr<float>(c), mb_ptr<const float>(a), mb_ptr<const float>(b), m, n, k, trans_a, trans_b,
                     accumulate, lda, ldb, ldc);
  if (gemv >= 0) return gemv;
  MbCublas* cb = mb_cublas();
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  const int op_a = trans_a ? MB_CUBLAS_OP_T : MB_CUBLAS_OP_N, op_b = trans_b ? MB_CUBLAS_OP_T : MB_CUBLAS_OP_N;
  cublasStatus_t status;
  if (precision == MB_MATMUL_BF16) {
    Bf16Matrix a16, b16;
    if (bf16_operands(op_a, op_b, m, n, k, mb_ptr<const float>(a), lda, mb_ptr<const float>(b), ldb, &a16, &b16)) {
      return 1;
    }
    status = cb->gemm_ex(cb->handle, op_b, op_a, n, m, k, &alpha, b16.data, MB_CUDA_R_16BF, b16.ld, a16.data,
                         MB_CUDA_R_16BF, a16.ld, &beta, mb_ptr<float>(c), MB_CUDA_R_32F, ldc, MB_CUBLAS_COMPUTE_32F,
                         MB_CUBLAS_GEMM_DEFAULT);
  } else {
    status = use_math_mode(cb, precision == MB_MATMUL_TF32);
    if (status == 0) {
      status = cb->sgemm(cb->handle, op_b, op_a, n, m, k, &alpha, mb_ptr<const float>(b), ldb, mb_ptr<const float>(a),
                         lda, &beta, mb_ptr<float>(c), ldc);
    }
  }
  if (status != 0) {
    const char* text = cb->status_string ? cb->status_string(status) : "";
    return mb_fail("cuBLAS %s matmul (M=%d N=%d K=%d transA=%d transB=%d lda=%d ldb=%d ldc=%d) failed: status %d %s",
                   precision_name(precision), m, n, k, trans_a, trans_b, lda, ldb, ldc, status, text);
  }
  return 0;
}
