// Row-major matmul through cuBLAS (column-major): C (M, N) = op(A) · op(B) is computed as
// Cᵀ (N, M) = op(B)ᵀ · op(A)ᵀ, i.e. with the operands swapped and the same transpose flags.
// Exact FP32 and TF32 go through cublasSgemm (TF32 as the handle's math mode, set when it
// changes); bf16 and f16 round A and B to packed 16-bit copies in the workspace (round to nearest
// even), unless the caller stored them packed already (half_inputs), and multiply them with
// cublasGemmEx on tensor cores, C and the sums in fp32. Decode's few-row products go to the
// GEMV kernel instead (gemv.cuh).
#include "common.cuh"
#include "cublas_api.cuh"
#include "gemv.cuh"
#include "half.cuh"

namespace {

const char* precision_name(int precision) {
  switch (precision) {
    case MB_MATMUL_F16: return "f16";
    case MB_MATMUL_BF16: return "bf16";
    case MB_MATMUL_TF32: return "tf32";
    default: return "fp32";
  }
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

// out (rows, cols), packed = in (rows, cols) with rows ld apart, rounded to H.
template <typename H>
__global__ void to_half_kernel(H* out, const float* in, int rows, int cols, int ld) {
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
      out[(int64_t)r * cols + c] = HalfOps<H>::from(in[(int64_t)r * ld + c]);
    }
  }
}

// A 16-bit matrix as cuBLAS reads it: its values and its leading dimension.
struct HalfMatrix {
  const void* data;
  int ld;
};

// One stored operand of the product, (rows, cols) with rows ld apart, fp32 or packed 16-bit.
struct Operand {
  const void* data;
  int rows, cols, ld;
  bool half;
};

// The operand as H: as it is when stored so, else a packed copy at `copy`.
template <typename H>
HalfMatrix as_half(const Operand& o, H* copy) {
  if (o.half) return {o.data, o.ld};
  const float* in = static_cast<const float*>(o.data);
  if (o.ld == o.cols) {
    mb_enqueue_pack_half(copy, in, (int64_t)o.rows * o.cols);
  } else {
    to_half_kernel<<<mb_blocks(o.rows, 1), 128, 0, mb_stream()>>>(copy, in, o.rows, o.cols, o.ld);
  }
  return {copy, o.cols};
}

// Bytes of the packed 16-bit copy of an operand of `values` values in the workspace (none when it is
// stored so), 256-aligned.
uint64_t copy_bytes(int64_t values, bool half) { return half ? 0 : ((uint64_t)values * 2 + 255) / 256 * 256; }
uint64_t copy_bytes(const Operand& o) { return copy_bytes((int64_t)o.rows * o.cols, o.half); }

// The stored matrices of op(A) and op(B) as H, copies in the workspace: A is (M, K), or (K, M)
// when transposed; B (K, N), or (N, K). Returns 0, or 1 with the error recorded.
template <typename H>
int half_operands(int op_a, int op_b, int m, int n, int k, const void* a, int lda, const void* b, int ldb,
                  int half_inputs, HalfMatrix* a16, HalfMatrix* b16) {
  const Operand oa{a, op_a == MB_CUBLAS_OP_T ? k : m, op_a == MB_CUBLAS_OP_T ? m : k, lda,
                   (half_inputs & MB_HALF_A) != 0};
  const Operand ob{b, op_b == MB_CUBLAS_OP_T ? n : k, op_b == MB_CUBLAS_OP_T ? k : n, ldb,
                   (half_inputs & MB_HALF_B) != 0};
  const uint64_t bytes = copy_bytes(oa) + copy_bytes(ob);
  void* ws = nullptr;
  if (bytes > 0 && mb_workspace(bytes, &ws)) return 1;
  auto* a_copy = static_cast<H*>(ws);
  auto* b_copy = reinterpret_cast<H*>(static_cast<char*>(ws) + copy_bytes(oa));
  *a16 = as_half(oa, a_copy);
  *b16 = as_half(ob, b_copy);
  MB_LAUNCHED("matmul (rounding the inputs to 16 bits)");
  return 0;
}

}  // namespace

extern "C" uint64_t mb_matmul_workspace_bytes(int m, int n, int k, int trans_a, int trans_b, int lda, int ldb,
                                              int ldc, int precision, int half_inputs) {
  const bool half = precision == MB_MATMUL_BF16 || precision == MB_MATMUL_F16;
  if (!half || m <= 0 || n <= 0) return 0;
  if (half_inputs == 0 && mb_gemv_takes(m, n, k, trans_a, trans_b, lda, ldb, ldc)) return 0;
  return copy_bytes((int64_t)m * k, half_inputs & MB_HALF_A) + copy_bytes((int64_t)k * n, half_inputs & MB_HALF_B);
}

extern "C" int mb_matmul(uint64_t c, uint64_t a, uint64_t b, int m, int n, int k, int trans_a, int trans_b,
                         int accumulate, int lda, int ldb, int ldc, int precision, int half_inputs) {
  if (mb_require_init()) return 1;
  if (precision < MB_MATMUL_FP32 || precision > MB_MATMUL_F16) {
    return mb_fail("matmul: unknown precision %d (0 fp32, 1 tf32, 2 bf16, 3 f16)", precision);
  }
  if (half_inputs < 0 || half_inputs > (MB_HALF_A | MB_HALF_B)) {
    return mb_fail("matmul: unknown half_inputs %d (1: A, 2: B, 3: both)", half_inputs);
  }
  const bool half = precision == MB_MATMUL_BF16 || precision == MB_MATMUL_F16;
  if (half_inputs != 0 && !half) {
    return mb_fail("matmul: operands stored in 16 bits (half_inputs %d) need precision bf16 or f16, not %s",
                   half_inputs, precision_name(precision));
  }
  if (m <= 0 || n <= 0) return 0;
  if (half_inputs == 0) {
    int gemv = mb_gemv(mb_ptr<float>(c), mb_ptr<const float>(a), mb_ptr<const float>(b), m, n, k, trans_a,
                       trans_b, accumulate, lda, ldb, ldc);
    if (gemv >= 0) return gemv;
  }
  MbCublas* cb = mb_cublas();
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  const int op_a = trans_a ? MB_CUBLAS_OP_T : MB_CUBLAS_OP_N, op_b = trans_b ? MB_CUBLAS_OP_T : MB_CUBLAS_OP_N;
  cublasStatus_t status;
  if (half) {
    HalfMatrix a16, b16;
    const void *a_in = mb_ptr<const void>(a), *b_in = mb_ptr<const void>(b);
    const bool f16 = precision == MB_MATMUL_F16;
    if (f16 ? half_operands<__half>(op_a, op_b, m, n, k, a_in, lda, b_in, ldb, half_inputs, &a16, &b16)
            : half_operands<__nv_bfloat16>(op_a, op_b, m, n, k, a_in, lda, b_in, ldb, half_inputs, &a16, &b16)) {
      return 1;
    }
    const int type = f16 ? MB_CUDA_R_16F : MB_CUDA_R_16BF;
    status = cb->gemm_ex(cb->handle, op_b, op_a, n, m, k, &alpha, b16.data, type, b16.ld, a16.data, type, a16.ld,
                         &beta, mb_ptr<float>(c), MB_CUDA_R_32F, ldc, MB_CUBLAS_COMPUTE_32F, MB_CUBLAS_GEMM_DEFAULT);
  } else {
    status = use_math_mode(cb, precision == MB_MATMUL_TF32);
    if (status == 0) {
      status = cb->sgemm(cb->handle, op_b, op_a, n, m, k, &alpha, mb_ptr<const float>(b), ldb, mb_ptr<const float>(a),
                         lda, &beta, mb_ptr<float>(c), ldc);
    }
  }
  if (status != 0) {
    const char* text = cb->status_string ? cb->status_string(status) : "";
    return mb_fail("cuBLAS %s matmul (M=%d N=%d K=%d transA=%d transB=%d lda=%d ldb=%d ldc=%d half_inputs=%d) "
                   "failed: status %d %s",
                   precision_name(precision), m, n, k, trans_a, trans_b, lda, ldb, ldc, half_inputs, status, text);
  }
  return 0;
}
