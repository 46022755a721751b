/**
 * Text generation with the constant-memory recurrent `step` path: the prompt is fed one byte
 * at a time into the decode cache, then bytes are sampled on the device and fed back, never
 * re-running the prompt. The host reads the sampled bytes back once per block of steps (one
 * upload of the block's uniform draws, one read of its bytes), not once per byte, and records the
 * next block before it waits for a block's bytes: a read-back's latency (WebGPU's mapAsync takes
 * milliseconds, whatever the size) overlaps the device's work.
 */
import type { MambaByte } from "./model.ts";
import { Random } from "./random.ts";
import { checkSampling, drawUniform, SAMPLING_DEFAULTS, type SamplingOptions } from "./sample.ts";

export interface GenerateOptions extends SamplingOptions {
  /** Bytes to generate per sample. */
  maxBytes: number;
  /** Seeds the sampling. */
  seed: number;
  /** Samples decoded together as one batch, all from the same prompt. */
  numSamples: number;
  /** Steps sampled on the device between two reads of the sampled bytes. */
  blockSize: number;
}

export const GENERATE_DEFAULTS: GenerateOptions = {
  ...SAMPLING_DEFAULTS,
  maxBytes: 256,
  seed: 0,
  numSamples: 1,
  blockSize: 32,
};

/**
 * Generates bytes after `prompt` (a string is UTF-8 encoded). Yields one chunk per position:
 * `numSamples` bytes, byte b belonging to sample b. Deterministic for a seed: the uniform draws
 * are taken in order (position, then sample), whatever the block size, so the bytes are those
 * of `sampleLogits` on the host with the same seed (up to float rounding on GPU backends).
 */
export async function* generate(
  model: MambaByte,
  prompt: Uint8Array | string,
  options: Partial<GenerateOptions> = {},
): AsyncGenerator<Uint8Array> {
  const o = { ...GENERATE_DEFAULTS, ...options };
  const bytes = typeof prompt === "string" ? new TextEncoder().encode(prompt) : prompt;
  if (bytes.length === 0) throw new Error("the prompt is empty; give at least one byte of text to continue");
  checkSampling(o);
  if (!Number.isInteger(o.maxBytes) || o.maxBytes < 0) {
    throw new Error(`maxBytes must be an integer >= 0, got ${o.maxBytes}`);
  }
  if (!Number.isInteger(o.numSamples) || o.numSamples < 1) {
    throw new Error(`numSamples must be an integer >= 1, got ${o.numSamples}`);
  }
  if (!Number.isInteger(o.blockSize) || o.blockSize < 1) {
    throw new Error(`blockSize must be an integer >= 1, got ${o.blockSize}`);
  }
  const B = o.numSamples;
  const rng = new Random(o.seed);
  const cache = model.createCache(B);
  let pending: Promise<Uint8Array> | null = null; // the block recorded, not yet read
  try {
    for (const byte of bytes) model.stepLogits(new Uint8Array(B).fill(byte), cache);
    let started = 0; // bytes per sample of the blocks recorded so far
    const startBlock = () => {
      const steps = Math.min(o.blockSize, o.maxBytes - started);
      const uniforms = new Float32Array(steps * B); // (steps, B); greedy draws nothing
      if (o.temperature > 0) { for (let i = 0; i < uniforms.length; i++) uniforms[i] = drawUniform(rng); }
      started += steps;
      const block = model.sampleSteps(cache, uniforms, o, started < o.maxBytes); // (steps, B)
      block.catch(() => {}); // a failure is thrown where the block is awaited, not as an unhandled rejection
      return block;
    };
    pending = o.maxBytes > 0 ? startBlock() : null;
    while (pending) {
      const current = pending;
      pending = started < o.maxBytes ? startBlock() : null;
      const block = await current;
      for (let k = 0; k < block.length / B; k++) yield block.slice(k * B, (k + 1) * B);
    }
  } finally {
    await pending?.catch(() => {}); // a consumer that stops early: the block in flight ends first
    cache.free();
  }
}
