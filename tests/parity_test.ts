/**
 * Parity with an independent implementation: golden fixtures written by the PyTorch reference
 * (tests/reference/make_fixtures.py, float64) are loaded through the project's checkpoint
 * loader and compared on every available backend — logits, loss, every parameter's gradient,
 * 5 AdamW steps with clipping, and 32 decode steps.
 */
import assert from "node:assert/strict";
import { type Backend, createBackend, DEVICES } from "../lib/backend.ts";
import { loadModel, readSafetensors } from "../lib/checkpoint.ts";
import { MambaByte } from "../lib/model.ts";
import { AdamW, clipScale, gradNorm } from "../lib/optim.ts";
import { maxRelativeError } from "./backend_conformance.ts";

const FIXTURES = new URL("./reference/fixtures/", import.meta.url);
const NAMES = ["small_pscan", "small_seq_bias"];

const backends: Backend[] = [];
for (const device of DEVICES) {
  try {
    backends.push(await createBackend(device));
  } catch {
    // Unavailable here: the backend's own test file says so.
  }
}

type Golden = Awaited<ReturnType<typeof readSafetensors>>;

function golden(g: Golden, name: string): Float32Array | Uint8Array {
  const t = g.tensors.get(name);
  if (!t) throw new Error(`fixture has no tensor ${name}`);
  return t.data;
}

/** Inputs and targets (B·L each) from tokens (B, L + 1). */
function split(g: Golden): { inputs: number[]; targets: number[]; shape: [number, number] } {
  const [B, L1] = g.tensors.get("tokens")!.shape;
  const tokens = golden(g, "tokens");
  const inputs: number[] = [], targets: number[] = [];
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < L1 - 1; t++) {
      inputs.push(tokens[b * L1 + t]);
      targets.push(tokens[b * L1 + t + 1]);
    }
  }
  return { inputs, targets, shape: [B, L1 - 1] };
}

function report(label: string, error: number, limit: number): void {
  console.log(`  ${label}: max relative error ${error.toExponential(2)} (limit ${limit})`);
  assert.ok(error <= limit, `${label}: ${error} > ${limit}`);
}

async function load(name: string, backend: Backend): Promise<{ model: MambaByte; g: Golden }> {
  const model = await loadModel(new URL(`${name}.model.safetensors`, FIXTURES).pathname, { backend });
  const g = await readSafetensors(new URL(`${name}.golden.safetensors`, FIXTURES).pathname);
  return { model, g };
}

for (const backend of backends) {
  for (const name of NAMES) {
    Deno.test(`${backend.device}: ${name}: logits, loss and gradients equal PyTorch's`, async () => {
      const { model, g } = await load(name, backend);
      const { inputs, targets, shape } = split(g);
      const logits = await model.forward(inputs, shape);
      report("logits", maxRelativeError(logits.data, golden(g, "logits")), 1e-4);
      model.zeroGrad();
      const { loss } = await model.lossAndBackward(inputs, targets, shape);
      const expected = golden(g, "loss")[0];
      report("loss", Math.abs(loss - expected) / expected, 1e-4);
      const grads = await backend.read(model.grads);
      let worst = 0;
      for (const spec of model.table.specs) {
        const ours = grads.subarray(spec.offset, spec.offset + spec.size);
        const error = maxRelativeError(ours, golden(g, `grad.${spec.name}`));
        assert.ok(error <= 1e-3, `gradient of ${spec.name}: ${error}`);
        worst = Math.max(worst, error);
      }
      report(`gradients of ${model.table.specs.length} tensors`, worst, 1e-3);
      model.dispose();
    });

    Deno.test(`${backend.device}: ${name}: 5 AdamW steps with clipping give PyTorch's losses`, async () => {
      const { model, g } = await load(name, backend);
      const { inputs, targets, shape } = split(g);
      const o = JSON.parse(g.metadata.optimizer);
      const optimizer = new AdamW(backend, model.table, {
        beta1: o.beta1,
        beta2: o.beta2,
        eps: o.eps,
        weightDecay: o.weight_decay,
      });
      const losses = [];
      for (let step = 0; step < 5; step++) {
        model.zeroGrad();
        losses.push((await model.lossAndBackward(inputs, targets, shape)).loss);
        const scale = clipScale(await gradNorm(backend, model.grads), o.clip);
        optimizer.step(model.params, model.grads, o.lr, scale);
      }
      report("train losses", maxRelativeError(losses, golden(g, "train_losses")), 1e-4);
      optimizer.free();
      model.dispose();
    });

    Deno.test(`${backend.device}: ${name}: 32 decode steps give PyTorch's logits`, async () => {
      const { model, g } = await load(name, backend);
      const [B, T] = g.tensors.get("decode_tokens")!.shape;
      const tokens = golden(g, "decode_tokens"), expected = golden(g, "decode_logits");
      const cache = model.createCache(B);
      const ours = new Float32Array(B * T * 256);
      for (let t = 0; t < T; t++) {
        const logits = await model.step(Array.from({ length: B }, (_, b) => tokens[b * T + t]), cache);
        for (let b = 0; b < B; b++) ours.set(logits.data.subarray(b * 256, (b + 1) * 256), (b * T + t) * 256);
      }
      report("decode logits", maxRelativeError(ours, expected), 1e-4);
      cache.free();
      model.dispose();
    });
  }
}

Deno.test("MambaByte.load reads a PyTorch-written checkpoint with mamba_ssm tensor names", async () => {
  const model = await MambaByte.load(new URL("small_seq_bias.model.safetensors", FIXTURES).pathname);
  assert.equal(model.config.dim, 12);
  assert.equal(model.config.bias, true);
  assert.equal(model.config.d_conv, 3);
  model.dispose();
});
