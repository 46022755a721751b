/**
 * AdamW against a hand-computed update, clipping, the learning-rate schedule, and five steps
 * of training against the PyTorch fixture (torch.optim.AdamW + clip_grad_norm_).
 */
import assert from "node:assert/strict";
import { CpuBackend } from "../lib/backends/cpu.ts";
import { loadModel, readSafetensors } from "../lib/checkpoint.ts";
import { MambaConfig } from "../lib/config.ts";
import { AdamW, clipScale, gradNorm, learningRate } from "../lib/optim.ts";
import { paramTable } from "../lib/params.ts";

const FIXTURES = new URL("./reference/fixtures/", import.meta.url).pathname;

Deno.test("AdamW matches a hand-computed update, decaying only the decay tensors", async () => {
  const backend = new CpuBackend();
  const table = paramTable(new MambaConfig({ dim: 4, depth: 1, d_state: 2 }), true);
  const p0 = Float32Array.from({ length: table.size }, (_, i) => Math.sin(i) * 0.5);
  const g0 = Float32Array.from({ length: table.size }, (_, i) => Math.cos(3 * i));
  assert.ok(table.specs.some((s) => s.decay) && table.specs.some((s) => !s.decay), "both kinds of tensor");
  const params = backend.alloc(table.size), grads = backend.alloc(table.size);
  backend.write(params, p0);
  backend.write(grads, g0);
  const config = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };
  const adamw = new AdamW(backend, table, config);
  const lr = 0.01, scale = 0.5;
  adamw.step(params, grads, lr, scale);
  adamw.step(params, grads, lr, scale);
  const got = await backend.read(params);
  for (const spec of table.specs) {
    const wd = spec.decay ? 0.1 : 0;
    for (let i = spec.offset; i < spec.offset + spec.size; i++) {
      // two steps by hand, with the same gradient each time
      const g = Math.fround(g0[i] * scale);
      let p = p0[i], m = 0, v = 0;
      for (let t = 1; t <= 2; t++) {
        m = 0.9 * m + 0.1 * g;
        v = 0.95 * v + 0.05 * g * g;
        p = p * (1 - lr * wd) - (lr * (m / (1 - 0.9 ** t))) / (Math.sqrt(v / (1 - 0.95 ** t)) + 1e-8);
      }
      assert.ok(Math.abs(got[i] - p) < 1e-6, `${spec.name}[${i - spec.offset}]: ${got[i]} vs ${p}`);
    }
  }
});

Deno.test("clipScale follows torch's clip_grad_norm_ and gradNorm is the global L2 norm", async () => {
  assert.equal(clipScale(0.5, 1), 1);
  assert.ok(Math.abs(clipScale(10, 1) - 1 / (10 + 1e-6)) < 1e-15);
  assert.equal(clipScale(1e9, 0), 1, "clip 0 is off");
  const backend = new CpuBackend();
  const x = backend.alloc(3);
  backend.write(x, [3, 4, 12]);
  assert.ok(Math.abs((await gradNorm(backend, x)) - 13) < 1e-9);
});

Deno.test("schedule: linear warmup to lr, cosine down to min-lr at the last step", () => {
  const s = { lr: 1e-3, minLr: 1e-4, warmup: 10, steps: 110 };
  assert.ok(Math.abs(learningRate(1, s) - 1e-4) < 1e-15);
  assert.ok(Math.abs(learningRate(5, s) - 5e-4) < 1e-15);
  assert.equal(learningRate(10, s), 1e-3);
  assert.ok(Math.abs(learningRate(60, s) - 5.5e-4) < 1e-15, "half way down the cosine");
  assert.ok(Math.abs(learningRate(110, s) - 1e-4) < 1e-15);
  assert.ok(learningRate(30, s) > learningRate(31, s), "decays after warmup");
  const noWarmup = learningRate(1, { ...s, warmup: 0 });
  assert.ok(noWarmup < 1e-3 && noWarmup > 0.999e-3, "no warmup: starts at lr, already decaying");
});

for (const name of ["small_pscan", "small_seq_bias"]) {
  Deno.test(`${name}: five clipped AdamW steps reproduce torch's losses and gradient norms`, async () => {
    const model = await loadModel(`${FIXTURES}${name}.model.safetensors`);
    const golden = await readSafetensors(`${FIXTURES}${name}.golden.safetensors`);
    const opt = JSON.parse(golden.metadata.optimizer);
    const tokens = golden.tensors.get("tokens")!;
    const [B, L1] = tokens.shape, L = L1 - 1;
    const inputs = new Uint8Array(B * L), targets = new Uint8Array(B * L);
    for (let b = 0; b < B; b++) {
      inputs.set(tokens.data.subarray(b * L1, b * L1 + L), b * L);
      targets.set(tokens.data.subarray(b * L1 + 1, (b + 1) * L1), b * L);
    }
    const adamw = new AdamW(model.backend, model.table, {
      beta1: opt.beta1,
      beta2: opt.beta2,
      eps: opt.eps,
      weightDecay: opt.weight_decay,
    });
    const losses = golden.tensors.get("train_losses")!.data,
      norms = golden.tensors.get("train_grad_norms")!.data;
    for (let t = 0; t < 5; t++) {
      model.zeroGrad();
      const { loss } = await model.lossAndBackward(inputs, targets, [B, L]);
      const norm = await gradNorm(model.backend, model.grads);
      assert.ok(Math.abs(loss - losses[t]) < 2e-5, `step ${t + 1}: loss ${loss} vs torch ${losses[t]}`);
      assert.ok(
        Math.abs(norm - norms[t]) < 1e-4 * norms[t],
        `step ${t + 1}: norm ${norm} vs torch ${norms[t]}`,
      );
      adamw.step(model.params, model.grads, opt.lr, clipScale(norm, opt.clip));
    }
  });
}
