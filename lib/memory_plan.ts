/**
 * The memory a training run allocates, by component, before running it. The plan does not
 * model the allocations with formulas of its own: it runs the real model code (construction,
 * gradients, optimizer, one training step) on a backend whose ops do nothing and whose
 * buffers only count their bytes. So the plan follows the code whenever the code changes.
 *
 * The CUDA library also holds one workspace buffer, grown to the largest need of any call: that
 * is the one component computed by formulas, which mirror ffi/scan.cu (the scan backward's
 * scratch) and ffi/matmul.cu (16-bit copies of the matmul operands) and change with them;
 * tests/cuda_build_test.ts checks both against the library's own figures.
 * Not included: cuBLAS's own workspace, library handles and the driver's context.
 */
import {
  type Backend,
  type DeviceBuffer,
  halfFormatOf,
  type IndexBuffer,
  type MatmulOptions,
  type MatmulPrecision,
  type ScanDims,
} from "./backend.ts";
import type { MambaConfig } from "./config.ts";
import { MambaByte } from "./model.ts";
import { AdamW, ADAMW_DEFAULTS, type OptimizerBits } from "./optim.ts";

export interface MemoryPlan {
  /** Bytes of each component, in the order a training run allocates them. */
  components: { name: string; bytes: number }[];
  /** All components: they are alive together during a training step. */
  total: number;
  parameters: number;
}

/** Steps per chunk of the CUDA scan, its states per channel (d_state padded), channels per block: ffi/scan.cu. */
const CUDA_SCAN_CHUNK = 16, CUDA_SCAN_STATES = 16, CUDA_SCAN_CHANNELS_PER_BLOCK = 64;
/** Rows of A up to which a CUDA matmul with transposed B is the fp32 GEMV (ffi/gemv.cuh). */
const CUDA_GEMV_MAX_ROWS = 8;

/**
 * Bytes of the CUDA scan backward's workspace (mb_selective_scan_backward): the state at every
 * chunk start, each sequence's dA_log, ddt_bias and dD, and each channel block's dB, dC per row.
 */
export function cudaScanBackwardWorkspace(
  d: Pick<ScanDims, "batch" | "length" | "channels" | "state">,
): number {
  const chunks = Math.ceil(d.length / CUDA_SCAN_CHUNK),
    blocks = Math.ceil(d.channels / CUDA_SCAN_CHANNELS_PER_BLOCK);
  const starts = d.batch * chunks * d.channels * d.state, perState = d.batch * d.channels * d.state;
  const bcParts = blocks * d.batch * d.length * 2 * CUDA_SCAN_STATES;
  return 4 * (starts + perState + 2 * d.batch * d.channels + bcParts);
}

/**
 * Bytes of the 16-bit copies of op(A) (M, K) and op(B) (K, N) that a CUDA matmul with bf16 or f16
 * inputs makes (ffi/matmul.cu; each padded to 256 bytes; none of an operand stored in 16 bits); 0
 * for the few-row GEMV, which reads fp32.
 */
export function cudaHalfMatmulWorkspace(
  m: number,
  n: number,
  k: number,
  options: MatmulOptions = {},
): number {
  const stored = options.aHalf || options.bHalf;
  if (!stored && m <= CUDA_GEMV_MAX_ROWS && !options.transA && options.transB) return 0;
  const copy = (values: number, half = false) => (half ? 0 : Math.ceil((2 * values) / 256) * 256);
  return copy(m * k, options.aHalf) + copy(k * n, options.bHalf);
}

/** Allocations are counted in bytes; views and ops cost nothing; reads return zeros. */
class CountingBackend {
  readonly device = "cpu";
  readonly description = "memory plan (counts allocations, runs nothing)";
  bytes = 0;
  /** The CUDA library's workspace: the largest need of any call so far. */
  workspace = 0;

  /** The precision the model's layout follows (see activationLayout). */
  constructor(readonly matmulPrecision: MatmulPrecision) {}

  alloc(length: number): DeviceBuffer {
    this.bytes += 4 * length;
    return { length };
  }
  allocIndices(length: number): IndexBuffer {
    this.bytes += 4 * length;
    return { length };
  }
  view(_buffer: DeviceBuffer, _offset: number, length: number): DeviceBuffer {
    return { length };
  }
  viewIndices(_buffer: IndexBuffer, _offset: number, length: number): IndexBuffer {
    return { length };
  }
  read(src: DeviceBuffer): Promise<Float32Array> {
    return Promise.resolve(new Float32Array(src.length));
  }
  sumOfSquares(): Promise<number> {
    return Promise.resolve(0);
  }
  matmul(
    _c: DeviceBuffer,
    _a: DeviceBuffer,
    _b: DeviceBuffer,
    m: number,
    n: number,
    k: number,
    o?: MatmulOptions,
  ) {
    if (halfFormatOf(this.matmulPrecision)) {
      this.workspace = Math.max(this.workspace, cudaHalfMatmulWorkspace(m, n, k, o));
    }
  }
  selectiveScanBackward(...args: Parameters<Backend["selectiveScanBackward"]>): void {
    this.workspace = Math.max(this.workspace, cudaScanBackwardWorkspace(args[17])); // dims, after the 17 buffers
  }
}

/** Every method that is not CountingBackend's own is an op that does nothing. */
function countingBackend(precision: MatmulPrecision): { backend: Backend; counter: CountingBackend } {
  const counter = new CountingBackend(precision);
  const noOps: ProxyHandler<object> = { get: () => () => {} };
  const backend = new Proxy(counter, {
    get(target, property) {
      if (property === "moe") return new Proxy({}, noOps);
      if (property in target) {
        const value = target[property as keyof CountingBackend];
        return typeof value === "function" ? value.bind(target) : value;
      }
      return () => {};
    },
  }) as unknown as Backend;
  return { backend, counter };
}

/**
 * What training `config` on batches of (batch, length) bytes allocates, with AdamW's moments
 * in `optimizerBits` (default 32) and CUDA's matmuls in `precision` (default fp32; with bf16 or
 * f16, unless recomputing, the "half" activation layout).
 */
export async function memoryPlan(
  config: MambaConfig,
  options: {
    batch: number;
    length: number;
    recompute: boolean;
    optimizerBits?: OptimizerBits;
    precision?: MatmulPrecision;
  },
): Promise<MemoryPlan> {
  const { backend, counter } = countingBackend(options.precision ?? "fp32");
  const components: { name: string; bytes: number }[] = [];
  const measure = async (name: string, allocate: () => unknown) => {
    const before = counter.bytes;
    await allocate();
    components.push({ name, bytes: counter.bytes - before });
  };
  let model!: MambaByte;
  await measure("weights", () => model = new MambaByte(config, { backend, recompute: options.recompute }));
  await measure("gradients", () => model.grads);
  const bits = options.optimizerBits ?? 32;
  await measure("AdamW moments", () => new AdamW(backend, model.table, { ...ADAMW_DEFAULTS, bits }));
  const n = options.batch * options.length;
  await measure(
    "activations and scratch",
    () => model.lossAndBackward(new Uint8Array(n), new Uint8Array(n), [options.batch, options.length]),
  );
  components.push({ name: "workspace (cuda)", bytes: counter.workspace });
  return { components, total: counter.bytes + counter.workspace, parameters: model.table.count };
}
