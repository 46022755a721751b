/**
 * Dynamic loss scaling (lib/loss_scale.ts): the policy on its own, what it buys at f16 (gradients
 * that f16 would flush to zero), and an f16 training run that overflows at a too-high scale,
 * skips those steps, lowers the scale, says so, trains on and resumes exactly.
 */
import assert from "node:assert/strict";
import { CpuBackend } from "../lib/backends/cpu.ts";
import { readSafetensors } from "../lib/checkpoint.ts";
import { MambaConfig } from "../lib/config.ts";
import { LossScaler } from "../lib/loss_scale.ts";
import { MambaByte } from "../lib/model.ts";
import { Random } from "../lib/random.ts";
import { type MetricRecord, RUN_FILES, train } from "../lib/train.ts";
import { maxRelativeError } from "./backend_conformance.ts";
import { tinyCorpus as corpus, tinySettings as settings } from "./tiny_run.ts";

Deno.test("the loss scale halves on overflow and doubles after growthInterval good steps, within 1 to 2^24", () => {
  const scaler = new LossScaler(8, 3);
  assert.equal(scaler.update(Infinity), false);
  assert.equal(scaler.scale, 4);
  assert.equal(scaler.update(NaN), false);
  assert.equal(scaler.scale, 2);
  assert.deepEqual([scaler.update(1), scaler.update(1)], [true, true]);
  assert.deepEqual(scaler.state, { scale: 2, goodSteps: 2 });
  assert.equal(scaler.update(1), true);
  assert.deepEqual(scaler.state, { scale: 4, goodSteps: 0 });
  const low = new LossScaler(1);
  low.update(Infinity);
  assert.equal(low.scale, 1);
  const high = new LossScaler(2 ** 24, 1);
  high.update(1);
  assert.equal(high.scale, 2 ** 24);
  assert.throws(
    () => new LossScaler(0.5),
    /loss scale must be a number from 1 to 16777216 \(2\^24\), not 0.5/,
  );
  assert.throws(() => (high.state = { scale: 2, goodSteps: -1 }), /whole good steps/);
});

Deno.test("at f16, gradients of a scaled loss keep what an unscaled one loses to f16's subnormals", async () => {
  const config = new MambaConfig({ dim: 16, depth: 2, d_state: 4 });
  const r = new Random(5);
  const bytes = Array.from({ length: 2 * 65 }, () => 97 + r.int(26));
  const inputs = [...bytes.slice(0, 64), ...bytes.slice(65, 129)];
  const targets = [...bytes.slice(1, 65), ...bytes.slice(66, 130)];
  // The loss's gradient times 2^-10, as a mean over 2^10 times these 128 rows would give (a real
  // batch of 8 × 2048 bytes): its logits' gradients, ~1e-2 here, fall to ~1e-5, below f16's
  // normals (6.1e-5). Each result is divided by the factor the loss was multiplied by.
  const grads = async (precision: "fp32" | "f16", scale: number) => {
    const be = new CpuBackend({ threads: 1 });
    be.setMatmulPrecision(precision);
    const model = new MambaByte(config, { backend: be, seed: 2 });
    await model.lossAndBackward(inputs, targets, [2, 64], scale);
    return (await be.read(model.grads)).map((g) => g / scale);
  };
  const exact = await grads("fp32", 2 ** -10);
  const unscaled = maxRelativeError(await grads("f16", 2 ** -10), exact);
  const scaled = maxRelativeError(await grads("f16", 2 ** -10 * 2 ** 16), exact);
  assert.ok(scaled < 2e-3, `f16 gradients of the loss scaled by 2^16: max relative error ${scaled}`);
  assert.ok(unscaled > 100 * scaled, `unscaled ${unscaled} against scaled ${scaled}`);
});

async function metrics(dir: string): Promise<MetricRecord[]> {
  const text = await Deno.readTextFile(`${dir}/${RUN_FILES.metrics}`);
  return text.trim().split("\n").map((l) => JSON.parse(l));
}

Deno.test("f16 training from a loss scale of 2^24 skips the steps that overflow, lowers the scale and learns", async () => {
  const dir = await Deno.makeTempDir();
  const overflows: [number, number][] = [];
  await train(settings(dir, { dtype: "f16", loss_scale: 2 ** 24 }), new CpuBackend(), corpus(), {
    onOverflow: (step, scale) => overflows.push([step, scale]),
  });
  const m = await metrics(dir);
  // the first step's gradients, ~2^24/128 times the logits' gradients (up to ~1), pass 65504
  assert.deepEqual(overflows[0], [1, 2 ** 23]);
  assert.ok(overflows.length < 10, `${overflows.length} overflows`);
  assert.deepEqual(
    m.filter((r) => r.skipped).map((r) => r.step),
    overflows.map(([step]) => step),
    "each skipped step is in the metrics",
  );
  const last = m[m.length - 1];
  assert.equal(last.loss_scale, overflows[overflows.length - 1][1], "no growth within 40 steps");
  const first = m.slice(0, 5).reduce((a, r) => a + r.loss, 0) / 5,
    end = m.slice(-5).reduce((a, r) => a + r.loss, 0) / 5;
  assert.ok(end < first - 2, `loss falls: ${first} → ${end}`);
  const checkpoint = await readSafetensors(`${dir}/${RUN_FILES.checkpoint}`);
  assert.deepEqual(JSON.parse(checkpoint.metadata.loss_scale), {
    scale: last.loss_scale,
    goodSteps: 40 - overflows[overflows.length - 1][0],
  });
  await Deno.remove(dir, { recursive: true });
});

Deno.test("f16: a run interrupted after overflowing and resumed reproduces the uninterrupted losses exactly", async () => {
  const whole = await Deno.makeTempDir(), split = await Deno.makeTempDir();
  const run = (out: string) => settings(out, { steps: 12, eval_every: 4, dtype: "f16", loss_scale: 2 ** 24 });
  await train(run(whole), new CpuBackend(), corpus());
  const controller = new AbortController();
  await train(run(split), new CpuBackend(), corpus(), {
    signal: controller.signal,
    onStep: (info) => info.step === 6 && controller.abort(),
  });
  const checkpoint = await readSafetensors(`${split}/${RUN_FILES.checkpoint}`);
  assert.ok(JSON.parse(checkpoint.metadata.loss_scale).scale < 2 ** 24, "the saved scale is the lowered one");
  await train(run(split), new CpuBackend(), corpus(), {}, checkpoint);
  const strip = (m: MetricRecord[]) =>
    m.map(({ step, loss, loss_scale, skipped }) => ({ step, loss, loss_scale, skipped }));
  assert.deepEqual(strip(await metrics(split)), strip(await metrics(whole)));
  for (const dir of [whole, split]) await Deno.remove(dir, { recursive: true });
});
