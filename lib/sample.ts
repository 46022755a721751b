/**
 * Choosing the next byte from logits — temperature, top-k, top-p (nucleus) — with a seeded
 * Random, and a UTF-8 stream that never splits a multi-byte character.
 */
import type { Random } from "./random.ts";

export interface SamplingOptions {
  /** Logits are divided by it; 0 picks the most likely byte (greedy). */
  temperature: number;
  /** Keep only the k most likely bytes (0: all). */
  topK: number;
  /** Keep the smallest set of most likely bytes whose probability reaches p (1: all). */
  topP: number;
}

export const SAMPLING_DEFAULTS: SamplingOptions = { temperature: 1, topK: 0, topP: 1 };

/** Throws an Error naming the first option outside its range. */
export function checkSampling(o: SamplingOptions): void {
  if (!(o.temperature >= 0 && Number.isFinite(o.temperature))) {
    throw new Error(`temperature must be a finite number >= 0, got ${o.temperature}`);
  }
  if (!(Number.isInteger(o.topK) && o.topK >= 0)) {
    throw new Error(`top-k must be an integer >= 0, got ${o.topK}`);
  }
  if (!(o.topP > 0 && o.topP <= 1)) throw new Error(`top-p must be in (0, 1], got ${o.topP}`);
}

/**
 * A uniform draw in [0, 1) with 24 random bits: exactly a float32, so a sampler on a device
 * (Backend.sampleTokens, fed float32 uniforms) sees the same value as the host.
 */
export function drawUniform(rng: Random): number {
  return (rng.nextUint32() >>> 8) / 16777216;
}

/** One index drawn from `logits` (length V) under `options`, using one draw of `rng` (none when greedy). */
export function sampleLogits(logits: ArrayLike<number>, options: SamplingOptions, rng: Random): number {
  return sampleWithUniform(logits, options, options.temperature === 0 ? 0 : drawUniform(rng));
}

/**
 * The sampler every backend implements (Backend.sampleTokens), given its uniform u in [0, 1):
 * 1. rank the V candidates by logit, most likely first (ties: lower index first);
 *    temperature 0 returns rank 0 (greedy);
 * 2. keep the first K' = min(topK, V) ranks (topK 0: all V);
 * 3. weights w_r = exp((logit_r - logit_0) / temperature), inclusive prefix sums P_r;
 * 4. top-p keeps the first c = min(K', 1 + #{r < K' : P_r < topP · P_(K'-1)}) ranks;
 * 5. returns the candidate of the first rank r < c with P_r > u · P_(c-1) (else rank c - 1).
 */
export function sampleWithUniform(logits: ArrayLike<number>, options: SamplingOptions, u: number): number {
  const V = logits.length;
  const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => logits[b] - logits[a] || a - b);
  if (options.temperature === 0) return order[0];
  const kept = options.topK > 0 ? Math.min(options.topK, V) : V;
  const prefix = new Float64Array(kept); // P_r
  let total = 0;
  for (let r = 0; r < kept; r++) {
    total += Math.exp((logits[order[r]] - logits[order[0]]) / options.temperature);
    prefix[r] = total;
  }
  let count = 1;
  while (count < kept && prefix[count - 1] < options.topP * total) count++;
  const threshold = u * prefix[count - 1];
  for (let r = 0; r < count; r++) if (prefix[r] > threshold) return order[r];
  return order[count - 1];
}

/**
 * Turns a stream of bytes into text without splitting a multi-byte UTF-8 character: an
 * incomplete sequence is held until its last byte arrives; an invalid one becomes U+FFFD.
 */
export class Utf8Stream {
  readonly #decoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });

  /** The text completed by `bytes` (possibly empty). */
  push(bytes: Uint8Array): string {
    return this.#decoder.decode(bytes, { stream: true });
  }

  /** What is left at the end: U+FFFD for a sequence the stream cut short, else "". */
  flush(): string {
    return this.#decoder.decode();
  }
}
