/**
 * bf16 on the host (lib/bf16.ts) against values worked out by hand, the CPU backend's emulated
 * matmul precisions, and the "bf16" activation layout of training against the "full" one.
 */
import assert from "node:assert/strict";
import { CpuBackend } from "../lib/backends/cpu.ts";
import { bf16Bits, bf16Value, roundForMatmul } from "../lib/bf16.ts";
import { MambaConfig } from "../lib/config.ts";
import { MambaByte } from "../lib/model.ts";
import { Random } from "../lib/random.ts";
import { maxRelativeError } from "./backend_conformance.ts";

Deno.test("bf16 rounds to nearest with ties to even, and keeps infinities, NaN and subnormals", () => {
  const cases: [number, number][] = [
    [1, 0x3f80],
    [1 + 2 ** -8, 0x3f80], // halfway between 1 and 1 + 2^-7: to the even 1
    [1 + 3 * 2 ** -8, 0x3f82], // halfway between 1 + 2^-7 and 1 + 2^-6: to the even 1 + 2^-6
    [1 + 2 ** -8 + 2 ** -20, 0x3f81], // past halfway: up
    [-2.5, 0xc020],
    [3.4028234663852886e38, 0x7f80], // the largest float rounds up to infinity
    [-Infinity, 0xff80],
    [2 ** -130, 0x0008], // a subnormal: 2^-126 · 2^-4
    [-0, 0x8000],
  ];
  for (const [x, bits] of cases) {
    assert.equal(
      bf16Bits(x),
      bits,
      `bf16 of ${x}: 0x${bf16Bits(x).toString(16)}, want 0x${bits.toString(16)}`,
    );
  }
  assert.equal(bf16Value(0x3f82), 1 + 2 ** -6);
  assert.equal(bf16Value(0xc020), -2.5);
  assert.ok(Number.isNaN(bf16Value(bf16Bits(NaN))));
});

Deno.test("the emulated matmul precisions keep 7 (bf16) and 10 (tf32) mantissa bits", () => {
  assert.equal(roundForMatmul(1 + 2 ** -9, "bf16"), 1);
  assert.equal(roundForMatmul(1 + 2 ** -7, "bf16"), 1 + 2 ** -7);
  assert.equal(roundForMatmul(1 + 2 ** -11, "tf32"), 1); // a tie, to even
  assert.equal(roundForMatmul(1 + 3 * 2 ** -11, "tf32"), 1 + 2 ** -9); // a tie, to even
  assert.equal(roundForMatmul(1 + 2 ** -10, "tf32"), 1 + 2 ** -10);
  assert.equal(roundForMatmul(0.1, "fp32"), Math.fround(0.1));
});

Deno.test("cpu matmuls at bf16 precision multiply the rounded inputs; bf16-stored operands need it", () => {
  const be = new CpuBackend({ threads: 1 });
  // A (1, 2) = [1 + 2^-9, 3], B (2, 1) = [1, 1 + 2^-8 + 2^-20]: at bf16, (1)(1) + 3(1 + 2^-7)
  const a = be.alloc(2), b = be.alloc(2), c = be.alloc(1), stored = be.alloc(1);
  be.write(a, [1 + 2 ** -9, 3]);
  be.write(b, [1, 1 + 2 ** -8 + 2 ** -20]);
  be.matmul(c, a, b, 1, 1, 2);
  assert.throws(
    () => be.matmul(c, stored, b, 1, 1, 2, { aBf16: true }),
    /bf16-stored operands \(aBf16\/bBf16\) needs matmul precision bf16, not fp32/,
  );
  be.setMatmulPrecision("bf16");
  assert.match(be.description, /bf16 matmul inputs/);
  be.matmul(c, a, b, 1, 1, 2);
  return be.read(c).then(async (rounded) => {
    assert.equal(rounded[0], 1 + 3 * (1 + 2 ** -7));
    be.packBf16(stored, a, 2);
    be.matmul(c, stored, b, 1, 1, 2, { aBf16: true });
    assert.equal((await be.read(c))[0], 1 + 3 * (1 + 2 ** -7));
    assert.throws(() => be.packBf16(stored, a, 3), /3 values, but the fp32 buffer holds 2/);
  });
});

const CONFIG = new MambaConfig({ dim: 16, depth: 2, d_state: 4, d_conv: 4, bias: true });

function text(n: number, seed: number): number[] {
  const r = new Random(seed);
  return Array.from({ length: n }, () => 97 + r.int(26));
}

Deno.test("training keeps the bf16 layout at bf16 matmul precision, unless recomputing or quantized", async () => {
  const be = new CpuBackend({ threads: 1 });
  const model = new MambaByte(CONFIG, { backend: be });
  assert.equal(model.activationLayout, "full");
  be.setMatmulPrecision("bf16");
  assert.equal(model.activationLayout, "bf16");
  assert.equal(new MambaByte(CONFIG, { backend: be, recompute: true }).activationLayout, "recompute");
  await model.quantize("int8");
  assert.equal(model.activationLayout, "full");
  const fp32Only = new CpuBackend({ threads: 1 });
  fp32Only.setMatmulPrecision("bf16");
  Object.defineProperty(fp32Only, "packBf16", { value: undefined }); // a backend that cannot store bf16
  assert.equal(new MambaByte(CONFIG, { backend: fp32Only }).activationLayout, "full");
});

/** A BlackMamba (Mamba, MoE): MoE blocks keep their fp32 activations in the "bf16" layout. */
const MOE_CONFIG = new MambaConfig({
  dim: 12,
  depth: 2,
  d_state: 4,
  moe: { experts: 3, top_k: 2, every: 2, hidden: 10, aux_loss_coef: 0.1, capacity_factor: 2 },
});

for (const [name, config] of [["Mamba", CONFIG], ["BlackMamba", MOE_CONFIG]] as const) {
  Deno.test(`${name}: the bf16 layout gives the full layout's loss and, within bf16 rounding of xz, its gradients`, async () => {
    const run = async (storesBf16: boolean) => {
      const be = new CpuBackend({ threads: 1 });
      be.setMatmulPrecision("bf16");
      if (!storesBf16) Object.defineProperty(be, "packBf16", { value: undefined });
      const model = new MambaByte(config, { backend: be, seed: 3 });
      const bytes = text(2 * 41, 8);
      const inputs = [...bytes.slice(0, 40), ...bytes.slice(41, 81)];
      const targets = [...bytes.slice(1, 41), ...bytes.slice(42, 82)];
      const { loss } = await model.lossAndBackward(inputs, targets, [2, 40]);
      return { layout: model.activationLayout, loss, grads: await be.read(model.grads) };
    };
    const bf16 = await run(true), full = await run(false);
    assert.deepEqual([bf16.layout, full.layout], ["bf16", "full"]);
    // forward reads the same bf16 values either way: the same bits
    assert.equal(bf16.loss, full.loss);
    // backward reads xz as bf16 (2^-8 relative) in the conv's and the scan's backward: far below it
    const error = maxRelativeError(bf16.grads, full.grads);
    assert.ok(error > 0 && error < 2e-3, `gradients: max relative error ${error}`);
  });
}
