// The mixture-of-experts ops (lib/backend.ts, MoeOps; the reference is lib/backends/cpu_moe.ts):
// routing (softmax, top-k, gates, dispatch in position order within each expert's capacity, the
// Switch aux loss), gather / scatter of dispatched rows and their backwards, SwiGLU.
//
// Glossary: T routed positions, E experts, k choices per position, C rows per expert, D row width.
// Every reduction runs in a fixed order (no float atomics), so results do not change between runs;
// per-expert partial results go through a static device array (no workspace: the ops may be
// recorded into a CUDA graph, whose addresses must stay valid).
#include "common.cuh"

namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr int kDispatchThreads = 1024;
constexpr int kDispatchWarps = kDispatchThreads / 32;
// The most experts the static per-expert scratch holds.
constexpr int kMaxExperts = 1024;

__device__ int g_picked[kMaxExperts];        // choices of each expert (before dropping)
__device__ float g_mean_prob[kMaxExperts];   // mean over positions of probs[:, e]

// ---- route ----

// One thread per position t: probs (E) = softmax over every expert, choice (k) = top k best first
// (strict >: the lower expert wins ties), gates (k) = softmax over the chosen logits.
__global__ void route_rows_kernel(float* gates, int* choice, float* probs, const float* logits, int T, int E,
                                  int k) {
  int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= T) return;
  const float* l = logits + (int64_t)t * E;
  float* p = probs + (int64_t)t * E;
  int* ch = choice + (int64_t)t * k;
  float* g = gates + (int64_t)t * k;
  float mx = -INFINITY;
  for (int e = 0; e < E; e++) mx = fmaxf(mx, l[e]);
  float sum = 0.0f;
  for (int e = 0; e < E; e++) sum += expf(l[e] - mx);
  for (int e = 0; e < E; e++) p[e] = expf(l[e] - mx) / sum;
  for (int j = 0; j < k; j++) {
    int best = -1;
    for (int e = 0; e < E; e++) {
      bool taken = false;
      for (int i = 0; i < j; i++) taken = taken || ch[i] == e;
      if (taken) continue;
      if (best < 0 || l[e] > l[best]) best = e;
    }
    ch[j] = best;
  }
  float top = l[ch[0]], gate_sum = 0.0f;
  for (int j = 0; j < k; j++) gate_sum += expf(l[ch[j]] - top);
  for (int j = 0; j < k; j++) g[j] = expf(l[ch[j]] - top) / gate_sum;
}

// Exclusive prefix over the block of `flag` (kDispatchThreads threads); *total gets the block's sum.
__device__ int block_exclusive_count(bool flag, int* warp_counts, int* total) {
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  unsigned ballot = __ballot_sync(0xffffffffu, flag);
  int before = __popc(ballot & ((1u << lane) - 1u));
  if (lane == 0) warp_counts[warp] = __popc(ballot);
  __syncthreads();
  if (warp == 0) {
    int v = lane < kDispatchWarps ? warp_counts[lane] : 0, inclusive = v;
    for (int offset = 1; offset < 32; offset <<= 1) {
      int up = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (lane >= offset) inclusive += up;
    }
    if (lane < kDispatchWarps) warp_counts[lane] = inclusive - v;
    if (lane == 31) warp_counts[kDispatchWarps] = inclusive;
  }
  __syncthreads();
  int result = warp_counts[warp] + before;
  *total = warp_counts[kDispatchWarps];
  __syncthreads();  // warp_counts is reused by the next call
  return result;
}

// One block per expert e: its choices, in order i = t·k + j, take rows e·C, e·C + 1, … until C are
// taken; later ones get slot -1. Unused rows get slotRows -1. Also the expert's count and mean prob.
__global__ void dispatch_kernel(int* slot, int* slot_rows, const int* choice, const float* probs, int T, int E,
                                int k, int C) {
  __shared__ int warp_counts[kDispatchWarps + 1];
  __shared__ float prob_parts[kDispatchWarps];
  int e = blockIdx.x, n = T * k, taken = 0;
  for (int base = 0; base < n; base += kDispatchThreads) {
    int i = base + threadIdx.x;
    bool mine = i < n && choice[i] == e;
    int chunk;
    int rank = taken + block_exclusive_count(mine, warp_counts, &chunk);
    if (mine) {
      slot[i] = rank < C ? e * C + rank : -1;
      if (rank < C) slot_rows[(int64_t)e * C + rank] = i / k;
    }
    taken += chunk;
  }
  for (int r = taken + threadIdx.x; r < C; r += kDispatchThreads) slot_rows[(int64_t)e * C + r] = -1;
  float prob = 0.0f;
  for (int t = threadIdx.x; t < T; t += kDispatchThreads) prob += probs[(int64_t)t * E + e];
  prob = mb_warp_sum(prob);
  if (threadIdx.x % 32 == 0) prob_parts[threadIdx.x / 32] = prob;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < kDispatchWarps; w++) total += prob_parts[w];
    g_picked[e] = taken;
    g_mean_prob[e] = T > 0 ? total / T : 0.0f;
  }
}

// stats = [aux, dropped]: aux = E · Σ_e (picked_e / (T·k)) · P_e, dropped = Σ_e max(0, picked_e - C).
__global__ void route_stats_kernel(float* stats, int T, int E, int k, int C) {
  float aux = 0.0f;
  int dropped = 0;
  for (int e = 0; e < E; e++) {
    aux += ((float)g_picked[e] / ((float)T * k)) * g_mean_prob[e];
    dropped += max(0, g_picked[e] - C);
  }
  stats[0] = E * aux;
  stats[1] = (float)dropped;
}

// ---- route backward ----

// One block per expert: how many of the T·k choices picked it.
__global__ void count_choices_kernel(const int* choice, int n) {
  __shared__ int parts[kWarpsPerBlock];
  int e = blockIdx.x, count = 0;
  for (int i = threadIdx.x; i < n; i += kThreads) count += choice[i] == e;
  for (int offset = 16; offset > 0; offset >>= 1) count += __shfl_xor_sync(0xffffffffu, count, offset);
  if (threadIdx.x % 32 == 0) parts[threadIdx.x / 32] = count;
  __syncthreads();
  if (threadIdx.x == 0) {
    int total = 0;
    for (int w = 0; w < kWarpsPerBlock; w++) total += parts[w];
    g_picked[e] = total;
  }
}

// One thread per position: dlogits = softmax backward of the aux term (∂/∂probs[t, e] = scale · picked_e)
// plus the gates' softmax backward over the chosen logits.
__global__ void route_backward_kernel(float* dlogits, const float* dgates, const float* gates, const int* choice,
                                      const float* probs, float prob_scale, int T, int E, int k) {
  int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= T) return;
  const float* p = probs + (int64_t)t * E;
  float* dl = dlogits + (int64_t)t * E;
  // __fmul_rn keeps the compiler from fusing the product into the subtraction below: with the
  // product rounded once, a router of one expert gets exactly the zero gradient it has.
  float pa = 0.0f;
  for (int e = 0; e < E; e++) pa += p[e] * __fmul_rn(prob_scale, (float)g_picked[e]);
  for (int e = 0; e < E; e++) dl[e] = p[e] * (__fmul_rn(prob_scale, (float)g_picked[e]) - pa);
  const float* g = gates + (int64_t)t * k;
  const float* dg = dgates + (int64_t)t * k;
  float gg = 0.0f;
  for (int j = 0; j < k; j++) gg += g[j] * dg[j];
  for (int j = 0; j < k; j++) dl[choice[(int64_t)t * k + j]] += g[j] * (dg[j] - gg);
}

// ---- gather / scatter ----

// xe (E·C, D) = x[slotRows] (zero rows for -1).
__global__ void gather_kernel(float* xe, const float* x, const int* slot_rows, int64_t rows, int D) {
  int64_t n = rows * D;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int t = slot_rows[i / D];
    xe[i] = t < 0 ? 0.0f : x[(int64_t)t * D + i % D];
  }
}

// The row of expert e that position t was dispatched to, or -1: route fills each expert's rows with
// increasing positions, then -1s, so a binary search finds it.
__device__ int find_row(const int* slot_rows, int e, int C, int t) {
  const int* rows = slot_rows + (int64_t)e * C;
  int lo = 0, hi = C;  // first r with rows[r] ≥ t, counting -1 as past every position
  while (lo < hi) {
    int mid = (lo + hi) / 2, v = rows[mid];
    if (v >= 0 && v < t) lo = mid + 1;
    else hi = mid;
  }
  return lo < C && rows[lo] == t ? e * C + lo : -1;
}

// One warp per position t: dx[t] += dxe[s] for its rows s, in the order of s (as the reference adds).
__global__ void gather_backward_kernel(float* dx, const float* dxe, const int* slot_rows, int T, int E, int C,
                                       int D) {
  extern __shared__ int found[];  // (warps, E)
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t = blockIdx.x * kWarpsPerBlock + warp;
  if (t >= T) return;
  int* mine = found + warp * E;
  for (int e = lane; e < E; e += 32) mine[e] = find_row(slot_rows, e, C, t);
  __syncwarp();
  for (int d = lane; d < D; d += 32) {
    float acc = dx[(int64_t)t * D + d];
    for (int e = 0; e < E; e++) {
      if (mine[e] >= 0) acc += dxe[(int64_t)mine[e] * D + d];
    }
    dx[(int64_t)t * D + d] = acc;
  }
}

// out (T, D) += Σ_j gates[t, j] · ye[slot[t, j]], j in order, dropped choices skipped.
__global__ void scatter_kernel(float* out, const float* ye, const float* gates, const int* slot, int T, int k,
                               int D) {
  int64_t n = (int64_t)T * D;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t t = i / D;
    float acc = out[i];
    for (int j = 0; j < k; j++) {
      int s = slot[t * k + j];
      if (s >= 0) acc += gates[t * k + j] * ye[(int64_t)s * D + i % D];
    }
    out[i] = acc;
  }
}

// One warp per choice (t, j) not dropped: dye[slot] = gate · dout[t]; dgates = dout[t] · ye[slot] (0 if dropped).
__global__ void scatter_backward_kernel(float* dye, float* dgates, const float* dout, const float* ye,
                                        const float* gates, const int* slot, int T, int k, int D) {
  int64_t c = blockIdx.x * (int64_t)kWarpsPerBlock + threadIdx.x / 32;
  int lane = threadIdx.x % 32;
  if (c >= (int64_t)T * k) return;
  int s = slot[c];
  if (s < 0) {
    if (lane == 0) dgates[c] = 0.0f;
    return;
  }
  const float* o = dout + (c / k) * D;
  float g = gates[c], dot = 0.0f;
  for (int d = lane; d < D; d += 32) {
    dye[(int64_t)s * D + d] = g * o[d];
    dot += o[d] * ye[(int64_t)s * D + d];
  }
  dot = mb_warp_sum(dot);
  if (lane == 0) dgates[c] = dot;
}

// ---- SwiGLU ----

__global__ void swiglu_kernel(float* act, const float* h1, const float* h3, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    act[i] = h1[i] * mb_sigmoid(h1[i]) * h3[i];
  }
}

__global__ void swiglu_backward_kernel(float* dh1, float* dh3, const float* dact, const float* h1,
                                       const float* h3, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float a = h1[i], sg = mb_sigmoid(a);
    dh3[i] = dact[i] * a * sg;
    dh1[i] = dact[i] * h3[i] * mb_dsilu(a);
  }
}

// Fails (with a message naming the op) unless the dimensions make sense.
int check_dims(const char* op, int T, int E, int k, int C, int D) {
  if (T < 0 || E < 1 || k < 1 || k > E || C < 0 || D < 1) {
    return mb_fail("%s: bad dimensions rows=%d experts=%d top_k=%d capacity=%d dim=%d", op, T, E, k, C, D);
  }
  if (E > kMaxExperts) return mb_fail("%s: %d experts; the CUDA library supports at most %d", op, E, kMaxExperts);
  return 0;
}

unsigned thread_blocks(int64_t n, int threads) { return (unsigned)((n + threads - 1) / threads); }

}  // namespace

extern "C" {

int mb_moe_route(uint64_t gates, uint64_t choice, uint64_t slot, uint64_t slot_rows, uint64_t probs,
                 uint64_t stats, uint64_t logits, int rows, int experts, int top_k, int capacity, int dim) {
  if (check_dims("moe_route", rows, experts, top_k, capacity, dim)) return 1;
  if (rows > 0) {
    route_rows_kernel<<<thread_blocks(rows, kThreads), kThreads, 0, mb_stream()>>>(
        mb_ptr<float>(gates), mb_ptr<int>(choice), mb_ptr<float>(probs), mb_ptr<float>(logits), rows, experts,
        top_k);
    MB_LAUNCHED("moe_route (rows)");
  }
  dispatch_kernel<<<experts, kDispatchThreads, 0, mb_stream()>>>(mb_ptr<int>(slot), mb_ptr<int>(slot_rows),
                                                                 mb_ptr<int>(choice), mb_ptr<float>(probs), rows,
                                                                 experts, top_k, capacity);
  MB_LAUNCHED("moe_route (dispatch)");
  route_stats_kernel<<<1, 1, 0, mb_stream()>>>(mb_ptr<float>(stats), rows, experts, top_k, capacity);
  MB_LAUNCHED("moe_route (stats)");
  return 0;
}

int mb_moe_route_backward(uint64_t dlogits, uint64_t dgates, uint64_t gates, uint64_t choice, uint64_t probs,
                          float aux_scale, int rows, int experts, int top_k, int capacity, int dim) {
  if (check_dims("moe_route_backward", rows, experts, top_k, capacity, dim)) return 1;
  if (rows == 0) return 0;
  count_choices_kernel<<<experts, kThreads, 0, mb_stream()>>>(mb_ptr<int>(choice), rows * top_k);
  MB_LAUNCHED("moe_route_backward (counts)");
  // ∂(aux_scale · aux)/∂probs[t, e] = aux_scale · E · (picked_e / (T·k)) / T
  float prob_scale = (float)((double)aux_scale * experts / ((double)rows * top_k) / rows);
  route_backward_kernel<<<thread_blocks(rows, kThreads), kThreads, 0, mb_stream()>>>(
      mb_ptr<float>(dlogits), mb_ptr<float>(dgates), mb_ptr<float>(gates), mb_ptr<int>(choice),
      mb_ptr<float>(probs), prob_scale, rows, experts, top_k);
  MB_LAUNCHED("moe_route_backward");
  return 0;
}

int mb_moe_gather(uint64_t xe, uint64_t x, uint64_t slot_rows, int rows, int experts, int top_k, int capacity,
                  int dim) {
  if (check_dims("moe_gather", rows, experts, top_k, capacity, dim)) return 1;
  int64_t n = (int64_t)experts * capacity * dim;
  if (n == 0) return 0;
  gather_kernel<<<mb_blocks(n, kThreads), kThreads, 0, mb_stream()>>>(
      mb_ptr<float>(xe), mb_ptr<float>(x), mb_ptr<int>(slot_rows), (int64_t)experts * capacity, dim);
  MB_LAUNCHED("moe_gather");
  return 0;
}

int mb_moe_gather_backward(uint64_t dx, uint64_t dxe, uint64_t slot_rows, int rows, int experts, int top_k,
                           int capacity, int dim) {
  if (check_dims("moe_gather_backward", rows, experts, top_k, capacity, dim)) return 1;
  if (rows == 0 || capacity == 0) return 0;
  size_t shared = (size_t)kWarpsPerBlock * experts * sizeof(int);
  gather_backward_kernel<<<thread_blocks(rows, kWarpsPerBlock), kThreads, shared, mb_stream()>>>(
      mb_ptr<float>(dx), mb_ptr<float>(dxe), mb_ptr<int>(slot_rows), rows, experts, capacity, dim);
  MB_LAUNCHED("moe_gather_backward");
  return 0;
}

int mb_moe_scatter(uint64_t out, uint64_t ye, uint64_t gates, uint64_t slot, int rows, int experts, int top_k,
                   int capacity, int dim) {
  if (check_dims("moe_scatter", rows, experts, top_k, capacity, dim)) return 1;
  int64_t n = (int64_t)rows * dim;
  if (n == 0) return 0;
  scatter_kernel<<<mb_blocks(n, kThreads), kThreads, 0, mb_stream()>>>(
      mb_ptr<float>(out), mb_ptr<float>(ye), mb_ptr<float>(gates), mb_ptr<int>(slot), rows, top_k, dim);
  MB_LAUNCHED("moe_scatter");
  return 0;
}

int mb_moe_scatter_backward(uint64_t dye, uint64_t dgates, uint64_t dout, uint64_t ye, uint64_t gates,
                            uint64_t slot, int rows, int experts, int top_k, int capacity, int dim) {
  if (check_dims("moe_scatter_backward", rows, experts, top_k, capacity, dim)) return 1;
  int64_t dispatched = (int64_t)experts * capacity * dim;
  if (dispatched > 0) MB_CUDA(cudaMemsetAsync(mb_ptr<float>(dye), 0, dispatched * sizeof(float), mb_stream()));
  int64_t choices = (int64_t)rows * top_k;
  if (choices == 0) return 0;
  scatter_backward_kernel<<<thread_blocks(choices, kWarpsPerBlock), kThreads, 0, mb_stream()>>>(
      mb_ptr<float>(dye), mb_ptr<float>(dgates), mb_ptr<float>(dout), mb_ptr<float>(ye), mb_ptr<float>(gates),
      mb_ptr<int>(slot), rows, top_k, dim);
  MB_LAUNCHED("moe_scatter_backward");
  return 0;
}

int mb_moe_swiglu(uint64_t act, uint64_t h1, uint64_t h3, int64_t n) {
  if (n <= 0) return 0;
  swiglu_kernel<<<mb_blocks(n, kThreads), kThreads, 0, mb_stream()>>>(mb_ptr<float>(act), mb_ptr<float>(h1),
                                                                      mb_ptr<float>(h3), n);
  MB_LAUNCHED("moe_swiglu");
  return 0;
}

int mb_moe_swiglu_backward(uint64_t dh1, uint64_t dh3, uint64_t dact, uint64_t h1, uint64_t h3, int64_t n) {
  if (n <= 0) return 0;
  swiglu_backward_kernel<<<mb_blocks(n, kThreads), kThreads, 0, mb_stream()>>>(
      mb_ptr<float>(dh1), mb_ptr<float>(dh3), mb_ptr<float>(dact), mb_ptr<float>(h1), mb_ptr<float>(h3), n);
  MB_LAUNCHED("moe_swiglu_backward");
  return 0;
}

}  // extern "C"
