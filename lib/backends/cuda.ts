/**
 * The CUDA backend: a Deno.dlopen binding to the library built from ffi/ (`deno task build:cuda`).
 * Device memory is owned through raw device pointers; views are pointer arithmetic; every op is
 * enqueued on the library's stream and nothing returns to the host except `read` and
 * `sumOfSquares`. A nonzero status from the library becomes an Error carrying its message
 * (the CUDA or cuBLAS error included). Limits of the kernels: d_state ≤ 16, d_conv ≤ 8.
 */
import {
  type AdamWOptions,
  type Backend,
  checkHalfLengths,
  checkHalfOperands,
  checkRmsnormMatmul,
  type ConvDims,
  type ConvStepOperands,
  type DeviceBuffer,
  type FloatArray,
  type HalfFormat,
  type IndexBuffer,
  type Int8MatmulOptions,
  type MatmulOptions,
  type MatmulPrecision,
  type MoeOps,
  type ScanDims,
  type ScanStepDims,
} from "../backend.ts";
import { checkAdamw8bitLengths } from "../quant8.ts";
import { checkMatmulInt8, int8WeightBuffers } from "../quantize.ts";
import type { SamplingOptions } from "../sample.ts";
import { BUILD_HINT, type CudaLibrary, cudaLibraryPath, openCudaLibrary } from "./cuda_ffi.ts";
import { CudaMoeOps } from "./cuda_moe.ts";

/** float32 and int32 elements are both 4 bytes. */
const BYTES = 4;

/** Device memory: `ptr` is the address of element 0; `owned` when it came from alloc. */
class CudaBuffer implements DeviceBuffer, IndexBuffer {
  constructor(readonly ptr: bigint, readonly length: number, readonly owned: boolean) {}
}

const p = (buffer: DeviceBuffer | IndexBuffer): bigint => (buffer as CudaBuffer).ptr;
const pOrNull = (buffer: DeviceBuffer | null): bigint => (buffer ? p(buffer) : 0n);
/** ConvStepOperands as the rmsnorm-fused GEMVs take them (zeros: no conv step). */
const convStepArgs = (conv?: ConvStepOperands): [bigint, bigint, bigint, bigint, number, number] =>
  conv
    ? [p(conv.out), p(conv.state), p(conv.weight), pOrNull(conv.bias), conv.channels, conv.width]
    : [0n, 0n, 0n, 0n, 0, 0];

let library: CudaLibrary | null = null;

/** The library, loaded and initialised once per process; throws an Error that says why not. */
function loadLibrary(): CudaLibrary {
  if (library) return library;
  const path = cudaLibraryPath();
  if (!path) throw new Error(`the cuda backend needs a local libmambabyte.so: ${BUILD_HINT}`);
  let lib: CudaLibrary;
  try {
    lib = openCudaLibrary(path);
  } catch (cause) {
    throw new Error(`cannot load the CUDA library ${path}: ${BUILD_HINT}`, { cause });
  }
  if (lib.mb_init() !== 0) throw new Error(`CUDA is not usable here: ${lastError(lib)}`);
  library = lib;
  return lib;
}

function lastError(lib: CudaLibrary): string {
  const message = lib.mb_last_error();
  return message ? Deno.UnsafePointerView.getCString(message) : "unknown error";
}

/** Ops recorded by `CudaBackend.capture`, replayed with one launch. */
export interface CapturedOps {
  /** Enqueues the recorded ops again, on the same device buffers (their current contents). */
  replay(): void;
  /** Releases the recording. */
  free(): void;
}

/** The library's code of each precision (ffi/mambabyte.h, MB_MATMUL_*). */
const MATMUL_PRECISION_CODES: Record<MatmulPrecision, number> = { fp32: 0, tf32: 1, bf16: 2, f16: 3 };

/** The library's code of each 16-bit format (ffi/mambabyte.h, MB_HALF_*). */
const HALF_FORMAT_CODES: Record<HalfFormat, number> = { bf16: 0, f16: 1 };

export interface CudaBackendOptions {
  /**
   * The cuBLAS matmuls' precision (default "fp32"; see MatmulPrecision). Buffers, activations,
   * weights and optimizer state stay fp32, and decode's few-row products (the GEMV) stay exact.
   */
  matmul?: MatmulPrecision;
  /**
   * A cap in bytes on the device memory the library holds (buffers and workspace; not the
   * CUDA context): an allocation beyond it fails with an Error, as on a smaller card.
   */
  maxMemory?: number;
}

/**
 * A CUDA backend on GPU 0. Throws an Error saying what is missing (the library: run
 * `deno task build:cuda`; a driver or a GPU) — use this when the user asked for cuda by name.
 */
export function openCudaBackend(options: CudaBackendOptions = {}): Promise<CudaBackend> {
  return Promise.resolve(new CudaBackend(loadLibrary(), options));
}

/** A CUDA backend, or null when this machine cannot run one (no library, driver or GPU). */
export async function createCudaBackend(options: CudaBackendOptions = {}): Promise<CudaBackend | null> {
  try {
    return await openCudaBackend(options);
  } catch {
    return null;
  }
}

/** The Backend contract on one CUDA GPU (see lib/backend.ts for the conventions). */
export class CudaBackend implements Backend {
  readonly device = "cuda" as const;
  /** Mixture-of-experts ops (ffi/moe.cu). */
  readonly moe: MoeOps;
  readonly #lib: CudaLibrary;
  readonly #owned = new Set<CudaBuffer>();
  readonly #graphs = new Set<bigint>();
  readonly #gpuName: string;
  #matmulPrecision: MatmulPrecision = "fp32";
  #capturing = false;

  constructor(lib: CudaLibrary, options: CudaBackendOptions = {}) {
    this.#lib = lib;
    this.moe = new CudaMoeOps(lib, p, (status, op) => this.#check(status, op));
    const name = new Uint8Array(256);
    this.#check(lib.mb_device_name(name, name.length), "device name");
    this.#gpuName = new TextDecoder().decode(name.subarray(0, name.indexOf(0)));
    this.setMatmulPrecision(options.matmul ?? "fp32");
    this.setMemoryCap(options.maxMemory ?? 0);
  }

  get description(): string {
    const math = this.#matmulPrecision === "fp32" ? "FP32" : `${this.#matmulPrecision} matmuls`;
    return `cuda: ${this.#gpuName}, ${math}`;
  }

  get matmulPrecision(): MatmulPrecision {
    return this.#matmulPrecision;
  }

  setMatmulPrecision(precision: MatmulPrecision): void {
    if (!Object.hasOwn(MATMUL_PRECISION_CODES, precision)) {
      throw new Error(`cuda: unknown matmul precision "${precision}"; choose fp32, tf32, bf16 or f16`);
    }
    this.#matmulPrecision = precision;
  }

  #check(status: number, op: string): void {
    if (status !== 0) throw new Error(`cuda ${op}: ${lastError(this.#lib)}`);
  }

  /** Throws when called inside `capture`'s recording (ops that copy to or from the host, or wait). */
  #notCapturing(op: string): void {
    if (this.#capturing) {
      throw new Error(
        `cuda ${op}: not allowed while recording a capture (write changing data to a device buffer before replay)`,
      );
    }
  }

  /**
   * Records the device ops that `record` enqueues into a CUDA graph instead of running them;
   * `replay()` runs them again with one launch, so a decode step of ~100 small kernels costs one
   * host call. The recording keeps the buffers it was given: data that changes between replays
   * (the next bytes) goes into a fixed device buffer, written before `replay()`. Inside `record`,
   * write, writeIndices, read, readIndices, sumOfSquares, alloc, free and synchronize throw.
   */
  capture(record: () => void): CapturedOps {
    this.#notCapturing("capture");
    this.#check(this.#lib.mb_graph_begin(), "capture");
    this.#capturing = true;
    try {
      record();
    } catch (error) {
      this.#capturing = false;
      this.#lib.mb_graph_cancel();
      throw error;
    }
    this.#capturing = false;
    const out = new BigUint64Array(1);
    this.#check(this.#lib.mb_graph_end(out), "capture");
    const graph = out[0];
    this.#graphs.add(graph);
    return {
      replay: () => {
        if (!this.#graphs.has(graph)) throw new Error("cuda replay: this capture was freed");
        this.#check(this.#lib.mb_graph_launch(graph), "replay");
      },
      free: () => {
        if (this.#graphs.delete(graph)) this.#check(this.#lib.mb_graph_free(graph), "free capture");
      },
    };
  }

  /** Waits until every op enqueued so far has finished (for timing). */
  synchronize(): void {
    this.#notCapturing("synchronize");
    this.#check(this.#lib.mb_synchronize(), "synchronize");
  }

  /** The device address of a buffer's (or view's) first element, for NCCL. */
  devicePointer(buffer: DeviceBuffer): bigint {
    return p(buffer);
  }

  /** The library's cudaStream_t as an address: NCCL collectives are enqueued on it. */
  streamHandle(): bigint {
    const out = new BigUint64Array(1);
    this.#check(this.#lib.mb_stream_handle(out), "stream handle");
    return out[0];
  }

  /** Caps the device memory the library may hold (see CudaBackendOptions.maxMemory); 0: none. */
  setMemoryCap(bytes: number): void {
    this.#check(this.#lib.mb_set_memory_cap(BigInt(bytes)), "set the memory cap");
  }

  /** Device memory the library holds now and the most it has held, in bytes. */
  memoryStats(): { inUse: number; peak: number } {
    const inUse = new BigUint64Array(1), peak = new BigUint64Array(1);
    this.#check(this.#lib.mb_memory_stats(inUse, peak), "memory stats");
    return { inUse: Number(inUse[0]), peak: Number(peak[0]) };
  }

  /** Free and total device memory in bytes. */
  memoryInfo(): { free: number; total: number } {
    const free = new BigUint64Array(1), total = new BigUint64Array(1);
    this.#check(this.#lib.mb_mem_info(free, total), "memory info");
    return { free: Number(free[0]), total: Number(total[0]) };
  }

  // ---- memory ----
  #allocate(length: number): CudaBuffer {
    this.#notCapturing("alloc");
    if (!Number.isInteger(length) || length < 0) throw new RangeError(`alloc: bad length ${length}`);
    const out = new BigUint64Array(1);
    this.#check(this.#lib.mb_alloc(BigInt(length * BYTES), out), `alloc of ${length} elements`);
    const buffer = new CudaBuffer(out[0], length, true);
    this.#owned.add(buffer);
    return buffer;
  }
  alloc(length: number): DeviceBuffer {
    return this.#allocate(length);
  }
  allocIndices(length: number): IndexBuffer {
    return this.#allocate(length);
  }
  view(buffer: DeviceBuffer, offset: number, length: number): DeviceBuffer {
    if (offset < 0 || offset + length > buffer.length) {
      throw new RangeError(`view [${offset}, ${offset + length}) outside a buffer of ${buffer.length}`);
    }
    return new CudaBuffer(p(buffer) + BigInt(offset * BYTES), length, false);
  }
  viewIndices(buffer: IndexBuffer, offset: number, length: number): IndexBuffer {
    return this.view(buffer, offset, length);
  }
  write(dst: DeviceBuffer, src: ArrayLike<number>): void {
    this.#notCapturing("write");
    const data = src instanceof Float32Array ? src : Float32Array.from(src);
    this.#checkLength("write", dst, data.length);
    this.#check(this.#lib.mb_write(p(dst), data, BigInt(data.byteLength)), "write");
  }
  writeIndices(dst: IndexBuffer, src: ArrayLike<number>): void {
    this.#notCapturing("writeIndices");
    const data = src instanceof Int32Array ? src : Int32Array.from(src);
    this.#checkLength("writeIndices", dst, data.length);
    this.#check(this.#lib.mb_write(p(dst), data, BigInt(data.byteLength)), "writeIndices");
  }
  read(src: DeviceBuffer): Promise<FloatArray> {
    return Promise.resolve(this.#download(new Float32Array(src.length), src, "read"));
  }
  readIndices(src: IndexBuffer): Promise<Int32Array> {
    return Promise.resolve(this.#download(new Int32Array(src.length), src, "readIndices"));
  }
  /** `out` filled with the contents of `src` (as many elements), read by `op`. */
  #download<T extends Float32Array | Int32Array>(out: T, src: DeviceBuffer | IndexBuffer, op: string): T {
    this.#notCapturing(op);
    this.#check(this.#lib.mb_read(out, p(src), BigInt(out.byteLength)), op);
    return out;
  }
  fill(dst: DeviceBuffer, value: number): void {
    this.#check(this.#lib.mb_fill(p(dst), dst.length, value), "fill");
  }
  copy(dst: DeviceBuffer, src: DeviceBuffer): void {
    if (dst.length !== src.length) {
      throw new RangeError(`copy: lengths differ (${dst.length} vs ${src.length})`);
    }
    this.#check(this.#lib.mb_copy(p(dst), p(src), dst.length), "copy");
  }
  free(buffer: DeviceBuffer | IndexBuffer): void {
    this.#notCapturing("free");
    const b = buffer as CudaBuffer;
    if (!b.owned) throw new Error("free: this buffer is a view; free the buffer it was made from");
    if (!this.#owned.delete(b)) {
      throw new Error("free: this buffer was already freed (or is not this backend's)");
    }
    this.#check(this.#lib.mb_free(b.ptr), "free");
  }
  dispose(): void {
    for (const graph of this.#graphs) this.#check(this.#lib.mb_graph_free(graph), "free capture");
    this.#graphs.clear();
    for (const buffer of [...this.#owned]) this.free(buffer);
  }

  #checkLength(op: string, dst: DeviceBuffer | IndexBuffer, length: number): void {
    if (length > dst.length) throw new RangeError(`${op}: ${length} values into a buffer of ${dst.length}`);
  }

  // ---- dense ----
  matmul(
    c: DeviceBuffer,
    a: DeviceBuffer,
    b: DeviceBuffer,
    m: number,
    n: number,
    k: number,
    options: MatmulOptions = {},
  ): void {
    const { transA = false, transB = false, accumulate = false } = options;
    const lda = options.lda ?? (transA ? m : k);
    const ldb = options.ldb ?? (transB ? k : n);
    const ldc = options.ldc ?? n;
    checkHalfOperands("cuda", this.#matmulPrecision, options);
    const status = this.#lib.mb_matmul(
      p(c),
      p(a),
      p(b),
      m,
      n,
      k,
      Number(transA),
      Number(transB),
      Number(accumulate),
      lda,
      ldb,
      ldc,
      MATMUL_PRECISION_CODES[this.#matmulPrecision],
      (options.aHalf ? 1 : 0) | (options.bHalf ? 2 : 0), // MB_HALF_A | MB_HALF_B
    );
    this.#check(status, "matmul");
  }
  packHalf(dst: DeviceBuffer, src: DeviceBuffer, n: number, format: HalfFormat): void {
    checkHalfLengths("cuda packHalf", dst, src, n, format);
    this.#check(this.#lib.mb_pack_half(p(dst), p(src), n, HALF_FORMAT_CODES[format]), "packHalf");
  }
  unpackHalf(dst: DeviceBuffer, src: DeviceBuffer, n: number, format: HalfFormat): void {
    checkHalfLengths("cuda unpackHalf", src, dst, n, format);
    this.#check(this.#lib.mb_unpack_half(p(dst), p(src), n, HALF_FORMAT_CODES[format]), "unpackHalf");
  }
  addBias(out: DeviceBuffer, bias: DeviceBuffer, rows: number, cols: number): void {
    this.#check(this.#lib.mb_add_bias(p(out), p(bias), rows, cols), "addBias");
  }
  addBiasBackward(dbias: DeviceBuffer, dout: DeviceBuffer, rows: number, cols: number): void {
    this.#check(this.#lib.mb_add_bias_backward(p(dbias), p(dout), rows, cols), "addBiasBackward");
  }

  // ---- embedding ----
  embedding(out: DeviceBuffer, table: DeviceBuffer, tokens: IndexBuffer, rows: number, dim: number): void {
    this.#check(this.#lib.mb_embedding(p(out), p(table), p(tokens), rows, dim), "embedding");
  }
  embeddingBackward(
    dtable: DeviceBuffer,
    dout: DeviceBuffer,
    tokens: IndexBuffer,
    rows: number,
    dim: number,
  ): void {
    this.#check(
      this.#lib.mb_embedding_backward(p(dtable), p(dout), p(tokens), rows, dim),
      "embeddingBackward",
    );
  }

  // ---- RMSNorm ----
  rmsnorm(
    out: DeviceBuffer,
    rstd: DeviceBuffer,
    x: DeviceBuffer,
    weight: DeviceBuffer,
    rows: number,
    dim: number,
    eps: number,
  ): void {
    this.#check(this.#lib.mb_rmsnorm(p(out), p(rstd), p(x), p(weight), rows, dim, eps), "rmsnorm");
  }
  rmsnormBackward(
    dx: DeviceBuffer,
    dweight: DeviceBuffer,
    dout: DeviceBuffer,
    x: DeviceBuffer,
    weight: DeviceBuffer,
    rstd: DeviceBuffer,
    rows: number,
    dim: number,
  ): void {
    const status = this.#lib.mb_rmsnorm_backward(
      p(dx),
      p(dweight),
      p(dout),
      p(x),
      p(weight),
      p(rstd),
      rows,
      dim,
    );
    this.#check(status, "rmsnormBackward");
  }

  // ---- causal depthwise conv1d + SiLU ----
  conv1dSilu(
    out: DeviceBuffer,
    x: DeviceBuffer,
    weight: DeviceBuffer,
    bias: DeviceBuffer | null,
    d: ConvDims,
  ): void {
    const status = this.#lib.mb_conv1d_silu(
      p(out),
      p(x),
      p(weight),
      pOrNull(bias),
      d.batch,
      d.length,
      d.channels,
      d.width,
      d.xStride,
    );
    this.#check(status, "conv1dSilu");
  }
  conv1dSiluBackward(
    dx: DeviceBuffer,
    dweight: DeviceBuffer,
    dbias: DeviceBuffer | null,
    dout: DeviceBuffer,
    x: DeviceBuffer,
    weight: DeviceBuffer,
    bias: DeviceBuffer | null,
    d: ConvDims,
  ): void {
    const status = this.#lib.mb_conv1d_silu_backward(
      p(dx),
      p(dweight),
      pOrNull(dbias),
      p(dout),
      p(x),
      p(weight),
      pOrNull(bias),
      d.batch,
      d.length,
      d.channels,
      d.width,
      d.xStride,
    );
    this.#check(status, "conv1dSiluBackward");
  }

  // ---- fused selective scan (one scan serves both values of dims.parallel) ----
  selectiveScan(
    y: DeviceBuffer,
    u: DeviceBuffer,
    delta: DeviceBuffer,
    dtBias: DeviceBuffer,
    aLog: DeviceBuffer,
    b: DeviceBuffer,
    c: DeviceBuffer,
    d: DeviceBuffer,
    z: DeviceBuffer,
    dims: ScanDims,
  ): void {
    const status = this.#lib.mb_selective_scan(
      p(y),
      p(u),
      p(delta),
      p(dtBias),
      p(aLog),
      p(b),
      p(c),
      p(d),
      p(z),
      dims.batch,
      dims.length,
      dims.channels,
      dims.state,
      dims.bcStride,
      dims.zStride,
    );
    this.#check(status, "selectiveScan");
  }
  selectiveScanBackward(
    du: DeviceBuffer,
    ddelta: DeviceBuffer,
    ddtBias: DeviceBuffer,
    daLog: DeviceBuffer,
    db: DeviceBuffer,
    dc: DeviceBuffer,
    dd: DeviceBuffer,
    dz: DeviceBuffer,
    dy: DeviceBuffer,
    u: DeviceBuffer,
    delta: DeviceBuffer,
    dtBias: DeviceBuffer,
    aLog: DeviceBuffer,
    b: DeviceBuffer,
    c: DeviceBuffer,
    d: DeviceBuffer,
    z: DeviceBuffer,
    dims: ScanDims,
  ): void {
    const status = this.#lib.mb_selective_scan_backward(
      ...[du, ddelta, ddtBias, daLog, db, dc, dd, dz, dy, u, delta, dtBias, aLog, b, c, d, z].map(p),
      dims.batch,
      dims.length,
      dims.channels,
      dims.state,
      dims.bcStride,
      dims.zStride,
    );
    this.#check(status, "selectiveScanBackward");
  }

  // ---- loss ----
  crossEntropy(
    losses: DeviceBuffer,
    dlogits: DeviceBuffer | null,
    logits: DeviceBuffer,
    targets: IndexBuffer,
    rows: number,
    vocab: number,
    gradScale: number,
  ): void {
    const status = this.#lib.mb_cross_entropy(
      p(losses),
      pOrNull(dlogits),
      p(logits),
      p(targets),
      rows,
      vocab,
      gradScale,
    );
    this.#check(status, "crossEntropy");
  }

  // ---- optimizer ----
  sumOfSquares(x: DeviceBuffer): Promise<number> {
    this.#notCapturing("sumOfSquares");
    const out = new Float64Array(1);
    this.#check(this.#lib.mb_sum_of_squares(p(x), x.length, out), "sumOfSquares");
    return Promise.resolve(out[0]);
  }
  adamw(param: DeviceBuffer, grad: DeviceBuffer, m: DeviceBuffer, v: DeviceBuffer, o: AdamWOptions): void {
    const n = param.length;
    if (grad.length !== n || m.length !== n || v.length !== n) {
      throw new RangeError(
        `adamw: param, grad, m, v lengths differ (${n}, ${grad.length}, ${m.length}, ${v.length})`,
      );
    }
    const status = this.#lib.mb_adamw(
      p(param),
      p(grad),
      p(m),
      p(v),
      n,
      o.lr,
      o.beta1,
      o.beta2,
      o.eps,
      o.weightDecay,
      o.step,
      o.gradScale,
    );
    this.#check(status, "adamw");
  }
  adamw8bit(
    param: DeviceBuffer,
    grad: DeviceBuffer,
    mCodes: IndexBuffer,
    vCodes: IndexBuffer,
    scales: DeviceBuffer,
    o: AdamWOptions,
  ): void {
    const n = param.length;
    checkAdamw8bitLengths(n, grad.length, mCodes.length, vCodes.length, scales.length);
    const status = this.#lib.mb_adamw_8bit(
      p(param),
      p(grad),
      p(mCodes),
      p(vCodes),
      p(scales),
      n,
      o.lr,
      o.beta1,
      o.beta2,
      o.eps,
      o.weightDecay,
      o.step,
      o.gradScale,
    );
    this.#check(status, "adamw8bit");
  }

  // ---- int8 weights ----
  matmulInt8(
    c: DeviceBuffer,
    a: DeviceBuffer,
    codes: IndexBuffer,
    scales: DeviceBuffer,
    m: number,
    n: number,
    k: number,
    options: Int8MatmulOptions = {},
  ): void {
    const lda = options.lda ?? k;
    checkMatmulInt8(c, a, codes, scales, m, n, k, lda);
    const status = this.#lib.mb_matmul_int8(
      p(c),
      p(a),
      p(codes),
      p(scales),
      m,
      n,
      k,
      lda,
      Number(options.accumulate ?? false),
    );
    this.#check(status, "matmulInt8");
  }

  // ---- single-step decode ----
  rmsnormMatmul(
    c: DeviceBuffer,
    a: DeviceBuffer,
    norm: DeviceBuffer,
    w: DeviceBuffer,
    m: number,
    n: number,
    k: number,
    eps: number,
    conv?: ConvStepOperands,
  ): void {
    checkRmsnormMatmul("rmsnormMatmul", c, a, norm, [["W", w, n * k]], m, n, k, conv);
    const status = this.#lib.mb_rmsnorm_matmul(
      p(c),
      p(a),
      p(norm),
      p(w),
      m,
      n,
      k,
      eps,
      ...convStepArgs(conv),
    );
    this.#check(status, "rmsnormMatmul");
  }
  rmsnormMatmulInt8(
    c: DeviceBuffer,
    a: DeviceBuffer,
    norm: DeviceBuffer,
    codes: IndexBuffer,
    scales: DeviceBuffer,
    m: number,
    n: number,
    k: number,
    eps: number,
    conv?: ConvStepOperands,
  ): void {
    const weights = int8WeightBuffers(codes, scales, n, k);
    checkRmsnormMatmul("rmsnormMatmulInt8", c, a, norm, weights, m, n, k, conv);
    const status = this.#lib.mb_rmsnorm_matmul_int8(
      p(c),
      p(a),
      p(norm),
      p(codes),
      p(scales),
      m,
      n,
      k,
      eps,
      ...convStepArgs(conv),
    );
    this.#check(status, "rmsnormMatmulInt8");
  }
  conv1dSiluStep(
    out: DeviceBuffer,
    state: DeviceBuffer,
    x: DeviceBuffer,
    weight: DeviceBuffer,
    bias: DeviceBuffer | null,
    batch: number,
    channels: number,
    width: number,
    xStride: number,
  ): void {
    const status = this.#lib.mb_conv1d_silu_step(
      p(out),
      p(state),
      p(x),
      p(weight),
      pOrNull(bias),
      batch,
      channels,
      width,
      xStride,
    );
    this.#check(status, "conv1dSiluStep");
  }
  selectiveScanStep(
    y: DeviceBuffer,
    h: DeviceBuffer,
    u: DeviceBuffer,
    deltaLowRank: DeviceBuffer,
    dtProj: DeviceBuffer,
    dtBias: DeviceBuffer,
    aLog: DeviceBuffer,
    b: DeviceBuffer,
    c: DeviceBuffer,
    d: DeviceBuffer,
    z: DeviceBuffer,
    dims: ScanStepDims,
  ): void {
    const status = this.#lib.mb_selective_scan_step(
      ...[y, h, u, deltaLowRank, dtProj, dtBias, aLog, b, c, d, z].map(p),
      dims.batch,
      dims.channels,
      dims.state,
      dims.rank,
      dims.bcStride,
      dims.zStride,
    );
    this.#check(status, "selectiveScanStep");
  }

  // ---- sampling ----
  sampleTokens(
    tokens: IndexBuffer,
    history: DeviceBuffer,
    logits: DeviceBuffer,
    uniforms: DeviceBuffer,
    batch: number,
    options: SamplingOptions,
  ): void {
    const status = this.#lib.mb_sample_tokens(
      ...[tokens, history, logits, uniforms].map(p),
      batch,
      options.topK,
      options.temperature,
      options.topP,
    );
    this.#check(status, "sampleTokens");
  }
}
