// The fused selective scan: softplus(δ + bias), discretisation, the scan over L, the C readout,
// the D skip and the silu(z) gate, forward and backward, plus the single decode step.
//
// Layout of the work: L is cut into chunks of kChunk steps. A thread owns kPer states (n) of one
// channel (e) of one chunk; the `lanes` threads of a channel sit next to each other in a warp.
// Forward:  1. chunk_summary: each chunk's scan from h = 0 → its end state, and Σδ of the chunk;
//           2. chunk_carry: per (b, e, n), h at every chunk start, carried in chunk order with the
//              chunk's decay exp(A·Σδ);
//           3. chunk_output: each chunk rescanned from its start state → y.
// Backward: the same 1-2 also summarise and carry the gradient of the state backwards in time,
//           then chunk_backward recomputes the chunk's states into registers (kChunk × kPer),
//           walks the chunk backwards and writes every gradient. (B, L, ED, N) is never stored:
//           only the chunk-boundary states (B, L / kChunk, ED, N), in the library's workspace.
// The `parallel` flag of the TypeScript API has no effect here: the chunked scan is the parallel
// scan, and it gives the sequential scan's numbers up to float rounding.
#include "common.cuh"

namespace {

constexpr int kChunk = 16;   // time steps per chunk
constexpr int kPer = 4;      // states per thread
constexpr int kThreads = 256;

struct ScanArgs {
  const float *u, *delta, *dt_bias, *a_log, *b, *c, *d, *z;
  int batch, length, channels, state, bc_stride, z_stride;
  int lanes;   // threads per channel (a power of two ≤ 32)
  int chunks;  // ceil(L / kChunk)
  float* hs;   // (B, chunks, ED, N): chunk end states, then chunk start states
  float* gs;   // (B, chunks, ED, N): backward only, state-gradient carries
  float* sdt;  // (B, chunks, ED): Σδ over each chunk
};

// Where this thread sits: channel e, first state n0, chunk c, batch b; valid when e < ED.
struct Slot {
  int e, n0, c, b, t0, steps;
  bool valid;
};

__device__ inline Slot slot_of(const ScanArgs& s) {
  Slot q;
  int per_block = blockDim.x / s.lanes;
  q.e = blockIdx.x * per_block + threadIdx.x / s.lanes;
  q.n0 = (threadIdx.x % s.lanes) * kPer;
  q.c = blockIdx.y;
  q.b = blockIdx.z;
  q.t0 = q.c * kChunk;
  q.steps = min(kChunk, s.length - q.t0);
  q.valid = q.e < s.channels;
  return q;
}

// Index of state n of channel e at chunk c in the (B, chunks, ED, N) arrays.
__device__ inline int64_t state_index(const ScanArgs& s, const Slot& q, int n) {
  return (((int64_t)q.b * s.chunks + q.c) * s.channels + q.e) * s.state + n;
}

// Sum over the `lanes` threads of one channel.
__device__ inline float lane_sum(float v, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the channels of a warp (threads with the same lane index).
__device__ inline float channel_sum(float v, int lanes) {
  for (int offset = lanes; offset < 32; offset <<= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// The per-(t, e) inputs of one time step.
struct Step {
  float dt, u;  // δ = softplus(delta + bias), u
};

__device__ inline Step load_step(const ScanArgs& s, const Slot& q, int64_t r) {
  if (!q.valid) return {0.0f, 0.0f};
  return {mb_softplus(s.delta[r * s.channels + q.e] + s.dt_bias[q.e]), s.u[r * s.channels + q.e]};
}

// A[n] = -exp(A_log[e, n]), zero for padding states (a = 1, h stays 0).
__device__ inline void load_a(const ScanArgs& s, const Slot& q, float (&a)[kPer]) {
#pragma unroll
  for (int j = 0; j < kPer; j++) {
    int n = q.n0 + j;
    a[j] = (q.valid && n < s.state) ? -expf(s.a_log[q.e * s.state + n]) : 0.0f;
  }
}

// B or C of row r for this thread's states (zero for padding).
__device__ inline void load_bc(const ScanArgs& s, const Slot& q, const float* m, int64_t r, float (&out)[kPer]) {
#pragma unroll
  for (int j = 0; j < kPer; j++) {
    int n = q.n0 + j;
    out[j] = (q.valid && n < s.state) ? m[r * s.bc_stride + n] : 0.0f;
  }
}

// dpre = dy · silu(z): the gradient of the pre-gate output (h·C + D·u).
__device__ inline float gate_grad(const ScanArgs& s, const Slot& q, const float* dy, int64_t r) {
  if (!q.valid) return 0.0f;
  float zz = s.z[r * s.z_stride + q.e];
  return dy[r * s.channels + q.e] * zz * mb_sigmoid(zz);
}

// Pass 1: the chunk's scan from h = 0 (its end state into hs) and Σδ; with kGrad, also the
// gradient scan backwards from dh = 0, whose a[t0]·dh[t0] goes into gs.
template <bool kGrad>
__global__ void chunk_summary(ScanArgs s, const float* dy) {
  Slot q = slot_of(s);
  float A[kPer], h[kPer] = {}, B[kPer];
  load_a(s, q, A);
  float sum_dt = 0.0f;
  for (int t = 0; t < q.steps; t++) {
    int64_t r = (int64_t)q.b * s.length + q.t0 + t;
    Step st = load_step(s, q, r);
    load_bc(s, q, s.b, r, B);
#pragma unroll
    for (int j = 0; j < kPer; j++) h[j] = expf(st.dt * A[j]) * h[j] + st.dt * B[j] * st.u;
    sum_dt += st.dt;
  }
  if (!q.valid) return;
#pragma unroll
  for (int j = 0; j < kPer; j++) {
    if (q.n0 + j < s.state) s.hs[state_index(s, q, q.n0 + j)] = h[j];
  }
  if (q.n0 == 0) s.sdt[((int64_t)q.b * s.chunks + q.c) * s.channels + q.e] = sum_dt;
  if (!kGrad) return;
  float carry[kPer] = {}, C[kPer];
  for (int t = q.steps - 1; t >= 0; t--) {
    int64_t r = (int64_t)q.b * s.length + q.t0 + t;
    Step st = load_step(s, q, r);
    float dpre = gate_grad(s, q, dy, r);
    load_bc(s, q, s.c, r, C);
#pragma unroll
    for (int j = 0; j < kPer; j++) carry[j] = expf(st.dt * A[j]) * (dpre * C[j] + carry[j]);
  }
#pragma unroll
  for (int j = 0; j < kPer; j++) {
    if (q.n0 + j < s.state) s.gs[state_index(s, q, q.n0 + j)] = carry[j];
  }
}

// Pass 2, one thread per (b, e, n): hs becomes each chunk's START state (h before the chunk);
// with kGrad, gs becomes the carry a·dh entering each chunk from its right.
template <bool kGrad>
__global__ void chunk_carry(ScanArgs s) {
  int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= (int64_t)s.batch * s.channels * s.state) return;
  int n = i % s.state, e = (i / s.state) % s.channels, b = i / ((int64_t)s.state * s.channels);
  float A = -expf(s.a_log[e * s.state + n]);
  int64_t stride = (int64_t)s.channels * s.state, base = (int64_t)b * s.chunks * stride + e * s.state + n;
  int64_t sbase = (int64_t)b * s.chunks * s.channels + e;
  float h = 0.0f;
  for (int c = 0; c < s.chunks; c++) {
    float end = s.hs[base + c * stride];
    s.hs[base + c * stride] = h;
    h = expf(A * s.sdt[sbase + (int64_t)c * s.channels]) * h + end;
  }
  if (!kGrad) return;
  float g = 0.0f;
  for (int c = s.chunks - 1; c >= 0; c--) {
    float local = s.gs[base + c * stride];
    s.gs[base + c * stride] = g;
    g = local + expf(A * s.sdt[sbase + (int64_t)c * s.channels]) * g;
  }
}

// Pass 3 (forward): rescan each chunk from its start state; y = (h·C + D·u) · silu(z).
__global__ void chunk_output(ScanArgs s, float* y) {
  Slot q = slot_of(s);
  float A[kPer], h[kPer], B[kPer], C[kPer];
  load_a(s, q, A);
#pragma unroll
  for (int j = 0; j < kPer; j++) h[j] = (q.valid && q.n0 + j < s.state) ? s.hs[state_index(s, q, q.n0 + j)] : 0.0f;
  for (int t = 0; t < q.steps; t++) {
    int64_t r = (int64_t)q.b * s.length + q.t0 + t;
    Step st = load_step(s, q, r);
    load_bc(s, q, s.b, r, B);
    load_bc(s, q, s.c, r, C);
    float part = 0.0f;
#pragma unroll
    for (int j = 0; j < kPer; j++) {
      h[j] = expf(st.dt * A[j]) * h[j] + st.dt * B[j] * st.u;
      part += h[j] * C[j];
    }
    float sum = lane_sum(part, s.lanes);
    if (q.valid && q.n0 == 0) {
      float zz = s.z[r * s.z_stride + q.e];
      y[r * s.channels + q.e] = (sum + s.d[q.e] * st.u) * zz * mb_sigmoid(zz);
    }
  }
}

struct BackwardOut {
  float *du, *ddelta, *db, *dc, *dz;
  const float* dy;
  float *dbias_part, *dd_part;  // (B, chunks, ED) partial sums of ddt_bias and dD
};

// Pass 3 (backward): recompute the chunk's states from its start state, then walk it backwards.
// dB and dC (summed over channels) go through shared memory, then one atomicAdd per block.
// hs slots are overwritten with this chunk's dA_log contribution (reduced over chunks later).
__global__ void chunk_backward(ScanArgs s, BackwardOut o) {
  extern __shared__ float shared[];  // dB then dC, each (kChunk, lanes · kPer)
  Slot q = slot_of(s);
  int width = s.lanes * kPer;
  float* sdb = shared;
  float* sdc = shared + kChunk * width;
  for (int i = threadIdx.x; i < 2 * kChunk * width; i += blockDim.x) shared[i] = 0.0f;
  __syncthreads();

  float A[kPer], h0[kPer], carry[kPer], B[kPer], C[kPer], dA[kPer] = {};
  float hist[kChunk][kPer];
  load_a(s, q, A);
#pragma unroll
  for (int j = 0; j < kPer; j++) {
    bool ok = q.valid && q.n0 + j < s.state;
    h0[j] = ok ? s.hs[state_index(s, q, q.n0 + j)] : 0.0f;
    carry[j] = ok ? s.gs[state_index(s, q, q.n0 + j)] : 0.0f;
  }
#pragma unroll
  for (int t = 0; t < kChunk; t++) {
    if (t < q.steps) {
      int64_t r = (int64_t)q.b * s.length + q.t0 + t;
      Step st = load_step(s, q, r);
      load_bc(s, q, s.b, r, B);
#pragma unroll
      for (int j = 0; j < kPer; j++) {
        float prev = t > 0 ? hist[t - 1][j] : h0[j];
        hist[t][j] = expf(st.dt * A[j]) * prev + st.dt * B[j] * st.u;
      }
    }
  }
  float dbias = 0.0f, dd = 0.0f;
  float dvalue = q.valid ? s.d[q.e] : 0.0f;
#pragma unroll
  for (int t = kChunk - 1; t >= 0; t--) {
    if (t >= q.steps) continue;
    int64_t r = (int64_t)q.b * s.length + q.t0 + t;
    Step st = load_step(s, q, r);
    float dpre = gate_grad(s, q, o.dy, r);
    load_bc(s, q, s.b, r, B);
    load_bc(s, q, s.c, r, C);
    float du = 0.0f, ddt = 0.0f, part = 0.0f;
#pragma unroll
    for (int j = 0; j < kPer; j++) {
      float dh = dpre * C[j] + carry[j];
      float prev = t > 0 ? hist[t - 1][j] : h0[j];
      float a = expf(st.dt * A[j]);
      float da = dh * prev * a;  // ∂/∂(δA) of a·h[t-1]
      part += hist[t][j] * C[j];
      du += dh * st.dt * B[j];
      ddt += da * A[j] + dh * B[j] * st.u;
      dA[j] += da * st.dt;
      carry[j] = a * dh;
      float db = channel_sum(dh * st.dt * st.u, s.lanes);
      float dc = channel_sum(dpre * hist[t][j], s.lanes);
      if (threadIdx.x % 32 < s.lanes) {
        atomicAdd(sdb + t * width + q.n0 + j, db);
        atomicAdd(sdc + t * width + q.n0 + j, dc);
      }
    }
    du = lane_sum(du, s.lanes);
    ddt = lane_sum(ddt, s.lanes);
    part = lane_sum(part, s.lanes);
    if (q.valid && q.n0 == 0) {
      int64_t i = r * s.channels + q.e;
      float zz = s.z[r * s.z_stride + q.e];
      float g = ddt * mb_sigmoid(s.delta[i] + s.dt_bias[q.e]);  // softplus' = sigmoid
      o.du[i] = dpre * dvalue + du;
      o.ddelta[i] = g;
      o.dz[r * s.z_stride + q.e] = o.dy[i] * (part + dvalue * st.u) * mb_dsilu(zz);
      dbias += g;
      dd += dpre * st.u;
    }
  }
  if (q.valid) {
#pragma unroll
    for (int j = 0; j < kPer; j++) {
      if (q.n0 + j < s.state) s.hs[state_index(s, q, q.n0 + j)] = dA[j] * A[j];  // dA_log = dA · A
    }
    if (q.n0 == 0) {
      int64_t k = ((int64_t)q.b * s.chunks + q.c) * s.channels + q.e;
      o.dbias_part[k] = dbias;
      o.dd_part[k] = dd;
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kChunk * width; i += blockDim.x) {
    int t = i / width, n = i % width;
    if (t >= q.steps || n >= s.state) continue;
    int64_t r = (int64_t)q.b * s.length + q.t0 + t;
    atomicAdd(o.db + r * s.bc_stride + n, sdb[i]);
    atomicAdd(o.dc + r * s.bc_stride + n, sdc[i]);
  }
}

// dst[i] += Σ_k src[k · count + i], i < count.
__global__ void reduce_parts(float* dst, const float* src, int parts, int count) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= count) return;
  float sum = 0.0f;
  for (int k = 0; k < parts; k++) sum += src[(int64_t)k * count + i];
  dst[i] += sum;
}

// m[r · stride + n] = 0 for r < rows, n < cols.
__global__ void zero_rows(float* m, int64_t rows, int cols, int stride) {
  int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    m[(i / cols) * stride + i % cols] = 0.0f;
  }
}

// One decode step, one thread per (b, e): h (B, ED, N) updated in place.
__global__ void scan_step(float* y, float* h, ScanArgs s) {
  int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= (int64_t)s.batch * s.channels) return;
  int e = i % s.channels, b = i / s.channels;
  float dt = mb_softplus(s.delta[i] + s.dt_bias[e]), uu = s.u[i];
  float sum = 0.0f;
  for (int n = 0; n < s.state; n++) {
    float* hn = h + i * s.state + n;
    *hn = expf(-dt * expf(s.a_log[e * s.state + n])) * *hn + dt * s.b[(int64_t)b * s.bc_stride + n] * uu;
    sum += *hn * s.c[(int64_t)b * s.bc_stride + n];
  }
  float zz = s.z[(int64_t)b * s.z_stride + e];
  y[i] = (sum + s.d[e] * uu) * zz * mb_sigmoid(zz);
}

// Fills the shape fields and the chunk layout of ScanArgs; fails for unsupported d_state.
int make_args(ScanArgs& s, uint64_t u, uint64_t delta, uint64_t dt_bias, uint64_t a_log, uint64_t b, uint64_t c,
              uint64_t d, uint64_t z, int batch, int length, int channels, int state, int bc_stride, int z_stride) {
  s = ScanArgs{};
  s.u = mb_ptr<float>(u);
  s.delta = mb_ptr<float>(delta);
  s.dt_bias = mb_ptr<float>(dt_bias);
  s.a_log = mb_ptr<float>(a_log);
  s.b = mb_ptr<float>(b);
  s.c = mb_ptr<float>(c);
  s.d = mb_ptr<float>(d);
  s.z = mb_ptr<float>(z);
  s.batch = batch;
  s.length = length;
  s.channels = channels;
  s.state = state;
  s.bc_stride = bc_stride;
  s.z_stride = z_stride;
  s.lanes = 1;
  while (s.lanes * kPer < state) s.lanes *= 2;
  if (s.lanes > 32) return mb_fail("selective scan: d_state %d is above the supported %d", state, 32 * kPer);
  s.chunks = (length + kChunk - 1) / kChunk;
  return 0;
}

dim3 chunk_grid(const ScanArgs& s) {
  int per_block = kThreads / s.lanes;
  return dim3((s.channels + per_block - 1) / per_block, s.chunks, s.batch);
}

}  // namespace

extern "C" {

int mb_selective_scan(uint64_t y, uint64_t u, uint64_t delta, uint64_t dt_bias, uint64_t a_log, uint64_t b,
                      uint64_t c, uint64_t d, uint64_t z, int batch, int length, int channels, int state,
                      int bc_stride, int z_stride) {
  if (mb_require_init()) return 1;
  ScanArgs s;
  if (make_args(s, u, delta, dt_bias, a_log, b, c, d, z, batch, length, channels, state, bc_stride, z_stride)) return 1;
  if (batch <= 0 || length <= 0 || channels <= 0) return 0;
  int64_t states = (int64_t)batch * s.chunks * channels * state, sums = (int64_t)batch * s.chunks * channels;
  void* ws = nullptr;
  if (mb_workspace((states + sums) * sizeof(float), &ws)) return 1;
  s.hs = static_cast<float*>(ws);
  s.sdt = s.hs + states;
  cudaStream_t stream = mb_stream();
  chunk_summary<false><<<chunk_grid(s), kThreads, 0, stream>>>(s, nullptr);
  MB_LAUNCHED("selective_scan (chunk summary)");
  int64_t carries = (int64_t)batch * channels * state;
  chunk_carry<false><<<mb_blocks(carries, kThreads), kThreads, 0, stream>>>(s);
  MB_LAUNCHED("selective_scan (chunk carry)");
  chunk_output<<<chunk_grid(s), kThreads, 0, stream>>>(s, mb_ptr<float>(y));
  MB_LAUNCHED("selective_scan (chunk output)");
  return 0;
}

int mb_selective_scan_backward(uint64_t du, uint64_t ddelta, uint64_t ddt_bias, uint64_t da_log, uint64_t db,
                               uint64_t dc, uint64_t dd, uint64_t dz, uint64_t dy, uint64_t u, uint64_t delta,
                               uint64_t dt_bias, uint64_t a_log, uint64_t b, uint64_t c, uint64_t d, uint64_t z,
                               int batch, int length, int channels, int state, int bc_stride, int z_stride) {
  if (mb_require_init()) return 1;
  ScanArgs s;
  if (make_args(s, u, delta, dt_bias, a_log, b, c, d, z, batch, length, channels, state, bc_stride, z_stride)) return 1;
  if (batch <= 0 || length <= 0 || channels <= 0) return 0;
  int64_t states = (int64_t)batch * s.chunks * channels * state, sums = (int64_t)batch * s.chunks * channels;
  void* ws = nullptr;
  if (mb_workspace((2 * states + 3 * sums) * sizeof(float), &ws)) return 1;
  s.hs = static_cast<float*>(ws);
  s.gs = s.hs + states;
  s.sdt = s.gs + states;
  BackwardOut o{mb_ptr<float>(du), mb_ptr<float>(ddelta), mb_ptr<float>(db), mb_ptr<float>(dc), mb_ptr<float>(dz),
                mb_ptr<float>(dy), s.sdt + sums, s.sdt + 2 * sums};
  cudaStream_t stream = mb_stream();
  int64_t rows = (int64_t)batch * length;
  zero_rows<<<mb_blocks(rows * state, kThreads), kThreads, 0, stream>>>(o.db, rows, state, bc_stride);
  zero_rows<<<mb_blocks(rows * state, kThreads), kThreads, 0, stream>>>(o.dc, rows, state, bc_stride);
  MB_LAUNCHED("selective_scan_backward (zero dB, dC)");
  chunk_summary<true><<<chunk_grid(s), kThreads, 0, stream>>>(s, o.dy);
  MB_LAUNCHED("selective_scan_backward (chunk summary)");
  int64_t carries = (int64_t)batch * channels * state;
  chunk_carry<true><<<mb_blocks(carries, kThreads), kThreads, 0, stream>>>(s);
  MB_LAUNCHED("selective_scan_backward (chunk carry)");
  size_t shared = 2 * kChunk * s.lanes * kPer * sizeof(float);
  chunk_backward<<<chunk_grid(s), kThreads, shared, stream>>>(s, o);
  MB_LAUNCHED("selective_scan_backward (chunks)");
  int parts = batch * s.chunks;
  reduce_parts<<<(channels * state + kThreads - 1) / kThreads, kThreads, 0, stream>>>(mb_ptr<float>(da_log), s.hs,
                                                                                      parts, channels * state);
  reduce_parts<<<(channels + kThreads - 1) / kThreads, kThreads, 0, stream>>>(mb_ptr<float>(ddt_bias), o.dbias_part,
                                                                              parts, channels);
  reduce_parts<<<(channels + kThreads - 1) / kThreads, kThreads, 0, stream>>>(mb_ptr<float>(dd), o.dd_part, parts,
                                                                              channels);
  MB_LAUNCHED("selective_scan_backward (parameter sums)");
  return 0;
}

int mb_selective_scan_step(uint64_t y, uint64_t h, uint64_t u, uint64_t delta, uint64_t dt_bias, uint64_t a_log,
                           uint64_t b, uint64_t c, uint64_t d, uint64_t z, int batch, int channels, int state,
                           int bc_stride, int z_stride) {
  ScanArgs s;
  if (make_args(s, u, delta, dt_bias, a_log, b, c, d, z, batch, 1, channels, state, bc_stride, z_stride)) return 1;
  int64_t n = (int64_t)batch * channels;
  if (n <= 0) return 0;
  scan_step<<<mb_blocks(n, kThreads), kThreads, 0, mb_stream()>>>(mb_ptr<float>(y), mb_ptr<float>(h), s);
  MB_LAUNCHED("selective_scan_step");
  return 0;
}

}  // extern "C"
