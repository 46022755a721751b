/**
 * The 8-bit code of AdamW's moments (`optimizer_bits: 8`): blockwise quantization with one
 * absmax scale per block of QUANT_BLOCK elements, companded so that small values keep their
 * resolution (as the dynamic codes of 8-bit Adam do), in closed form: no lookup table, the
 * same formulas on every backend (lib/backends/cpu.ts, kernels/adamw.wgsl, ffi/adamw_8bit.cu).
 *
 *   m (signed), s = absmax of the block's m:   c = sign(m)·round(127·sqrt(|m| / s)),  c ∈ [-127, 127]
 *                                              m ≈ s·sign(c)·(c / 127)²
 *   v (≥ 0),    s = absmax of the block's v:   c = round(255·(v / s)^(1/4)),           c ∈ [0, 255]
 *                                              v ≈ s·(c / 255)⁴
 *
 * round(x) is floor(x + 0.5) (x ≥ 0 here); s = 0 gives all codes 0. The element of largest
 * magnitude decodes exactly to s (its code is ±127 or 255). m codes are two's-complement bytes.
 *
 * A known limit of rounding to the nearest code at every update: small codes stop decaying. A
 * moment whose gradient has stopped shrinks by β each step, but a code c stays c while
 * β·(c/127)² is still nearer to it than to c - 1: m codes up to 9 under β1 = 0.9, v codes up to
 * about 39 under β2 = 0.95 (unless the block's absmax moves). So an element whose gradient stays
 * exactly 0 keeps a small m and gets small updates that do not die out as fp32's do.
 *
 * Codes are packed four to an int32 word, little-endian: byte i of a run of codes is bits
 * 8·(i & 3) … 8·(i & 3) + 7 of word i >> 2 (so CUDA reads the same memory as uint8_t).
 */

/** Elements per quantization block (one workgroup / CUDA block each). */
export const QUANT_BLOCK = 256;
/** int32 words of codes per block. */
export const QUANT_BLOCK_WORDS = QUANT_BLOCK / 4;

/**
 * Throws a RangeError unless adamw8bit's buffers fit n parameters: n gradients, ceil(n / 256)
 * blocks of 64 words of m and of v codes, and 2 scales per block.
 */
export function checkAdamw8bitLengths(
  n: number,
  grad: number,
  mWords: number,
  vWords: number,
  scales: number,
): void {
  const blocks = Math.ceil(n / QUANT_BLOCK), words = blocks * QUANT_BLOCK_WORDS;
  if (grad !== n || mWords !== words || vWords !== words || scales !== 2 * blocks) {
    throw new RangeError(
      `adamw8bit: ${n} parameters need ${n} gradients, ${words} words of m codes and of v codes and ` +
        `${2 * blocks} scales (got ${grad}, ${mWords}, ${vWords}, ${scales})`,
    );
  }
}

/** The m code (-127 … 127) of `m` in a block of absmax `scale`. */
export function encodeM(m: number, scale: number): number {
  if (!(scale > 0)) return 0;
  const c = Math.min(127, Math.floor(127 * Math.sqrt(Math.abs(m) / scale) + 0.5));
  return m < 0 ? -c : c;
}

/** The m that code `c` stands for in a block of absmax `scale`. */
export function decodeM(c: number, scale: number): number {
  const q = c / 127;
  return scale * q * Math.abs(q);
}

/** The v code (0 … 255) of `v` ≥ 0 in a block of absmax `scale`. */
export function encodeV(v: number, scale: number): number {
  if (!(scale > 0)) return 0;
  return Math.min(255, Math.floor(255 * Math.sqrt(Math.sqrt(v / scale)) + 0.5));
}

/** The v that code `c` stands for in a block of absmax `scale`. */
export function decodeV(c: number, scale: number): number {
  const q = c / 255, q2 = q * q;
  return scale * q2 * q2;
}

/** Byte i (0 … 255) of codes packed in `words`. */
export function codeByte(words: Int32Array, i: number): number {
  return (words[i >> 2] >>> (8 * (i & 3))) & 0xff;
}

/** Sets byte i of codes packed in `words` to `byte` (a signed code is stored as byte & 0xff). */
export function setCodeByte(words: Int32Array, i: number, byte: number): void {
  const shift = 8 * (i & 3);
  words[i >> 2] = (words[i >> 2] & ~(0xff << shift)) | ((byte & 0xff) << shift);
}

/** The signed m code held in a byte. */
export function signedCode(byte: number): number {
  return byte >= 128 ? byte - 256 : byte;
}

/** Packed words → their bytes, in code order. */
export function wordsToBytes(words: Int32Array): Uint8Array {
  const bytes = new Uint8Array(words.length * 4);
  for (let i = 0; i < bytes.length; i++) bytes[i] = codeByte(words, i);
  return bytes;
}

/** Bytes (a multiple of 4) → packed words. */
export function bytesToWords(bytes: Uint8Array): Int32Array {
  if (bytes.length % 4 !== 0) throw new RangeError(`${bytes.length} code bytes are not whole int32 words`);
  const words = new Int32Array(bytes.length / 4);
  for (let i = 0; i < bytes.length; i++) words[i >> 2] |= bytes[i] << (8 * (i & 3));
  return words;
}
