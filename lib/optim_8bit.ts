/**
 * AdamW's moments in 8 bits (`optimizer_bits: 8`): blockwise-quantized m and v (lib/quant8.ts),
 * dequantized and requantized inside the backend's `adamw8bit` op. Each run of equal weight
 * decay (lib/params.ts decayRuns) gets whole blocks of 256 elements of its own: run r's codes
 * start at element `start` (a multiple of 256, so its view of the packed words starts at a
 * multiple of 64 words = 256 bytes) and its scales at block start / 256.
 *
 * Memory: 2 bytes per element (one m and one v code) + 8 bytes per block of 256 (two float32
 * scales), over the runs rounded up to whole blocks.
 */
import type { AdamWOptions, Backend, DeviceBuffer, IndexBuffer } from "./backend.ts";
import type { NamedTensor } from "./checkpoint.ts";
import { bytesToWords, QUANT_BLOCK, QUANT_BLOCK_WORDS, wordsToBytes } from "./quant8.ts";

/** A run of the flat parameter buffer: [offset, offset + length). */
export interface Run {
  offset: number;
  length: number;
}

/** Checkpoint tensor names of the quantized state. */
export const QUANTIZED_STATE_NAMES = {
  mCodes: "optimizer.m_codes",
  vCodes: "optimizer.v_codes",
  scales: "optimizer.scales",
} as const;

/** Where run r's quantized state starts, in elements (multiples of 256), and the total. */
export function quantizedLayout(runs: readonly Run[]): { starts: number[]; elements: number } {
  const starts: number[] = [];
  let elements = 0;
  for (const run of runs) {
    starts.push(elements);
    elements += Math.ceil(run.length / QUANT_BLOCK) * QUANT_BLOCK;
  }
  return { starts, elements };
}

/** The m and v codes and scales of every run, on the device. */
export class QuantizedMoments {
  /** (elements / 4) words of signed m codes. */
  readonly mCodes: IndexBuffer;
  /** (elements / 4) words of v codes. */
  readonly vCodes: IndexBuffer;
  /** (blocks, 2): absmax of m, absmax of v, per block. */
  readonly scales: DeviceBuffer;
  readonly #starts: number[];
  /** Quantized elements: the runs rounded up to whole blocks. */
  readonly elements: number;

  constructor(readonly backend: Backend, readonly runs: readonly Run[]) {
    const { starts, elements } = quantizedLayout(runs);
    this.#starts = starts;
    this.elements = elements;
    this.mCodes = backend.allocIndices(elements / 4);
    this.vCodes = backend.allocIndices(elements / 4);
    this.scales = backend.alloc((2 * elements) / QUANT_BLOCK);
  }

  /** One AdamW update of run `index` of the parameters. */
  update(index: number, params: DeviceBuffer, grads: DeviceBuffer, options: AdamWOptions): void {
    const be = this.backend, run = this.runs[index], start = this.#starts[index];
    const blocks = Math.ceil(run.length / QUANT_BLOCK), block = start / QUANT_BLOCK;
    const codes = (words: IndexBuffer) =>
      be.viewIndices(words, block * QUANT_BLOCK_WORDS, blocks * QUANT_BLOCK_WORDS);
    be.adamw8bit(
      be.view(params, run.offset, run.length),
      be.view(grads, run.offset, run.length),
      codes(this.mCodes),
      codes(this.vCodes),
      be.view(this.scales, 2 * block, 2 * blocks),
      options,
    );
  }

  /** The codes (U8) and scales (F32, (blocks, 2)) as checkpoint tensors: resuming is bit-exact. */
  async read(): Promise<Map<string, NamedTensor>> {
    const be = this.backend, blocks = this.elements / QUANT_BLOCK;
    const codes = async (words: IndexBuffer): Promise<NamedTensor> => {
      const data = wordsToBytes(await be.readIndices(words));
      return { dtype: "U8", shape: [this.elements], data };
    };
    return new Map([
      [QUANTIZED_STATE_NAMES.mCodes, await codes(this.mCodes)],
      [QUANTIZED_STATE_NAMES.vCodes, await codes(this.vCodes)],
      [
        QUANTIZED_STATE_NAMES.scales,
        { dtype: "F32", shape: [blocks, 2], data: Float32Array.from(await be.read(this.scales)) },
      ],
    ]);
  }

  /** Restores what `read` saved; `source` names the checkpoint in errors. */
  write(tensors: Map<string, NamedTensor>, source: string): void {
    const blocks = this.elements / QUANT_BLOCK;
    const get = (name: string, dtype: "U8" | "F32", shape: number[]) => {
      const t = tensors.get(name);
      if (!t || t.dtype !== dtype || t.shape.join() !== shape.join()) {
        const found = t ? `${t.dtype} [${t.shape}]` : "missing";
        throw new Error(
          `${source}: 8-bit AdamW state "${name}" should be ${dtype} [${shape}] for this model, found ${found}`,
        );
      }
      return t.data;
    };
    const mCodes = get(QUANTIZED_STATE_NAMES.mCodes, "U8", [this.elements]) as Uint8Array;
    const vCodes = get(QUANTIZED_STATE_NAMES.vCodes, "U8", [this.elements]) as Uint8Array;
    const scales = get(QUANTIZED_STATE_NAMES.scales, "F32", [blocks, 2]);
    this.backend.writeIndices(this.mCodes, bytesToWords(mCodes));
    this.backend.writeIndices(this.vCodes, bytesToWords(vCodes));
    this.backend.write(this.scales, scales);
  }

  free(): void {
    this.backend.free(this.mCodes);
    this.backend.free(this.vCodes);
    this.backend.free(this.scales);
  }
}
