/**
 * 8-bit AdamW moments on the cpu reference: the code's round trip, the quantization done by the
 * adamw8bit op, one step against AdamW computed here in float64 from the dequantized moments,
 * convergence on a quadratic next to the fp32 optimizer, and checkpoint state. Expected values
 * come from the formulas written out below, not from lib/quant8.ts.
 */
import assert from "node:assert/strict";
import type { AdamWOptions, DeviceBuffer } from "../lib/backend.ts";
import { CpuBackend } from "../lib/backends/cpu.ts";
import { encodeSafetensors, parseSafetensors } from "../lib/checkpoint.ts";
import { MambaConfig } from "../lib/config.ts";
import { AdamW, type AdamWConfig } from "../lib/optim.ts";
import { paramTable } from "../lib/params.ts";
import { decodeM, decodeV, encodeM, encodeV } from "../lib/quant8.ts";
import { Random } from "../lib/random.ts";

// The code, as the design states it: m ≈ s·sign(c)·(c/127)², v ≈ s·(c/255)⁴.
const mValue = (c: number, s: number) => s * Math.sign(c) * (c / 127) ** 2;
const vValue = (c: number, s: number) => s * (c / 255) ** 4;
/** Largest error of rounding to the nearest code in the companded domain, at code c. */
const mStep = (c: number, s: number) => s * ((Math.abs(c) + 0.5) ** 2 - c ** 2) / 127 ** 2;
const vStep = (c: number, s: number) => s * (((c + 0.5) / 255) ** 4 - (c / 255) ** 4);

/** The bytes of packed int32 code words, in order (little-endian words); m codes signed. */
function bytes(words: ArrayLike<number>, signed: boolean): number[] {
  const out = [...new Uint8Array(Int32Array.from(words).buffer)];
  return signed ? out.map((b) => (b >= 128 ? b - 256 : b)) : out;
}

function assertNearestM(x: number, c: number, s: number, what: string): void {
  assert.ok(Math.abs(c) <= 127 && Number.isInteger(c), `${what}: code ${c}`);
  assert.ok(c === 0 || Math.sign(c) === Math.sign(x), `${what}: code ${c} for ${x}`);
  assert.ok(Math.abs(127 * Math.sqrt(Math.abs(x) / s) - Math.abs(c)) <= 0.5 + 1e-6, `${what}: ${c} for ${x}`);
  const error = Math.abs(mValue(c, s) - x);
  assert.ok(error <= mStep(c, s) * (1 + 1e-6) + 1e-12 * s, `${what}: ${x} → ${c}, error ${error}`);
}

function assertNearestV(x: number, c: number, s: number, what: string): void {
  assert.ok(c >= 0 && c <= 255 && Number.isInteger(c), `${what}: code ${c}`);
  assert.ok(Math.abs(255 * (x / s) ** 0.25 - c) <= 0.5 + 1e-6, `${what}: ${c} for ${x}`);
  const error = Math.abs(vValue(c, s) - x);
  assert.ok(error <= vStep(c, s) * (1 + 1e-6) + 1e-12 * s, `${what}: ${x} → ${c}, error ${error}`);
}

Deno.test("the 8-bit code: nearest code, decoded within its step, absmax exact, zero and negative values", () => {
  const rng = new Random(11);
  for (const s of [1, 3.7e-3, 2.5e4]) {
    for (let k = 0; k < 2000; k++) {
      // uniform, and spread over many orders of magnitude (the companded code's small values)
      const m = (k % 2 ? rng.uniform(-1, 1) : Math.sign(rng.normal()) * 10 ** -rng.uniform(0, 9)) * s;
      const v = (k % 2 ? rng.uniform(0, 1) : 10 ** -rng.uniform(0, 12)) * s;
      const cm = encodeM(m, s), cv = encodeV(v, s);
      assertNearestM(m, cm, s, `m at scale ${s}`);
      assertNearestV(v, cv, s, `v at scale ${s}`);
      assert.ok(Math.abs(decodeM(cm, s) - mValue(cm, s)) <= 1e-15 * s, "decodeM");
      assert.ok(Math.abs(decodeV(cv, s) - vValue(cv, s)) <= 1e-15 * s, "decodeV");
    }
    assert.deepEqual([encodeM(s, s), encodeM(-s, s), encodeV(s, s)], [127, -127, 255]);
    assert.deepEqual([decodeM(127, s), decodeM(-127, s), decodeV(255, s)], [s, -s, s], "absmax is exact");
    assert.deepEqual([encodeM(0, s), encodeV(0, s), decodeM(0, s), decodeV(0, s)], [0, 0, 0, 0]);
  }
  assert.deepEqual([encodeM(0, 0), encodeV(0, 0)], [0, 0], "a zero block: all codes 0");
  assert.ok(encodeM(-1e-3, 1) < 0 && decodeM(encodeM(-1e-3, 1), 1) < 0, "negative values stay negative");
});

const OPTIONS: AdamWOptions = {
  lr: 1e-2,
  beta1: 0.9,
  beta2: 0.95,
  eps: 1e-8,
  weightDecay: 0.1,
  step: 1,
  gradScale: 0.5,
};

/** The buffers of adamw8bit over n elements on a cpu backend, zero state. */
function state(be: CpuBackend, n: number) {
  const blocks = Math.ceil(n / 256);
  return {
    p: be.alloc(n),
    g: be.alloc(n),
    mc: be.allocIndices(64 * blocks),
    vc: be.allocIndices(64 * blocks),
    s: be.alloc(2 * blocks),
  };
}

Deno.test("adamw8bit with β1 = β2 = 0 quantizes the gradients: partial last block, zero block, signs", async () => {
  const be = new CpuBackend(), rng = new Random(5), n = 1000, gs = 0.5;
  const g = Float32Array.from(
    { length: n },
    (_, i) => (i >= 256 && i < 512 ? 0 : rng.normal() * 10 ** -rng.uniform(0, 4)),
  );
  const b = state(be, n);
  be.write(b.g, g);
  be.adamw8bit(b.p, b.g, b.mc, b.vc, b.s, { ...OPTIONS, beta1: 0, beta2: 0, gradScale: gs, weightDecay: 0 });
  const scales = await be.read(b.s);
  const m = bytes(await be.readIndices(b.mc), true), v = bytes(await be.readIndices(b.vc), false);
  assert.equal(m.length, 1024);
  for (let block = 0; block < 4; block++) {
    const xs = [...g.subarray(256 * block, 256 * (block + 1))].map((x) => x * gs);
    const sm = scales[2 * block], sv = scales[2 * block + 1];
    assert.equal(sm, Math.fround(Math.max(...xs.map(Math.abs))), `block ${block}: absmax of m`);
    assert.equal(sv, Math.fround(Math.max(...xs.map((x) => x * x))), `block ${block}: absmax of v`);
    if (block === 1) {
      assert.deepEqual([sm, sv], [0, 0]);
      assert.ok(m.slice(256, 512).every((c) => c === 0) && v.slice(256, 512).every((c) => c === 0));
      continue;
    }
    xs.forEach((x, j) => {
      const i = 256 * block + j;
      assertNearestM(x, m[i], sm, `m[${i}]`);
      assertNearestV(x * x, v[i], sv, `v[${i}]`);
      if (Math.abs(x) === Math.max(...xs.map(Math.abs))) {
        assert.equal(mValue(m[i], sm), Math.fround(x), `m[${i}]: the absmax element decodes exactly`);
        assert.equal(v[i], 255);
      }
    });
    assert.ok(xs.some((x, j) => x < 0 && m[256 * block + j] < 0), "negative m codes");
  }
  assert.deepEqual(m.slice(n), new Array(24).fill(0), "the last block's padding codes are 0");
  assert.deepEqual(v.slice(n), new Array(24).fill(0));
});

Deno.test("one adamw8bit step is AdamW on the dequantized moments, then requantized", async () => {
  const be = new CpuBackend(), rng = new Random(8), n = 700;
  const b = state(be, n);
  be.write(b.p, Float32Array.from({ length: n }, () => rng.normal()));
  for (let t = 1; t <= 4; t++) { // a realistic state: a few steps of noisy gradients
    be.write(b.g, Float32Array.from({ length: n }, (_, i) => rng.normal() * (1 + (i % 7))));
    be.adamw8bit(b.p, b.g, b.mc, b.vc, b.s, { ...OPTIONS, step: t });
  }
  const p0 = await be.read(b.p), s0 = await be.read(b.s);
  const m0 = bytes(await be.readIndices(b.mc), true), v0 = bytes(await be.readIndices(b.vc), false);
  const g = Float32Array.from({ length: n }, () => rng.normal());
  be.write(b.g, g);
  const o = { ...OPTIONS, step: 5 };
  be.adamw8bit(b.p, b.g, b.mc, b.vc, b.s, o);
  const p1 = await be.read(b.p), s1 = await be.read(b.s);
  const m1 = bytes(await be.readIndices(b.mc), true), v1 = bytes(await be.readIndices(b.vc), false);

  const c1 = 1 - 0.9 ** 5, c2 = 1 - 0.95 ** 5;
  for (let block = 0; block * 256 < n; block++) {
    const ms: number[] = [], vs: number[] = [];
    for (let i = 256 * block; i < Math.min(n, 256 * (block + 1)); i++) {
      const gi = g[i] * o.gradScale;
      const m = 0.9 * mValue(m0[i], s0[2 * block]) + 0.1 * gi;
      const v = 0.95 * vValue(v0[i], s0[2 * block + 1]) + 0.05 * gi * gi;
      const p = p0[i] * (1 - o.lr * o.weightDecay) - (o.lr * m / c1) / (Math.sqrt(v / c2) + o.eps);
      assert.ok(Math.abs(p1[i] - p) <= 1e-6 * Math.max(1, Math.abs(p)), `p[${i}]: ${p1[i]} vs ${p}`);
      ms.push(m);
      vs.push(v);
    }
    const sm = Math.max(...ms.map(Math.abs)), sv = Math.max(...vs);
    assert.ok(
      Math.abs(s1[2 * block] - sm) <= 1e-6 * sm,
      `block ${block}: scale of m ${s1[2 * block]} vs ${sm}`,
    );
    assert.ok(Math.abs(s1[2 * block + 1] - sv) <= 1e-6 * sv, `block ${block}: scale of v`);
    ms.forEach((m, j) => assertNearestM(m, m1[256 * block + j], s1[2 * block], `new m[${256 * block + j}]`));
    vs.forEach((v, j) =>
      assertNearestV(v, v1[256 * block + j], s1[2 * block + 1], `new v[${256 * block + j}]`)
    );
  }
});

/**
 * Final loss of 300 steps of AdamW (bits) with a cosine learning rate on the noisy quadratic
 * ½ Σ a_i (p_i - t_i)² over a small model's parameter table (a_i log-uniform over 10⁻², 10¹).
 */
async function quadraticLoss(bits: 32 | 8): Promise<{ first: number; last: number }> {
  const be = new CpuBackend(), rng = new Random(21);
  const table = paramTable(new MambaConfig({ dim: 16, depth: 2, d_state: 4 }), true);
  const n = table.size, a = new Float64Array(n), target = new Float64Array(n);
  for (const spec of table.specs) {
    for (let i = spec.offset; i < spec.offset + spec.size; i++) {
      a[i] = 10 ** rng.uniform(-2, 1);
      target[i] = rng.normal();
    }
  }
  const params = be.alloc(n), grads = be.alloc(n);
  const config: AdamWConfig = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0, bits };
  const adamw = new AdamW(be, table, config);
  const loss = (p: ArrayLike<number>) => {
    let sum = 0;
    for (let i = 0; i < n; i++) sum += 0.5 * a[i] * (p[i] - target[i]) ** 2;
    return sum / table.count;
  };
  const first = loss(await be.read(params));
  const steps = 300, noise = new Random(3);
  for (let t = 1; t <= steps; t++) {
    const p = await be.read(params);
    be.write(
      grads,
      Float64Array.from(p, (x, i) => a[i] ? a[i] * (x - target[i]) + 0.05 * noise.normal() : 0),
    );
    const lr = 3e-4 + 0.5 * (3e-2 - 3e-4) * (1 + Math.cos((Math.PI * t) / steps));
    adamw.step(params, grads, lr, 1);
  }
  return { first, last: loss(await be.read(params)) };
}

Deno.test("300 steps on a noisy quadratic: 8-bit moments converge as close as fp32's", async () => {
  const fp32 = await quadraticLoss(32), int8 = await quadraticLoss(8);
  assert.ok(fp32.last < fp32.first / 1000, `fp32: ${fp32.first} → ${fp32.last}`);
  assert.ok(int8.last < int8.first / 1000, `8-bit: ${int8.first} → ${int8.last}`);
  assert.ok(Math.abs(int8.last - fp32.last) <= 0.03 * fp32.last, `8-bit ${int8.last} vs fp32 ${fp32.last}`);
});

Deno.test("8-bit AdamW state: U8 codes and F32 scales through safetensors resume bit-exactly", async () => {
  const table = paramTable(new MambaConfig({ dim: 8, depth: 1, d_state: 2 }), true);
  const rng = new Random(4);
  const grads = Array.from(
    { length: 6 },
    () => Float32Array.from({ length: table.size }, () => rng.normal()),
  );
  /** Steps [from, to) of the gradient sequence. */
  const run = (be: CpuBackend, adamw: AdamW, params: DeviceBuffer, from: number, to: number) => {
    const g = be.alloc(table.size);
    for (let t = from; t < to; t++) {
      be.write(g, grads[t]);
      adamw.step(params, g, 1e-2, 0.8);
    }
  };
  const config: AdamWConfig = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, bits: 8 };
  const whole = new CpuBackend(), wholeParams = whole.alloc(table.size);
  run(whole, new AdamW(whole, table, config), wholeParams, 0, 6);

  const first = new CpuBackend(), params = first.alloc(table.size), adamw = new AdamW(first, table, config);
  run(first, adamw, params, 0, 3);
  const { tensors, t } = await adamw.readState();
  const codes = tensors.get("optimizer.m_codes")!, scales = tensors.get("optimizer.scales")!;
  assert.equal(codes.dtype, "U8");
  assert.equal(codes.shape[0] % 256, 0);
  assert.deepEqual([scales.dtype, scales.shape], ["F32", [codes.shape[0] / 256, 2]]);
  const file = parseSafetensors(encodeSafetensors(tensors, {}));

  const second = new CpuBackend(), resumed = new AdamW(second, table, config);
  const params2 = second.alloc(table.size);
  second.write(params2, await first.read(params));
  resumed.writeState(file.tensors, t);
  assert.equal(resumed.t, 3);
  run(second, resumed, params2, 3, 6);
  assert.deepEqual(await second.read(params2), await whole.read(wholeParams));

  const fp32 = new AdamW(second, table, { ...config, bits: 32 });
  assert.throws(
    () => fp32.writeState(file.tensors, t),
    /holds 8-bit AdamW moments, but this optimizer keeps 32-bit/,
  );
  const fp32State = (await fp32.readState()).tensors;
  assert.throws(
    () => resumed.writeState(fp32State, t),
    /holds 32-bit AdamW moments, but this optimizer keeps 8-bit/,
  );
  const short = new Map(file.tensors);
  short.set("optimizer.scales", { dtype: "F32", shape: [1, 2], data: new Float32Array(2) });
  assert.throws(
    () => resumed.writeState(short, t),
    /"optimizer.scales" should be F32 \[\d+,2\] for this model/,
  );
  assert.throws(
    () => new AdamW(second, table, { ...config, bits: 16 as 8 }),
    /bits must be one of 32, 8, got 16/,
  );
});
