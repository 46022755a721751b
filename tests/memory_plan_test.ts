/** The memory plan against allocation sizes counted by hand for a small model. */
import assert from "node:assert/strict";
import { MambaConfig } from "../lib/config.ts";
import { memoryPlan } from "../lib/memory_plan.ts";
import { decayRuns, paramTable } from "../lib/params.ts";

// D = 8, ED = 16, N = 4, R = 1 (so R + 2N = 9); B·L = 10 rows.
const config = new MambaConfig({ dim: 8, depth: 2, d_state: 4 });
const rows = 10, D = 8, ED = 16, S = 9;
const block = rows * (2 * D + 1 + 5 * ED + S); // x, xn, rstd, xz (2ED), u, dbc, delta, y
const scratch = rows * (D + 5 * ED + S); // dxn, dxz (2ED), du, ddbc, ddelta, dy
const lmHead = rows * (4 + 3 * D + 2 * 256); // bytes, targets, losses, rstd; hidden, dhidden, dx; logits, dlogits
// CUDA's scan backward scratch (1 chunk of 16 steps, 1 block of 64 channels, 16 padded states):
// B·chunks·ED·N + B·ED·N + 2·B·ED + blocks·B·L·2·16 floats
const scanWorkspace = 4 * (2 * 1 * ED * 4 + 2 * ED * 4 + 2 * 2 * ED + 1 * rows * 32);

Deno.test("the memory plan counts weights, gradients, moments and activations", async () => {
  const plan = await memoryPlan(config, { batch: 2, length: 5, recompute: false });
  const params = 4 * paramTable(config, true).size;
  const activations = 4 * (2 * block + rows * D + scratch + lmHead);
  assert.deepEqual(plan.components, [
    { name: "weights", bytes: params },
    { name: "gradients", bytes: params },
    { name: "AdamW moments", bytes: 2 * params },
    { name: "activations and scratch", bytes: activations },
    { name: "workspace (cuda)", bytes: scanWorkspace },
  ]);
  assert.equal(plan.total, 4 * params + activations + scanWorkspace);
});

Deno.test("with 16-bit matmul inputs the workspace is the largest pair of 16-bit operand copies", async () => {
  const plan = await memoryPlan(config, { batch: 2, length: 5, recompute: false, precision: "bf16" });
  const fp32 = await memoryPlan(config, { batch: 2, length: 5, recompute: false });
  // the lm head's dhidden (B·L, 256) · (256, D): 2 bytes × (10 · 256 + 256 · 8), above the scan's
  assert.deepEqual(plan.components[4], { name: "workspace (cuda)", bytes: 2 * (rows * 256 + 256 * D) });
  assert.deepEqual(
    plan.components.slice(0, 3),
    fp32.components.slice(0, 3),
    "weights, grads, moments stay fp32",
  );
});

Deno.test("with 16-bit matmul inputs each block keeps x, rstd, dbc and 16-bit copies of xn, xz and y", async () => {
  const plan = await memoryPlan(config, { batch: 2, length: 5, recompute: false, precision: "f16" });
  // 16-bit values take half a float each: xn (D), xz (2ED), y (ED)
  const kept = rows * (D + 1 + S) + (rows * (D + 2 * ED + ED)) / 2;
  const refilled = rows * (D + 5 * ED); // xn, xz (2ED), u, delta, y in fp32, shared by the blocks
  const gradientCopy = (rows * 2 * ED) / 2; // one gradient in 16 bits, up to (B·L, 2ED)
  const activations = 4 * (2 * kept + refilled + rows * D + scratch + gradientCopy + lmHead);
  assert.equal(plan.components[3].bytes, activations);
});

Deno.test("with recomputation only each block's input is kept per block", async () => {
  const plan = await memoryPlan(config, { batch: 2, length: 5, recompute: true });
  const shared = block - rows * D; // one set of intermediates for all blocks
  const activations = 4 * (2 * rows * D + shared + rows * D + scratch + lmHead);
  assert.equal(plan.components[3].bytes, activations);
});

Deno.test("8-bit moments: 2 bytes per element of each decay run in whole 256-blocks, plus 8 bytes per block", async () => {
  const plan = await memoryPlan(config, { batch: 2, length: 5, recompute: false, optimizerBits: 8 });
  const fp32 = await memoryPlan(config, { batch: 2, length: 5, recompute: false });
  const blocks = decayRuns(paramTable(config, true)).reduce(
    (sum, run) => sum + Math.ceil(run.length / 256),
    0,
  );
  assert.deepEqual(plan.components[2], { name: "AdamW moments", bytes: blocks * (2 * 256 + 8) });
  for (const i of [0, 1, 3, 4]) {
    assert.deepEqual(plan.components[i], fp32.components[i], "only the moments change");
  }
  assert.equal(plan.total, fp32.total - fp32.components[2].bytes + blocks * (2 * 256 + 8));
});

Deno.test("8-bit moments of a D=512 × 8 model: 2.03 bytes per parameter against fp32's 8", async () => {
  const big = new MambaConfig({ dim: 512, depth: 8 });
  const options = { batch: 1, length: 16, recompute: true };
  const int8 = await memoryPlan(big, { ...options, optimizerBits: 8 }), fp32 = await memoryPlan(big, options);
  const perParam = (p: typeof fp32) => p.components[2].bytes / p.parameters;
  assert.ok(perParam(fp32) >= 8 && perParam(fp32) < 8.01, `fp32: ${perParam(fp32)} bytes per parameter`);
  // 2 + 8/256 = 2.03125, and a little padding (tensors aligned to 64, runs to 256)
  assert.ok(
    perParam(int8) >= 2.03125 && perParam(int8) < 2.04,
    `8-bit: ${perParam(int8)} bytes per parameter`,
  );
});
