/**
 * AdamW over the flat parameter buffer (the update runs as one backend op per contiguous run
 * of equal weight decay), global-norm gradient clipping, and the learning-rate schedule:
 * linear warmup, then cosine decay to a minimum.
 */
import type { Backend, DeviceBuffer, FloatArray } from "./backend.ts";
import { decayRuns, type ParamTable } from "./params.ts";

export interface AdamWConfig {
  beta1: number;
  beta2: number;
  eps: number;
  /** Decoupled weight decay, applied only to tensors whose spec has `decay` true. */
  weightDecay: number;
}

/** β1 0.9, β2 0.95, eps 1e-8, weight decay 0.1. */
export const ADAMW_DEFAULTS: AdamWConfig = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };

/** AdamW with its first and second moments as flat buffers laid out like the parameters. */
export class AdamW {
  /** First moment, (table.size). */
  readonly m: DeviceBuffer;
  /** Second moment, (table.size). */
  readonly v: DeviceBuffer;
  /** Updates done so far (the bias correction uses t + 1 for the next one). */
  t = 0;
  readonly #runs: { offset: number; length: number; decay: boolean }[];

  constructor(
    readonly backend: Backend,
    readonly table: ParamTable,
    readonly config: AdamWConfig = ADAMW_DEFAULTS,
  ) {
    this.m = backend.alloc(table.size);
    this.v = backend.alloc(table.size);
    this.#runs = decayRuns(table);
  }

  /** params ← AdamW(params, gradScale · grads) with learning rate `lr`. */
  step(params: DeviceBuffer, grads: DeviceBuffer, lr: number, gradScale: number): void {
    const be = this.backend;
    this.t += 1;
    for (const run of this.#runs) {
      const view = (flat: DeviceBuffer) => be.view(flat, run.offset, run.length);
      be.adamw(view(params), view(grads), view(this.m), view(this.v), {
        lr,
        beta1: this.config.beta1,
        beta2: this.config.beta2,
        eps: this.config.eps,
        weightDecay: run.decay ? this.config.weightDecay : 0,
        step: this.t,
        gradScale,
      });
    }
  }

  /** The moments on the host, for checkpoints. */
  async readState(): Promise<{ m: FloatArray; v: FloatArray; t: number }> {
    return { m: await this.backend.read(this.m), v: await this.backend.read(this.v), t: this.t };
  }

  /** Restores moments and step count saved by `readState`. */
  writeState(state: { m: ArrayLike<number>; v: ArrayLike<number>; t: number }): void {
    if (state.m.length !== this.table.size || state.v.length !== this.table.size) {
      throw new Error(
        `AdamW: moments of ${state.m.length} and ${state.v.length} values do not match ${this.table.size} parameters`,
      );
    }
    this.backend.write(this.m, state.m);
    this.backend.write(this.v, state.v);
    this.t = state.t;
  }

  free(): void {
    this.backend.free(this.m);
    this.backend.free(this.v);
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
