/**
 * The CPU backend's heavy kernels, as plain functions over a range of independent work items:
 * lib/backends/cpu.ts runs a whole range inline, or cuts it into ranges that worker threads
 * (lib/backends/cpu_worker.ts) run side by side on shared memory. One copy of each kernel: the
 * main thread and every worker run the same code, and an output element is always computed by
 * one item, in the same order, so the bits do not depend on how the range is cut.
 *
 * Reductions across items (the scan's dB, dC over channels, dA_log, dD, dt-bias over the batch)
 * go through per-item partials in float64 that `scanBackwardReduce` adds in a fixed order: the
 * partition into items depends on the shapes only, never on the number of threads.
 */

/**
 * backend.ts's FloatArray, not imported from it: this module runs in the cpu backend's worker
 * threads too, and their module graph stays out of backend.ts (whose imports of the GPU
 * backends do not type-check in a worker).
 */
type FloatArray = Float32Array | Float64Array;
import { scanLinear } from "./cpu_scan.ts";

type FloatConstructor = Float32ArrayConstructor | Float64ArrayConstructor;

export const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));
export const softplus = (x: number): number => (x > 20 ? x : Math.log1p(Math.exp(x)));

/** A kernel: runs work items [start, end) of `args`. */
export type Kernel<Args> = (args: Args, start: number, end: number) => void;

// ---- matmul ----

/**
 * C (M, N) = op(A) · B, or += with accumulate, for the two kernels below: matmulRows takes B
 * stored (K, N) (cpu.ts transposes a (N, K) B first when C has many rows, so that every row
 * streams), matmulColumns B stored (N, K), the dot-product form of few rows.
 */
export interface MatmulArgs {
  c: FloatArray;
  a: FloatArray;
  b: FloatArray;
  m: number;
  n: number;
  k: number;
  transA: boolean;
  accumulate: boolean;
  lda: number;
  ldb: number;
  ldc: number;
}

/** Items: rows of C. */
export const matmulRows: Kernel<MatmulArgs> = (args, i0, i1) => {
  const { c, n, ldc, accumulate } = args;
  if (!accumulate) {
    for (let i = i0; i < i1; i++) c.fill(0, i * ldc, i * ldc + n);
  }
  matmulStreamingRows(args, i0, i1);
};

/**
 * Items: columns of C, so that threads share the work of one row (decode's products have one row
 * per sequence). B stored (N, K): contiguous dot products.
 */
export const matmulColumns: Kernel<MatmulArgs> = (args, j0, j1) => {
  const { c, m, ldc, accumulate } = args;
  if (!accumulate) {
    for (let i = 0; i < m; i++) c.fill(0, i * ldc + j0, i * ldc + j1);
  }
  for (let i = 0; i < m; i++) dotRow(args, i, j0, j1);
};

/** C[i, j] += Σ_p A[i, p] · B[j, p] for columns [j0, j1) of row i, four columns at a time. */
function dotRow(args: MatmulArgs, i: number, j0: number, j1: number): void {
  const { c, a, b, k, transA, lda, ldb, ldc } = args;
  const aRow = scratch("aRow", c.constructor as FloatConstructor, k);
  for (let p = 0; p < k; p++) aRow[p] = transA ? a[p * lda + i] : a[i * lda + p];
  const ci = i * ldc;
  let j = j0;
  for (; j + 3 < j1; j += 4) {
    const b0 = j * ldb, b1 = b0 + ldb, b2 = b1 + ldb, b3 = b2 + ldb;
    let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (let p = 0; p < k; p++) {
      const ap = aRow[p];
      s0 += ap * b[b0 + p];
      s1 += ap * b[b1 + p];
      s2 += ap * b[b2 + p];
      s3 += ap * b[b3 + p];
    }
    c[ci + j] += s0;
    c[ci + j + 1] += s1;
    c[ci + j + 2] += s2;
    c[ci + j + 3] += s3;
  }
  for (; j < j1; j++) {
    const bj = j * ldb;
    let s0 = 0;
    for (let p = 0; p < k; p++) s0 += aRow[p] * b[bj + p];
    c[ci + j] += s0;
  }
}

/**
 * C[i, :] += Σ_p A[i, p] · B[p, :] with B stored (K, N): each pass streams four rows of B
 * into a row of C, in blocks of p that keep those rows of B in cache across rows of C.
 */
function matmulStreamingRows(args: MatmulArgs, i0: number, i1: number): void {
  const { c, a, b, n, k, transA, lda, ldb, ldc } = args;
  const KB = 64;
  for (let p0 = 0; p0 < k; p0 += KB) {
    const p1 = Math.min(k, p0 + KB);
    for (let i = i0; i < i1; i++) {
      const ci = i * ldc;
      const aAt = (p: number) => (transA ? a[p * lda + i] : a[i * lda + p]);
      let p = p0;
      for (; p + 3 < p1; p += 4) {
        const a0 = aAt(p), a1 = aAt(p + 1), a2 = aAt(p + 2), a3 = aAt(p + 3);
        const b0 = p * ldb, b1 = b0 + ldb, b2 = b1 + ldb, b3 = b2 + ldb;
        for (let j = 0; j < n; j++) {
          c[ci + j] += a0 * b[b0 + j] + a1 * b[b1 + j] + a2 * b[b2 + j] + a3 * b[b3 + j];
        }
      }
      for (; p < p1; p++) {
        const ap = aAt(p), bp = p * ldb;
        for (let j = 0; j < n; j++) c[ci + j] += ap * b[bp + j];
      }
    }
  }
}

// ---- fused selective scan ----

/** The scan's inputs and dimensions (see Backend.selectiveScan). */
export interface ScanArgs {
  u: FloatArray;
  delta: FloatArray;
  dtBias: FloatArray;
  aLog: FloatArray;
  B: FloatArray;
  C: FloatArray;
  D: FloatArray;
  z: FloatArray;
  batch: number;
  L: number;
  ED: number;
  N: number;
  bcStride: number;
  zStride: number;
  parallel: boolean;
}

/** Per-channel scratch of the selective scan: (L, N) states, never (B, L, ED, N). */
class ScanScratch {
  readonly dt: FloatArray; // (L) δ of the channel
  readonly A: FloatArray; // (N) -exp(A_log) of the channel
  readonly a: FloatArray; // (L, N) exp(δ·A)
  readonly h: FloatArray; // (L, N) states
  readonly seqA: FloatArray; // (L) one state's sequence, for the parallel scan
  readonly seqX: FloatArray; // (L)
  // backward only
  readonly dpre: FloatArray; // (L) ∂loss/∂(h·C + D·u)
  readonly ddt: FloatArray; // (L) ∂loss/∂δ
  readonly dA: FloatArray; // (N) ∂loss/∂A
  readonly dh: FloatArray; // (L, N) ∂loss/∂h
  constructor(readonly Float: FloatConstructor, readonly L: number, readonly N: number) {
    this.dt = new Float(L);
    this.A = new Float(N);
    this.a = new Float(L * N);
    this.h = new Float(L * N);
    this.seqA = new Float(L);
    this.seqX = new Float(L);
    this.dpre = new Float(L);
    this.ddt = new Float(L);
    this.dA = new Float(N);
    this.dh = new Float(L * N);
  }
}

/** The scratch of this thread for (L, N), kept while the shapes repeat. */
let scanScratch: ScanScratch | null = null;
function scanScratchFor(Float: FloatConstructor, L: number, N: number): ScanScratch {
  const s = scanScratch;
  if (s && s.Float === Float && s.L === L && s.N === N) return s;
  return scanScratch = new ScanScratch(Float, L, N);
}

/** δ (L) and A (N) of channel e of sequence b into the scratch. */
function channelInputs(s: ScanScratch, args: ScanArgs, b: number, e: number): void {
  const { delta, dtBias, aLog, L, ED, N } = args;
  for (let t = 0; t < L; t++) s.dt[t] = softplus(delta[(b * L + t) * ED + e] + dtBias[e]);
  for (let n = 0; n < N; n++) s.A[n] = -Math.exp(aLog[e * N + n]);
}

/**
 * States of channel e of sequence b, (L, N) t-major: a[t, n] = exp(δ[t]·A[n]) and
 * h[t, n] = a[t, n]·h[t-1, n] + δ[t]·B[t, n]·u[t], by the sequential or parallel scan.
 */
function channelStates(s: ScanScratch, args: ScanArgs, b: number, e: number): void {
  const { u, B, L, ED, N, bcStride, parallel } = args;
  const { dt, A, a, h, seqA, seqX } = s;
  for (let t = 0; t < L; t++) {
    const r = b * L + t, du = dt[t] * u[r * ED + e];
    for (let n = 0; n < N; n++) {
      a[t * N + n] = Math.exp(dt[t] * A[n]);
      h[t * N + n] = du * B[r * bcStride + n];
    }
  }
  if (!parallel) {
    for (let t = 1; t < L; t++) {
      for (let n = 0; n < N; n++) h[t * N + n] += a[t * N + n] * h[(t - 1) * N + n];
    }
    return;
  }
  for (let n = 0; n < N; n++) {
    for (let t = 0; t < L; t++) [seqA[t], seqX[t]] = [a[t * N + n], h[t * N + n]];
    scanLinear(seqA, seqX, L, true);
    for (let t = 0; t < L; t++) h[t * N + n] = seqX[t];
  }
}

/** Forward: y (B, L, ED). Items: channels (b, e), item = b·ED + e. */
export const scanForward: Kernel<ScanArgs & { y: FloatArray }> = (args, start, end) => {
  const { y, u, C, D, z, L, ED, N, bcStride, zStride } = args;
  const s = scanScratchFor(y.constructor as FloatConstructor, L, N);
  for (let item = start; item < end; item++) {
    const b = Math.floor(item / ED), e = item % ED;
    channelInputs(s, args, b, e);
    channelStates(s, args, b, e);
    for (let t = 0; t < L; t++) {
      const r = b * L + t;
      let hc = 0; // h[t] · C[t]
      for (let n = 0; n < N; n++) hc += s.h[t * N + n] * C[r * bcStride + n];
      const zv = z[r * zStride + e];
      y[r * ED + e] = (hc + D[e] * u[r * ED + e]) * zv * sigmoid(zv);
    }
  }
};

/** Channel chunks of the backward: a fixed function of ED, so that sums over chunks are too. */
export const scanChunks = (ED: number): number => Math.min(8, ED);

/** Channels [first, end) of chunk `chunk`. */
const chunkChannels = (ED: number, chunk: number): [number, number] => {
  const chunks = scanChunks(ED);
  return [Math.floor((chunk * ED) / chunks), Math.floor(((chunk + 1) * ED) / chunks)];
};

/**
 * The backward's outputs and float64 partials: partB, partC (chunks, B·L, N) = the chunk's
 * channels' terms of dB, dC; termD, termBias (B, ED) and termA (B, ED, N) = each channel's
 * terms of dD, ddtBias and daLog.
 */
export interface ScanBackwardArgs extends ScanArgs {
  du: FloatArray;
  ddelta: FloatArray;
  dz: FloatArray;
  dy: FloatArray;
  partB: Float64Array;
  partC: Float64Array;
  termD: Float64Array;
  termBias: Float64Array;
  termA: Float64Array;
}

/**
 * Backward: du, ddelta, dz of the item's channels overwritten, its partials written.
 * Items: (b, chunk), item = b·chunks + chunk.
 */
export const scanBackward: Kernel<ScanBackwardArgs> = (args, start, end) => {
  const { du, ddelta, dz, dy, u, delta, dtBias, B, C, D, z } = args;
  const { batch, L, ED, N, bcStride, zStride, parallel, partB, partC, termD, termBias, termA } = args;
  const s = scanScratchFor(du.constructor as FloatConstructor, L, N);
  const { dt, A, a, h, seqA, seqX, dpre, ddt, dA, dh } = s;
  const chunks = scanChunks(ED);
  for (let item = start; item < end; item++) {
    const b = Math.floor(item / chunks), chunk = item % chunks;
    const part = (chunk * batch * L + b * L) * N; // row (b, 0) of the chunk's partials
    partB.fill(0, part, part + L * N);
    partC.fill(0, part, part + L * N);
    const [e0, e1] = chunkChannels(ED, chunk);
    for (let e = e0; e < e1; e++) {
      channelInputs(s, args, b, e);
      channelStates(s, args, b, e);
      // y = (h·C + D·u)·silu(z): gradients of z, D, and of the output before the gate.
      let dDe = 0;
      for (let t = 0; t < L; t++) {
        const r = b * L + t;
        let hc = 0;
        for (let n = 0; n < N; n++) hc += h[t * N + n] * C[r * bcStride + n];
        const zv = z[r * zStride + e], sg = sigmoid(zv);
        const pre = hc + D[e] * u[r * ED + e];
        dz[r * zStride + e] = dy[r * ED + e] * pre * sg * (1 + zv * (1 - sg));
        dpre[t] = dy[r * ED + e] * zv * sg;
        dDe += dpre[t] * u[r * ED + e];
        du[r * ED + e] = dpre[t] * D[e];
      }
      termD[b * ED + e] = dDe;
      // dh[t] = dpre[t]·C[t] + a[t+1]·dh[t+1]: the same recurrence, backwards in time.
      for (let t = 0; t < L; t++) {
        for (let n = 0; n < N; n++) dh[t * N + n] = dpre[t] * C[(b * L + t) * bcStride + n];
      }
      if (parallel) {
        for (let n = 0; n < N; n++) {
          for (let i = 0; i < L; i++) {
            const t = L - 1 - i;
            seqA[i] = t + 1 < L ? a[(t + 1) * N + n] : 0;
            seqX[i] = dh[t * N + n];
          }
          scanLinear(seqA, seqX, L, true);
          for (let i = 0; i < L; i++) dh[(L - 1 - i) * N + n] = seqX[i];
        }
      } else {
        for (let t = L - 2; t >= 0; t--) {
          for (let n = 0; n < N; n++) dh[t * N + n] += a[(t + 1) * N + n] * dh[(t + 1) * N + n];
        }
      }
      // h[t] = a[t]·h[t-1] + δ[t]·B[t]·u[t] with a[t] = exp(δ[t]·A).
      dA.fill(0);
      for (let t = 0; t < L; t++) {
        const r = b * L + t, ut = u[r * ED + e], bo = r * bcStride, po = part + t * N;
        let ddtT = 0, duT = 0;
        for (let n = 0; n < N; n++) {
          const g = dh[t * N + n], Bt = B[bo + n];
          const hPrev = t > 0 ? h[(t - 1) * N + n] : 0;
          const da = g * hPrev * a[t * N + n];
          ddtT += da * A[n] + g * Bt * ut;
          dA[n] += da * dt[t];
          partB[po + n] += g * dt[t] * ut;
          partC[po + n] += dpre[t] * h[t * N + n];
          duT += g * Bt;
        }
        ddt[t] = ddtT;
        du[r * ED + e] += duT * dt[t];
      }
      for (let n = 0; n < N; n++) termA[(b * ED + e) * N + n] = dA[n] * A[n]; // A = -exp(A_log)
      let dBias = 0;
      for (let t = 0; t < L; t++) {
        const r = b * L + t;
        const g = ddt[t] * sigmoid(delta[r * ED + e] + dtBias[e]); // softplus' = sigmoid
        ddelta[r * ED + e] = g;
        dBias += g;
      }
      termBias[b * ED + e] = dBias;
    }
  }
};

/**
 * The backward's sums, in a fixed order: dB, dC (overwritten) = Σ over chunks in chunk order;
 * daLog, dD, ddtBias += each sequence's terms in batch order.
 */
export function scanBackwardReduce(
  args: ScanBackwardArgs & {
    dB: FloatArray;
    dC: FloatArray;
    daLog: FloatArray;
    dD: FloatArray;
    ddtBias: FloatArray;
  },
): void {
  const { dB, dC, daLog, dD, ddtBias, partB, partC, termD, termBias, termA, batch, L, ED, N, bcStride } =
    args;
  const rows = batch * L, chunks = scanChunks(ED);
  for (let r = 0; r < rows; r++) {
    for (let n = 0; n < N; n++) {
      let sb = 0, sc = 0;
      for (let chunk = 0; chunk < chunks; chunk++) {
        sb += partB[(chunk * rows + r) * N + n];
        sc += partC[(chunk * rows + r) * N + n];
      }
      dB[r * bcStride + n] = sb;
      dC[r * bcStride + n] = sc;
    }
  }
  for (let b = 0; b < batch; b++) {
    for (let e = 0; e < ED; e++) {
      dD[e] += termD[b * ED + e];
      ddtBias[e] += termBias[b * ED + e];
      for (let n = 0; n < N; n++) daLog[e * N + n] += termA[(b * ED + e) * N + n];
    }
  }
}

// ---- the table the worker threads run from ----

/** Every kernel a worker thread can run, by name. */
export const KERNELS = { matmulRows, matmulColumns, scanForward, scanBackward } as const;
export type KernelName = keyof typeof KERNELS;
export type KernelArgs<K extends KernelName> = Parameters<(typeof KERNELS)[K]>[0];

// ---- scratch ----

const scratches = new Map<string, FloatArray>();

/** A scratch array of this thread, grown on demand (its contents are not kept between uses). */
function scratch(name: string, Float: FloatConstructor, length: number): FloatArray {
  const key = `${name}:${Float.name}`;
  let s = scratches.get(key);
  if (!s || s.length < length) scratches.set(key, s = new Float(length));
  return s;
}
