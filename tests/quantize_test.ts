/**
 * int8 weight-only quantization on the cpu: the host quantizer (codes, scales, packing, zero rows,
 * padding), the cpu reference of matmulInt8 against a float64 product of the dequantized weights
 * computed here, and a quantized model (int8 decode equals its own forward, stays close to the
 * fp32 model, refuses training). Codes are unpacked here with a DataView, not the code under test.
 */
import assert from "node:assert/strict";
import { type Backend, checkRmsnormMatmul, type ConvStepOperands } from "../lib/backend.ts";
import { CpuBackend } from "../lib/backends/cpu.ts";
import { MambaConfig } from "../lib/config.ts";
import { MambaByte } from "../lib/model.ts";
import { type Int8Matrix, LinearWeights, quantizeInt8 } from "../lib/quantize.ts";
import { Random } from "../lib/random.ts";
import { maxRelativeError } from "./backend_conformance.ts";

/** Code p of row o: byte 4·(o·⌈K/4⌉) + p of the little-endian words. */
function code(q: Int8Matrix, k: number, o: number, p: number): number {
  return new DataView(q.codes.buffer, q.codes.byteOffset).getInt8(4 * o * Math.ceil(k / 4) + p);
}

/** dequant(W) (N, K) in float64, from the bytes. */
function dequantized(q: Int8Matrix, n: number, k: number): Float64Array {
  const w = new Float64Array(n * k);
  for (let o = 0; o < n; o++) for (let p = 0; p < k; p++) w[o * k + p] = q.scales[o] * code(q, k, o, p);
  return w;
}

function randn(n: number, rng: Random, scale = 1): Float32Array {
  return Float32Array.from({ length: n }, () => scale * rng.normal());
}

Deno.test("quantizeInt8: a row worked by hand (scale, rounding half away from zero, byte order)", () => {
  // absmax 127: scale 1, so every quotient is exact; halves round away from zero
  const q = quantizeInt8([63.5, -127, 31.75, 0.5, -63.5, -0.5, 2.5], 1, 7);
  assert.deepEqual([...q.scales], [1]);
  // codes 64, -127, 32, 1 | -64, -1, 3 and one zero pad code; byte 0 is the first code
  assert.deepEqual([...q.codes], [64 | (0x81 << 8) | (32 << 16) | (1 << 24), 0xc0 | (0xff << 8) | (3 << 16)]);
});

Deno.test("quantizeInt8: codes in [-127, 127], each row's absmax at ±127, within scale/2, odd K padded with zeros", () => {
  const rng = new Random(7);
  for (const [n, k] of [[5, 1], [7, 13], [3, 64], [4, 130]]) {
    const w = randn(n * k, rng, 0.3);
    w[2 % (n * k)] = 0; // an exact zero stays zero
    const q = quantizeInt8(w, n, k);
    const words = Math.ceil(k / 4);
    assert.equal(q.codes.length, n * words);
    const back = dequantized(q, n, k);
    for (let o = 0; o < n; o++) {
      const row = Array.from(w.subarray(o * k, (o + 1) * k));
      const absmax = Math.max(...row.map(Math.abs));
      assert.equal(q.scales[o], Math.fround(absmax / 127), `scale of row ${o}`);
      const at = row.findIndex((v) => Math.abs(v) === absmax);
      assert.equal(code(q, k, o, at), Math.sign(row[at]) * 127, `row ${o}: its absmax maps to ±127`);
      for (let p = 0; p < k; p++) {
        const c = code(q, k, o, p);
        assert.ok(c >= -127 && c <= 127, `code ${c}`);
        assert.ok(
          Math.abs(back[o * k + p] - row[p]) <= q.scales[o] / 2 * (1 + 1e-6),
          `W[${o}, ${p}] = ${row[p]} dequantized to ${back[o * k + p]} (scale ${q.scales[o]})`,
        );
      }
      for (let p = k; p < 4 * words; p++) assert.equal(code(q, k, o, p), 0, `padding code ${p} of row ${o}`);
    }
    assert.equal(back[2 % (n * k)], 0);
  }
});

Deno.test("quantizeInt8: a zero row has scale 0 and codes 0; non-finite weights and bad shapes are errors", () => {
  const q = quantizeInt8([0, 0, 0, 0, 0, 1, -2, 3, 0.5, 0], 2, 5);
  assert.equal(q.scales[0], 0);
  assert.deepEqual([...q.codes.subarray(0, 2)], [0, 0]);
  assert.equal(q.scales[1], Math.fround(3 / 127));
  assert.throws(() => quantizeInt8([1, NaN, 2], 1, 3), /W\[0, 1\] is NaN/);
  assert.throws(() => quantizeInt8([1, 2, Infinity, 0], 2, 2), /W\[1, 0\] is Infinity/);
  assert.throws(() => quantizeInt8([1, 2, 3], 2, 2), /3 values do not fill \(2, 2\)/);
});

/** C (M, N) = A · dequant(W)ᵀ in float64, A's rows lda apart. */
function reference(
  a: Float32Array,
  w: Float64Array,
  m: number,
  n: number,
  k: number,
  lda: number,
): Float64Array {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += a[i * lda + p] * w[j * k + p];
      c[i * n + j] = s;
    }
  }
  return c;
}

for (const precision of ["f32", "f64"] as const) {
  Deno.test(`cpu (${precision}) matmulInt8 is the fp32 product of the dequantized weights: M, N, K odd, accumulate, lda`, async () => {
    const be = new CpuBackend({ precision }), rng = new Random(11);
    for (const [m, n, k, lda] of [[1, 7, 13, 13], [3, 5, 9, 14], [64, 37, 70, 70], [2, 1, 1, 3]]) {
      const a = randn(m * lda, rng), w = randn(n * k, rng, 0.1), c0 = randn(m * n, rng);
      const q = quantizeInt8(w, n, k), expected = reference(a, dequantized(q, n, k), m, n, k, lda);
      const ab = be.alloc(a.length),
        cb = be.alloc(m * n),
        sb = be.alloc(n),
        codes = be.allocIndices(q.codes.length);
      be.writeIndices(codes, q.codes);
      be.write(ab, a);
      be.write(sb, q.scales);
      be.write(cb, c0);
      be.matmulInt8(cb, ab, codes, sb, m, n, k, { lda });
      const shape = `M=${m} N=${n} K=${k} lda=${lda}`;
      assert.ok(maxRelativeError(await be.read(cb), expected) <= 1e-6, `${shape}: overwrite`);
      be.write(cb, c0);
      be.matmulInt8(cb, ab, codes, sb, m, n, k, { lda, accumulate: true });
      const sum = expected.map((v, i) => v + c0[i]);
      assert.ok(maxRelativeError(await be.read(cb), sum) <= 1e-6, `${shape}: accumulate`);
    }
  });
}

Deno.test("matmulInt8 checks its buffers against the shape", () => {
  const be = new CpuBackend();
  const q = quantizeInt8(new Float32Array(3 * 6), 3, 6); // 3 rows of 2 words
  const codes = be.allocIndices(q.codes.length), scales = be.alloc(3), a = be.alloc(12), c = be.alloc(6);
  be.writeIndices(codes, q.codes);
  assert.throws(() => be.matmulInt8(c, a, codes, scales, 2, 3, 9), /codes holds 6 values, needs 9/);
  assert.throws(() => be.matmulInt8(c, a, codes, be.alloc(2), 2, 3, 6), /scales holds 2 values, needs 3/);
  assert.throws(() => be.matmulInt8(c, a, codes, scales, 2, 3, 6, { lda: 7 }), /A holds 12 values, needs 13/);
  assert.throws(() => be.matmulInt8(be.alloc(5), a, codes, scales, 2, 3, 6), /C holds 5 values, needs 6/);
  assert.throws(() => be.matmulInt8(c, a, codes, scales, 2, 3, 6, { lda: 5 }), /lda >= K/);
});

Deno.test("checkRmsnormMatmul: decode rows only (1 to 8), and buffers that fit the shape", () => {
  const be = new CpuBackend();
  const [m, n, k] = [2, 3, 5];
  const c = be.alloc(m * n), a = be.alloc(m * k), norm = be.alloc(k), w = be.alloc(n * k);
  checkRmsnormMatmul("op", c, a, norm, [["W", w, n * k]], m, n, k);
  assert.throws(
    () => checkRmsnormMatmul("op", c, a, norm, [["W", w, n * k]], 9, n, k),
    /op \(M=9, N=3, K=5\): .*M <= 8/,
  );
  assert.throws(() => checkRmsnormMatmul("op", c, a, norm, [["W", w, n * k]], 0, n, k), /integers >= 1/);
  assert.throws(
    () => checkRmsnormMatmul("op", c, a, be.alloc(4), [["W", w, n * k]], m, n, k),
    /norm holds 4 values, needs 5/,
  );
  assert.throws(
    () => checkRmsnormMatmul("op", c, be.alloc(9), norm, [["W", w, n * k]], m, n, k),
    /A holds 9 values, needs 10/,
  );
  assert.throws(
    () => checkRmsnormMatmul("op", c, a, norm, [["W", be.alloc(14), n * k]], m, n, k),
    /W holds 14 values/,
  );
  assert.throws(
    () => checkRmsnormMatmul("op", be.alloc(5), a, norm, [["W", w, n * k]], m, n, k),
    /C holds 5 values/,
  );
  // the conv step on C's first 2 of N = 3 columns, width 4
  const conv: ConvStepOperands = {
    out: be.alloc(m * 2),
    state: be.alloc(m * 2 * 3),
    weight: be.alloc(2 * 4),
    bias: be.alloc(2),
    channels: 2,
    width: 4,
  };
  const withConv = (changes: Partial<ConvStepOperands>) =>
    checkRmsnormMatmul("op", c, a, norm, [["W", w, n * k]], m, n, k, { ...conv, ...changes });
  withConv({});
  withConv({ bias: null });
  assert.throws(() => withConv({ channels: 4 }), /conv step of 4 channels, width 4 .*channels <= N/);
  assert.throws(() => withConv({ width: 9 }), /conv step of 2 channels, width 9 .*width <= 8/);
  assert.throws(() => withConv({ width: 0 }), /width 0/);
  assert.throws(() => withConv({ out: be.alloc(3) }), /conv out holds 3 values, needs 4/);
  assert.throws(() => withConv({ state: be.alloc(11) }), /conv state holds 11 values, needs 12/);
  assert.throws(() => withConv({ weight: be.alloc(7) }), /conv weight holds 7 values, needs 8/);
  assert.throws(() => withConv({ bias: be.alloc(1) }), /conv bias holds 1 values, needs 2/);
});

Deno.test("LinearWeights.applyNormed: the fused op for the weight's form, within decode's rows; false otherwise", () => {
  const calls: string[] = [];
  const cpu = new CpuBackend();
  // the cpu backend has no fused op: the model's fallback (rmsnorm, then the matmul) runs there
  assert.equal((cpu as Backend).rmsnormMatmul, undefined);
  assert.equal(
    new LinearWeights(cpu).applyNormed(cpu.alloc(3), cpu.alloc(2), cpu.alloc(2), 1e-5, cpu.alloc(6), 1, 3, 2),
    false,
  );
  // a backend that has both fused ops, recording which one each call reaches, and whether with a conv step
  const fused = new class extends CpuBackend {
    rmsnormMatmul(...args: unknown[]) {
      calls.push(args[8] ? "fp32 + conv" : "fp32");
    }
    rmsnormMatmulInt8(...args: unknown[]) {
      calls.push(args[9] ? "int8 + conv" : "int8");
    }
  }();
  const linears = new LinearWeights(fused),
    w = cpu.alloc(4 * 16),
    x = cpu.alloc(9 * 16),
    norm = cpu.alloc(16);
  const conv = {
    out: cpu.alloc(2),
    state: cpu.alloc(2 * 3),
    weight: cpu.alloc(2 * 4),
    bias: null,
    channels: 2,
    width: 4,
  };
  assert.equal(linears.applyNormed(cpu.alloc(8 * 4), x, norm, 1e-5, w, 8, 4, 16), true);
  assert.equal(linears.applyNormed(cpu.alloc(9 * 4), x, norm, 1e-5, w, 9, 4, 16), false);
  assert.equal(linears.applyNormed(cpu.alloc(4), x, norm, 1e-5, w, 1, 4, 16, conv), true);
  linears.quantize("int8", [{ weight: w, values: new Float32Array(4 * 16), rows: 4, cols: 16 }]);
  assert.equal(linears.applyNormed(cpu.alloc(4), x, norm, 1e-5, w, 1, 4, 16), true);
  assert.equal(linears.applyNormed(cpu.alloc(4), x, norm, 1e-5, w, 1, 4, 16, conv), true);
  assert.deepEqual(calls, ["fp32", "fp32 + conv", "int8", "int8 + conv"]);
});

/** Index of the largest value. */
function argmax(row: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

const CONFIGS = [
  new MambaConfig({ dim: 24, depth: 2, d_state: 5, d_conv: 4 }),
  new MambaConfig({ dim: 13, depth: 2, d_state: 3, d_conv: 3, dt_rank: 2, bias: true }),
  new MambaConfig({
    dim: 12,
    depth: 2,
    d_state: 4,
    moe: { experts: 4, top_k: 2, every: 2, hidden: 10, capacity_factor: 2 },
  }),
];

for (const config of CONFIGS) {
  const tag = `dim ${config.dim}${config.bias ? ", biases" : ""}${config.moe ? ", moe" : ""}`;
  Deno.test(`quantized model (${tag}): int8 decode equals its own forward; logits near the fp32 model's`, async () => {
    const model = new MambaByte(config, { seed: 4 });
    const text = new TextEncoder().encode("It was the best of times, it was the worst of times.");
    const L = text.length;
    const fp32 = (await model.forward(text, [1, L])).data;
    await model.quantize("int8");
    assert.equal(model.quantization, "int8");
    const int8 = (await model.forward(text, [1, L])).data;
    const cache = model.createCache(1);
    let agree = 0;
    for (let t = 0; t < L; t++) {
      const step = (await model.step([text[t]], cache)).data;
      const row = int8.subarray(t * 256, (t + 1) * 256);
      assert.ok(maxRelativeError(step, row) <= 1e-5, `position ${t}: decode vs forward of the int8 model`);
      if (argmax(row) === argmax(fp32.subarray(t * 256, (t + 1) * 256))) agree++;
    }
    const error = maxRelativeError(int8, fp32);
    assert.ok(error > 1e-5, `the int8 weights are in use: max relative difference ${error} from fp32`);
    assert.ok(error < 0.03, `int8 logits stay near fp32: max relative difference ${error}`);
    assert.ok(agree >= 0.9 * L, `top-1 byte agrees with fp32 at ${agree} of ${L} positions`);
    await model.quantize("none");
    assert.deepEqual((await model.forward(text, [1, L])).data, fp32, "quantize('none') gives fp32 back");
  });
}

Deno.test("a quantized model refuses training and writeParams; an unknown quantization is an error", async () => {
  const model = new MambaByte(new MambaConfig({ dim: 8, depth: 1, d_state: 4 }), { seed: 1 });
  await assert.rejects(
    () => model.quantize("int4" as "int8"),
    /unknown quantization "int4"; choose one of none, int8/,
  );
  assert.equal(model.quantization, "none");
  await model.quantize("int8");
  await assert.rejects(
    () => model.lossAndBackward([1, 2, 3], [2, 3, 4], [1, 3]),
    /lossAndBackward: this model's Linear weights are quantized to int8, for inference only/,
  );
  assert.throws(
    () => model.writeParams(new Float32Array(model.table.size)),
    /quantized to int8; call quantize/,
  );
  const loss = await model.loss([1, 2, 3], [2, 3, 4], [1, 3]);
  assert.ok(Number.isFinite(loss.loss), "evaluation works");
  await model.quantize("none");
  await model.lossAndBackward([1, 2, 3], [2, 3, 4], [1, 3]);
});
