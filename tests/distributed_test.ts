/**
 * Data-parallel training without GPUs: the bucketed gradient average over simulated ranks (an
 * in-process communicator), training on 2 ranks against 1 rank at the same global batch,
 * stopping agreed on by all ranks, and resuming with a different number of ranks.
 */
import assert from "node:assert/strict";
import { tinyCorpus as corpus, tinySettings } from "./tiny_run.ts";
import type { Backend, DeviceBuffer } from "../lib/backend.ts";
import { CpuBackend } from "../lib/backends/cpu.ts";
import { readSafetensors } from "../lib/checkpoint.ts";
import type { Communicator } from "../lib/distributed/communicator.ts";
import { DataParallel, gradAccumForWorld, gradientBuckets } from "../lib/distributed/data_parallel.ts";
import { Random } from "../lib/random.ts";
import { type MetricRecord, RUN_FILES, train, type TrainHooks, type TrainSettings } from "../lib/train.ts";

/**
 * `worldSize` ranks in one process, each with its own backend: the k-th allReduceMean of every
 * rank waits until all ranks have made their k-th call, then each gets the mean (float64 sums).
 */
class InProcessGroup {
  readonly #rounds = new Map<number, { buffer: DeviceBuffer; backend: Backend; done: () => void }[]>();
  readonly #calls: number[];

  constructor(readonly worldSize: number) {
    this.#calls = new Array(worldSize).fill(0);
  }

  communicator(rank: number, backend: Backend): Communicator {
    return {
      rank,
      worldSize: this.worldSize,
      allReduceMean: (buffer) => this.#arrive(rank, backend, buffer),
      close: () => {},
    };
  }

  async #arrive(rank: number, backend: Backend, buffer: DeviceBuffer): Promise<void> {
    const round = this.#calls[rank]++;
    const members = this.#rounds.get(round) ?? [];
    this.#rounds.set(round, members);
    const arrived = new Promise<void>((done) => members.push({ buffer, backend, done }));
    if (members.length === this.worldSize) {
      this.#rounds.delete(round);
      const lengths = new Set(members.map((m) => m.buffer.length));
      if (lengths.size !== 1) throw new Error(`all-reduce round ${round}: lengths ${[...lengths]} differ`);
      const values = await Promise.all(members.map((m) => m.backend.read(m.buffer)));
      const mean = new Float64Array(buffer.length);
      for (const v of values) v.forEach((x, i) => (mean[i] += x / this.worldSize));
      for (const m of members) {
        m.backend.write(m.buffer, mean);
        m.done();
      }
    }
    await arrived;
  }
}

Deno.test("buckets cover the flat buffer once, last parameters first, on 64-float boundaries", () => {
  const buckets = gradientBuckets(1000, 100);
  assert.deepEqual(buckets.map((b) => b.offset), [896, 768, 640, 512, 384, 256, 128, 0]);
  assert.deepEqual(buckets.map((b) => b.length), [104, 128, 128, 128, 128, 128, 128, 128]);
  assert.deepEqual(gradientBuckets(64, 1 << 22), [{ offset: 0, length: 64 }]);
  assert.deepEqual(gradientBuckets(0, 64), []);
});

Deno.test("the bucketed all-reduce over 3 simulated ranks leaves every rank the mean of the ranks' gradients", async () => {
  const world = 3, size = 1000;
  const group = new InProcessGroup(world);
  const random = new Random(7);
  const grads = Array.from(
    { length: world },
    () => Float32Array.from({ length: size }, () => random.normal()),
  );
  const expected = grads[0].map((_, i) => (grads[0][i] + grads[1][i] + grads[2][i]) / 3);
  const ranks = grads.map((g, rank) => {
    const backend = new CpuBackend();
    const buffer = backend.alloc(size);
    backend.write(buffer, g);
    const parallel = new DataParallel(group.communicator(rank, backend), backend, { bucketFloats: 100 });
    return { backend, buffer, parallel };
  });
  const scalars = await Promise.all(ranks.map(async ({ buffer, parallel }, rank) => {
    await parallel.averageGradients(buffer);
    return await parallel.averageScalars([rank, 10 * rank]);
  }));
  for (const { backend, buffer } of ranks) {
    const got = await backend.read(buffer);
    got.forEach((x, i) =>
      assert.ok(Math.abs(x - expected[i]) < 1e-6, `element ${i}: ${x} vs ${expected[i]}`)
    );
  }
  for (const s of scalars) assert.deepEqual(s, [1, 10]);
});

/** Tiny runs with grad-accum 2 by default, so that 2 ranks × 1 = 1 rank × 2. */
function settings(out: string, overrides: Partial<TrainSettings> = {}): TrainSettings {
  const shorter = {
    steps: 8,
    batch_size: 2,
    grad_accum: 2,
    warmup: 2,
    seed: 5,
    eval_every: 4,
    eval_batches: 1,
  };
  return tinySettings(out, { ...shorter, ...overrides });
}

async function metrics(dir: string): Promise<MetricRecord[]> {
  const text = await Deno.readTextFile(`${dir}/${RUN_FILES.metrics}`);
  return text.trim().split("\n").map((l) => JSON.parse(l));
}

/** Trains `world` simulated ranks concurrently; rank r > 0 gets out `${out}/rank${r}`. */
function trainRanks(world: number, run: TrainSettings, hooks: TrainHooks[] = []) {
  const group = new InProcessGroup(world);
  return Promise.all(Array.from({ length: world }, (_, rank) => {
    const backend = new CpuBackend();
    const parallel = new DataParallel(group.communicator(rank, backend), backend, { bucketFloats: 256 });
    const out = rank === 0 ? run.out : `${run.out}/rank${rank}`;
    return train({ ...run, out, gpus: world }, backend, corpus(), { ...hooks[rank], parallel });
  }));
}

function assertClose(a: MetricRecord[], b: MetricRecord[], tolerance: number): void {
  assert.deepEqual(a.map((r) => r.step), b.map((r) => r.step));
  a.forEach((r, i) => {
    const diff = Math.abs(r.loss - b[i].loss);
    assert.ok(diff < tolerance * r.loss, `step ${r.step}: loss ${r.loss} vs ${b[i].loss}`);
    assert.equal(r.val_bpb === undefined, b[i].val_bpb === undefined);
    if (r.val_bpb !== undefined) assert.ok(Math.abs(r.val_bpb - b[i].val_bpb!) < tolerance * r.val_bpb);
  });
}

Deno.test("2 ranks × grad-accum 1 train like 1 rank × grad-accum 2 (same global batch); only rank 0 writes", async () => {
  const one = await Deno.makeTempDir(), two = await Deno.makeTempDir();
  await train(settings(one, { grad_accum: 2 }), new CpuBackend(), corpus());
  const results = await trainRanks(2, settings(two, { grad_accum: 1 }));
  assert.deepEqual(results.map((r) => [r.step, r.interrupted]), [[8, false], [8, false]]);
  const [a, b] = [await metrics(one), await metrics(two)];
  assert.ok(a[7].loss < a[0].loss - 0.5, `the loss falls: ${a[0].loss} → ${a[7].loss}`);
  assertClose(b, a, 1e-4);
  assert.equal(b[0].bytes_per_s > 0, true);
  await assert.rejects(() => Deno.stat(`${two}/rank1`), Deno.errors.NotFound, "rank 1 writes no files");
  for (const dir of [one, two]) await Deno.remove(dir, { recursive: true });
});

Deno.test("a stop asked on one rank stops every rank after the same step; resuming on 1 rank continues the curve", async () => {
  const whole = await Deno.makeTempDir(), split = await Deno.makeTempDir();
  await trainRanks(2, settings(whole, { grad_accum: 1 }));

  const controller = new AbortController(); // rank 1 alone is asked to stop, after its step 3
  const stopped = await trainRanks(2, settings(split, { grad_accum: 1 }), [{}, {
    signal: controller.signal,
    onStep: (info) => info.step === 3 && controller.abort(),
  }]);
  assert.deepEqual(stopped.map((r) => [r.step, r.interrupted]), [[4, true], [4, true]]);
  const checkpoint = await readSafetensors(`${split}/${RUN_FILES.checkpoint}`);
  assert.equal(checkpoint.metadata.step, "4");

  // The same global batch on one rank: grad_accum 2 instead of 2 ranks × 1.
  const resumed = await train(
    settings(split, { grad_accum: 2, gpus: 1 }),
    new CpuBackend(),
    corpus(),
    {},
    checkpoint,
  );
  assert.deepEqual([resumed.step, resumed.interrupted], [8, false]);
  assertClose(await metrics(split), await metrics(whole), 1e-4);
  for (const dir of [whole, split]) await Deno.remove(dir, { recursive: true });
});

Deno.test("a world size other than the run's gpus is an error", async () => {
  const dir = await Deno.makeTempDir();
  const backend = new CpuBackend();
  const parallel = new DataParallel(new InProcessGroup(2).communicator(0, backend), backend);
  await assert.rejects(
    () => train(settings(dir, { gpus: 4 }), backend, corpus(), { parallel }),
    /asks for 4 GPU\(s\) but this process is one of 2 ranks/,
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("resuming on another number of GPUs keeps the global batch, or says which counts can", () => {
  assert.equal(gradAccumForWorld(2, 1, 1), 2);
  assert.equal(gradAccumForWorld(1, 8, 4), 2);
  assert.equal(gradAccumForWorld(4, 2, 8), 1);
  assert.throws(() => gradAccumForWorld(2, 3, 4), /global batch is 6 micro-batches .* divides 6/);
});
