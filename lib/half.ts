/**
 * Reduced-precision floats on the host, for the CPU backend's packHalf/unpackHalf and its
 * emulation of tensor-core matmul precisions: bf16 keeps fp32's sign, exponent and top 7
 * mantissa bits, tf32 the top 10; f16 is IEEE half (5-bit exponent, 10 mantissa bits, ±infinity
 * beyond 65504, subnormals below 2^-14). Values are taken to fp32 first, then rounded to nearest,
 * ties to even (CUDA's __float2bfloat16_rn and __float2half_rn); a NaN stays a NaN.
 */
import type { FloatArray, HalfFormat, MatmulPrecision } from "./backend.ts";

const word = new Float32Array(1), wordBits = new Uint32Array(word.buffer);
const half = new Float16Array(1), halfBits = new Uint16Array(half.buffer);

/** The fp32 bits of x (rounded to fp32 first) with the low `dropped` mantissa bits rounded off. */
function roundedBits(x: number, dropped: number): number {
  word[0] = x;
  const bits = wordBits[0];
  if ((bits & 0x7fffffff) > 0x7f800000) return bits | (1 << 22); // NaN: kept, and quiet
  const halfUlp = 2 ** (dropped - 1) - 1, lowestKept = Math.floor(bits / 2 ** dropped) & 1;
  return Math.floor((bits + halfUlp + lowestKept) / 2 ** dropped) * 2 ** dropped;
}

/** The 16 bits of x in `format`. */
export function halfBitsOf(x: number, format: HalfFormat): number {
  if (format === "bf16") return roundedBits(x, 16) >>> 16;
  half[0] = Math.fround(x);
  return halfBits[0];
}

/** The value that 16 bits `h` of `format` stand for. */
export function halfValue(h: number, format: HalfFormat): number {
  if (format === "f16") {
    halfBits[0] = h;
    return half[0];
  }
  wordBits[0] = (h & 0xffff) << 16;
  return word[0];
}

/** x rounded to the inputs of a matmul in `precision` ("fp32": to fp32). */
export function roundForMatmul(x: number, precision: MatmulPrecision): number {
  if (precision === "fp32") return Math.fround(x);
  if (precision === "f16") return Math.f16round(Math.fround(x));
  wordBits[0] = roundedBits(x, precision === "bf16" ? 16 : 13);
  return word[0];
}

/** The 16-bit words at the start of a float array's storage: where packHalf keeps n values. */
export function halfWords(data: FloatArray, n: number): Uint16Array {
  if (2 * n > data.byteLength) {
    throw new RangeError(`${n} 16-bit values need ${2 * n} bytes; the buffer has ${data.byteLength}`);
  }
  return new Uint16Array(data.buffer, data.byteOffset, n);
}
