/**
 * Data parallelism: every rank runs the same model on its own windows, then the flat gradient
 * buffer is averaged over the ranks bucket by bucket, so that every rank takes the same optimizer
 * step. Scalars (the loss, a stop request) are averaged through a small device buffer.
 */
import type { Backend, DeviceBuffer } from "../backend.ts";
import type { Communicator } from "./communicator.ts";

/** Floats per all-reduce call by default: 2^22 floats = 16 MiB. */
export const DEFAULT_BUCKET_FLOATS = 1 << 22;

/** Bucket offsets are multiples of this many floats (256 bytes, like the parameter table's offsets). */
const BUCKET_ALIGN = 64;

/** Most values one `averageScalars` call takes. */
const MAX_SCALARS = 8;

/** A run of the flat gradient buffer reduced by one collective call. */
export interface Bucket {
  offset: number;
  length: number;
}

/**
 * The flat buffer of `size` floats cut into buckets of at most `bucketFloats` (rounded up to a
 * multiple of 64), last bucket first: backward produces the gradients of the last parameters
 * (the LM head) first, so this is the order in which buckets become ready.
 */
export function gradientBuckets(size: number, bucketFloats: number = DEFAULT_BUCKET_FLOATS): Bucket[] {
  if (!Number.isInteger(size) || size < 0) throw new RangeError(`gradientBuckets: bad size ${size}`);
  if (!(bucketFloats >= 1)) throw new RangeError(`gradientBuckets: bad bucket size ${bucketFloats}`);
  const step = Math.ceil(bucketFloats / BUCKET_ALIGN) * BUCKET_ALIGN;
  const buckets: Bucket[] = [];
  for (let offset = 0; offset < size; offset += step) {
    buckets.push({ offset, length: Math.min(step, size - offset) });
  }
  return buckets.reverse();
}

export interface DataParallelOptions {
  /** Floats per all-reduce call (default DEFAULT_BUCKET_FLOATS). */
  bucketFloats?: number;
}

/** One rank's side of data-parallel training over a Communicator. */
export class DataParallel {
  readonly #scalars: DeviceBuffer;
  readonly #bucketFloats: number;

  constructor(readonly comm: Communicator, readonly backend: Backend, options: DataParallelOptions = {}) {
    this.#bucketFloats = options.bucketFloats ?? DEFAULT_BUCKET_FLOATS;
    this.#scalars = backend.alloc(MAX_SCALARS);
  }

  get rank(): number {
    return this.comm.rank;
  }

  get worldSize(): number {
    return this.comm.worldSize;
  }

  /** grads (the flat gradient buffer) ← its mean over the ranks, one bucket per collective call. */
  async averageGradients(grads: DeviceBuffer): Promise<void> {
    for (const { offset, length } of gradientBuckets(grads.length, this.#bucketFloats)) {
      await this.comm.allReduceMean(this.backend.view(grads, offset, length));
    }
  }

  /**
   * The mean over the ranks of each of `values` (at most 8), the same on every rank: float32
   * when there are several ranks, the values themselves (full precision) when there is one.
   */
  async averageScalars(values: readonly number[]): Promise<number[]> {
    if (this.worldSize === 1) return [...values];
    if (values.length > MAX_SCALARS) {
      throw new RangeError(`averageScalars: at most ${MAX_SCALARS} values, got ${values.length}`);
    }
    const view = this.backend.view(this.#scalars, 0, values.length);
    this.backend.write(view, values);
    await this.comm.allReduceMean(view);
    return Array.from(await this.backend.read(view));
  }

  /** Releases the scalar buffer (the communicator stays open: its owner closes it). */
  free(): void {
    this.backend.free(this.#scalars);
  }
}

/**
 * Micro-batches per rank when a run saved with `gpus` ranks × `gradAccum` continues on `world`
 * ranks: the global batch (gpus · gradAccum micro-batches) is kept, so the run's curve goes on
 * unchanged; an Error when `world` does not divide it.
 */
export function gradAccumForWorld(gpus: number, gradAccum: number, world: number): number {
  const global = gpus * gradAccum;
  if (global % world !== 0) {
    throw new Error(
      `this run's global batch is ${global} micro-batches (${gpus} GPU(s) × grad-accum ${gradAccum}); ` +
        `resume it on a number of GPUs that divides ${global}`,
    );
  }
  return global / world;
}
