/**
 * bf16 and f16 on the host (lib/half.ts) against values worked out by hand, the CPU backend's
 * emulated matmul precisions, and the "half" activation layout of training against the "full" one.
 */
import assert from "node:assert/strict";
import type { HalfFormat } from "../lib/backend.ts";
import { CpuBackend } from "../lib/backends/cpu.ts";
import { MambaConfig } from "../lib/config.ts";
import { halfBitsOf, halfValue, roundForMatmul } from "../lib/half.ts";
import { MambaByte } from "../lib/model.ts";
import { Random } from "../lib/random.ts";
import { maxRelativeError } from "./backend_conformance.ts";

/** Each format's bits of values worked out by hand. */
const BITS: Record<HalfFormat, [number, number][]> = {
  bf16: [
    [1, 0x3f80],
    [1 + 2 ** -8, 0x3f80], // halfway between 1 and 1 + 2^-7: to the even 1
    [1 + 3 * 2 ** -8, 0x3f82], // halfway between 1 + 2^-7 and 1 + 2^-6: to the even 1 + 2^-6
    [1 + 2 ** -8 + 2 ** -20, 0x3f81], // past halfway: up
    [-2.5, 0xc020],
    [3.4028234663852886e38, 0x7f80], // the largest float rounds up to infinity
    [-Infinity, 0xff80],
    [2 ** -130, 0x0008], // a subnormal: 2^-126 · 2^-4
    [-0, 0x8000],
  ],
  f16: [
    [1, 0x3c00],
    [1 + 2 ** -11, 0x3c00], // halfway between 1 and 1 + 2^-10: to the even 1
    [1 + 3 * 2 ** -11, 0x3c02], // halfway between 1 + 2^-10 and 1 + 2^-9: to the even 1 + 2^-9
    [1 + 2 ** -11 + 2 ** -20, 0x3c01], // past halfway: up
    [-2.5, 0xc100],
    [65504, 0x7bff], // the largest f16
    [65520, 0x7c00], // halfway to 2^16: rounds to infinity
    [1e5, 0x7c00], // beyond the range: infinity
    [-Infinity, 0xfc00],
    [2 ** -20, 0x0010], // a subnormal: 2^-24 · 16
    [2 ** -26, 0x0000], // below half the smallest subnormal: zero
    [-0, 0x8000],
  ],
};

for (const format of ["bf16", "f16"] as const) {
  Deno.test(`${format} rounds to nearest with ties to even, and keeps infinities, NaN and subnormals`, () => {
    for (const [x, bits] of BITS[format]) {
      const got = halfBitsOf(x, format);
      assert.equal(got, bits, `${format} of ${x}: 0x${got.toString(16)}, want 0x${bits.toString(16)}`);
      if (Number.isFinite(x) && Math.abs(x) < 2 ** -24) continue;
      assert.equal(
        halfValue(bits, format),
        roundForMatmul(x, format),
        `${format} value of 0x${bits.toString(16)}`,
      );
    }
    assert.ok(Number.isNaN(halfValue(halfBitsOf(NaN, format), format)));
  });
}

Deno.test("the emulated matmul precisions keep 7 (bf16) and 10 (tf32, f16) mantissa bits", () => {
  assert.equal(roundForMatmul(1 + 2 ** -9, "bf16"), 1);
  assert.equal(roundForMatmul(1 + 2 ** -7, "bf16"), 1 + 2 ** -7);
  assert.equal(roundForMatmul(1 + 2 ** -11, "tf32"), 1); // a tie, to even
  assert.equal(roundForMatmul(1 + 3 * 2 ** -11, "tf32"), 1 + 2 ** -9); // a tie, to even
  assert.equal(roundForMatmul(1 + 2 ** -10, "tf32"), 1 + 2 ** -10);
  assert.equal(roundForMatmul(1 + 2 ** -10, "f16"), 1 + 2 ** -10);
  assert.ok(Number.isFinite(roundForMatmul(3e38, "tf32"))); // tf32 keeps fp32's range; f16 does not
  assert.equal(roundForMatmul(3e38, "f16"), Infinity);
  assert.equal(roundForMatmul(0.1, "fp32"), Math.fround(0.1));
});

Deno.test("cpu matmuls at bf16 and f16 multiply the rounded inputs; 16-bit-stored operands need them", async () => {
  const be = new CpuBackend({ threads: 1 });
  // A (1, 2) = [1 + 2^-12, 3], B (2, 1) = [1, 1 + 2^-8 + 2^-20]
  const a = be.alloc(2), b = be.alloc(2), c = be.alloc(1), stored = be.alloc(1);
  be.write(a, [1 + 2 ** -12, 3]);
  be.write(b, [1, 1 + 2 ** -8 + 2 ** -20]);
  assert.throws(
    () => be.matmul(c, stored, b, 1, 1, 2, { aHalf: true }),
    /16-bit-stored operands \(aHalf\/bHalf\) needs matmul precision bf16 or f16, not fp32/,
  );
  // bf16: 1·1 + 3·(1 + 2^-7); f16: 1·1 + 3·(1 + 2^-8), each B value past a tie of its format
  const want: Record<HalfFormat, number> = { bf16: 1 + 3 * (1 + 2 ** -7), f16: 1 + 3 * (1 + 2 ** -8) };
  for (const format of ["bf16", "f16"] as const) {
    be.setMatmulPrecision(format);
    assert.match(be.description, new RegExp(`${format} matmul inputs`));
    be.matmul(c, a, b, 1, 1, 2);
    assert.equal((await be.read(c))[0], want[format], format);
    be.packHalf(stored, a, 2, format);
    be.matmul(c, stored, b, 1, 1, 2, { aHalf: true });
    assert.equal((await be.read(c))[0], want[format], `${format}, A stored`);
  }
  assert.throws(() => be.packHalf(stored, a, 3, "f16"), /3 values, but the fp32 buffer holds 2/);
  assert.throws(
    () => be.packHalf(stored, a, 2, "fp8" as HalfFormat),
    /unknown 16-bit format "fp8"; choose bf16 or f16/,
  );
});

const CONFIG = new MambaConfig({ dim: 16, depth: 2, d_state: 4, d_conv: 4, bias: true });

function text(n: number, seed: number): number[] {
  const r = new Random(seed);
  return Array.from({ length: n }, () => 97 + r.int(26));
}

Deno.test("training keeps the half layout at bf16 or f16 matmul precision, unless recomputing or quantized", async () => {
  const be = new CpuBackend({ threads: 1 });
  const model = new MambaByte(CONFIG, { backend: be });
  assert.equal(model.activationLayout, "full");
  for (const precision of ["bf16", "f16"] as const) {
    be.setMatmulPrecision(precision);
    assert.equal(model.activationLayout, "half");
  }
  be.setMatmulPrecision("tf32");
  assert.equal(model.activationLayout, "full");
  be.setMatmulPrecision("f16");
  assert.equal(new MambaByte(CONFIG, { backend: be, recompute: true }).activationLayout, "recompute");
  await model.quantize("int8");
  assert.equal(model.activationLayout, "full");
  const fp32Only = new CpuBackend({ threads: 1 });
  fp32Only.setMatmulPrecision("bf16");
  Object.defineProperty(fp32Only, "packHalf", { value: undefined }); // a backend that cannot store 16 bits
  assert.equal(new MambaByte(CONFIG, { backend: fp32Only }).activationLayout, "full");
});

/** A BlackMamba (Mamba, MoE): MoE blocks keep their fp32 activations in the "half" layout. */
const MOE_CONFIG = new MambaConfig({
  dim: 12,
  depth: 2,
  d_state: 4,
  moe: { experts: 3, top_k: 2, every: 2, hidden: 10, aux_loss_coef: 0.1, capacity_factor: 2 },
});

for (const [name, config] of [["Mamba", CONFIG], ["BlackMamba", MOE_CONFIG]] as const) {
  for (const format of ["bf16", "f16"] as const) {
    Deno.test(
      `${name} at ${format}: the half layout gives the full layout's loss and, within rounding of xz, its gradients`,
      async () => {
        const run = async (stores: boolean) => {
          const be = new CpuBackend({ threads: 1 });
          be.setMatmulPrecision(format);
          if (!stores) Object.defineProperty(be, "packHalf", { value: undefined });
          const model = new MambaByte(config, { backend: be, seed: 3 });
          const bytes = text(2 * 41, 8);
          const inputs = [...bytes.slice(0, 40), ...bytes.slice(41, 81)];
          const targets = [...bytes.slice(1, 41), ...bytes.slice(42, 82)];
          const { loss } = await model.lossAndBackward(inputs, targets, [2, 40]);
          return { layout: model.activationLayout, loss, grads: await be.read(model.grads) };
        };
        const half = await run(true), full = await run(false);
        assert.deepEqual([half.layout, full.layout], ["half", "full"]);
        // forward reads the same 16-bit values either way: the same bits
        assert.equal(half.loss, full.loss);
        // backward reads xz in 16 bits (2^-8 or 2^-11 relative) in the conv's and the scan's
        // backward: far below it
        const error = maxRelativeError(half.grads, full.grads);
        assert.ok(error > 0 && error < 2e-3, `gradients: max relative error ${error}`);
      },
    );
  }
}
