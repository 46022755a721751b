// The library's context: error messages, device selection, the stream, cuBLAS loaded with
// dlopen, device memory, host↔device copies and the grow-on-demand workspace.
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <unordered_map>

#include "common.cuh"
#include "cublas_api.cuh"

namespace {

char g_error[1024] = "";
bool g_ready = false;
bool g_dependent_launch = false;  // programmatic dependent launch (sm_90 and later)
cudaStream_t g_stream = nullptr;
MbCublas g_cublas = {};
void* g_cublas_lib = nullptr;
void* g_workspace = nullptr;
uint64_t g_workspace_bytes = 0;
// Every live allocation's size, for the memory cap and the peak.
std::unordered_map<void*, uint64_t> g_sizes;
uint64_t g_in_use = 0, g_peak = 0, g_cap = 0;

__global__ void fill_kernel(float* dst, int64_t n, float value) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    dst[i] = value;
  }
}

int load_cublas() {
  // The loader's search path first, then the toolkit's default location.
  const char* names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so", "/usr/local/cuda/lib64/libcublas.so.13",
                         "/usr/local/cuda/lib64/libcublas.so.12"};
  for (const char* name : names) {
    g_cublas_lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (g_cublas_lib) break;
  }
  if (!g_cublas_lib) {
    return mb_fail("cuBLAS not found (tried libcublas.so.13, .so.12, .so and /usr/local/cuda/lib64): %s; "
                   "add the CUDA toolkit's lib64 directory to LD_LIBRARY_PATH",
                   dlerror());
  }
  struct { void** slot; const char* name; bool required; } symbols[] = {
      {(void**)&g_cublas.create, "cublasCreate_v2", true},
      {(void**)&g_cublas.destroy, "cublasDestroy_v2", true},
      {(void**)&g_cublas.set_stream, "cublasSetStream_v2", true},
      {(void**)&g_cublas.set_math_mode, "cublasSetMathMode", true},
      {(void**)&g_cublas.sgemm, "cublasSgemm_v2", true},
      {(void**)&g_cublas.gemm_ex, "cublasGemmEx", true},
      {(void**)&g_cublas.status_string, "cublasGetStatusString", false},
  };
  for (auto& s : symbols) {
    *s.slot = dlsym(g_cublas_lib, s.name);
    if (!*s.slot && s.required) return mb_fail("cuBLAS lacks %s: %s", s.name, dlerror());
  }
  cublasStatus_t status = g_cublas.create(&g_cublas.handle);
  if (status == 0) status = g_cublas.set_stream(g_cublas.handle, g_stream);
  if (status == 0) status = g_cublas.set_math_mode(g_cublas.handle, MB_CUBLAS_DEFAULT_MATH);
  if (status != 0) return mb_fail("cuBLAS initialisation failed with status %d", status);
  return 0;
}

}  // namespace

int mb_fail(const char* format, ...) {
  va_list args;
  va_start(args, format);
  vsnprintf(g_error, sizeof g_error, format, args);
  va_end(args);
  return 1;
}

cudaStream_t mb_stream(void) { return g_stream; }
bool mb_dependent_launch(void) { return g_dependent_launch; }
MbCublas* mb_cublas(void) { return &g_cublas; }

int mb_require_init(void) {
  return g_ready ? 0 : mb_fail("the CUDA library is not initialised: call mb_init first");
}

int mb_device_malloc(uint64_t bytes, void** ptr) {
  const uint64_t size = bytes < 4 ? 4 : bytes;
  if (g_cap && g_in_use + size > g_cap) {
    return mb_fail("over the memory cap: asked for %.1f MiB with %.1f MiB of the %.1f MiB cap in use", size / 1048576.0,
                   g_in_use / 1048576.0, g_cap / 1048576.0);
  }
  cudaError_t err = cudaMalloc(ptr, size);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear the sticky-free error state
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    return mb_fail("out of GPU memory: asked for %.1f MiB, %.1f MiB free of %.1f MiB", bytes / 1048576.0,
                   free_bytes / 1048576.0, total_bytes / 1048576.0);
  }
  MB_CUDA(err);
  g_sizes[*ptr] = size;
  g_in_use += size;
  if (g_in_use > g_peak) g_peak = g_in_use;
  return 0;
}

int mb_device_free(void* ptr) {
  auto it = g_sizes.find(ptr);
  if (it != g_sizes.end()) {
    g_in_use -= it->second;
    g_sizes.erase(it);
  }
  MB_CUDA(cudaFree(ptr));
  return 0;
}

int mb_workspace(uint64_t bytes, void** ptr) {
  if (bytes > g_workspace_bytes) {
    if (g_workspace && mb_device_free(g_workspace)) return 1;
    g_workspace = nullptr;
    g_workspace_bytes = 0;
    if (mb_device_malloc(bytes, &g_workspace)) return 1;
    g_workspace_bytes = bytes;
  }
  *ptr = g_workspace;
  return 0;
}

extern "C" {

const char* mb_last_error(void) { return g_error; }

int mb_init(void) {
  if (g_ready) return 0;
  int count = 0;
  MB_CUDA(cudaGetDeviceCount(&count));
  if (count == 0) return mb_fail("no CUDA device");
  MB_CUDA(cudaSetDevice(0));
  MB_CUDA(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
  int major = 0;
  MB_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
  g_dependent_launch = major >= 9;
  if (load_cublas()) return 1;
  g_ready = true;
  return 0;
}

int mb_device_name(char* name, int capacity) {
  cudaDeviceProp prop;
  MB_CUDA(cudaGetDeviceProperties(&prop, 0));
  snprintf(name, capacity, "%s (sm_%d%d, %.1f GiB)", prop.name, prop.major, prop.minor,
           prop.totalGlobalMem / 1073741824.0);
  return 0;
}

int mb_mem_info(uint64_t* free_bytes, uint64_t* total_bytes) {
  size_t f = 0, t = 0;
  MB_CUDA(cudaMemGetInfo(&f, &t));
  *free_bytes = f;
  *total_bytes = t;
  return 0;
}

int mb_alloc(uint64_t bytes, uint64_t* ptr) {
  if (mb_require_init()) return 1;
  void* p = nullptr;
  if (mb_device_malloc(bytes, &p)) return 1;
  MB_CUDA(cudaMemsetAsync(p, 0, bytes, g_stream));
  *ptr = reinterpret_cast<uintptr_t>(p);
  return 0;
}

int mb_free(uint64_t ptr) { return mb_device_free(mb_ptr<void>(ptr)); }

int mb_set_memory_cap(uint64_t bytes) {
  g_cap = bytes;
  return 0;
}

int mb_memory_stats(uint64_t* in_use, uint64_t* peak) {
  *in_use = g_in_use;
  *peak = g_peak;
  return 0;
}

int mb_write(uint64_t dst, const void* src, uint64_t bytes) {
  // Pageable source: returns once the data is staged, so the caller may reuse `src`.
  MB_CUDA(cudaMemcpyAsync(mb_ptr<void>(dst), src, bytes, cudaMemcpyHostToDevice, g_stream));
  return 0;
}

int mb_read(void* dst, uint64_t src, uint64_t bytes) {
  MB_CUDA(cudaMemcpyAsync(dst, mb_ptr<void>(src), bytes, cudaMemcpyDeviceToHost, g_stream));
  MB_CUDA(cudaStreamSynchronize(g_stream));
  return 0;
}

int mb_fill(uint64_t dst, int64_t n, float value) {
  if (n <= 0) return 0;
  if (value == 0.0f) {
    MB_CUDA(cudaMemsetAsync(mb_ptr<void>(dst), 0, n * sizeof(float), g_stream));
    return 0;
  }
  fill_kernel<<<mb_blocks(n, 256), 256, 0, g_stream>>>(mb_ptr<float>(dst), n, value);
  MB_LAUNCHED("fill");
  return 0;
}

int mb_copy(uint64_t dst, uint64_t src, int64_t n) {
  if (n <= 0) return 0;
  MB_CUDA(cudaMemcpyAsync(mb_ptr<void>(dst), mb_ptr<void>(src), n * sizeof(float), cudaMemcpyDeviceToDevice,
                          g_stream));
  return 0;
}

int mb_synchronize(void) {
  MB_CUDA(cudaStreamSynchronize(g_stream));
  return 0;
}

int mb_stream_handle(uint64_t* stream) {
  if (mb_require_init()) return 1;
  *stream = reinterpret_cast<uint64_t>(g_stream);
  return 0;
}

}  // extern "C"
