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

/** One index drawn from `logits` (length V) under `options`, using one draw of `rng`. */
export function sampleLogits(logits: ArrayLike<number>, options: SamplingOptions, rng: Random): number {
  const V = logits.length;
  if (options.temperature === 0) {
    let best = 0;
    for (let i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }
  // candidates sorted by logit, most likely first (ties: lower index first)
  const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => logits[b] - logits[a] || a - b);
  const kept = options.topK > 0 ? order.slice(0, options.topK) : order;
  const max = logits[kept[0]];
  const weights = kept.map((i) => Math.exp((logits[i] - max) / options.temperature));
  const total = weights.reduce((a, b) => a + b, 0);
  let count = kept.length;
  if (options.topP < 1) {
    let cumulative = 0;
    for (count = 0; count < kept.length;) {
      cumulative += weights[count++] / total;
      if (cumulative >= options.topP) break;
    }
  }
  const mass = weights.slice(0, count).reduce((a, b) => a + b, 0);
  let r = rng.next() * mass;
  for (let j = 0; j < count; j++) {
    r -= weights[j];
    if (r < 0) return kept[j];
  }
  return kept[count - 1];
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
