/**
 * The training loop end to end on the CPU backend with a tiny model: the loss falls, the run's
 * files are written, and a run interrupted and resumed reproduces the uninterrupted losses exactly.
 */
import assert from "node:assert/strict";
import { tinyCorpus as corpus, tinySettings as settings } from "./tiny_run.ts";
import { CpuBackend } from "../lib/backends/cpu.ts";
import { loadModel, readSafetensors } from "../lib/checkpoint.ts";
import { defaultsKind, type MetricRecord, RUN_FILES, train, trainDefaults } from "../lib/train.ts";

async function metrics(dir: string): Promise<MetricRecord[]> {
  const text = await Deno.readTextFile(`${dir}/${RUN_FILES.metrics}`);
  return text.trim().split("\n").map((l) => JSON.parse(l));
}

Deno.test("forty steps lower the loss and write checkpoint, best, metrics and plot", async () => {
  const dir = await Deno.makeTempDir();
  const result = await train(settings(dir), new CpuBackend(), corpus());
  assert.deepEqual(result.interrupted, false);
  const m = await metrics(dir);
  assert.equal(m.length, 40);
  const first = m.slice(0, 5).reduce((a, r) => a + r.loss, 0) / 5,
    last = m.slice(-5).reduce((a, r) => a + r.loss, 0) / 5;
  assert.ok(first > 5, `starts near ln 256: ${first}`);
  assert.ok(last < first - 2, `loss falls: ${first} → ${last}`);
  const evals = m.filter((r) => r.val_bpb !== undefined);
  assert.deepEqual(evals.map((r) => r.step), [10, 20, 30, 40]);
  assert.ok(evals[3].val_bpb! < evals[0].val_bpb!);
  for (const key of ["step", "loss", "bpb", "lr", "bytes_per_s"]) assert.ok(key in m[0], key);
  const checkpoint = await readSafetensors(`${dir}/${RUN_FILES.checkpoint}`);
  assert.equal(checkpoint.metadata.step, "40");
  assert.ok(checkpoint.tensors.has("optimizer.m.lm_head.weight"));
  const best = await loadModel(`${dir}/${RUN_FILES.best}`);
  assert.equal(best.config.dim, 16);
  assert.equal(result.bestValBpb, Math.min(...evals.map((r) => r.val_bpb!)));
  const svg = await Deno.readTextFile(`${dir}/${RUN_FILES.plot}`);
  assert.match(svg, /^<svg[^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  assert.equal(svg.match(/<polyline/g)?.length, 2, "train and validation lines");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("forty steps with 8-bit AdamW moments lower the loss and checkpoint codes and scales", async () => {
  const dir = await Deno.makeTempDir();
  await train(settings(dir, { optimizer_bits: 8 }), new CpuBackend(), corpus());
  const m = await metrics(dir);
  const first = m.slice(0, 5).reduce((a, r) => a + r.loss, 0) / 5,
    last = m.slice(-5).reduce((a, r) => a + r.loss, 0) / 5;
  assert.ok(last < first - 2, `loss falls: ${first} → ${last}`);
  const checkpoint = await readSafetensors(`${dir}/${RUN_FILES.checkpoint}`);
  assert.equal(checkpoint.tensors.get("optimizer.m_codes")?.dtype, "U8");
  assert.equal(checkpoint.tensors.get("optimizer.scales")?.dtype, "F32");
  assert.ok(
    ![...checkpoint.tensors.keys()].some((name) => name.startsWith("optimizer.m.")),
    "no fp32 moments",
  );
  assert.equal(JSON.parse(checkpoint.metadata.train_options).optimizer_bits, 8);

  // The checkpoint's moments are 8-bit: resuming them as 32-bit ones is an error, not a silent reset.
  await assert.rejects(
    () => train(settings(dir, { optimizer_bits: 32, steps: 41 }), new CpuBackend(), corpus(), {}, checkpoint),
    /holds 8-bit AdamW moments, but this optimizer keeps 32-bit ones/,
  );
  await Deno.remove(dir, { recursive: true });
});

for (const bits of [32, 8] as const) {
  Deno.test(`${bits}-bit moments: a run interrupted at step 7 and resumed reproduces the uninterrupted losses exactly`, async () => {
    const whole = await Deno.makeTempDir(), split = await Deno.makeTempDir();
    const run = (out: string) =>
      settings(out, { steps: 14, eval_every: 4, grad_accum: 2, warmup: 3, optimizer_bits: bits });
    await train(run(whole), new CpuBackend(), corpus());

    const controller = new AbortController();
    const stopped = await train(run(split), new CpuBackend(), corpus(), {
      signal: controller.signal,
      onStep: (info) => info.step === 7 && controller.abort(),
    });
    assert.deepEqual([stopped.step, stopped.interrupted], [7, true]);
    const checkpoint = await readSafetensors(`${split}/${RUN_FILES.checkpoint}`);
    assert.equal(checkpoint.metadata.step, "7");
    const resumed = await train(run(split), new CpuBackend(), corpus(), {}, checkpoint);
    assert.deepEqual([resumed.step, resumed.interrupted], [14, false]);

    const strip = (m: MetricRecord[]) =>
      m.map(({ step, loss, lr, val_bpb }) => ({ step, loss, lr, val_bpb }));
    assert.deepEqual(strip(await metrics(split)), strip(await metrics(whole)));
    const [a, b] = [
      await loadModel(`${whole}/${RUN_FILES.checkpoint}`),
      await loadModel(`${split}/${RUN_FILES.checkpoint}`),
    ];
    assert.deepEqual(await a.readParams(), await b.readParams());
    for (const dir of [whole, split]) await Deno.remove(dir, { recursive: true });
  });
}

Deno.test("a corpus shorter than seq-len + 1 is an error before anything is written", async () => {
  const dir = await Deno.makeTempDir();
  const tiny = { train: new Uint8Array(10), val: new Uint8Array(40), description: "tiny" };
  await assert.rejects(
    () => train(settings(`${dir}/run`), new CpuBackend(), tiny),
    /fewer than seq-len \+ 1 = 33/,
  );
  assert.deepEqual([...Deno.readDirSync(dir)], []);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("dtype bf16 on a backend without 16-bit matmuls is an error before anything is written", async () => {
  const dir = await Deno.makeTempDir();
  const fp32Only = new CpuBackend(); // a backend without setMatmulPrecision
  Object.defineProperty(fp32Only, "setMatmulPrecision", { value: undefined });
  await assert.rejects(
    () => train({ ...settings(`${dir}/run`), dtype: "bf16" }, fp32Only, corpus()),
    /dtype bf16 needs 16-bit matmul inputs \(cuda: on tensor cores; webgpu and cpu round them in their kernels\); cpu trains in fp32/,
  );
  assert.deepEqual([...Deno.readDirSync(dir)], []);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("the larger defaults go to hardware accelerators only, not to a software WebGPU adapter", () => {
  assert.equal(defaultsKind({ device: "cpu", description: "cpu" }), "cpu");
  assert.equal(defaultsKind({ device: "webgpu", description: "llvmpipe (LLVM 15.0.6, 256 bits)" }), "cpu");
  assert.equal(defaultsKind({ device: "webgpu", description: "NVIDIA GeForce RTX 4090" }), "gpu");
  assert.equal(defaultsKind({ device: "cuda", description: "cuda: NVIDIA H200" }), "gpu");
  const cpu = trainDefaults("cpu"), gpu = trainDefaults("gpu");
  assert.ok(gpu.dim > cpu.dim && gpu.seq_len > cpu.seq_len && gpu.depth > cpu.depth);
});
