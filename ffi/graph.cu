// CUDA graphs of the library's stream: a sequence of ops recorded once (stream capture) and
// replayed with one launch, so a decode step of many small kernels costs one host call.
#include "common.cuh"

namespace {

// Ends a capture in progress, if any, and destroys what it recorded.
void discard_capture() {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(mb_stream(), &status) != cudaSuccess) return;
  if (status == cudaStreamCaptureStatusNone) return;
  cudaGraph_t graph = nullptr;
  cudaStreamEndCapture(mb_stream(), &graph);
  if (graph) cudaGraphDestroy(graph);
  cudaGetLastError();  // an invalidated capture leaves an error behind
}

}  // namespace

extern "C" {

int mb_graph_begin(void) {
  if (mb_require_init()) return 1;
  MB_CUDA(cudaStreamBeginCapture(mb_stream(), cudaStreamCaptureModeThreadLocal));
  return 0;
}

int mb_graph_end(uint64_t* graph_exec) {
  cudaGraph_t graph = nullptr;
  cudaError_t err = cudaStreamEndCapture(mb_stream(), &graph);
  if (err != cudaSuccess) {
    discard_capture();
    return mb_fail("stream capture failed (an op in the recording synchronised or copied from the host?): %s",
                   cudaGetErrorString(err));
  }
  cudaGraphExec_t exec = nullptr;
  err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  MB_CUDA(err);
  *graph_exec = reinterpret_cast<uintptr_t>(exec);
  return 0;
}

int mb_graph_cancel(void) {
  discard_capture();
  return 0;
}

int mb_graph_launch(uint64_t graph_exec) {
  MB_CUDA(cudaGraphLaunch(reinterpret_cast<cudaGraphExec_t>(static_cast<uintptr_t>(graph_exec)), mb_stream()));
  return 0;
}

int mb_graph_free(uint64_t graph_exec) {
  MB_CUDA(cudaGraphExecDestroy(reinterpret_cast<cudaGraphExec_t>(static_cast<uintptr_t>(graph_exec))));
  return 0;
}

}  // extern "C"
