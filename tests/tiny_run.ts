/** A tiny corpus and training settings shared by the training tests (cpu, a few seconds). */
import type { Corpus } from "../lib/data.ts";
import type { TrainSettings } from "../lib/train.ts";

/** A small corpus with structure a tiny model learns within a few dozen steps. */
export function tinyCorpus(): Corpus {
  const line = "the cat sat on the mat. the dog sat on the log. ";
  const bytes = new TextEncoder().encode(line.repeat(60));
  return { train: bytes.subarray(0, 2600), val: bytes.subarray(2600), description: "test corpus" };
}

/** Settings of a tiny cpu run writing into `out`. */
export function tinySettings(out: string, overrides: Partial<TrainSettings> = {}): TrainSettings {
  return {
    dim: 16,
    depth: 1,
    d_state: 4,
    expand_factor: 2,
    d_conv: 4,
    pscan: true,
    steps: 40,
    batch_size: 4,
    seq_len: 32,
    grad_accum: 1,
    lr: 1e-2,
    min_lr: 1e-3,
    warmup: 5,
    weight_decay: 0.1,
    clip: 1,
    seed: 3,
    log_every: 1,
    eval_every: 10,
    eval_batches: 2,
    save_every: 100,
    out,
    data: null,
    backend: "cpu",
    ...overrides,
  };
}
