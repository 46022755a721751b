/** The memory plan against allocation sizes counted by hand for a small model. */
import assert from "node:assert/strict";
import { MambaConfig } from "../lib/config.ts";
import { memoryPlan } from "../lib/memory_plan.ts";
import { paramTable } from "../lib/params.ts";

// D = 8, ED = 16, N = 4, R = 1 (so R + 2N = 9); B·L = 10 rows.
const config = new MambaConfig({ dim: 8, depth: 2, d_state: 4 });
const rows = 10, D = 8, ED = 16, S = 9;
const block = rows * (2 * D + 1 + 5 * ED + S); // x, xn, rstd, xz (2ED), u, dbc, delta, y
const scratch = rows * (D + 5 * ED + S); // dxn, dxz (2ED), du, ddbc, ddelta, dy
const lmHead = rows * (4 + 3 * D + 2 * 256); // bytes, targets, losses, rstd; hidden, dhidden, dx; logits, dlogits

Deno.test("the memory plan counts weights, gradients, moments and activations", async () => {
  const plan = await memoryPlan(config, { batch: 2, length: 5, recompute: false });
  const params = 4 * paramTable(config, true).size;
  const activations = 4 * (2 * block + rows * D + scratch + lmHead);
  assert.deepEqual(plan.components, [
    { name: "weights", bytes: params },
    { name: "gradients", bytes: params },
    { name: "AdamW moments", bytes: 2 * params },
    { name: "activations and scratch", bytes: activations },
  ]);
  assert.equal(plan.total, 4 * params + activations);
});

Deno.test("with recomputation only each block's input is kept per block", async () => {
  const plan = await memoryPlan(config, { batch: 2, length: 5, recompute: true });
  const shared = block - rows * D; // one set of intermediates for all blocks
  const activations = 4 * (2 * rows * D + shared + rows * D + scratch + lmHead);
  assert.equal(plan.components[3].bytes, activations);
});
