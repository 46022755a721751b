/**
 * The CPU reference backend: plain TypeScript over Float32Array (or Float64Array, for
 * gradient checks against finite differences). Every other backend is tested against it.
 * Written for clarity first; hot loops keep their inner dimension contiguous and allocate
 * nothing per element. The heavy kernels (matmul, the selective scan and its backward) are
 * plain functions in cpu_kernels.ts that large ops hand to worker threads (cpu_threads.ts) on
 * SharedArrayBuffer memory, partitioned so that the bits do not depend on the thread count.
 */
import {
  type AdamWOptions,
  type Backend,
  checkHalfLengths,
  checkHalfOperands,
  type ConvDims,
  type DeviceBuffer,
  type FloatArray,
  type HalfFormat,
  halfFormatOf,
  type IndexBuffer,
  type Int8MatmulOptions,
  type MatmulOptions,
  type MatmulPrecision,
  type MoeOps,
  type ScanDims,
  type ScanStepDims,
} from "../backend.ts";
import { halfBitsOf, halfValue, halfWords, roundForMatmul } from "../half.ts";
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
import {
  type KernelArgs,
  type KernelName,
  KERNELS,
  scanBackwardReduce,
  scanChunks,
  sigmoid,
  softplus,
} from "./cpu_kernels.ts";
import { CpuMoeOps } from "./cpu_moe.ts";
import { CpuThreadPool } from "./cpu_threads.ts";

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

export interface CpuBackendOptions {
  /** "f64" runs every op in float64 (for finite-difference gradient checks). */
  precision?: "f32" | "f64";
  /**
   * Threads that run the large ops (matmul, the selective scan), the calling thread included;
   * 1 runs everything on the calling thread. Default: $MAMBABYTE_CPU_THREADS when set (and env
   * access is allowed), else min(navigator.hardwareConcurrency, 8). The results are the same
   * bits whatever the count. Where SharedArrayBuffer or workers are unavailable: 1.
   */
  threads?: number;
}

/**
 * Below this much work (multiply-adds) an op runs inline: a job's round trip to the workers
 * costs 0.1–0.2 ms, and on 2 cores a matmul of 2^18 multiply-adds (~0.35 ms inline) gained
 * nothing on the threads, one of 2^20 (~1.4 ms) ran 1.5× faster.
 */
const MIN_PARALLEL_WORK = 1 << 19;
/** Work of one (b, e, t, n) of the scan in multiply-adds (exp, softplus, …), forward and backward. */
const SCAN_WORK = 10, SCAN_BACKWARD_WORK = 30;

/** min(cores, 8), or $MAMBABYTE_CPU_THREADS. */
function defaultThreads(): number {
  let fromEnv: string | undefined;
  try {
    const query = { name: "env", variable: "MAMBABYTE_CPU_THREADS" } as const;
    if (Deno.permissions.querySync(query).state === "granted") fromEnv = Deno.env.get(query.variable);
  } catch {
    fromEnv = undefined; // not Deno, or no env access: the default
  }
  if (fromEnv) {
    const threads = Number(fromEnv);
    if (!Number.isInteger(threads) || threads < 1) {
      throw new Error(`MAMBABYTE_CPU_THREADS must be a positive integer, not "${fromEnv}"`);
    }
    return threads;
  }
  return Math.max(1, Math.min(globalThis.navigator?.hardwareConcurrency ?? 1, 8));
}

/** The array types the backend allocates. */
type ArrayType = Float32ArrayConstructor | Float64ArrayConstructor | Int32ArrayConstructor;

/** Shared memory where worker threads can be started (else the threads fall back to 1). */
const canShare = typeof SharedArrayBuffer === "function" && typeof Worker === "function";

const MATMUL_PRECISIONS: readonly MatmulPrecision[] = ["fp32", "tf32", "bf16", "f16"];

export class CpuBackend implements Backend {
  readonly device = "cpu" as const;
  readonly moe: MoeOps = new CpuMoeOps(f, ix);
  /** Threads of the large ops (1: none started). */
  readonly threads: number;
  /** Ops handed to the worker threads so far (tests check that the threads were used). */
  threadedOps = 0;
  readonly #Float: Float32ArrayConstructor | Float64ArrayConstructor;
  /** The workers (shared with every CpuBackend of as many threads): taken by the first op large enough to use them; null if they cannot be. */
  #pool: CpuThreadPool | null | undefined = undefined;
  /** Shared scratch of the ops that hand work to the threads, grown on demand. */
  readonly #scratch = new Map<string, FloatArray>();
  /** The decode step's A = −exp(A_log) per A_log array, with the values it was made from (#decayRates). */
  readonly #rates = new WeakMap<FloatArray, { from: Float64Array; a: Float64Array }>();
  readonly #arithmetic: string;
  #matmulPrecision: MatmulPrecision = "fp32";
  /** Gives back the pool of a backend collected without dispose() (workers never keep a program alive). */
  static readonly #orphans = new FinalizationRegistry((pool: CpuThreadPool) => pool.release());

  constructor(options: CpuBackendOptions = {}) {
    const precision = options.precision ?? "f32";
    const threads = options.threads ?? defaultThreads();
    if (!Number.isInteger(threads) || threads < 1) {
      throw new Error(`threads must be a positive integer, not ${threads}`);
    }
    this.#Float = precision === "f64" ? Float64Array : Float32Array;
    this.threads = canShare ? threads : 1;
    this.#arithmetic = `${precision}, ${this.threads} thread${this.threads > 1 ? "s" : ""}`;
  }

  get description(): string {
    const matmuls = this.#matmulPrecision === "fp32" ? "" : `, ${this.#matmulPrecision} matmul inputs`;
    return `cpu (TypeScript, ${this.#arithmetic}${matmuls})`;
  }

  get matmulPrecision(): MatmulPrecision {
    return this.#matmulPrecision;
  }

  /** Emulates tensor-core matmuls: their inputs rounded as lib/half.ts rounds, sums as in fp32. */
  setMatmulPrecision(precision: MatmulPrecision): void {
    if (!MATMUL_PRECISIONS.includes(precision)) {
      throw new Error(`cpu: unknown matmul precision "${precision}"; choose ${MATMUL_PRECISIONS.join(", ")}`);
    }
    this.#matmulPrecision = precision;
  }

  // ---- memory ----
  alloc(length: number): DeviceBuffer {
    return new CpuBuffer(this.#array(this.#Float, length) as FloatArray);
  }
  allocIndices(length: number): IndexBuffer {
    return new CpuIndexBuffer(this.#array(Int32Array, length) as Int32Array);
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
  dispose(): void {
    if (this.#pool) {
      CpuBackend.#orphans.unregister(this);
      this.#pool.release();
    }
    this.#pool = undefined;
  }

  // ---- threads ----
  /** A zero-filled array, on shared memory when worker threads may read it. */
  #array(Type: ArrayType, length: number): FloatArray | Int32Array {
    if (this.threads === 1) return new Type(length);
    return new Type(new SharedArrayBuffer(Type.BYTES_PER_ELEMENT * length) as unknown as ArrayBuffer);
  }
  /** Shared scratch `name` of at least `length` elements (contents not kept between ops). */
  #scratchOf(name: string, Type: ArrayType, length: number): FloatArray {
    const key = `${name}:${Type.name}`;
    let s = this.#scratch.get(key);
    if (!s || s.length < length) this.#scratch.set(key, s = this.#array(Type, length) as FloatArray);
    return s.subarray(0, length);
  }

  /**
   * Runs items [0, items) of a kernel: on the worker threads when the op is worth `work`
   * multiply-adds or more and its arrays are all shared, else inline. Same bits either way.
   */
  #run<K extends KernelName>(kernel: K, args: KernelArgs<K>, items: number, work: number): void {
    if (this.threads > 1 && items > 1 && work >= MIN_PARALLEL_WORK && allShared(args)) {
      if (this.#pool === undefined) {
        this.#pool = CpuThreadPool.acquire(this.threads);
        if (this.#pool) CpuBackend.#orphans.register(this, this.#pool, this);
      }
      if (this.#pool) {
        this.threadedOps++;
        return this.#pool.run(kernel, args, items);
      }
    }
    (KERNELS[kernel] as (a: KernelArgs<K>, start: number, end: number) => void)(args, 0, items);
  }

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
    checkHalfOperands("cpu", this.#matmulPrecision, options);
    const [aRows, aCols] = transA ? [k, m] : [m, k], [bRows, bCols] = transB ? [n, k] : [k, n];
    const a = this.#matmulInput("a", aBuf, aRows, aCols, lda, options.aHalf);
    const b = this.#matmulInput("b", bBuf, bRows, bCols, ldb, options.bHalf);
    const c = f(cBuf);
    const args = { c, a, b, m, n, k, transA, accumulate, lda, ldb, ldc };
    if (transB && m < 16) {
      // Few rows of C (decode): dot products, the threads splitting the columns
      return this.#run("matmulColumns", args, n, m * n * k);
    }
    if (transB) {
      // Many rows of C: transposing B once (n·k) lets every row use the streaming loop.
      const bt = this.#scratchOf("bt", this.#Float, k * n);
      for (let j = 0; j < n; j++) {
        for (let p = 0; p < k; p++) bt[p * n + j] = b[j * ldb + p];
      }
      Object.assign(args, { b: bt, ldb: n });
    }
    this.#run("matmulRows", args, m, m * n * k);
  }

  /**
   * A matmul operand stored (rows, cols), rows `ld` apart, as the kernels read it: the buffer
   * itself in fp32; else a copy rounded to the matmul precision, or unpacked when stored in its
   * 16-bit format.
   */
  #matmulInput(name: string, buffer: DeviceBuffer, rows: number, cols: number, ld: number, stored16 = false) {
    if (this.#matmulPrecision === "fp32") return f(buffer);
    const extent = rows > 0 && cols > 0 ? (rows - 1) * ld + cols : 0;
    const copy = this.#scratchOf(`matmul ${name}`, this.#Float, extent);
    const format = halfFormatOf(this.#matmulPrecision);
    if (stored16 && format) {
      const words = halfWords(f(buffer), extent);
      for (let i = 0; i < extent; i++) copy[i] = halfValue(words[i], format);
    } else {
      const data = f(buffer), precision = this.#matmulPrecision;
      for (let i = 0; i < extent; i++) copy[i] = roundForMatmul(data[i], precision);
    }
    return copy;
  }

  packHalf(dstBuf: DeviceBuffer, srcBuf: DeviceBuffer, n: number, format: HalfFormat): void {
    checkHalfLengths("cpu packHalf", dstBuf, srcBuf, n, format);
    const words = halfWords(f(dstBuf), n), src = f(srcBuf);
    for (let i = 0; i < n; i++) words[i] = halfBitsOf(src[i], format);
  }

  unpackHalf(dstBuf: DeviceBuffer, srcBuf: DeviceBuffer, n: number, format: HalfFormat): void {
    checkHalfLengths("cpu unpackHalf", srcBuf, dstBuf, n, format);
    const words = halfWords(f(srcBuf), n), dst = f(dstBuf);
    for (let i = 0; i < n; i++) dst[i] = halfValue(words[i], format);
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
  // The kernels live in cpu_kernels.ts: forward by channel (b, e), backward by (b, chunk of
  // channels) with its sums over channels and over the batch added in a fixed order.
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
    const args = {
      y: f(yBuf),
      ...this.#scanArgs(uBuf, deltaBuf, dtBiasBuf, aLogBuf, bBuf, cBuf, dBuf, zBuf, dims),
    };
    const { batch, channels: ED, length: L, state: N } = dims;
    this.#run("scanForward", args, batch * ED, SCAN_WORK * batch * ED * L * N);
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
    const { batch, length: L, channels: ED, state: N } = dims;
    const chunks = scanChunks(ED);
    const args = {
      du: f(duBuf),
      ddelta: f(ddeltaBuf),
      dz: f(dzBuf),
      dy: f(dyBuf),
      ...this.#scanArgs(uBuf, deltaBuf, dtBiasBuf, aLogBuf, bBuf, cBuf, dBuf, zBuf, dims),
      partB: this.#partials("partB", chunks * batch * L * N), // (chunks, B·L, N)
      partC: this.#partials("partC", chunks * batch * L * N),
      termD: this.#partials("termD", batch * ED), // (B, ED)
      termBias: this.#partials("termBias", batch * ED),
      termA: this.#partials("termA", batch * ED * N), // (B, ED, N)
    };
    this.#run("scanBackward", args, batch * chunks, SCAN_BACKWARD_WORK * batch * ED * L * N);
    scanBackwardReduce({
      ...args,
      dB: f(dbBuf),
      dC: f(dcBuf),
      daLog: f(daLogBuf),
      dD: f(ddBuf),
      ddtBias: f(ddtBiasBuf),
    });
  }

  /** Float64 shared scratch for partial sums. */
  #partials(name: string, length: number): Float64Array {
    return this.#scratchOf(name, Float64Array, length) as Float64Array;
  }

  /** The scan's inputs, as the kernels take them. */
  #scanArgs(
    uBuf: DeviceBuffer,
    deltaBuf: DeviceBuffer,
    dtBiasBuf: DeviceBuffer,
    aLogBuf: DeviceBuffer,
    bBuf: DeviceBuffer,
    cBuf: DeviceBuffer,
    dBuf: DeviceBuffer,
    zBuf: DeviceBuffer,
    dims: ScanDims,
  ) {
    const { batch, length: L, channels: ED, state: N, bcStride, zStride, parallel } = dims;
    return {
      u: f(uBuf),
      delta: f(deltaBuf),
      dtBias: f(dtBiasBuf),
      aLog: f(aLogBuf),
      B: f(bBuf),
      C: f(cBuf),
      D: f(dBuf),
      z: f(zBuf),
      batch,
      L,
      ED,
      N,
      bcStride,
      zStride,
      parallel,
    };
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
    deltaLowRankBuf: DeviceBuffer,
    dtProjBuf: DeviceBuffer,
    dtBiasBuf: DeviceBuffer,
    aLogBuf: DeviceBuffer,
    bBuf: DeviceBuffer,
    cBuf: DeviceBuffer,
    dBuf: DeviceBuffer,
    zBuf: DeviceBuffer,
    dims: ScanStepDims,
  ): void {
    const { batch, channels: ED, state: N, rank: R, bcStride, zStride } = dims;
    const y = f(yBuf), h = f(hBuf), u = f(uBuf), dtIn = f(deltaLowRankBuf), dtProj = f(dtProjBuf);
    const dtBias = f(dtBiasBuf), a = this.#decayRates(f(aLogBuf)), B = f(bBuf), C = f(cBuf), D = f(dBuf);
    const z = f(zBuf);
    for (let b = 0; b < batch; b++) {
      for (let e = 0; e < ED; e++) {
        let delta = 0;
        for (let r = 0; r < R; r++) delta += dtIn[b * bcStride + r] * dtProj[e * R + r];
        const dt = softplus(delta + dtBias[e]), ue = u[b * ED + e];
        let s = 0;
        for (let n = 0; n < N; n++) {
          const hi = (b * ED + e) * N + n;
          h[hi] = Math.exp(dt * a[e * N + n]) * h[hi] + dt * B[b * bcStride + n] * ue;
          s += h[hi] * C[b * bcStride + n];
        }
        const zv = z[b * zStride + e];
        y[b * ED + e] = (s + D[e] * ue) * zv * sigmoid(zv);
      }
    }
  }

  /**
   * A = −exp(A_log) for the decode step. Decode calls the step once per layer per byte with the
   * same A_log, so the values are kept with the A_log they came from: a call compares the two
   * and takes exponentials only where A_log changed (training, loading), instead of ED·N of them.
   */
  #decayRates(aLog: FloatArray): Float64Array {
    let kept = this.#rates.get(aLog);
    if (!kept) {
      kept = { from: new Float64Array(aLog.length).fill(NaN), a: new Float64Array(aLog.length) };
      this.#rates.set(aLog, kept);
    }
    const { from, a } = kept;
    for (let i = 0; i < aLog.length; i++) {
      if (from[i] !== aLog[i]) {
        from[i] = aLog[i];
        a[i] = -Math.exp(aLog[i]);
      }
    }
    return a;
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

/** Every typed array of a kernel's arguments is on shared memory (else workers would see copies). */
function allShared(args: object): boolean {
  for (const value of Object.values(args)) {
    if (ArrayBuffer.isView(value) && !(value.buffer instanceof SharedArrayBuffer)) return false;
  }
  return true;
}
