/**
 * BlackMamba (config.moe) on the CPU reference: config validation and block layout, the
 * parameter table, the routing op (top-k, capacity, dropping, the Switch aux loss), gradients
 * against central finite differences in float64 (router included, through the top-k selection
 * and dropped tokens), decode against forward, a 1-expert top-1 MoE against a plain SwiGLU MLP
 * computed here, checkpoints, training, and the error on a backend without MoE ops.
 */
import assert from "node:assert/strict";
import type { IndexBuffer } from "../lib/backend.ts";
import { CpuBackend } from "../lib/backends/cpu.ts";
import { loadModel, saveModel } from "../lib/checkpoint.ts";
import { MambaConfig, type MambaConfigOptions } from "../lib/config.ts";
import { Mamba, MambaByte, tensor } from "../lib/model.ts";
import { expertCapacity, isMoeBlock, moeBlockCount } from "../lib/moe_config.ts";
import { paramTable } from "../lib/params.ts";
import { Random } from "../lib/random.ts";
import { RUN_FILES, train, trainDefaults } from "../lib/train.ts";

const MOE: MambaConfigOptions = {
  dim: 6,
  depth: 2,
  d_state: 3,
  d_conv: 3,
  dt_rank: 2,
  moe: { experts: 4, top_k: 2, every: 2, hidden: 5, aux_loss_coef: 0.1, capacity_factor: 0.75 },
};

function bytes(n: number, rng: Random): number[] {
  return Array.from({ length: n }, () => rng.int(256));
}

Deno.test("moe config: defaults, layout (depth counts both kinds), toJSON round trip", () => {
  const c = new MambaConfig({ dim: 8, depth: 4, moe: { experts: 8 } });
  assert.deepEqual(c.moe, {
    experts: 8,
    top_k: 1,
    every: 2,
    hidden: 32,
    aux_loss_coef: 0.01,
    capacity_factor: 1.25,
  });
  assert.deepEqual([0, 1, 2, 3].map((i) => isMoeBlock(c.moe, i)), [false, true, false, true]);
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5].map((i) =>
      isMoeBlock(new MambaConfig({ dim: 8, depth: 6, moe: { experts: 2, every: 3 } }).moe, i)
    ),
    [false, false, true, false, false, true],
  );
  assert.deepEqual(new MambaConfig(JSON.parse(JSON.stringify(c.toJSON()))).toJSON(), c.toJSON());
  assert.equal(moeBlockCount(c.moe, c.depth), 2);
  assert.equal(moeBlockCount(null, 4), 0);
  assert.equal("moe" in new MambaConfig({ dim: 8, depth: 2 }).toJSON(), false);
  assert.equal(expertCapacity(c.moe!, 100), 16); // ceil(1.25 · 100 · 1 / 8)
  assert.equal(expertCapacity({ ...c.moe!, capacity_factor: 100 }, 10), 10); // never more than the tokens
});

Deno.test("moe config: invalid values name the field, the value and what is allowed", () => {
  const moe = (m: unknown, depth = 4): Record<string, unknown> => ({ dim: 8, depth, moe: m });
  const cases: [Record<string, unknown>, RegExp][] = [
    [moe(8), /moe is 8; it must be an object like \{ experts: 8 \}/],
    [moe({}), /moe\.experts is undefined; it must be an integer ≥ 1/],
    [moe({ experts: 0 }), /moe\.experts is 0; it must be an integer ≥ 1/],
    [
      moe({ experts: 4, top_k: 5 }),
      /moe\.top_k is 5; it must be an integer from 1 to 4 \(the number of experts\)/,
    ],
    [moe({ experts: 4, every: 1 }), /moe\.every is 1; it must be an integer from 2 to 4/],
    [moe({ experts: 4, every: 3 }, 2), /moe\.every is 3; it must be an integer from 2 to 2/],
    [moe({ experts: 4, hidden: 2.5 }), /moe\.hidden is 2\.5; it must be an integer ≥ 1/],
    [moe({ experts: 4, aux_loss_coef: -1 }), /moe\.aux_loss_coef is -1; it must be a finite number ≥ 0/],
    [moe({ experts: 4, capacity_factor: 0 }), /moe\.capacity_factor is 0; it must be a finite number > 0/],
    [moe({ experts: 4, top: 1 }), /moe\.top is unknown; allowed fields are experts, top_k/],
  ];
  for (const [options, message] of cases) {
    assert.throws(() => new MambaConfig(options as never), message);
  }
});

Deno.test("moe parameter table: names, shapes, decay, count; plain configs unchanged", () => {
  const c = new MambaConfig({ dim: 8, depth: 2, d_state: 4, moe: { experts: 2, hidden: 6 } });
  const t = paramTable(c, true);
  assert.deepEqual(t.layers.map((l) => l.kind), ["mamba", "moe"]);
  const moeSpecs = t.specs.filter((s) => s.name.startsWith("backbone.layers.1."));
  assert.deepEqual(moeSpecs.map((s) => [s.name, s.shape, s.decay]), [
    ["backbone.layers.1.moe.router.weight", [2, 8], true],
    ["backbone.layers.1.moe.experts.0.w1.weight", [6, 8], true],
    ["backbone.layers.1.moe.experts.0.w3.weight", [6, 8], true],
    ["backbone.layers.1.moe.experts.0.w2.weight", [8, 6], true],
    ["backbone.layers.1.moe.experts.1.w1.weight", [6, 8], true],
    ["backbone.layers.1.moe.experts.1.w3.weight", [6, 8], true],
    ["backbone.layers.1.moe.experts.1.w2.weight", [8, 6], true],
    ["backbone.layers.1.norm.weight", [8], false],
  ]);
  const plain = paramTable(new MambaConfig({ dim: 8, depth: 1, d_state: 4 }), true);
  assert.equal(t.count - plain.count, 2 * 8 + 2 * 3 * 6 * 8 + 8);
  for (const s of t.specs) assert.equal(s.offset % 64, 0, `${s.name} offset ${s.offset}`);
});

Deno.test("route: top-k, gates over the chosen logits, capacity in position order, aux loss", async () => {
  const be = new CpuBackend({ precision: "f64" });
  const dims = { rows: 4, experts: 3, topK: 2, capacity: 2, dim: 1 };
  const logits = be.alloc(12), gates = be.alloc(8), probs = be.alloc(12), stats = be.alloc(2);
  const choice = be.allocIndices(8), slot = be.allocIndices(8), slotRows = be.allocIndices(6);
  // every position prefers expert 1, then expert 0 (position 3: expert 2 second)
  const rows = [[1, 3, 0], [2, 4, -1], [0, 1, -2], [0, 2, 1]];
  be.write(logits, rows.flat());
  be.moe.route(gates, choice, slot, slotRows, probs, stats, logits, dims);
  const ints = (b: IndexBuffer) => [...(b as unknown as { data: Int32Array }).data]; // a CPU index buffer's array
  assert.deepEqual(ints(choice), [1, 0, 1, 0, 1, 0, 1, 2]);
  // expert 1 (rows 2..3) takes positions 0, 1; expert 0 (rows 0..1) takes positions 0, 1
  assert.deepEqual(ints(slot), [2, 0, 3, 1, -1, -1, -1, 4]);
  assert.deepEqual(ints(slotRows), [0, 1, 0, 1, 3, -1]);
  const g = await be.read(gates);
  for (let t = 0; t < 4; t++) {
    const [a, b] = [rows[t][ints(choice)[2 * t]], rows[t][ints(choice)[2 * t + 1]]];
    assert.ok(Math.abs(g[2 * t] - 1 / (1 + Math.exp(b - a))) < 1e-12);
    assert.ok(Math.abs(g[2 * t] + g[2 * t + 1] - 1) < 1e-12);
  }
  // aux = E · Σ f_e P_e with f = (3/8, 4/8, 1/8), P = mean softmax rows
  const p = rows.map((r) => r.map((v) => Math.exp(v) / r.reduce((s, u) => s + Math.exp(u), 0)));
  const f = [3 / 8, 4 / 8, 1 / 8];
  const aux = 3 * f.reduce((s, fe, e) => s + fe * p.reduce((q, row) => q + row[e] / 4, 0), 0);
  const [auxOut, dropped] = await be.read(stats);
  assert.ok(Math.abs(auxOut - aux) < 1e-12, `${auxOut} vs ${aux}`);
  assert.equal(dropped, 3);
  // uniform logits: aux is exactly its minimum 1 (ties go to the lower expert)
  be.write(logits, new Array(12).fill(0.3));
  be.moe.route(gates, choice, slot, slotRows, probs, stats, logits, dims);
  assert.deepEqual(ints(choice), [0, 1, 0, 1, 0, 1, 0, 1]);
  assert.ok(Math.abs((await be.read(stats))[0] - 1) < 1e-12);
});

/** Params perturbed so that no gradient is trivially zero, and some bytes with targets. */
async function perturbed(model: MambaByte, seed: number, B: number, L: number) {
  const rng = new Random(seed);
  const params = Float64Array.from(await model.readParams(), (v) => v + 0.2 * rng.normal());
  model.writeParams(params);
  const inputs = bytes(B * L, rng), targets = bytes(B * L, rng);
  return { params, inputs, targets, shape: [B, L] as [number, number], rng };
}

Deno.test("moe gradients (router, experts, through top-2 and dropped tokens, aux loss) match finite differences", async () => {
  const EPS = 1e-5;
  const config = new MambaConfig(MOE);
  const backend = new CpuBackend({ precision: "f64" });
  const model = new MambaByte(config, { backend, seed: 7 });
  const { params, inputs, targets, shape, rng } = await perturbed(model, 11, 2, 7);
  const coef = config.moe!.aux_loss_coef;
  const objective = async () => {
    const l = await model.loss(inputs, targets, shape);
    return l.loss + coef * l.aux!;
  };
  model.zeroGrad();
  const result = await model.lossAndBackward(inputs, targets, shape);
  assert.ok(
    result.dropped! > 0,
    "the test should drop some tokens (capacity 6 of 28 choices over 4 experts)",
  );
  assert.ok(result.aux! > 1, `aux ${result.aux}`);
  const grads = await backend.read(model.grads);
  let worst = 0, worstName = "";
  for (const spec of model.table.specs) {
    const indices = new Set([0, spec.size - 1]);
    while (indices.size < Math.min(spec.size, spec.name.includes(".moe.") ? 8 : 3)) {
      indices.add(rng.int(spec.size));
    }
    for (const i of indices) {
      const k = spec.offset + i, saved = params[k];
      params[k] = saved + EPS;
      model.writeParams(params);
      const plus = await objective();
      params[k] = saved - EPS;
      model.writeParams(params);
      const minus = await objective();
      params[k] = saved;
      const numeric = (plus - minus) / (2 * EPS);
      const error = Math.abs(grads[k] - numeric) / Math.max(Math.abs(grads[k]), Math.abs(numeric), 1e-4);
      if (error > worst) [worst, worstName] = [error, `${spec.name}[${i}]: ${grads[k]} vs ${numeric}`];
    }
  }
  model.writeParams(params);
  assert.ok(worst < 1e-5, `worst relative error ${worst} at ${worstName}`);
  const router = model.table.specs.find((s) => s.name.endsWith("moe.router.weight"))!;
  assert.ok(grads.subarray(router.offset, router.offset + router.size).some((g) => Math.abs(g) > 1e-6));
});

Deno.test("moe decode (step) equals forward; recompute gives the same gradients", async () => {
  const config = new MambaConfig({ ...MOE, depth: 4, moe: { ...MOE.moe!, capacity_factor: 2 } }); // C = T: no drops
  const model = new MambaByte(config, { seed: 3 });
  const { inputs, targets, shape } = await perturbed(model, 5, 2, 6);
  const [B, L] = shape;
  const logits = await model.forward(inputs, shape);
  const cache = model.createCache(B);
  for (let t = 0; t < L; t++) {
    const out = await model.step([inputs[t], inputs[L + t]], cache);
    for (let b = 0; b < B; b++) {
      for (let v = 0; v < 256; v++) {
        const expected = logits.data[(b * L + t) * 256 + v], got = out.data[b * 256 + v];
        assert.ok(Math.abs(expected - got) < 1e-4, `b ${b} t ${t} byte ${v}: ${got} vs ${expected}`);
      }
    }
  }
  assert.equal((await model.loss(inputs, targets, shape)).dropped, 0);
  const gradsOf = async (m: MambaByte) => {
    m.zeroGrad();
    await m.lossAndBackward(inputs, targets, shape);
    return await m.backend.read(m.grads);
  };
  const again = new MambaByte(config, { seed: 3, recompute: true });
  again.writeParams(await model.readParams());
  assert.deepEqual(await gradsOf(again), await gradsOf(model));
});

Deno.test("a 1-expert top-1 MoE block is x + SwiGLU(RMSNorm(x)) with the same weights", async () => {
  const D = 4, H = 6, B = 2, L = 3;
  const config = new MambaConfig({ dim: D, depth: 2, d_state: 2, moe: { experts: 1, hidden: H } });
  const dense = new Mamba(new MambaConfig({ dim: D, depth: 1, d_state: 2 }), { seed: 1 });
  const moe = new Mamba(config, { seed: 2 });
  const rng = new Random(9);
  const flat = Float32Array.from(await moe.readParams(), () => rng.normal());
  const denseFlat = await dense.readParams();
  for (const spec of dense.table.specs) { // the Mamba block's weights, by name
    const twin = moe.table.specs.find((s) => s.name === spec.name)!;
    flat.set(denseFlat.subarray(spec.offset, spec.offset + spec.size), twin.offset);
  }
  moe.writeParams(flat);
  const get = (name: string) => {
    const s = moe.table.specs.find((s) => s.name === name)!;
    return flat.subarray(s.offset, s.offset + s.size);
  };
  const [w1, w3, w2] = ["w1", "w3", "w2"].map((w) => get(`layers.1.moe.experts.0.${w}.weight`));
  const norm = get("layers.1.norm.weight");
  const x = Float32Array.from({ length: B * L * D }, () => rng.normal());
  const h = (await dense.forward(tensor(x, [B, L, D]))).data;
  const out = (await moe.forward(tensor(x, [B, L, D]))).data;
  for (let r = 0; r < B * L; r++) {
    const row = Array.from(h.subarray(r * D, (r + 1) * D));
    const rstd = 1 / Math.sqrt(row.reduce((s, v) => s + v * v, 0) / D + 1e-5);
    const n = Array.from(row, (v, d) => v * rstd * norm[d]);
    const act = Array.from({ length: H }, (_, j) => {
      const a = n.reduce((s, v, d) => s + w1[j * D + d] * v, 0);
      const b = n.reduce((s, v, d) => s + w3[j * D + d] * v, 0);
      return (a / (1 + Math.exp(-a))) * b;
    });
    for (let d = 0; d < D; d++) {
      const expected = row[d] + act.reduce((s, v, j) => s + w2[d * H + j] * v, 0);
      assert.ok(
        Math.abs(out[r * D + d] - expected) < 1e-5,
        `row ${r} dim ${d}: ${out[r * D + d]} vs ${expected}`,
      );
    }
  }
});

Deno.test("moe aux loss is 1 (its minimum, times aux_loss_coef in the objective) for a uniform router", async () => {
  const config = new MambaConfig({ ...MOE, moe: { ...MOE.moe!, capacity_factor: 2 } });
  const model = new MambaByte(config, { seed: 4 });
  const { params, inputs, targets, shape } = await perturbed(model, 6, 2, 5);
  const router = model.table.specs.find((s) => s.name.endsWith("moe.router.weight"))!;
  assert.ok((await model.loss(inputs, targets, shape)).aux! > 1 + 1e-4);
  params.fill(0, router.offset, router.offset + router.size);
  model.writeParams(params);
  const loss = await model.loss(inputs, targets, shape);
  assert.ok(Math.abs(loss.aux! - 1) < 1e-6, `aux ${loss.aux}`);
});

Deno.test("moe checkpoints keep the config and the weights", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const config = new MambaConfig({ ...MOE, moe: { ...MOE.moe!, capacity_factor: 2 } });
    const model = new MambaByte(config, { seed: 8 });
    await saveModel(`${dir}/m.safetensors`, model);
    const loaded = await loadModel(`${dir}/m.safetensors`);
    assert.deepEqual(loaded.config.toJSON(), config.toJSON());
    const input = [1, 2, 3, 250];
    assert.deepEqual(await loaded.forward(input, [1, 4]), await model.forward(input, [1, 4]));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("training an MoE model logs aux loss and dropped tokens", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const text = new TextEncoder().encode("the quick brown fox jumps over the lazy dog. ".repeat(40));
    const settings = {
      ...trainDefaults("cpu"),
      dim: 8,
      depth: 2,
      d_state: 4,
      steps: 4,
      batch_size: 2,
      seq_len: 16,
      log_every: 2,
      eval_every: 4,
      eval_batches: 1,
      save_every: 4,
      moe_experts: 4,
      moe_hidden: 8,
      moe_capacity_factor: 0.5,
      out: dir,
      data: null,
      backend: "cpu",
    };
    const corpus = { description: "test", train: text.subarray(0, 1500), val: text.subarray(1500) };
    await train(settings, new CpuBackend(), corpus);
    const records = (await Deno.readTextFile(`${dir}/${RUN_FILES.metrics}`)).trim().split("\n").map((l) =>
      JSON.parse(l)
    );
    assert.equal(records.length, 2);
    for (const r of records) {
      assert.ok(r.aux_loss >= 0.9 && r.aux_loss <= 4, `aux ${r.aux_loss}`);
      assert.ok(r.dropped > 0, `dropped ${r.dropped}`); // capacity 8 of 32 tokens per expert
    }
    const loaded = await loadModel(`${dir}/${RUN_FILES.checkpoint}`);
    assert.equal(loaded.config.moe?.experts, 4);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an MoE config on a backend without MoE ops is a clear error naming the backend", () => {
  const backend = new CpuBackend({ threads: 1 });
  Object.defineProperty(backend, "moe", { value: undefined });
  assert.throws(
    () => new MambaByte(new MambaConfig(MOE), { backend }),
    /the cpu backend \(cpu \(TypeScript, f32, 1 thread\)\) has no mixture-of-experts ops/,
  );
});

Deno.test("deno task train --moe-* trains a BlackMamba that generate.ts decodes; bad moe options are one line", async () => {
  const dir = await Deno.makeTempDir();
  const run = async (args: string[]) => {
    const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", ...args],
      cwd: new URL("../", import.meta.url).pathname,
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    return { code, stdout: new TextDecoder().decode(stdout), stderr: new TextDecoder().decode(stderr) };
  };
  try {
    await Deno.writeTextFile(`${dir}/corpus.txt`, "a mixture of experts, routed byte by byte. ".repeat(40));
    const tiny = ["--dim=8", "--depth=2", "--d-state=4", "--batch-size=2", "--seq-len=16", "--backend=cpu"];
    const moe = ["--moe-experts=8", "--moe-top-k=1", "--moe-every=2", "--moe-hidden=16"];
    const trained = await run([
      "tasks/train.ts",
      ...tiny,
      ...moe,
      "--steps=2",
      "--log-every=1",
      `--data=${dir}/corpus.txt`,
      `--out=${dir}/run`,
    ]);
    assert.equal(trained.code, 0, trained.stderr);
    assert.match(trained.stdout, /^step 2\/2 loss .* aux \d+\.\d{3} dropped \d+/m);
    const generated = await run([
      "generate.ts",
      `--checkpoint=${dir}/run`,
      "--prompt=a ",
      "--max-bytes=8",
      "--backend=cpu",
    ]);
    assert.equal(generated.code, 0, generated.stderr);
    const bad = await run(["tasks/train.ts", ...tiny, ...moe, "--moe-top-k=9", `--out=${dir}/bad`]);
    assert.equal(bad.code, 1);
    assert.match(
      bad.stderr.trim(),
      /^train: error: MambaConfig: moe\.top_k is 9; it must be an integer from 1 to 8/,
    );
    assert.equal(bad.stderr.trim().split("\n").length, 1);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
