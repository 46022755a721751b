/**
 * int8 weight-only quantization of the Linear layers, for decode (batch-1 decode reads every
 * weight once per byte, so int8 weights read 4× fewer bytes than fp32) and for evaluating the
 * same model.
 *
 * Per output channel o of a Linear weight W (N, K) (y = x·Wᵀ):
 *   scale[o] = max_k |W[o, k]| / 127            (float32; a zero row has scale 0 and codes 0)
 *   code[o, k] = round(W[o, k] / scale[o])      (half away from zero, clamped to [-127, 127])
 *   dequant(W)[o, k] = scale[o] · code[o, k]    (within scale[o] / 2 of W[o, k])
 * Codes are packed four per int32 word, little-endian: code k of row o is byte k % 4 of word
 * o·KW + ⌊k / 4⌋ with KW = ⌈K / 4⌉, each row padded with zero codes to whole words, so rows
 * start on word boundaries. Backend.matmulInt8 reads this layout.
 *
 * Quantization runs once on the host; `LinearWeights` holds the result on the device and is
 * the one place the model's Linear products go through: matmul on the fp32 weight, or
 * matmulInt8 on its int8 copy once the model is quantized.
 */
import {
  type Backend,
  type ConvStepOperands,
  type DeviceBuffer,
  type IndexBuffer,
  type Int8MatmulOptions,
  NORMED_MATMUL_MAX_ROWS,
} from "./backend.ts";

/** How the Linear weights are held for forward and decode. */
export type Quantization = "none" | "int8";

/** Every quantization, in the order CLIs list them. */
export const QUANTIZATIONS: readonly Quantization[] = ["none", "int8"];

/** KW: int32 words per row of K int8 codes (rows padded to whole words). */
export function int8WordsPerRow(k: number): number {
  return Math.ceil(k / 4);
}

/** An int8 weight's buffers with the values N rows of K need, named, in checkRmsnormMatmul's form. */
export function int8WeightBuffers(
  codes: { length: number },
  scales: { length: number },
  n: number,
  k: number,
): [string, { length: number }, number][] {
  return [["codes", codes, n * int8WordsPerRow(k)], ["scales", scales, n]];
}

/**
 * Throws a RangeError saying what is wrong when matmulInt8's buffers cannot hold its shape
 * (every backend checks before it launches anything).
 */
export function checkMatmulInt8(
  c: DeviceBuffer,
  a: DeviceBuffer,
  codes: IndexBuffer,
  scales: DeviceBuffer,
  m: number,
  n: number,
  k: number,
  lda: number,
): void {
  const shape = `matmulInt8 (M=${m}, N=${n}, K=${k}, lda=${lda})`;
  if (![m, n, k, lda].every((d) => Number.isInteger(d) && d >= 0) || lda < k) {
    throw new RangeError(`${shape}: dimensions must be integers >= 0 with lda >= K`);
  }
  const needs: [string, number, number][] = [
    ["codes", codes.length, n * int8WordsPerRow(k)],
    ["scales", scales.length, n],
    ["A", a.length, m > 0 ? (m - 1) * lda + k : 0],
    ["C", c.length, m * n],
  ];
  for (const [name, has, needed] of needs) {
    if (has < needed) throw new RangeError(`${shape}: ${name} holds ${has} values, needs ${needed}`);
  }
}

/** A weight (N, K) in int8 on the host: codes (N, KW) packed words and scales (N). */
export interface Int8Matrix {
  codes: Int32Array;
  scales: Float32Array;
}

/**
 * Quantizes W (N, K), row-major, per output channel (see the module comment). Throws on a
 * non-finite weight, naming its row and column.
 */
export function quantizeInt8(w: ArrayLike<number>, n: number, k: number): Int8Matrix {
  if (w.length !== n * k) throw new Error(`quantizeInt8: ${w.length} values do not fill (${n}, ${k})`);
  const words = int8WordsPerRow(k);
  const codes = new Int32Array(n * words), scales = new Float32Array(n);
  for (let o = 0; o < n; o++) {
    let max = 0;
    for (let p = 0; p < k; p++) {
      const v = w[o * k + p];
      if (!Number.isFinite(v)) throw new Error(`quantizeInt8: W[${o}, ${p}] is ${v}`);
      max = Math.max(max, Math.abs(v));
    }
    const scale = Math.fround(max / 127);
    scales[o] = scale;
    if (scale === 0) continue; // a zero row (or one too small for a float32 scale): codes 0
    for (let p = 0; p < k; p++) {
      const x = w[o * k + p] / scale;
      const code = Math.max(-127, Math.min(127, Math.sign(x) * Math.round(Math.abs(x))));
      codes[o * words + (p >> 2)] |= (code & 0xff) << (8 * (p & 3));
    }
  }
  return { codes, scales };
}

/** A Linear weight quantized on the device: codes (N, KW) words and scales (N). */
export interface Int8Weight {
  codes: IndexBuffer;
  scales: DeviceBuffer;
}

/** A Linear weight of the model: its fp32 view in the parameters and its host values (N, K). */
export interface LinearSource {
  weight: DeviceBuffer;
  values: ArrayLike<number>;
  rows: number;
  cols: number;
}

/**
 * The Linear products of a model, y = x·Wᵀ, each through its fp32 weight or — once `quantize`
 * has been given the weight — through its int8 copy. Weights are named by their fp32 views
 * (the objects the model's parameter views hold), so the model's code reads the same either way.
 */
export class LinearWeights {
  readonly #int8 = new Map<DeviceBuffer, Int8Weight>();
  #mode: Quantization = "none";
  #version = 0;

  constructor(readonly backend: Backend) {}

  /** How the weights are held now. */
  get quantization(): Quantization {
    return this.#mode;
  }

  /** Changes whenever the int8 copies are made or dropped (a recorded decode step holds them). */
  get version(): number {
    return this.#version;
  }

  /**
   * out (rows, n) = x (rows, k) · Wᵀ with W (n, k), or += with `accumulate`; rows of x are
   * `lda` apart (default k). With `aHalf`, x is stored in 16 bits (Backend.packHalf): fp32 weights only.
   */
  apply(
    out: DeviceBuffer,
    x: DeviceBuffer,
    weight: DeviceBuffer,
    rows: number,
    n: number,
    k: number,
    options: Int8MatmulOptions & { aHalf?: boolean } = {},
  ): void {
    const q = this.#int8.get(weight);
    if (q && options.aHalf) throw new Error("int8 weights multiply fp32 inputs, not 16-bit-stored ones");
    if (q) this.backend.matmulInt8(out, x, q.codes, q.scales, rows, n, k, options);
    else this.backend.matmul(out, x, weight, rows, n, k, { transB: true, ...options });
  }

  /**
   * out (rows, n) = rmsnorm(x, norm) · Wᵀ in one op, where the backend fuses the two for these
   * rows (decode), followed by the conv step on out's first columns when `conv` is given
   * (ConvStepOperands); false, with nothing done, where it does not.
   */
  applyNormed(
    out: DeviceBuffer,
    x: DeviceBuffer,
    norm: DeviceBuffer,
    eps: number,
    weight: DeviceBuffer,
    rows: number,
    n: number,
    k: number,
    conv?: ConvStepOperands,
  ): boolean {
    const be = this.backend, q = this.#int8.get(weight);
    if (rows > NORMED_MATMUL_MAX_ROWS) return false;
    if (q) {
      if (!be.rmsnormMatmulInt8) return false;
      be.rmsnormMatmulInt8(out, x, norm, q.codes, q.scales, rows, n, k, eps, conv);
    } else {
      if (!be.rmsnormMatmul) return false;
      be.rmsnormMatmul(out, x, norm, weight, rows, n, k, eps, conv);
    }
    return true;
  }

  /** Holds `weights` as `mode`: "int8" quantizes them (replacing any earlier copy), "none" drops the copies. */
  quantize(mode: Quantization, weights: LinearSource[]): void {
    if (!QUANTIZATIONS.includes(mode)) {
      throw new Error(`unknown quantization "${mode}"; choose one of ${QUANTIZATIONS.join(", ")}`);
    }
    // every weight on the host first: an error leaves the model as it was
    const host = mode === "int8" ? weights.map((w) => quantizeInt8(w.values, w.rows, w.cols)) : [];
    this.free();
    host.forEach(({ codes, scales }, i) => {
      const device = {
        codes: this.backend.allocIndices(codes.length),
        scales: this.backend.alloc(scales.length),
      };
      this.backend.writeIndices(device.codes, codes);
      this.backend.write(device.scales, scales);
      this.#int8.set(weights[i].weight, device);
    });
    this.#mode = mode;
  }

  /** Releases the int8 copies (the products go back to the fp32 weights). */
  free(): void {
    for (const { codes, scales } of this.#int8.values()) {
      this.backend.free(codes);
      this.backend.free(scales);
    }
    this.#int8.clear();
    this.#mode = "none";
    this.#version++;
  }
}
