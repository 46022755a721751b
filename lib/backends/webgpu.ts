/**
 * The WebGPU backend: every op of the Backend contract as WGSL compute kernels (kernels/*.wgsl),
 * through Deno's navigator.gpu (wgpu: Vulkan, Metal, D3D12; Mesa's lavapipe on a CPU-only
 * machine) or a browser's. Ops are recorded lazily into one compute pass (webgpu_runtime.ts);
 * nothing is read back except by `read` and `sumOfSquares`.
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
  halfFloats,
  type HalfFormat,
  halfFormatOf,
  type IndexBuffer,
  type Int8MatmulOptions,
  type MatmulOptions,
  type MatmulPrecision,
  type ScanDims,
  type ScanStepDims,
} from "../backend.ts";
import { checkAdamw8bitLengths } from "../quant8.ts";
import { checkMatmulInt8, int8WeightBuffers } from "../quantize.ts";
import type { SamplingOptions } from "../sample.ts";
import { KERNEL_FILES, loadKernelSources } from "./webgpu_kernel_source.ts";
import { WebGpuMoeOps } from "./webgpu_moe.ts";
import type { KernelTime } from "./webgpu_kernel_timer.ts";
import { type Dispatch, GpuRuntime, GpuView } from "./webgpu_runtime.ts";

/** Rows summed by one invocation of a column reduction before the partials are added up. */
const ROWS_PER_BLOCK = 64;
/**
 * CH channels per workgroup and T steps per chunk (inputs staged per chunk) of the selective
 * scan's passes: the forward, and the backward's (states kept per chunk). A channel has 2 lanes in
 * the forward and the chunk starts, 4 in scan_backward; 2·CH ≥ 4T (4·CH ≥ 8T) lanes load the rows
 * of B and C.
 */
const SCAN_PASSES = { forward: { CH: 32, T: 16 }, backward: { CH: 16, T: 8 } } as const;
/** The scan keeps a channel's states in four vec4 registers: two in each of 2 lanes, or one in each of 4. */
const SCAN_MAX_STATE = 16;
/** Channels per workgroup of the decode step (kernels/scan.wgsl's STEP_CHANNELS). */
const SCAN_STEP_CHANNELS = 4;
/**
 * Workgroup memory of scan.wgsl's passes (SCAN_PASSES): the forward's stage δ, u, z,
 * the rows of B and C and each lane's h·C of a chunk (T steps); scan_backward's hold δ, δ·u, dpre,
 * the rows of B and C, the chunk's states and state gradients (rows of 4·(CH + 1) vec4, T + 1 of
 * states, 4 slots of padding, T of gradients) and each of its 4·CH lanes' Σ ∂/∂(δA)·A.
 */
const scanWorkgroupBytes = (pass: keyof typeof SCAN_PASSES): number => {
  const { CH, T } = SCAN_PASSES[pass];
  const rows = 2 * T * 16;
  if (pass === "forward") return 4 * (3 * T * CH + rows + T * 2 * CH);
  const states = 4 * ((2 * T + 1) * 4 * (CH + 1) + 4);
  return 4 * (3 * T * CH + rows + states + T * 4 * CH);
};
/** Split-K of matmul: at most this many splits, each at least this deep, aiming at this many workgroups. */
const MAX_K_SPLITS = 64;
const MIN_K_PER_SPLIT = 256;
const WANTED_WORKGROUPS = 256;
/** The vec4 matmul needs at least this many rows of C to fill its 128-row tiles usefully. */
const MIN_VEC4_ROWS = 16;
/** Products with at most this many rows of C (decoding) take the gemv kernel when aligned. */
const MAX_GEMV_ROWS = 8;
/** matmulInt8 with at most this many rows of C (decoding) takes its gemv kernel. */
const MAX_INT8_GEMV_ROWS = 8;
/** Workgroups of sumOfSquares' first level. */
const SQUARE_GROUPS = 1024;
/** The byte vocabulary: embedding tables are (256, dim). */
const VOCAB = 256;

/** Limits worth more than the defaults: big buffers, many bindings, big workgroup memory. */
const WANTED_LIMITS = [
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxStorageBuffersPerShaderStage",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupsPerDimension",
] as const;

/**
 * A WebGPU backend on the default adapter, or null when this runtime has no `navigator.gpu`
 * or no adapter. Throws if an adapter exists but a kernel fails to compile.
 */
export async function createWebGpuBackend(): Promise<Backend | null> {
  const gpu = (globalThis.navigator as Navigator | undefined)?.gpu;
  if (!gpu) return null;
  quietHeadlessVulkan();
  const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) return null;
  const requiredLimits: Record<string, number> = {};
  for (const name of WANTED_LIMITS) requiredLimits[name] = adapter.limits[name];
  // timestamp-query only serves startKernelTiming; asking for it costs nothing where it exists.
  const requiredFeatures: GPUFeatureName[] = adapter.features.has("timestamp-query")
    ? ["timestamp-query"]
    : [];
  const device = await adapter.requestDevice({ requiredLimits, requiredFeatures });
  const sources = await loadKernelSources();
  const runtime = new GpuRuntime(device, sources);
  // Compile every kernel file once now, so that WGSL errors surface with file, line and column.
  for (const file of KERNEL_FILES) {
    if (file !== "common") await runtime.check(file, DEFAULT_DEFINES[file] ?? {});
  }
  return new WebGpuBackend(runtime, adapter.info.description || adapter.info.vendor || "webgpu");
}

/**
 * On a headless Linux machine XDG_RUNTIME_DIR is often unset, and the Vulkan driver's window
 * system layer then prints an error line for every device it opens, although compute needs no
 * window. Pointing it at the temp directory keeps stderr clean (only when unset and allowed).
 */
function quietHeadlessVulkan(): void {
  try {
    if (Deno.build.os === "linux" && !Deno.env.get("XDG_RUNTIME_DIR")) {
      Deno.env.set("XDG_RUNTIME_DIR", "/tmp");
    }
  } catch {
    // No env permission: the driver's message is harmless.
  }
}

/** kernels/common.wgsl's code of each 16-bit format (HALF_BF16, HALF_F16). */
const WGSL_HALF_CODES: Record<HalfFormat, number> = { bf16: 0, f16: 1 };

/** The operands of an rmsnorm-fused decode matmul: C (M, N) = rmsnorm(A (M, K), norm) · Wᵀ, then the conv step. */
interface NormedProduct {
  c: DeviceBuffer;
  a: DeviceBuffer;
  norm: DeviceBuffer;
  m: number;
  n: number;
  k: number;
  eps: number;
  conv?: ConvStepOperands;
}

/**
 * The input defines of kernels/matmul.wgsl and matmul_vec4.wgsl: INPUTS 0 (f32 as is) or 1 + a
 * WGSL_HALF_CODES code, and which operands are stored in 16 bits.
 */
interface MatmulInputs {
  INPUTS: number;
  A_HALF: number;
  B_HALF: number;
}

/** Defines for the startup compile check of the kernels that need them. */
const DEFAULT_DEFINES: Partial<Record<typeof KERNEL_FILES[number], Record<string, number>>> = {
  matmul: { TM: 4, TN: 4, BK: 16, INPUTS: 0, A_HALF: 0, B_HALF: 0 },
  matmul_vec4: { TRANS_A: 0, TRANS_B: 1, INPUTS: 0, A_HALF: 0, B_HALF: 0 },
  matmul_int8: { ROWS: 1 },
  scan: { NS: 16, ...SCAN_PASSES.backward, STEP_CHANNELS: SCAN_STEP_CHANNELS },
};

/**
 * An index buffer, plus its rows grouped by token value for embeddingBackward: made by
 * writeIndices when what it writes are bytes (not for packed codes, which need no grouping).
 */
class GpuIndexView extends GpuView {
  byToken: GpuView | null = null;
  constructor(root: GPUBuffer, length: number) {
    super(root, 0, length);
  }
}

const gv = (buffer: DeviceBuffer | IndexBuffer): GpuView => {
  if (!(buffer instanceof GpuView)) throw new Error("webgpu backend: a buffer from another backend");
  return buffer;
};

/** Workgroups of 256 invocations for n elements. */
const per256 = (n: number): number => Math.ceil(n / 256);

export class WebGpuBackend implements Backend {
  readonly device = "webgpu" as const;
  /** Mixture-of-experts ops (kernels/moe.wgsl). */
  readonly moe: WebGpuMoeOps;
  readonly #rt: GpuRuntime;
  /**
   * Scratch, grown on demand: slot 0 for partial sums and the scan's chunk states; slot 1 for what
   * must outlive an op that uses slot 0 (the unfused rmsnormMatmul's normalized rows).
   */
  #scratch: [GpuView | null, GpuView | null] = [null, null];
  /** The device's maxComputeWorkgroupStorageSize (read once: the limits getter is not free). */
  readonly #workgroupStorage: number;

  /** How the matmuls round their inputs (see setMatmulPrecision). */
  #matmulPrecision: MatmulPrecision = "fp32";

  constructor(runtime: GpuRuntime, readonly adapterName: string) {
    this.#rt = runtime;
    this.#workgroupStorage = runtime.device.limits.maxComputeWorkgroupStorageSize;
    this.moe = new WebGpuMoeOps((d) => this.#run(d), (length) => this.#work(length), gv);
  }

  get #gpu(): GPUDevice {
    return this.#rt.device;
  }

  get description(): string {
    const inputs = this.#matmulPrecision === "fp32" ? "" : `, ${this.#matmulPrecision} matmul inputs`;
    return `${this.adapterName}${inputs}`;
  }

  get matmulPrecision(): MatmulPrecision {
    return this.#matmulPrecision;
  }

  /**
   * "bf16" or "f16": the matmuls round their inputs so in the shaders (products and sums in f32,
   * as the cpu backend emulates it; no faster without tensor cores), and packHalf's 16-bit
   * storage halves what training keeps of those inputs; decode's few-row products stay exact.
   * No tf32.
   */
  setMatmulPrecision(precision: MatmulPrecision): void {
    if (precision !== "fp32" && !halfFormatOf(precision)) {
      throw new Error(`webgpu: unsupported matmul precision "${precision}"; choose fp32, bf16 or f16`);
    }
    this.#matmulPrecision = precision;
  }

  #buffer(bytes: number): GPUBuffer {
    const size = Math.max(16, Math.ceil(bytes / 16) * 16); // whole vec4: kernels may bind it as array<vec4<f32>>
    if (size > this.#gpu.limits.maxBufferSize) {
      throw new Error(
        `webgpu: ${size} bytes exceed this adapter's maxBufferSize (${this.#gpu.limits.maxBufferSize})`,
      );
    }
    return this.#gpu.createBuffer({
      size,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    });
  }

  /** A scratch view of at least `length` floats (contents undefined; reused by later ops). */
  #work(length: number, slot: 0 | 1 = 0): GpuView {
    const current = this.#scratch[slot];
    if (current && current.length >= length) return current;
    if (current) this.#rt.release(current.root);
    return this.#scratch[slot] = new GpuView(this.#buffer(length * 4), 0, length);
  }

  #run(d: Dispatch): void {
    this.#rt.dispatch(d);
  }

  /** Whether this adapter can time kernels (it has timestamp-query). */
  get canTimeKernels(): boolean {
    return this.#gpu.features.has("timestamp-query");
  }

  /**
   * Times every kernel on the device from now on, each dispatch in a pass of its own (slower: for
   * finding where time goes, as `deno task bench --kernel-times` does). Needs timestamp-query.
   */
  startKernelTiming(): void {
    this.#rt.startTiming();
  }

  /** Each kernel's GPU time (file:entry; matmuls by shape) since startKernelTiming, the longest first; timing stops. */
  stopKernelTiming(): Promise<KernelTime[]> {
    return this.#rt.stopTiming();
  }

  // ---- memory ----
  alloc(length: number): DeviceBuffer {
    return new GpuView(this.#buffer(length * 4), 0, length);
  }

  allocIndices(length: number): IndexBuffer {
    return new GpuIndexView(this.#buffer(length * 4), length);
  }

  view(buffer: DeviceBuffer, offset: number, length: number): DeviceBuffer {
    const v = gv(buffer);
    if (offset < 0 || offset + length > v.length) {
      throw new RangeError(`view [${offset}, ${offset + length}) outside a buffer of ${v.length}`);
    }
    return new GpuView(v.root, v.offset + offset, length);
  }

  viewIndices(buffer: IndexBuffer, offset: number, length: number): IndexBuffer {
    return this.view(buffer, offset, length);
  }

  write(dst: DeviceBuffer, src: ArrayLike<number>): void {
    this.#upload(gv(dst), Float32Array.from(src));
  }

  writeIndices(dst: IndexBuffer, src: ArrayLike<number>): void {
    const view = gv(dst);
    if (!(view instanceof GpuIndexView)) throw new Error("webgpu: writeIndices needs an allocIndices buffer");
    const tokens = Int32Array.from(src);
    this.#upload(view, tokens);
    if (tokens.every((t) => t >= 0 && t < VOCAB)) {
      view.byToken ??= new GpuView(this.#buffer((VOCAB + 1 + view.length) * 4), 0, VOCAB + 1 + view.length);
      this.#upload(view.byToken, groupByToken(tokens));
    } else if (view.byToken) {
      // Not bytes (packed codes, say): no grouping, and embeddingBackward refuses the buffer.
      this.#rt.release(view.byToken.root);
      view.byToken = null;
    }
  }

  #upload(dst: GpuView, data: Float32Array<ArrayBuffer> | Int32Array<ArrayBuffer>): void {
    if (data.length > dst.length) {
      throw new RangeError(`write of ${data.length} values into a buffer of ${dst.length}`);
    }
    this.#rt.flush(); // the recorded commands must see the old contents
    this.#gpu.queue.writeBuffer(dst.root, dst.offset * 4, data);
  }

  async read(src: DeviceBuffer): Promise<FloatArray> {
    return new Float32Array(await this.#download(gv(src)));
  }

  async readIndices(src: IndexBuffer): Promise<Int32Array> {
    return new Int32Array(await this.#download(gv(src)));
  }

  /**
   * The bytes of a view, once the commands recorded so far have run. In Deno (2.9) mapAsync blocks
   * the thread until the work submitted so far is done, then sleeps 10 ms before it resolves,
   * however little it reads: reads awaited together overlap those sleeps.
   */
  async #download(view: GpuView): Promise<ArrayBuffer> {
    const staging = this.#gpu.createBuffer({
      size: Math.max(4, view.length * 4),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    if (view.length) {
      this.#rt.encoder().copyBufferToBuffer(view.root, view.offset * 4, staging, 0, view.length * 4);
    }
    this.#rt.flush();
    try {
      await this.#rt.throwErrors();
      await staging.mapAsync(GPUMapMode.READ);
      return staging.getMappedRange().slice(0, view.length * 4);
    } finally {
      staging.destroy();
    }
  }

  fill(dst: DeviceBuffer, value: number): void {
    const view = gv(dst);
    this.#run({
      file: "copy",
      entry: "fill",
      bindings: [view],
      ints: [view.length],
      floats: [value],
      groups: per256(view.length),
    });
  }

  copy(dst: DeviceBuffer, src: DeviceBuffer): void {
    const d = gv(dst), s = gv(src);
    if (d.length !== s.length) throw new RangeError(`copy: lengths differ (${d.length} vs ${s.length})`);
    this.#run({ file: "copy", entry: "copy", bindings: [d, s], ints: [d.length], groups: per256(d.length) });
  }

  free(buffer: DeviceBuffer | IndexBuffer): void {
    const view = gv(buffer);
    this.#rt.release(view.root);
    if (view instanceof GpuIndexView && view.byToken) this.#rt.release(view.byToken.root);
  }

  dispose(): void {
    this.#rt.dispose();
    for (const scratch of this.#scratch) scratch?.root.destroy();
    this.#scratch = [null, null];
    this.#gpu.destroy();
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
    checkHalfOperands("webgpu", this.#matmulPrecision, options);
    const [cv, av, bv] = [gv(c), gv(a), gv(b)];
    const inputs = this.#matmulInputs(options);
    const aligned = k % 4 === 0 && n % 4 === 0 && [lda, ldb, ldc].every((ld) => ld % 4 === 0) &&
      [cv, av, bv].every((v) => this.#vec4Bindable(v));
    if (aligned && m <= MAX_GEMV_ROWS && !transA && transB && !inputs.A_HALF && !inputs.B_HALF) {
      this.#run({
        file: "matmul_vec4",
        entry: "gemv_vec4",
        defines: DEFAULT_DEFINES.matmul_vec4, // the file's constants (unused by this entry point)
        bindings: [cv, av, bv],
        ints: [m, n, k, lda, ldb, ldc, +accumulate],
        groups: n / 4,
      });
      return;
    }
    const kernel = this.#matmulKernel(aligned, m, n, k, lda, ldb, transA, transB, inputs);
    const grid = [Math.ceil(n / kernel.tileN), Math.ceil(m / kernel.tileM)] as const;
    const shape = `${m}×${n}×${k}${transA ? " Aᵀ" : ""}${transB ? " Bᵀ" : ""}`;
    // Few output tiles over a long k (weight gradients: k = B·L) split k across workgroups.
    const splits = Math.min(
      MAX_K_SPLITS,
      Math.ceil(k / MIN_K_PER_SPLIT),
      Math.ceil(WANTED_WORKGROUPS / (grid[0] * grid[1])),
    );
    const kSplit = Math.ceil(k / Math.max(1, splits) / kernel.depth) * kernel.depth;
    const count = Math.ceil(k / kSplit) || 1;
    if (count === 1) {
      this.#run({
        ...kernel.base,
        bindings: [cv, av, bv],
        ints: kernel.ints(ldc, accumulate, k),
        groups: [...grid, 1],
        timing: { name: `${kernel.base.entry} ${shape}`, flops: 2 * m * n * k },
      });
      return;
    }
    const partials = this.#work(count * m * n); // (splits, M, N)
    this.#run({
      ...kernel.base,
      bindings: [partials, av, bv],
      ints: kernel.ints(n, false, kSplit),
      groups: [...grid, count],
      timing: { name: `${kernel.base.entry} ${shape}, k split ${count} ways`, flops: 2 * m * n * k },
    });
    this.#run({
      file: "matmul",
      entry: "matmul_sum_splits",
      defines: DEFAULT_DEFINES.matmul, // the file's tile constants (unused by this entry point)
      bindings: [cv, undefined, undefined, partials],
      ints: [m, n, count, ldc, +accumulate],
      groups: per256(m * n),
    });
  }

  /** The matmul kernels' input defines at the current precision. */
  #matmulInputs(options: MatmulOptions): MatmulInputs {
    const format = halfFormatOf(this.#matmulPrecision);
    return {
      INPUTS: format ? 1 + WGSL_HALF_CODES[format] : 0,
      A_HALF: +!!options.aHalf,
      B_HALF: +!!options.bHalf,
    };
  }

  packHalf(dst: DeviceBuffer, src: DeviceBuffer, n: number, format: HalfFormat): void {
    checkHalfLengths("webgpu packHalf", dst, src, n, format);
    this.#run({
      file: "half",
      entry: "pack_half",
      bindings: [gv(dst), gv(src)],
      ints: [n, WGSL_HALF_CODES[format]],
      groups: per256(halfFloats(n)),
    });
  }

  unpackHalf(dst: DeviceBuffer, src: DeviceBuffer, n: number, format: HalfFormat): void {
    checkHalfLengths("webgpu unpackHalf", src, dst, n, format);
    this.#run({
      file: "half",
      entry: "unpack_half",
      bindings: [undefined, undefined, gv(dst), gv(src)],
      ints: [n, WGSL_HALF_CODES[format]],
      groups: per256(n),
    });
  }

  /**
   * The matmul kernel for a shape: the vec4 kernel (128×128 tiles) when every operand allows
   * 16-byte loads (`aligned`: K, N, strides and view offsets multiples of 4; M too for transA), else the general one (128×128 tiles for big outputs, 64×64 for small ones).
   */
  #matmulKernel(
    aligned: boolean,
    m: number,
    n: number,
    k: number,
    lda: number,
    ldb: number,
    transA: boolean,
    transB: boolean,
    inputs: MatmulInputs,
  ) {
    const dims = [m, n, k];
    if (aligned && (!transA || m % 4 === 0) && m >= MIN_VEC4_ROWS) {
      return {
        base: {
          file: "matmul_vec4" as const,
          entry: "matmul_vec4",
          defines: { TRANS_A: +transA, TRANS_B: +transB, ...inputs } as Record<string, number>,
        },
        tileM: 128,
        tileN: 128,
        depth: 16,
        ints: (ldOut: number, acc: boolean, kSplit: number) => [...dims, lda, ldb, ldOut, +acc, kSplit],
      };
    }
    const tile = m >= 1024 && n >= 1024 ? { TM: 8, TN: 8, BK: 8 } : { TM: 4, TN: 4, BK: 16 };
    return {
      base: {
        file: "matmul" as const,
        entry: "matmul",
        defines: { ...tile, ...inputs } as Record<string, number>,
      },
      tileM: 16 * tile.TM,
      tileN: 16 * tile.TN,
      depth: tile.BK,
      ints: (ldOut: number, acc: boolean, kSplit: number) => [
        ...dims,
        lda,
        ldb,
        ldOut,
        +transA,
        +transB,
        +acc,
        kSplit,
      ],
    };
  }

  /**
   * Whether a view can be bound as array<vec4<f32>>: 16-byte aligned, and bindable — its buffer
   * whole, or (a model's flat weights beyond maxStorageBufferBindingSize) a window whose start is
   * aligned to minStorageBufferOffsetAlignment, a multiple of 16 bytes, so the offset inside it
   * stays a whole number of vec4s.
   */
  #vec4Bindable(view: GpuView): boolean {
    return view.offset % 4 === 0 && this.#rt.bindable(view);
  }

  addBias(out: DeviceBuffer, bias: DeviceBuffer, rows: number, cols: number): void {
    this.#run({
      file: "bias",
      entry: "add_bias",
      bindings: [gv(out), gv(bias)],
      ints: [rows, cols],
      groups: per256(rows * cols),
    });
  }

  addBiasBackward(dbias: DeviceBuffer, dout: DeviceBuffer, rows: number, cols: number): void {
    const blocks = Math.ceil(rows / ROWS_PER_BLOCK);
    const partials = this.#work(blocks * cols);
    this.#run({
      file: "reduce",
      entry: "column_partials",
      bindings: [partials, gv(dout)],
      ints: [rows, cols, ROWS_PER_BLOCK],
      groups: [per256(cols), blocks],
    });
    this.#sumPartials(gv(dbias), partials, cols, blocks);
  }

  /** dst (cols) += Σ_blocks partials (blocks, cols). */
  #sumPartials(dst: GpuView, partials: GpuView, cols: number, blocks: number): void {
    this.#run({
      file: "reduce",
      entry: "sum_partials",
      bindings: [dst, partials],
      ints: [cols, blocks],
      groups: per256(cols),
    });
  }

  // ---- embedding ----
  embedding(out: DeviceBuffer, table: DeviceBuffer, tokens: IndexBuffer, rows: number, dim: number): void {
    this.#run({
      file: "embedding",
      entry: "embedding",
      bindings: [gv(out), gv(table), gv(tokens)],
      ints: [rows, dim],
      groups: per256(rows * dim),
    });
  }

  embeddingBackward(
    dtable: DeviceBuffer,
    dout: DeviceBuffer,
    tokens: IndexBuffer,
    rows: number,
    dim: number,
  ): void {
    const view = gv(tokens);
    if (!(view instanceof GpuIndexView) || !view.byToken) {
      throw new Error(
        "webgpu: embeddingBackward needs an allocIndices buffer of bytes written by writeIndices",
      );
    }
    if (rows !== view.length) {
      throw new Error(
        `webgpu: embeddingBackward over ${rows} rows needs a token buffer of exactly that length`,
      );
    }
    this.#run({
      file: "embedding",
      entry: "embedding_backward",
      bindings: [undefined, undefined, undefined, gv(dtable), gv(dout), view.byToken],
      ints: [dim],
      groups: per256(VOCAB * dim),
    });
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
    this.#run({
      file: "rmsnorm",
      entry: "rmsnorm",
      bindings: [gv(out), gv(rstd), gv(x), gv(weight)],
      ints: [rows, dim],
      floats: [eps],
      groups: rows,
    });
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
    const blocks = Math.ceil(rows / ROWS_PER_BLOCK);
    const partials = this.#work(blocks * dim);
    this.#run({
      file: "rmsnorm",
      entry: "rmsnorm_backward_dx",
      bindings: [undefined, undefined, gv(x), gv(weight), gv(dx), gv(dout), gv(rstd)],
      ints: [rows, dim],
      groups: rows,
    });
    this.#run({
      file: "rmsnorm",
      entry: "rmsnorm_dweight_partials",
      bindings: [undefined, undefined, gv(x), undefined, undefined, gv(dout), gv(rstd), partials],
      ints: [rows, dim, ROWS_PER_BLOCK],
      groups: [per256(dim), blocks],
    });
    this.#sumPartials(gv(dweight), partials, dim, blocks);
  }

  // ---- causal depthwise conv1d + SiLU ----
  /** ints 0..5 of every conv kernel. */
  #convInts(dims: ConvDims, bias: DeviceBuffer | null): number[] {
    return [dims.batch, dims.length, dims.channels, dims.width, dims.xStride, bias ? 1 : 0];
  }

  conv1dSilu(
    out: DeviceBuffer,
    x: DeviceBuffer,
    weight: DeviceBuffer,
    bias: DeviceBuffer | null,
    dims: ConvDims,
  ): void {
    this.#run({
      file: "conv1d",
      entry: "conv1d_silu",
      // Without a bias the kernel skips binding 4; any buffer can stand in for it.
      bindings: [gv(out), gv(x), gv(weight), gv(bias ?? weight)],
      ints: this.#convInts(dims, bias),
      groups: per256(dims.batch * dims.length * dims.channels),
    });
  }

  conv1dSiluBackward(
    dx: DeviceBuffer,
    dweight: DeviceBuffer,
    dbias: DeviceBuffer | null,
    dout: DeviceBuffer,
    x: DeviceBuffer,
    weight: DeviceBuffer,
    bias: DeviceBuffer | null,
    dims: ConvDims,
  ): void {
    const { batch, length, channels: C, width: K } = dims;
    const rows = batch * length;
    const blocks = Math.ceil(rows / ROWS_PER_BLOCK);
    const partialsLength = blocks * C * (K + 1);
    const work = this.#work(partialsLength + rows * C);
    const partials = new GpuView(work.root, work.offset, partialsLength);
    const g = new GpuView(work.root, work.offset + partialsLength, rows * C); // (B·L, C)
    const ints = this.#convInts(dims, bias);
    const xv = gv(x), wv = gv(weight), bv = gv(bias ?? weight);
    this.#run({
      file: "conv1d",
      entry: "conv1d_silu_grad",
      bindings: [undefined, xv, wv, bv, g, gv(dout)],
      ints,
      groups: per256(rows * C),
    });
    this.#run({
      file: "conv1d",
      entry: "conv1d_dx",
      bindings: [undefined, undefined, wv, undefined, undefined, undefined, gv(dx), g],
      ints,
      groups: per256(rows * C),
    });
    this.#run({
      file: "conv1d",
      entry: "conv1d_weight_partials",
      bindings: [undefined, xv, undefined, undefined, undefined, undefined, undefined, g, partials],
      ints: [...ints, ROWS_PER_BLOCK, blocks],
      groups: [per256(C), blocks],
    });
    this.#sumPartials(gv(dweight), partials, C * K, blocks);
    if (dbias) {
      const biasPartials = new GpuView(work.root, work.offset + blocks * C * K, blocks * C);
      this.#sumPartials(gv(dbias), biasPartials, C, blocks);
    }
  }

  // ---- fused selective scan ----
  /** Defines of the scan kernels (scan.wgsl): N, chunk length T and CH channels per workgroup. */
  #scanDefines(state: number, pass: keyof typeof SCAN_PASSES): Record<string, number> {
    if (state > SCAN_MAX_STATE) {
      throw new Error(`webgpu selective scan: d_state ${state} is above the supported ${SCAN_MAX_STATE}`);
    }
    const bytes = scanWorkgroupBytes(pass);
    if (bytes > this.#workgroupStorage) {
      throw new Error(
        `webgpu selective scan: the ${pass} pass needs ${bytes} bytes of workgroup memory; this adapter has ${this.#workgroupStorage}`,
      );
    }
    return { NS: state, ...SCAN_PASSES[pass], STEP_CHANNELS: SCAN_STEP_CHANNELS };
  }

  /** ints 0..4 of every scan kernel. */
  #scanInts(d: Omit<ScanDims, "parallel">): number[] {
    return [d.batch, d.length, d.channels, d.bcStride, d.zStride];
  }

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
    // The GPU kernels walk L in order for both settings of dims.parallel.
    const defines = this.#scanDefines(dims.state, "forward");
    this.#run({
      file: "scan",
      entry: "scan_forward",
      defines,
      bindings: [
        gv(y),
        gv(u),
        gv(delta),
        gv(dtBias),
        gv(aLog),
        gv(b),
        gv(c),
        gv(d),
        gv(z),
        undefined,
        this.#work(1),
      ],
      ints: this.#scanInts(dims),
      groups: [Math.ceil(dims.channels / defines.CH), dims.batch],
    });
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
    const { batch: B, length: L, channels: ED, state: N } = dims;
    const defines = this.#scanDefines(N, "backward");
    const chunks = Math.ceil(L / defines.T);
    const blocks = Math.ceil(ED / defines.CH);
    // Regions of the scratch: hs (B, Q, ED, 16), bc partials (B·L, blocks, 2N), param partials (B, N + 2, ED).
    const hs = 0;
    const bc = hs + B * chunks * ED * SCAN_MAX_STATE;
    const pp = bc + B * L * blocks * 2 * N;
    const work = this.#work(pp + B * (N + 2) * ED);
    const ints = [...this.#scanInts(dims), chunks, hs, bc, pp];
    const inputs = [gv(u), gv(delta), gv(dtBias), gv(aLog), gv(b), gv(c), gv(d), gv(z)];
    const base = { file: "scan" as const, defines, ints };
    const grid: [number, number] = [blocks, B];
    // scan_chunk_starts shares scan_forward's code, whose layout has y: du sits there, unwritten.
    this.#run({
      ...base,
      entry: "scan_chunk_starts",
      bindings: [gv(du), ...inputs, undefined, work],
      groups: grid,
    });
    this.#run({
      ...base,
      entry: "scan_backward",
      bindings: [undefined, ...inputs, undefined, work, gv(dy), gv(du), gv(ddelta), gv(dz)],
      groups: grid,
    });
    const none = new Array(10).fill(undefined);
    this.#run({
      ...base,
      entry: "scan_reduce_bc",
      bindings: [...none, work, undefined, gv(db), gv(dc)],
      groups: per256(B * L * 2 * N),
    });
    this.#run({
      ...base,
      entry: "scan_reduce_params",
      bindings: [...none, work, undefined, gv(daLog), gv(dd), gv(ddtBias)],
      groups: Math.ceil(ED / 64),
    });
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
    this.#run({
      file: "cross_entropy",
      entry: "cross_entropy",
      // Without dlogits the kernel writes nothing through binding 2; losses stands in for it.
      bindings: [gv(losses), gv(dlogits ?? losses), gv(logits), gv(targets)],
      ints: [rows, vocab, dlogits ? 1 : 0],
      floats: [gradScale],
      groups: rows,
    });
  }

  // ---- optimizer ----
  async sumOfSquares(x: DeviceBuffer): Promise<number> {
    const view = gv(x);
    const groups = Math.min(SQUARE_GROUPS, Math.max(1, per256(view.length)));
    const work = this.#work(groups + 1);
    const partials = new GpuView(work.root, work.offset, groups);
    const total = new GpuView(work.root, work.offset + groups, 1);
    this.#run({
      file: "reduce",
      entry: "block_sums",
      bindings: [partials, view],
      ints: [view.length, 1],
      groups: [groups, 1],
    });
    this.#run({
      file: "reduce",
      entry: "block_sums",
      bindings: [total, partials],
      ints: [groups, 0],
      groups: [1, 1],
    });
    return (await this.read(total))[0];
  }

  adamw(param: DeviceBuffer, grad: DeviceBuffer, m: DeviceBuffer, v: DeviceBuffer, o: AdamWOptions): void {
    const p = gv(param);
    for (const other of [grad, m, v]) {
      if (other.length !== p.length) {
        throw new RangeError("adamw: param, grad, m and v must have equal lengths");
      }
    }
    const c1 = 1 - o.beta1 ** o.step, c2 = 1 - o.beta2 ** o.step;
    this.#run({
      file: "adamw",
      entry: "adamw",
      bindings: [p, gv(grad), gv(m), gv(v)],
      ints: [p.length],
      floats: [o.lr, o.beta1, o.beta2, o.eps, 1 - o.lr * o.weightDecay, c1, c2, o.gradScale],
      groups: per256(p.length),
    });
  }

  adamw8bit(
    param: DeviceBuffer,
    grad: DeviceBuffer,
    mCodes: IndexBuffer,
    vCodes: IndexBuffer,
    scales: DeviceBuffer,
    o: AdamWOptions,
  ): void {
    const p = gv(param);
    checkAdamw8bitLengths(p.length, grad.length, mCodes.length, vCodes.length, scales.length);
    const c1 = 1 - o.beta1 ** o.step, c2 = 1 - o.beta2 ** o.step;
    this.#run({
      file: "adamw",
      entry: "adamw_8bit",
      bindings: [p, gv(grad), undefined, undefined, gv(mCodes), gv(vCodes), gv(scales)],
      ints: [p.length],
      floats: [o.lr, o.beta1, o.beta2, o.eps, 1 - o.lr * o.weightDecay, c1, c2, o.gradScale],
      groups: per256(p.length), // one workgroup per quantization block
    });
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
    if (m === 0) return;
    const gemv = m <= MAX_INT8_GEMV_ROWS;
    const vec4 = k % 4 === 0 && lda % 4 === 0 && this.#vec4Bindable(gv(a));
    this.#run({
      file: "matmul_int8",
      entry: gemv ? (vec4 ? "gemv_int8_vec4" : "gemv_int8") : "matmul_int8",
      // gemv: M rows as a constant (its sums stay in registers); the tiled kernel ignores ROWS
      defines: gemv ? { ROWS: m } : DEFAULT_DEFINES.matmul_int8,
      bindings: [gv(c), gv(a), gv(codes), gv(scales)],
      ints: [m, n, k, lda, +(options.accumulate ?? false)],
      groups: gemv ? Math.ceil(n / 4) : [Math.ceil(n / 64), Math.ceil(m / 64)],
    });
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
    const unfused = (xn: DeviceBuffer) => this.matmul(c, xn, w, m, n, k, { transB: true });
    this.#normedMatmul("rmsnorm_gemv", { c, a, norm, m, n, k, eps, conv }, [gv(w)], [gv(w)], unfused);
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
    const unfused = (xn: DeviceBuffer) => this.matmulInt8(c, xn, codes, scales, m, n, k);
    this.#normedMatmul(
      "rmsnorm_gemv_int8",
      { c, a, norm, m, n, k, eps, conv },
      [gv(codes), gv(scales)],
      [],
      unfused,
    );
  }

  /**
   * One dispatch of kernels/rmsnorm_matmul.wgsl (`entry`, or its _conv version), the weight's
   * views bound after C, A and norm; `unfused(xn)` (the plain matmul of normalized rows) with
   * rmsnorm before it and the conv step after where the kernel cannot take the operands: K % 4
   * ≠ 0, or A, norm or `vec4Weights` not readable a vec4 at a time.
   */
  #normedMatmul(
    entry: string,
    p: NormedProduct,
    weights: GpuView[],
    vec4Weights: GpuView[],
    unfused: (xn: DeviceBuffer) => void,
  ): void {
    const { c, a, norm, m, n, k, eps, conv } = p;
    if (k % 4 !== 0 || ![gv(a), gv(norm), ...vec4Weights].every((v) => this.#vec4Bindable(v))) {
      const work = this.#work(m * k + m, 1);
      const xn = this.view(work, 0, m * k), rstd = this.view(work, m * k, m);
      this.rmsnorm(xn, rstd, a, norm, m, k, eps);
      unfused(xn);
      if (conv) {
        this.conv1dSiluStep(conv.out, conv.state, c, conv.weight, conv.bias, m, conv.channels, conv.width, n);
      }
      return;
    }
    const operands = [gv(c), gv(a), gv(norm), ...weights];
    const convBindings = conv
      ? [gv(conv.out), gv(conv.state), gv(conv.weight), gv(conv.bias ?? conv.weight)]
      : [];
    this.#run({
      file: "rmsnorm_matmul",
      entry: conv ? `${entry}_conv` : entry,
      bindings: [...operands, ...Array(5 - operands.length).fill(undefined), ...convBindings],
      ints: [m, n, k, conv?.channels ?? 0, conv?.width ?? 0, conv?.bias ? 1 : 0],
      floats: [eps],
      groups: Math.ceil(n / 4),
    });
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
    const w = gv(weight);
    this.#run({
      file: "conv1d",
      entry: "conv1d_silu_step",
      bindings: [
        gv(out),
        gv(x),
        w,
        gv(bias ?? weight),
        undefined,
        undefined,
        undefined,
        undefined,
        undefined,
        gv(state),
      ],
      ints: [batch, channels, width, xStride, bias ? 1 : 0],
      groups: per256(batch * channels),
    });
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
    this.#run({
      file: "scan",
      entry: "scan_step",
      defines: this.#scanDefines(dims.state, "forward"),
      // bindings 1..10 as scan_forward's (δr where δ was, h at 10), dt_proj at 12
      bindings: [...[y, u, deltaLowRank, dtBias, aLog, b, c, d, z, h].map(gv), undefined, gv(dtProj)],
      ints: [...this.#scanInts({ ...dims, length: 1 }), dims.rank],
      groups: [Math.ceil(dims.channels / SCAN_STEP_CHANNELS), dims.batch],
    });
  }

  // ---- sampling ----
  /** Tokens written here feed `embedding` (decode); embeddingBackward's grouping is not updated. */
  sampleTokens(
    tokens: IndexBuffer,
    history: DeviceBuffer,
    logits: DeviceBuffer,
    uniforms: DeviceBuffer,
    batch: number,
    options: SamplingOptions,
  ): void {
    const kept = options.topK > 0 ? Math.min(options.topK, VOCAB) : VOCAB;
    this.#run({
      file: "sample",
      entry: "sample_tokens",
      bindings: [gv(tokens), gv(history), gv(logits), gv(uniforms)],
      ints: [batch, kept],
      floats: [options.temperature, options.topP],
      groups: batch,
    });
  }
}

/**
 * Rows grouped by token value (a counting sort; every token a byte): 257 starts, then the row indices of token 0,
 * of token 1, … — what embedding_backward walks instead of using float atomics.
 */
function groupByToken(tokens: Int32Array): Int32Array<ArrayBuffer> {
  const out = new Int32Array(VOCAB + 1 + tokens.length);
  for (const t of tokens) out[t + 1]++;
  for (let v = 0; v < VOCAB; v++) out[v + 1] += out[v];
  const next = out.slice(0, VOCAB);
  for (let r = 0; r < tokens.length; r++) out[VOCAB + 1 + next[tokens[r]]++] = r;
  return out;
}
