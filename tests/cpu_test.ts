/**
 * The CPU reference on its own: parallel vs sequential scan, decode vs forward, determinism,
 * and the conformance suite run in float64 against the float32 reference.
 */
import assert from "node:assert/strict";
import { CpuBackend } from "../lib/backends/cpu.ts";
import { MambaConfig } from "../lib/config.ts";
import { MambaByte } from "../lib/model.ts";
import { Random } from "../lib/random.ts";
import { conformanceSuite, maxRelativeError } from "./backend_conformance.ts";

await conformanceSuite("cpu-f64", () => Promise.resolve(new CpuBackend({ precision: "f64" })));

function text(n: number, seed: number): number[] {
  const rng = new Random(seed);
  return Array.from({ length: n }, () => rng.int(256));
}

for (const L of [1, 7, 100, 129]) {
  Deno.test(`parallel and sequential scans agree, forward and backward, at L=${L}`, async () => {
    const options = { dim: 8, depth: 2, d_state: 4 };
    const parallel = new MambaByte(new MambaConfig({ ...options, pscan: true }), { seed: 1 });
    const sequential = new MambaByte(new MambaConfig({ ...options, pscan: false }), { seed: 1 });
    const tokens = text(2 * (L + 1), L);
    const inputs = [...tokens.slice(0, L), ...tokens.slice(L + 1, 2 * L + 1)];
    const targets = [...tokens.slice(1, L + 1), ...tokens.slice(L + 2)];
    const results = [];
    for (const model of [parallel, sequential]) {
      model.zeroGrad();
      const loss = await model.lossAndBackward(inputs, targets, [2, L]);
      const logits = await model.forward(inputs, [2, L]);
      results.push({ loss, logits: logits.data, grads: await model.backend.read(model.grads) });
    }
    assert.ok(maxRelativeError(results[0].logits, results[1].logits) < 1e-5, "logits differ");
    assert.ok(Math.abs(results[0].loss.loss - results[1].loss.loss) < 1e-5, "losses differ");
    assert.ok(maxRelativeError(results[0].grads, results[1].grads) < 1e-4, "gradients differ");
  });
}

Deno.test("decoding with step equals the forward pass, and reset starts over", async () => {
  const model = new MambaByte(new MambaConfig({ dim: 16, depth: 3, d_state: 4, d_conv: 3 }), { seed: 2 });
  const bytes = new TextEncoder().encode("The quick brown fox, jumping.");
  const logits = await model.forward(bytes, [1, bytes.length]);
  const cache = model.createCache(1);
  for (const round of [0, 1]) {
    for (let t = 0; t < bytes.length; t++) {
      const step = await model.step([bytes[t]], cache);
      const row = logits.data.subarray(t * 256, (t + 1) * 256);
      assert.ok(maxRelativeError(step.data, row) < 1e-5, `round ${round}, position ${t}`);
    }
    cache.reset();
  }
});

// The cpu step keeps −exp(A_log) between calls: new parameters must reach it (every parameter is
// moved, A_log included, whose initial values do not depend on the seed).
Deno.test("decoding after the parameters change follows the new parameters", async () => {
  const model = new MambaByte(new MambaConfig({ dim: 16, depth: 2, d_state: 4 }), { seed: 3 });
  const bytes = new TextEncoder().encode("State space");
  const cache = model.createCache(1);
  for (const b of bytes) await model.step([b], cache);
  const rng = new Random(5);
  model.writeParams((await model.readParams()).map((v) => v + 0.3 * rng.normal()));
  cache.reset();
  const logits = await model.forward(bytes, [1, bytes.length]);
  for (let t = 0; t < bytes.length; t++) {
    const step = await model.step([bytes[t]], cache);
    assert.ok(
      maxRelativeError(step.data, logits.data.subarray(t * 256, (t + 1) * 256)) < 1e-5,
      `position ${t}`,
    );
  }
});

Deno.test("the same seed gives the same model and outputs; another seed does not", async () => {
  const config = new MambaConfig({ dim: 16, depth: 2 });
  const bytes = text(20, 3);
  const a = await new MambaByte(config, { seed: 42 }).forward(bytes, [2, 10]);
  const b = await new MambaByte(config, { seed: 42 }).forward(bytes, [2, 10]);
  const c = await new MambaByte(config, { seed: 43 }).forward(bytes, [2, 10]);
  assert.deepEqual(a.data, b.data);
  assert.notDeepEqual(a.data, c.data);
});

Deno.test("forward, loss and step reject bytes that do not fill the shape or are not bytes", async () => {
  const model = new MambaByte(new MambaConfig({ dim: 8, depth: 1 }));
  await assert.rejects(() => model.forward([1, 2, 3], [2, 2]), /3 bytes do not fill shape \[2, 2\]/);
  await assert.rejects(() => model.forward([1, 2], [0, 2]), /positive integers/);
  await assert.rejects(() => model.forward([1, 256], [1, 2]), /value 1 is 256, not a byte/);
  await assert.rejects(() => model.loss([1, 2], [3, -1], [1, 2]), /value 1 is -1, not a byte/);
  await assert.rejects(() => model.step([0.5], model.createCache(1)), /value 0 is 0.5, not a byte/);
});

Deno.test("activation recomputation gives the same loss and gradients", async () => {
  const config = new MambaConfig({ dim: 12, depth: 3, d_state: 4 });
  const inputs = text(2 * 15, 4), targets = text(2 * 15, 5);
  const results = [];
  for (const recompute of [false, true]) {
    const model = new MambaByte(config, { seed: 9, recompute });
    model.zeroGrad();
    const { loss } = await model.lossAndBackward(inputs, targets, [2, 15]);
    results.push({ loss, grads: await model.backend.read(model.grads) });
  }
  assert.equal(results[1].loss, results[0].loss);
  assert.deepEqual(results[1].grads, results[0].grads);
});
