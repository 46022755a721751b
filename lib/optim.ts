/**
 * AdamW over the flat parameter buffer (the update runs as one backend op per contiguous run
 * of equal weight decay), global-norm gradient clipping, and the learning-rate schedule:
 * linear warmup, then cosine decay to a minimum. The moments are float32 buffers laid out like
 * the parameters, or (bits 8) blockwise-quantized codes and scales (lib/optim_8bit.ts).
 */
import type { AdamWOptions, Backend, DeviceBuffer } from "./backend.ts";
import { flatToTensors, type NamedTensor, tensorsToFlat } from "./checkpoint.ts";
import { QUANTIZED_STATE_NAMES, QuantizedMoments, type Run } from "./optim_8bit.ts";
import { decayRuns, type ParamTable } from "./params.ts";

/** Bits per stored moment: float32, or 8-bit codes with a float32 scale per 256. */
export type OptimizerBits = 32 | 8;
export const OPTIMIZER_BITS: readonly OptimizerBits[] = [32, 8];

export interface AdamWConfig {
  beta1: number;
  beta2: number;
  eps: number;
  /** Decoupled weight decay, applied only to tensors whose spec has `decay` true. */
  weightDecay: number;
  /** How the moments are stored (default 32). */
  bits?: OptimizerBits;
}

/** β1 0.9, β2 0.95, eps 1e-8, weight decay 0.1, float32 moments. */
export const ADAMW_DEFAULTS: AdamWConfig = {
  beta1: 0.9,
  beta2: 0.95,
  eps: 1e-8,
  weightDecay: 0.1,
  bits: 32,
};

/** The first and second moments, in whichever form: updated run by run, saved as tensors. */
interface Moments {
  /** One AdamW update of run `index` of the parameters. */
  update(index: number, params: DeviceBuffer, grads: DeviceBuffer, options: AdamWOptions): void;
  read(): Promise<Map<string, NamedTensor>>;
  write(tensors: Map<string, NamedTensor>, source: string): void;
  free(): void;
}

/** float32 m and v, flat buffers laid out like the parameters; saved as `optimizer.m.<name>` etc. */
class FloatMoments implements Moments {
  /** (table.size) */
  readonly m: DeviceBuffer;
  /** (table.size) */
  readonly v: DeviceBuffer;

  constructor(readonly backend: Backend, readonly table: ParamTable, readonly runs: readonly Run[]) {
    this.m = backend.alloc(table.size);
    this.v = backend.alloc(table.size);
  }

  update(index: number, params: DeviceBuffer, grads: DeviceBuffer, options: AdamWOptions): void {
    const be = this.backend, run = this.runs[index];
    const view = (flat: DeviceBuffer) => be.view(flat, run.offset, run.length);
    be.adamw(view(params), view(grads), view(this.m), view(this.v), options);
  }

  async read(): Promise<Map<string, NamedTensor>> {
    return new Map([
      ...flatToTensors(this.table, await this.backend.read(this.m), "optimizer.m."),
      ...flatToTensors(this.table, await this.backend.read(this.v), "optimizer.v."),
    ]);
  }

  write(tensors: Map<string, NamedTensor>, source: string): void {
    const what = `${source} (optimizer moments)`;
    this.backend.write(this.m, tensorsToFlat(this.table, tensors, "optimizer.m.", what));
    this.backend.write(this.v, tensorsToFlat(this.table, tensors, "optimizer.v.", what));
  }

  free(): void {
    this.backend.free(this.m);
    this.backend.free(this.v);
  }
}

/** AdamW with its moments on the device, float32 or 8-bit (config.bits). */
export class AdamW {
  readonly bits: OptimizerBits;
  /** Updates done so far (the bias correction uses t + 1 for the next one). */
  t = 0;
  readonly #runs: { offset: number; length: number; decay: boolean }[];
  readonly #moments: Moments;

  constructor(
    readonly backend: Backend,
    readonly table: ParamTable,
    readonly config: AdamWConfig = ADAMW_DEFAULTS,
  ) {
    this.bits = config.bits ?? 32;
    if (!OPTIMIZER_BITS.includes(this.bits)) {
      throw new Error(`AdamW: bits must be one of ${OPTIMIZER_BITS.join(", ")}, got ${this.bits}`);
    }
    this.#runs = decayRuns(table);
    this.#moments = this.bits === 8
      ? new QuantizedMoments(backend, this.#runs)
      : new FloatMoments(backend, table, this.#runs);
  }

  /** params ← AdamW(params, gradScale · grads) with learning rate `lr`. */
  step(params: DeviceBuffer, grads: DeviceBuffer, lr: number, gradScale: number): void {
    this.t += 1;
    this.#runs.forEach((run, index) => {
      this.#moments.update(index, params, grads, {
        lr,
        beta1: this.config.beta1,
        beta2: this.config.beta2,
        eps: this.config.eps,
        weightDecay: run.decay ? this.config.weightDecay : 0,
        step: this.t,
        gradScale,
      });
    });
  }

  /**
   * The moments as checkpoint tensors (names start with `optimizer.`; 32 bits: `optimizer.m.<param>`
   * and `optimizer.v.<param>`, F32; 8 bits: lib/optim_8bit.ts's codes and scales) and the step count.
   */
  async readState(): Promise<{ tensors: Map<string, NamedTensor>; t: number }> {
    return { tensors: await this.#moments.read(), t: this.t };
  }

  /**
   * Restores what `readState` saved (other tensors in `tensors` are ignored). Moments of the
   * other bit width are an Error: converting them is not supported.
   */
  writeState(tensors: Map<string, NamedTensor>, t: number, source = "checkpoint"): void {
    const names = [...tensors.keys()];
    const saved = names.some((name) => name.startsWith("optimizer.m."))
      ? 32
      : tensors.has(QUANTIZED_STATE_NAMES.mCodes)
      ? 8
      : this.bits; // neither: the moments' own check names what is missing
    if (saved !== this.bits) {
      throw new Error(
        `${source} holds ${saved}-bit AdamW moments, but this optimizer keeps ${this.bits}-bit ones ` +
          `(resume with optimizer bits ${saved}; converting moments is not supported)`,
      );
    }
    this.#moments.write(tensors, source);
    this.t = t;
  }

  free(): void {
    this.#moments.free();
  }
}

/** torch's clip_grad_norm_ factor: min(1, clip / (norm + 1e-6)); 1 when clip is 0 (off). */
export function clipScale(norm: number, clip: number): number {
  return clip > 0 ? Math.min(1, clip / (norm + 1e-6)) : 1;
}

/** The global L2 norm of a flat gradient buffer. */
export async function gradNorm(backend: Backend, grads: DeviceBuffer): Promise<number> {
  return Math.sqrt(await backend.sumOfSquares(grads));
}

export interface Schedule {
  lr: number;
  minLr: number;
  warmup: number;
  steps: number;
}

/**
 * Learning rate of 1-based step `step`: lr·step/warmup while step ≤ warmup, then cosine from
 * lr (at step = warmup) down to minLr (at step = steps).
 */
export function learningRate(step: number, s: Schedule): number {
  if (step <= s.warmup) return (s.lr * step) / s.warmup;
  const progress = Math.min(1, (step - s.warmup) / Math.max(1, s.steps - s.warmup));
  return s.minLr + 0.5 * (s.lr - s.minLr) * (1 + Math.cos(Math.PI * progress));
}
