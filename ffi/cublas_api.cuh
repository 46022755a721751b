// The few cuBLAS declarations the library uses, so that it builds without cuBLAS headers;
// the functions are looked up at run time (dlopen) by runtime.cu.
#pragma once

#include <cuda_runtime.h>

typedef struct cublasContext* cublasHandle_t;
typedef int cublasStatus_t;  // CUBLAS_STATUS_SUCCESS = 0
enum { MB_CUBLAS_OP_N = 0, MB_CUBLAS_OP_T = 1 };
enum { MB_CUBLAS_DEFAULT_MATH = 0, MB_CUBLAS_TF32_TENSOR_OP_MATH = 3 };
enum { MB_CUDA_R_32F = 0, MB_CUDA_R_16F = 2, MB_CUDA_R_16BF = 14 };  // cudaDataType_t
enum { MB_CUBLAS_COMPUTE_32F = 68 };               // cublasComputeType_t: fp32 sums
enum { MB_CUBLAS_GEMM_DEFAULT = -1 };              // cublasGemmAlgo_t

struct MbCublas {
  cublasHandle_t handle;
  cublasStatus_t (*create)(cublasHandle_t*);
  cublasStatus_t (*destroy)(cublasHandle_t);
  cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t);
  cublasStatus_t (*set_math_mode)(cublasHandle_t, int);
  cublasStatus_t (*sgemm)(cublasHandle_t, int, int, int, int, int, const float*, const float*, int,
                          const float*, int, const float*, float*, int);
  // C = α·op(A)·op(B) + β·C with the types and compute type given (16-bit inputs, fp32 C and sums)
  cublasStatus_t (*gemm_ex)(cublasHandle_t, int, int, int, int, int, const void*, const void*, int, int,
                            const void*, int, int, const void*, void*, int, int, int, int);
  const char* (*status_string)(cublasStatus_t);  // may be null (older cuBLAS)
};

// The loaded cuBLAS (valid after mb_init).
MbCublas* mb_cublas(void);
