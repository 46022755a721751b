/**
 * Reduced-precision floats on the host, for the CPU backend's packBf16/unpackBf16 and its
 * emulation of tensor-core matmul precisions: bf16 keeps fp32's sign, exponent and top 7
 * mantissa bits, tf32 the top 10. Rounding is to nearest, ties to even (CUDA's
 * __float2bfloat16_rn); a NaN stays a NaN.
 */
import type { FloatArray, MatmulPrecision } from "./backend.ts";

const word = new Float32Array(1), wordBits = new Uint32Array(word.buffer);

/** The fp32 bits of x (rounded to fp32 first) with the low `dropped` mantissa bits rounded off. */
function roundedBits(x: number, dropped: number): number {
  word[0] = x;
  const bits = wordBits[0];
  if ((bits & 0x7fffffff) > 0x7f800000) return bits | (1 << 22); // NaN: kept, and quiet
  const half = 2 ** (dropped - 1) - 1, lowestKept = Math.floor(bits / 2 ** dropped) & 1;
  return Math.floor((bits + half + lowestKept) / 2 ** dropped) * 2 ** dropped;
}

/** The 16 bits of x as bf16. */
export function bf16Bits(x: number): number {
  return roundedBits(x, 16) >>> 16;
}

/** The value that bf16 bits `h` stand for. */
export function bf16Value(h: number): number {
  wordBits[0] = (h & 0xffff) << 16;
  return word[0];
}

/** x rounded to the inputs of a matmul in `precision` ("fp32": to fp32). */
export function roundForMatmul(x: number, precision: MatmulPrecision): number {
  if (precision === "fp32") return Math.fround(x);
  wordBits[0] = roundedBits(x, precision === "bf16" ? 16 : 13);
  return word[0];
}

/** The 16-bit words at the start of a float array's storage: where packBf16 keeps n bf16 values. */
export function bf16Words(data: FloatArray, n: number): Uint16Array {
  if (2 * n > data.byteLength) {
    throw new RangeError(`${n} bf16 values need ${2 * n} bytes; the buffer has ${data.byteLength}`);
  }
  return new Uint16Array(data.buffer, data.byteOffset, n);
}
