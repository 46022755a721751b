/**
 * The CPU reference backend: plain TypeScript over Float32Array (or Float64Array, for
 * gradient checks against finite differences). Every other backend is tested against it.
 * Written for clarity first; hot loops keep their inner dimension contiguous and allocate
 * nothing per element.
 */
import type {
  AdamWOptions,
  Backend,
  ConvDims,
  DeviceBuffer,
  FloatArray,
  IndexBuffer,
  Int8MatmulOptions,
  MatmulOptions,
  MoeOps,
  ScanDims,
} from "../backend.ts";
import {
  checkAdamw8bitLengths,
  codeByte,
  decodeM,
  decodeV,
  encodeM,
  encodeV,
  QUANT_BLOCK,
  setCodeByte,
  signedCode,
} from "../quant8.ts";
import { checkMatmulInt8, int8WordsPerRow } from "../quantize.ts";
import { sampleWithUniform, type SamplingOptions } from "../sample.ts";
import { CpuMoeOps } from "./cpu_moe.ts";
import { scanLinear } from "./cpu_scan.ts";

class CpuBuffer implements DeviceBuffer {
  constructor(readonly data: FloatArray) {}
  get length(): number {
    return this.data.length;
  }
}

class CpuIndexBuffer implements IndexBuffer {
  constructor(readonly data: Int32Array) {}
  get length(): number {
    return this.data.length;
  }
}

const f = (buffer: DeviceBuffer): FloatArray => (buffer as CpuBuffer).data;
const ix = (buffer: IndexBuffer): Int32Array => (buffer as CpuIndexBuffer).data;
const fOrNull = (buffer: DeviceBuffer | null): FloatArray | null => buffer && f(buffer);

/** The byte vocabulary: logits rows are 256 wide. */
const VOCAB = 256;

const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));
const softplus = (x: number): number => (x > 20 ? x : Math.log1p(Math.exp(x)));

/** Per-channel scratch of the selective scan: (L, N) states, never (B, L, ED, N). */
class ScanScratch {
  readonly dt: FloatArray; // (L) δ of the channel
  readonly A: FloatArray; // (N) -exp(A_log) of the channel
  readonly a: FloatArray; // (L, N) exp(δ·A)
  readonly h: FloatArray; // (L, N) states
  readonly seqA: FloatArray; // (L) one state's sequence, for the parallel scan
  readonly seqX: FloatArray; // (L)
  constructor(Float: Float32ArrayConstructor | Float64ArrayConstructor, L: number, N: number) {
    this.dt = new Float(L);
    this.A = new Float(N);
    this.a = new Float(L * N);
    this.h = new Float(L * N);
    this.seqA = new Float(L);
    this.seqX = new Float(L);
  }
}

export interface CpuBackendOptions {
  /** "f64" runs every op in float64 (for finite-difference gradient checks). */
  precision?: "f32" | "f64";
}

export class CpuBackend implements Backend {
  readonly device = "cpu" as const;
  readonly description: string;
  readonly moe: MoeOps = new CpuMoeOps(f, ix);
  readonly #Float: Float32ArrayConstructor | Float64ArrayConstructor;

  constructor(options: CpuBackendOptions = {}) {
    const precision = options.precision ?? "f32";
    this.#Float = precision === "f64" ? Float64Array : Float32Array;
    this.description = `cpu (TypeScript, ${precision})`;
  }

  // ---- memory ----
  alloc(length: number): DeviceBuffer {
    return new CpuBuffer(new this.#Float(length));
  }
  allocIndices(length: number): IndexBuffer {
    return new CpuIndexBuffer(new Int32Array(length));
  }
  view(buffer: DeviceBuffer, offset: number, length: number): DeviceBuffer {
    if (offset < 0 || offset + length > buffer.length) {
      throw new RangeError(`view [${offset}, ${offset + length}) outside a buffer of ${buffer.length}`);
    }
    return new CpuBuffer(f(buffer).subarray(offset, offset + length));
  }
  viewIndices(buffer: IndexBuffer, offset: number, length: number): IndexBuffer {
    if (offset < 0 || offset + length > buffer.length) {
      throw new RangeError(
        `view [${offset}, ${offset + length}) outside an index buffer of ${buffer.length}`,
      );
    }
    return new CpuIndexBuffer(ix(buffer).subarray(offset, offset + length));
  }
  write(dst: DeviceBuffer, src: ArrayLike<number>): void {
    f(dst).set(src);
  }
  writeIndices(dst: IndexBuffer, src: ArrayLike<number>): void {
    ix(dst).set(src);
  }
  read(src: DeviceBuffer): Promise<FloatArray> {
    return Promise.resolve(f(src).slice());
  }
  readIndices(src: IndexBuffer): Promise<Int32Array> {
    return Promise.resolve(ix(src).slice());
  }
  fill(dst: DeviceBuffer, value: number): void {
    f(dst).fill(value);
  }
  copy(dst: DeviceBuffer, src: DeviceBuffer): void {
    f(dst).set(f(src));
  }
  free(_buffer: DeviceBuffer | IndexBuffer): void {
    // Garbage collected.
  }
  dispose(): void {}

  // ---- dense ----
  matmul(
    cBuf: DeviceBuffer,
    aBuf: DeviceBuffer,
    bBuf: DeviceBuffer,
    m: number,
    n: number,
    k: number,
    options: MatmulOptions = {},
  ): void {
    const { transA = false, transB = false, accumulate = false } = options;
    const lda = options.lda ?? (transA ? m : k);
    const ldb = options.ldb ?? (transB ? k : n);
    const ldc = options.ldc ?? n;
    const a = f(aBuf), b = f(bBuf), c = f(cBuf);
    if (!accumulate) {
      for (let i = 0; i < m; i++) c.fill(0, i * ldc, i * ldc + n);
    }
    if (transB && m >= 16) {
      // Many rows of C: transposing B once (n·k) lets every row use the streaming loop below.
      const bt = new this.#Float(k * n);
      for (let j = 0; j < n; j++) {
        for (let p = 0; p < k; p++) bt[p * n + j] = b[j * ldb + p];
      }
      this.#matmulStreaming(c, a, bt, m, n, k, transA, lda, n, ldc);
      return;
    }
    if (transB) {
      // C[i, j] += Σ_p A[i, p] · B[j, p]: contiguous dot products, four columns of C at a time.
      const aRow = new this.#Float(k);
      for (let i = 0; i < m; i++) {
        for (let p = 0; p < k; p++) aRow[p] = transA ? a[p * lda + i] : a[i * lda + p];
        const ci = i * ldc;
        let j = 0;
        for (; j + 3 < n; j += 4) {
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
        for (; j < n; j++) {
          const bj = j * ldb;
          let s0 = 0;
          for (let p = 0; p < k; p++) s0 += aRow[p] * b[bj + p];
          c[ci + j] += s0;
        }
      }
      return;
    }
    this.#matmulStreaming(c, a, b, m, n, k, transA, lda, ldb, ldc);
  }

  /**
   * C[i, :] += Σ_p A[i, p] · B[p, :] with B stored (K, N): each pass streams four rows of B
   * into a row of C, in blocks of p that keep those rows of B in cache across rows of C.
   */
  #matmulStreaming(
    c: FloatArray,
    a: FloatArray,
    b: FloatArray,
    m: number,
    n: number,
    k: number,
    transA: boolean,
    lda: number,
    ldb: number,
    ldc: number,
  ): void {
    const KB = 64;
    for (let p0 = 0; p0 < k; p0 += KB) {
      const p1 = Math.min(k, p0 + KB);
      for (let i = 0; i < m; i++) {
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

  addBias(outBuf: DeviceBuffer, biasBuf: DeviceBuffer, rows: number, cols: number): void {
    const out = f(outBuf), bias = f(biasBuf);
    for (let r = 0; r < rows; r++) {
      const o = r * cols;
      for (let j = 0; j < cols; j++) out[o + j] += bias[j];
    }
  }

  addBiasBackward(dbiasBuf: DeviceBuffer, doutBuf: DeviceBuffer, rows: number, cols: number): void {
    const dbias = f(dbiasBuf), dout = f(doutBuf);
    for (let r = 0; r < rows; r++) {
      const o = r * cols;
      for (let j = 0; j < cols; j++) dbias[j] += dout[o + j];
    }
  }

  // ---- embedding ----
  embedding(
    outBuf: DeviceBuffer,
    tableBuf: DeviceBuffer,
    tokensBuf: IndexBuffer,
    rows: number,
    dim: number,
  ): void {
    const out = f(outBuf), table = f(tableBuf), tokens = ix(tokensBuf);
    for (let r = 0; r < rows; r++) {
      const t = tokens[r] * dim;
      out.set(table.subarray(t, t + dim), r * dim);
    }
  }

  embeddingBackward(
    dtableBuf: DeviceBuffer,
    doutBuf: DeviceBuffer,
    tokensBuf: IndexBuffer,
    rows: number,
    dim: number,
  ): void {
    const dtable = f(dtableBuf), dout = f(doutBuf), tokens = ix(tokensBuf);
    for (let r = 0; r < rows; r++) {
      const t = tokens[r] * dim, o = r * dim;
      for (let j = 0; j < dim; j++) dtable[t + j] += dout[o + j];
    }
  }

  // ---- RMSNorm ----
  rmsnorm(
    outBuf: DeviceBuffer,
    rstdBuf: DeviceBuffer,
    xBuf: DeviceBuffer,
    weightBuf: DeviceBuffer,
    rows: number,
    dim: number,
    eps: number,
  ): void {
    const out = f(outBuf), rstd = f(rstdBuf), x = f(xBuf), w = f(weightBuf);
    for (let r = 0; r < rows; r++) {
      const o = r * dim;
      let ss = 0;
      for (let j = 0; j < dim; j++) ss += x[o + j] * x[o + j];
      const s = 1 / Math.sqrt(ss / dim + eps);
      rstd[r] = s;
      for (let j = 0; j < dim; j++) out[o + j] = x[o + j] * s * w[j];
    }
  }

  rmsnormBackward(
    dxBuf: DeviceBuffer,
    dweightBuf: DeviceBuffer,
    doutBuf: DeviceBuffer,
    xBuf: DeviceBuffer,
    weightBuf: DeviceBuffer,
    rstdBuf: DeviceBuffer,
    rows: number,
    dim: number,
  ): void {
    const dx = f(dxBuf), dw = f(dweightBuf), dout = f(doutBuf), x = f(xBuf);
    const w = f(weightBuf), rstd = f(rstdBuf);
    for (let r = 0; r < rows; r++) {
      const o = r * dim, s = rstd[r];
      // y = x·s·w, s = (mean(x²)+eps)^-1/2: dx = s·(g - x·s²·mean(g·x)) with g = dout·w.
      let gx = 0;
      for (let j = 0; j < dim; j++) {
        gx += dout[o + j] * w[j] * x[o + j];
        dw[j] += dout[o + j] * x[o + j] * s;
      }
      const k = (s * s * gx) / dim;
      for (let j = 0; j < dim; j++) dx[o + j] += s * (dout[o + j] * w[j] - x[o + j] * k);
    }
  }

  // ---- causal depthwise conv1d + SiLU ----
  conv1dSilu(
    outBuf: DeviceBuffer,
    xBuf: DeviceBuffer,
    weightBuf: DeviceBuffer,
    biasBuf: DeviceBuffer | null,
    dims: ConvDims,
  ): void {
    const { batch, length: L, channels: C, width: K, xStride } = dims;
    const out = f(outBuf), x = f(xBuf), w = f(weightBuf), bias = fOrNull(biasBuf);
    for (let b = 0; b < batch; b++) {
      for (let t = 0; t < L; t++) {
        const o = (b * L + t) * C;
        for (let c = 0; c < C; c++) {
          let s = bias ? bias[c] : 0;
          for (let k = 0; k < K; k++) {
            const ts = t - K + 1 + k;
            if (ts >= 0) s += w[c * K + k] * x[(b * L + ts) * xStride + c];
          }
          out[o + c] = s * sigmoid(s);
        }
      }
    }
  }

  conv1dSiluBackward(
    dxBuf: DeviceBuffer,
    dweightBuf: DeviceBuffer,
    dbiasBuf: DeviceBuffer | null,
    doutBuf: DeviceBuffer,
    xBuf: DeviceBuffer,
    weightBuf: DeviceBuffer,
    biasBuf: DeviceBuffer | null,
    dims: ConvDims,
  ): void {
    const { batch, length: L, channels: C, width: K, xStride } = dims;
    const dx = f(dxBuf), dw = f(dweightBuf), dbias = fOrNull(dbiasBuf), dout = f(doutBuf);
    const x = f(xBuf), w = f(weightBuf), bias = fOrNull(biasBuf);
    for (let b = 0; b < batch; b++) {
      for (let t = 0; t < L; t++) dx.fill(0, (b * L + t) * xStride, (b * L + t) * xStride + C);
      for (let t = 0; t < L; t++) {
        const o = (b * L + t) * C;
        for (let c = 0; c < C; c++) {
          let s = bias ? bias[c] : 0;
          for (let k = 0; k < K; k++) {
            const ts = t - K + 1 + k;
            if (ts >= 0) s += w[c * K + k] * x[(b * L + ts) * xStride + c];
          }
          const sg = sigmoid(s);
          const g = dout[o + c] * sg * (1 + s * (1 - sg)); // d silu(s) / ds
          if (dbias) dbias[c] += g;
          for (let k = 0; k < K; k++) {
            const ts = t - K + 1 + k;
            if (ts < 0) continue;
            const xi = (b * L + ts) * xStride + c;
            dw[c * K + k] += g * x[xi];
            dx[xi] += g * w[c * K + k];
          }
        }
      }
    }
  }

  // ---- fused selective scan ----
  /**
   * States of channel e of sequence b, (L, N) t-major: a[t, n] = exp(δ[t]·A[n]) and
   * h[t, n] = a[t, n]·h[t-1, n] + δ[t]·B[t, n]·u[t], by the sequential or parallel scan.
   * Scratch of one channel only: the op never holds (B, L, ED, N).
   */
  #channelStates(
    s: ScanScratch,
    u: FloatArray,
    B: FloatArray,
    b: number,
    e: number,
    dims: ScanDims,
  ): void {
    const { length: L, channels: ED, state: N, bcStride, parallel } = dims;
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

  /** δ (L) and A (N) of channel e of sequence b into the scratch. */
  #channelInputs(
    s: ScanScratch,
    delta: FloatArray,
    dtBias: FloatArray,
    aLog: FloatArray,
    b: number,
    e: number,
    dims: ScanDims,
  ): void {
    const { length: L, channels: ED, state: N } = dims;
    for (let t = 0; t < L; t++) s.dt[t] = softplus(delta[(b * L + t) * ED + e] + dtBias[e]);
    for (let n = 0; n < N; n++) s.A[n] = -Math.exp(aLog[e * N + n]);
  }

  selectiveScan(
    yBuf: DeviceBuffer,
    uBuf: DeviceBuffer,
    deltaBuf: DeviceBuffer,
    dtBiasBuf: DeviceBuffer,
    aLogBuf: DeviceBuffer,
    bBuf: DeviceBuffer,
    cBuf: DeviceBuffer,
    dBuf: DeviceBuffer,
    zBuf: DeviceBuffer,
    dims: ScanDims,
  ): void {
    const { batch, length: L, channels: ED, state: N, bcStride, zStride } = dims;
    const y = f(yBuf), u = f(uBuf), delta = f(deltaBuf), dtBias = f(dtBiasBuf);
    const aLog = f(aLogBuf), B = f(bBuf), C = f(cBuf), D = f(dBuf), z = f(zBuf);
    const s = new ScanScratch(this.#Float, L, N);
    for (let b = 0; b < batch; b++) {
      for (let e = 0; e < ED; e++) {
        this.#channelInputs(s, delta, dtBias, aLog, b, e, dims);
        this.#channelStates(s, u, B, b, e, dims);
        for (let t = 0; t < L; t++) {
          const r = b * L + t;
          let hc = 0; // h[t] · C[t]
          for (let n = 0; n < N; n++) hc += s.h[t * N + n] * C[r * bcStride + n];
          const zv = z[r * zStride + e];
          y[r * ED + e] = (hc + D[e] * u[r * ED + e]) * zv * sigmoid(zv);
        }
      }
    }
  }

  selectiveScanBackward(
    duBuf: DeviceBuffer,
    ddeltaBuf: DeviceBuffer,
    ddtBiasBuf: DeviceBuffer,
    daLogBuf: DeviceBuffer,
    dbBuf: DeviceBuffer,
    dcBuf: DeviceBuffer,
    ddBuf: DeviceBuffer,
    dzBuf: DeviceBuffer,
    dyBuf: DeviceBuffer,
    uBuf: DeviceBuffer,
    deltaBuf: DeviceBuffer,
    dtBiasBuf: DeviceBuffer,
    aLogBuf: DeviceBuffer,
    bBuf: DeviceBuffer,
    cBuf: DeviceBuffer,
    dBuf: DeviceBuffer,
    zBuf: DeviceBuffer,
    dims: ScanDims,
  ): void {
    const { batch, length: L, channels: ED, state: N, bcStride, zStride, parallel } = dims;
    const du = f(duBuf), ddelta = f(ddeltaBuf), ddtBias = f(ddtBiasBuf), daLog = f(daLogBuf);
    const dB = f(dbBuf), dC = f(dcBuf), dD = f(ddBuf), dz = f(dzBuf), dy = f(dyBuf);
    const u = f(uBuf), delta = f(deltaBuf), dtBias = f(dtBiasBuf), aLog = f(aLogBuf);
    const B = f(bBuf), C = f(cBuf), D = f(dBuf), z = f(zBuf);
    const s = new ScanScratch(this.#Float, L, N);
    const { dt, A, a, h, seqA, seqX } = s;
    const dpre = new this.#Float(L), ddt = new this.#Float(L), dA = new this.#Float(N);
    const dh = new this.#Float(L * N); // ∂loss/∂h of one channel, (L, N)
    for (let r = 0; r < batch * L; r++) {
      dB.fill(0, r * bcStride, r * bcStride + N);
      dC.fill(0, r * bcStride, r * bcStride + N);
    }
    for (let b = 0; b < batch; b++) {
      for (let e = 0; e < ED; e++) {
        this.#channelInputs(s, delta, dtBias, aLog, b, e, dims);
        this.#channelStates(s, u, B, b, e, dims);
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
        dD[e] += dDe;
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
          const r = b * L + t, ut = u[r * ED + e], bo = r * bcStride;
          let ddtT = 0, duT = 0;
          for (let n = 0; n < N; n++) {
            const g = dh[t * N + n], Bt = B[bo + n];
            const hPrev = t > 0 ? h[(t - 1) * N + n] : 0;
            const da = g * hPrev * a[t * N + n];
            ddtT += da * A[n] + g * Bt * ut;
            dA[n] += da * dt[t];
            dB[bo + n] += g * dt[t] * ut;
            dC[bo + n] += dpre[t] * h[t * N + n];
            duT += g * Bt;
          }
          ddt[t] = ddtT;
          du[r * ED + e] += duT * dt[t];
        }
        for (let n = 0; n < N; n++) daLog[e * N + n] += dA[n] * A[n]; // A = -exp(A_log)
        let dBias = 0;
        for (let t = 0; t < L; t++) {
          const r = b * L + t;
          const g = ddt[t] * sigmoid(delta[r * ED + e] + dtBias[e]); // softplus' = sigmoid
          ddelta[r * ED + e] = g;
          dBias += g;
        }
        ddtBias[e] += dBias;
      }
    }
  }

  // ---- loss ----
  crossEntropy(
    lossesBuf: DeviceBuffer,
    dlogitsBuf: DeviceBuffer | null,
    logitsBuf: DeviceBuffer,
    targetsBuf: IndexBuffer,
    rows: number,
    vocab: number,
    gradScale: number,
  ): void {
    const losses = f(lossesBuf), dlogits = fOrNull(dlogitsBuf), logits = f(logitsBuf);
    const targets = ix(targetsBuf);
    for (let r = 0; r < rows; r++) {
      const o = r * vocab;
      let max = -Infinity;
      for (let j = 0; j < vocab; j++) max = Math.max(max, logits[o + j]);
      let sum = 0;
      for (let j = 0; j < vocab; j++) sum += Math.exp(logits[o + j] - max);
      const logSum = Math.log(sum) + max;
      losses[r] = logSum - logits[o + targets[r]];
      if (dlogits) {
        for (let j = 0; j < vocab; j++) {
          dlogits[o + j] = gradScale * Math.exp(logits[o + j] - logSum);
        }
        dlogits[o + targets[r]] -= gradScale;
      }
    }
  }

  // ---- optimizer ----
  sumOfSquares(xBuf: DeviceBuffer): Promise<number> {
    const x = f(xBuf);
    let s = 0;
    for (let i = 0; i < x.length; i++) s += x[i] * x[i];
    return Promise.resolve(s);
  }

  adamw(
    paramBuf: DeviceBuffer,
    gradBuf: DeviceBuffer,
    mBuf: DeviceBuffer,
    vBuf: DeviceBuffer,
    o: AdamWOptions,
  ): void {
    const p = f(paramBuf), g = f(gradBuf), m = f(mBuf), v = f(vBuf);
    const c1 = 1 - o.beta1 ** o.step, c2 = 1 - o.beta2 ** o.step;
    const decay = 1 - o.lr * o.weightDecay;
    for (let i = 0; i < p.length; i++) {
      const gi = g[i] * o.gradScale;
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * gi;
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * gi * gi;
      p[i] = p[i] * decay - (o.lr * (m[i] / c1)) / (Math.sqrt(v[i] / c2) + o.eps);
    }
  }

  adamw8bit(
    paramBuf: DeviceBuffer,
    gradBuf: DeviceBuffer,
    mCodesBuf: IndexBuffer,
    vCodesBuf: IndexBuffer,
    scalesBuf: DeviceBuffer,
    o: AdamWOptions,
  ): void {
    const p = f(paramBuf),
      g = f(gradBuf),
      mCodes = ix(mCodesBuf),
      vCodes = ix(vCodesBuf),
      scales = f(scalesBuf);
    const n = p.length, blocks = Math.ceil(n / QUANT_BLOCK);
    checkAdamw8bitLengths(n, g.length, mCodes.length, vCodes.length, scales.length);
    const c1 = 1 - o.beta1 ** o.step, c2 = 1 - o.beta2 ** o.step;
    const decay = 1 - o.lr * o.weightDecay;
    const m = new Float64Array(QUANT_BLOCK), v = new Float64Array(QUANT_BLOCK); // one block's new moments
    for (let b = 0; b < blocks; b++) {
      const start = b * QUANT_BLOCK, count = Math.min(QUANT_BLOCK, n - start);
      let absM = 0, absV = 0;
      for (let j = 0; j < count; j++) {
        const i = start + j, gi = g[i] * o.gradScale;
        m[j] = o.beta1 * decodeM(signedCode(codeByte(mCodes, i)), scales[2 * b]) + (1 - o.beta1) * gi;
        v[j] = o.beta2 * decodeV(codeByte(vCodes, i), scales[2 * b + 1]) + (1 - o.beta2) * gi * gi;
        p[i] = p[i] * decay - (o.lr * (m[j] / c1)) / (Math.sqrt(v[j] / c2) + o.eps);
        absM = Math.max(absM, Math.abs(m[j]));
        absV = Math.max(absV, v[j]);
      }
      scales[2 * b] = absM; // codes are relative to the scales as stored (float32 here)
      scales[2 * b + 1] = absV;
      for (let j = 0; j < QUANT_BLOCK; j++) {
        const live = j < count;
        setCodeByte(mCodes, start + j, live ? encodeM(m[j], scales[2 * b]) : 0);
        setCodeByte(vCodes, start + j, live ? encodeV(v[j], scales[2 * b + 1]) : 0);
      }
    }
  }

  // ---- int8 weights ----
  matmulInt8(
    cBuf: DeviceBuffer,
    aBuf: DeviceBuffer,
    codesBuf: IndexBuffer,
    scalesBuf: DeviceBuffer,
    m: number,
    n: number,
    k: number,
    options: Int8MatmulOptions = {},
  ): void {
    const { accumulate = false } = options;
    const lda = options.lda ?? k;
    checkMatmulInt8(cBuf, aBuf, codesBuf, scalesBuf, m, n, k, lda);
    const c = f(cBuf), a = f(aBuf), words = ix(codesBuf), scales = f(scalesBuf);
    // Code p of row j is byte p of the row's words (little-endian: the byte order of every
    // platform Deno runs on), so the words read as int8 bytes are the codes, rows 4·KW apart.
    const codes = new Int8Array(words.buffer, words.byteOffset, words.byteLength);
    const rowBytes = 4 * int8WordsPerRow(k);
    for (let i = 0; i < m; i++) {
      const ai = i * lda, ci = i * n;
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let p = 0, wj = j * rowBytes; p < k; p++) s += a[ai + p] * codes[wj + p];
        c[ci + j] = (accumulate ? c[ci + j] : 0) + scales[j] * s;
      }
    }
  }

  // ---- single-step decode ----
  conv1dSiluStep(
    outBuf: DeviceBuffer,
    stateBuf: DeviceBuffer,
    xBuf: DeviceBuffer,
    weightBuf: DeviceBuffer,
    biasBuf: DeviceBuffer | null,
    batch: number,
    channels: number,
    width: number,
    xStride: number,
  ): void {
    const out = f(outBuf), state = f(stateBuf), x = f(xBuf), w = f(weightBuf);
    const bias = fOrNull(biasBuf);
    const K = width, S = K - 1;
    for (let b = 0; b < batch; b++) {
      for (let c = 0; c < channels; c++) {
        const st = (b * channels + c) * S, xv = x[b * xStride + c];
        let s = bias ? bias[c] : 0;
        for (let k = 0; k < S; k++) s += w[c * K + k] * state[st + k];
        s += w[c * K + S] * xv;
        out[b * channels + c] = s * sigmoid(s);
        for (let k = 0; k + 1 < S; k++) state[st + k] = state[st + k + 1];
        if (S > 0) state[st + S - 1] = xv;
      }
    }
  }

  selectiveScanStep(
    yBuf: DeviceBuffer,
    hBuf: DeviceBuffer,
    uBuf: DeviceBuffer,
    deltaBuf: DeviceBuffer,
    dtBiasBuf: DeviceBuffer,
    aLogBuf: DeviceBuffer,
    bBuf: DeviceBuffer,
    cBuf: DeviceBuffer,
    dBuf: DeviceBuffer,
    zBuf: DeviceBuffer,
    dims: Omit<ScanDims, "length" | "parallel">,
  ): void {
    const { batch, channels: ED, state: N, bcStride, zStride } = dims;
    const y = f(yBuf), h = f(hBuf), u = f(uBuf), delta = f(deltaBuf), dtBias = f(dtBiasBuf);
    const aLog = f(aLogBuf), B = f(bBuf), C = f(cBuf), D = f(dBuf), z = f(zBuf);
    for (let b = 0; b < batch; b++) {
      for (let e = 0; e < ED; e++) {
        const dt = softplus(delta[b * ED + e] + dtBias[e]), ue = u[b * ED + e];
        let s = 0;
        for (let n = 0; n < N; n++) {
          const hi = (b * ED + e) * N + n;
          h[hi] = Math.exp(-dt * Math.exp(aLog[e * N + n])) * h[hi] + dt * B[b * bcStride + n] * ue;
          s += h[hi] * C[b * bcStride + n];
        }
        const zv = z[b * zStride + e];
        y[b * ED + e] = (s + D[e] * ue) * zv * sigmoid(zv);
      }
    }
  }

  // ---- sampling ----
  sampleTokens(
    tokensBuf: IndexBuffer,
    historyBuf: DeviceBuffer,
    logitsBuf: DeviceBuffer,
    uniformsBuf: DeviceBuffer,
    batch: number,
    options: SamplingOptions,
  ): void {
    const tokens = ix(tokensBuf), history = f(historyBuf), logits = f(logitsBuf), u = f(uniformsBuf);
    for (let b = 0; b < batch; b++) {
      tokens[b] = sampleWithUniform(logits.subarray(b * VOCAB, (b + 1) * VOCAB), options, u[b]);
      history[b] = tokens[b];
    }
  }
}
