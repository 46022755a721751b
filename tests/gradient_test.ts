/**
 * Hand-written backward against central finite differences, in float64 on the CPU backend:
 * every parameter tensor of MambaByte (with and without biases, parallel and sequential
 * scan) and the input of the seed's Mamba module.
 */
import assert from "node:assert/strict";
import { CpuBackend } from "../lib/backends/cpu.ts";
import { MambaConfig, type MambaConfigOptions } from "../lib/config.ts";
import { Mamba, MambaByte, tensor } from "../lib/model.ts";
import { Random } from "../lib/random.ts";

const EPS = 1e-5;
const TOLERANCE = 1e-5;

/**
 * |a - b| / max(|a|, |b|, floor). In float64 a central difference with EPS = 1e-5 carries
 * ~1e-10 of rounding noise on a loss of ~5 nats, so gradients below the floor are compared
 * absolutely (to 1e-9).
 */
function relativeError(a: number, b: number, floor = 1e-4): number {
  return Math.abs(a - b) / Math.max(Math.abs(a), Math.abs(b), floor);
}

/** A few indices of a tensor: first, last and some random ones in between. */
function probeIndices(size: number, rng: Random, count = 6): number[] {
  const set = new Set([0, size - 1]);
  while (set.size < Math.min(size, count)) set.add(rng.int(size));
  return [...set];
}

function bytes(n: number, rng: Random): number[] {
  return Array.from({ length: n }, () => rng.int(256));
}

async function checkByteModel(options: MambaConfigOptions, B: number, L: number) {
  const config = new MambaConfig(options);
  const backend = new CpuBackend({ precision: "f64" });
  const model = new MambaByte(config, { backend, seed: 7 });
  const rng = new Random(11);
  // Perturb every parameter so that no gradient is trivially zero (e.g. D = 1, norms = 1).
  const params = Float64Array.from(await model.readParams(), (v) => v + 0.2 * rng.normal());
  model.writeParams(params);
  const tokens = bytes(B * (L + 1), rng);
  const inputs: number[] = [], targets: number[] = [];
  for (let b = 0; b < B; b++) {
    inputs.push(...tokens.slice(b * (L + 1), b * (L + 1) + L));
    targets.push(...tokens.slice(b * (L + 1) + 1, (b + 1) * (L + 1)));
  }
  const shape: [number, number] = [B, L];
  model.zeroGrad();
  await model.lossAndBackward(inputs, targets, shape);
  const grads = await backend.read(model.grads);

  let worst = 0, worstName = "";
  for (const spec of model.table.specs) {
    for (const i of probeIndices(spec.size, rng)) {
      const k = spec.offset + i;
      const saved = params[k];
      params[k] = saved + EPS;
      model.writeParams(params);
      const plus = (await model.loss(inputs, targets, shape)).loss;
      params[k] = saved - EPS;
      model.writeParams(params);
      const minus = (await model.loss(inputs, targets, shape)).loss;
      params[k] = saved;
      const numeric = (plus - minus) / (2 * EPS);
      const error = relativeError(grads[k], numeric);
      if (error > worst) [worst, worstName] = [error, `${spec.name}[${i}]: ${grads[k]} vs ${numeric}`];
    }
  }
  model.writeParams(params);
  assert.ok(worst < TOLERANCE, `worst relative error ${worst} at ${worstName}`);
}

Deno.test("gradients of every MambaByte parameter match finite differences (parallel scan)", async () => {
  await checkByteModel({ dim: 6, depth: 2, d_state: 3, d_conv: 3, dt_rank: 2, pscan: true }, 2, 7);
});

Deno.test("gradients match finite differences with biases, sequential scan, constant dt init", async () => {
  await checkByteModel(
    { dim: 5, depth: 2, d_state: 2, d_conv: 4, bias: true, pscan: false, dt_init: "constant" },
    1,
    9,
  );
});

Deno.test("gradient of the Mamba module's input matches finite differences", async () => {
  const config = new MambaConfig({ dim: 4, depth: 2, d_state: 3, d_conv: 3, dt_rank: 2, pscan: true });
  const model = new Mamba(config, { backend: new CpuBackend({ precision: "f64" }), seed: 3 });
  const rng = new Random(5);
  const shape = [2, 5, 4];
  const x = Float64Array.from({ length: 40 }, () => rng.normal());
  const w = Float64Array.from({ length: 40 }, () => rng.normal()); // loss = Σ w ⊙ out
  const objective = async (input: Float64Array) => {
    const out = await model.forward(tensor(input, shape));
    let sum = 0;
    for (let i = 0; i < w.length; i++) sum += out.data[i] * w[i];
    return sum;
  };
  await model.forward(tensor(x, shape));
  model.zeroGrad();
  const dx = await model.backward(tensor(w, shape));
  for (let i = 0; i < x.length; i++) {
    const saved = x[i];
    x[i] = saved + EPS;
    const plus = await objective(x);
    x[i] = saved - EPS;
    const minus = await objective(x);
    x[i] = saved;
    const numeric = (plus - minus) / (2 * EPS);
    assert.ok(relativeError(dx.data[i], numeric) < TOLERANCE, `dx[${i}] ${dx.data[i]} vs ${numeric}`);
  }
});
