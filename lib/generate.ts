/**
 * Text generation with the constant-memory recurrent `step` path: the prompt is fed one byte
 * at a time into the decode cache, then bytes are sampled and fed back, never re-running the
 * prompt.
 */
import type { MambaByte } from "./model.ts";
import { Random } from "./random.ts";
import { checkSampling, sampleLogits, SAMPLING_DEFAULTS, type SamplingOptions } from "./sample.ts";

export interface GenerateOptions extends SamplingOptions {
  /** Bytes to generate per sample. */
  maxBytes: number;
  /** Seeds the sampling. */
  seed: number;
  /** Samples decoded together as one batch, all from the same prompt. */
  numSamples: number;
}

export const GENERATE_DEFAULTS: GenerateOptions = {
  ...SAMPLING_DEFAULTS,
  maxBytes: 256,
  seed: 0,
  numSamples: 1,
};

/**
 * Generates bytes after `prompt` (a string is UTF-8 encoded). Yields one chunk per position:
 * `numSamples` bytes, byte b belonging to sample b. Deterministic for a seed.
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
  const B = o.numSamples, V = model.config.vocab_size;
  const rng = new Random(o.seed);
  const cache = model.createCache(B);
  try {
    for (let i = 0; i < bytes.length - 1; i++) model.stepLogits(new Uint8Array(B).fill(bytes[i]), cache);
    let logits = (await model.step(new Uint8Array(B).fill(bytes[bytes.length - 1]), cache)).data; // (B, 256)
    for (let n = 0; n < o.maxBytes; n++) {
      const next = new Uint8Array(B);
      for (let b = 0; b < B; b++) next[b] = sampleLogits(logits.subarray(b * V, (b + 1) * V), o, rng);
      yield next;
      if (n + 1 < o.maxBytes) logits = (await model.step(next, cache)).data;
    }
  } finally {
    cache.free();
  }
}
