/**
 * Checkpoints: safetensors files (8-byte little-endian header length, JSON header, raw
 * little-endian data) with mamba_ssm's tensor names, so they move to and from PyTorch; the
 * config, step and training state go in `__metadata__` (string → string) and the optimizer
 * moments in extra tensors. Writes are atomic (temp file + rename).
 */
import type { Backend, FloatArray } from "./backend.ts";
import { MambaConfig, type MambaConfigOptions } from "./config.ts";
import { MambaByte } from "./model.ts";
import { type ParamTable, paramTable } from "./params.ts";

/** Tensor dtypes this reader understands; floats are converted to float32, U8 stays bytes. */
export type Dtype = "F32" | "F16" | "BF16" | "F64" | "U8";

const DTYPE_BYTES: Record<Dtype, number> = { F32: 4, F16: 2, BF16: 2, F64: 8, U8: 1 };

/** One tensor as read (floats as float32) or to be written (F32 or U8). */
export interface NamedTensor {
  dtype: Dtype;
  shape: number[];
  data: Float32Array | Uint8Array;
}

/** A parsed safetensors file. */
export interface Safetensors {
  tensors: Map<string, NamedTensor>;
  metadata: Record<string, string>;
}

/** Largest header accepted (100 MB), so a corrupt length cannot ask for absurd memory. */
const MAX_HEADER = 100_000_000;

/** Reads and validates a safetensors file. Errors name the file and what is wrong with it. */
export async function readSafetensors(path: string): Promise<Safetensors> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (cause) {
    const why = cause instanceof Deno.errors.NotFound ? "no such file" : "cannot read it";
    throw new Error(`checkpoint ${path}: ${why}`, { cause });
  }
  return parseSafetensors(bytes, path);
}

/** Parses safetensors bytes; `source` names them in errors. */
export function parseSafetensors(bytes: Uint8Array, source = "safetensors"): Safetensors {
  const fail = (what: string): never => {
    throw new Error(`${source} is not a valid safetensors file: ${what}`);
  };
  if (bytes.length < 8) fail(`it has ${bytes.length} bytes, fewer than the 8-byte header length`);
  const headerLength = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
  if (headerLength > MAX_HEADER || 8 + headerLength > bytes.length) {
    fail(`header length ${headerLength} does not fit in its ${bytes.length} bytes (truncated or corrupt)`);
  }
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(
      new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + headerLength)),
    );
  } catch {
    return fail("its header is not valid JSON (truncated or corrupt)");
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    fail("header is not a JSON object");
  }
  const data = bytes.subarray(8 + headerLength);
  const metadata: Record<string, string> = {};
  const tensors = new Map<string, NamedTensor>();
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") {
      for (const [key, value] of Object.entries((entry ?? {}) as Record<string, unknown>)) {
        if (typeof value !== "string") fail(`metadata "${key}" is not a string`);
        metadata[key] = value as string;
      }
      continue;
    }
    const { dtype, shape, data_offsets: offsets } = (entry ?? {}) as Record<string, unknown>;
    if (typeof dtype !== "string" || !(dtype in DTYPE_BYTES)) {
      fail(
        `tensor "${name}" has dtype ${JSON.stringify(dtype)}; supported: ${
          Object.keys(DTYPE_BYTES).join(", ")
        }`,
      );
    }
    const isCount = (x: unknown) => Number.isInteger(x) && (x as number) >= 0;
    if (!Array.isArray(shape) || !shape.every(isCount)) fail(`tensor "${name}" has an invalid shape`);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
      fail(`tensor "${name}" has invalid data_offsets`);
    }
    const [begin, end] = offsets as number[];
    const count = (shape as number[]).reduce((a, b) => a * b, 1);
    if (end > data.length) {
      fail(`tensor "${name}" ends at byte ${end} of a ${data.length}-byte data section (truncated)`);
    }
    if (begin > end || end - begin !== count * DTYPE_BYTES[dtype as Dtype]) {
      fail(`tensor "${name}" has ${end - begin} bytes for shape [${shape}] of ${dtype}`);
    }
    tensors.set(name, {
      dtype: dtype as Dtype,
      shape: shape as number[],
      data: decode(dtype as Dtype, data.slice(begin, end)),
    });
  }
  return { tensors, metadata };
}

/** Converts raw little-endian bytes (an aligned copy) to float32, or keeps U8 bytes. */
function decode(dtype: Dtype, raw: Uint8Array): Float32Array | Uint8Array {
  const view = new DataView(raw.buffer);
  switch (dtype) {
    case "U8":
      return raw;
    case "F32":
      return new Float32Array(raw.buffer);
    case "F64":
      return Float32Array.from(new Float64Array(raw.buffer));
    case "BF16": {
      const out = new Float32Array(raw.length / 2), bits = new Uint32Array(out.buffer);
      for (let i = 0; i < out.length; i++) bits[i] = view.getUint16(2 * i, true) << 16;
      return out;
    }
    case "F16": {
      const out = new Float32Array(raw.length / 2);
      for (let i = 0; i < out.length; i++) out[i] = halfToFloat(view.getUint16(2 * i, true));
      return out;
    }
    default:
      return dtype satisfies never;
  }
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1, exponent = (h >> 10) & 0x1f, fraction = h & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

/** safetensors bytes for F32 / U8 tensors (F32 first, so every F32 tensor is 4-byte aligned). */
export function encodeSafetensors(
  tensors: Map<string, NamedTensor>,
  metadata: Record<string, string>,
): Uint8Array {
  const entries = [...tensors].sort(([, a], [, b]) => Number(a.dtype === "U8") - Number(b.dtype === "U8"));
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const [name, t] of entries) {
    if (t.dtype !== "F32" && t.dtype !== "U8") {
      throw new Error(`encodeSafetensors: cannot write ${t.dtype} (${name})`);
    }
    const count = t.shape.reduce((a, b) => a * b, 1);
    if (count !== t.data.length) {
      throw new Error(`encodeSafetensors: "${name}" has ${t.data.length} values for shape [${t.shape}]`);
    }
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - ((8 + new TextEncoder().encode(json).length) % 8)) % 8); // data starts 8-aligned
  const head = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + head.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(head.length), true);
  out.set(head, 8);
  let at = 8 + head.length;
  for (const [, t] of entries) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), at);
    at += t.data.byteLength;
  }
  return out;
}

/** Writes `bytes` to `path` atomically: a temp file in the same directory, then a rename. */
export async function writeFileAtomic(path: string, bytes: Uint8Array): Promise<void> {
  const temp = `${path}.${Deno.pid}.tmp`; // *.tmp is git-ignored
  try {
    await Deno.writeFile(temp, bytes);
    await Deno.rename(temp, path);
  } catch (cause) {
    await Deno.remove(temp).catch(() => {});
    throw new Error(`cannot write ${path}`, { cause });
  }
}

/** Writes a safetensors file atomically. */
export async function writeSafetensors(
  path: string,
  tensors: Map<string, NamedTensor>,
  metadata: Record<string, string>,
): Promise<void> {
  await writeFileAtomic(path, encodeSafetensors(tensors, metadata));
}

/**
 * The tensors of a flat buffer laid out by `table`, named `prefix + spec.name` (float32 copies,
 * without the alignment padding).
 */
export function flatToTensors(table: ParamTable, flat: FloatArray, prefix = ""): Map<string, NamedTensor> {
  const tensors = new Map<string, NamedTensor>();
  for (const spec of table.specs) {
    const data = Float32Array.from(flat.subarray(spec.offset, spec.offset + spec.size));
    tensors.set(prefix + spec.name, { dtype: "F32", shape: spec.shape, data });
  }
  return tensors;
}

/**
 * A flat buffer laid out by `table` from tensors named `prefix + spec.name`. Missing tensors,
 * wrong shapes and (with `strict`) tensors the table does not know are one Error naming them.
 * `lm_head.weight` may be absent when the embedding is present (tied weights: copied).
 */
export function tensorsToFlat(
  table: ParamTable,
  tensors: Map<string, NamedTensor>,
  prefix = "",
  source = "checkpoint",
): Float32Array {
  const flat = new Float32Array(table.size);
  const missing: string[] = [], wrongShape: string[] = [];
  for (const spec of table.specs) {
    let tensor = tensors.get(prefix + spec.name);
    if (!tensor && spec === table.lmHead) tensor = tensors.get(prefix + table.embedding!.name);
    if (!tensor) missing.push(prefix + spec.name);
    else if (tensor.dtype === "U8" || tensor.shape.join() !== spec.shape.join()) {
      wrongShape.push(`${prefix + spec.name} is ${tensor.dtype} [${tensor.shape}], expected [${spec.shape}]`);
    } else flat.set(tensor.data, spec.offset);
  }
  const known = new Set(table.specs.map((s) => prefix + s.name));
  const extra = prefix === ""
    ? [...tensors.keys()].filter((n) => !known.has(n) && !n.startsWith("optimizer."))
    : [];
  const problems = [
    missing.length ? `missing tensors: ${list(missing)}` : "",
    wrongShape.length ? `wrong shapes: ${list(wrongShape)}` : "",
    extra.length ? `unexpected tensors: ${list(extra)}` : "",
  ].filter(Boolean);
  if (problems.length) throw new Error(`${source} does not match its config: ${problems.join("; ")}`);
  return flat;
}

function list(items: string[]): string {
  return items.length > 4 ? `${items.slice(0, 4).join(", ")} and ${items.length - 4} more` : items.join(", ");
}

/**
 * The model config of a checkpoint: the `config` metadata (JSON) when present, else inferred
 * from the tensor shapes (dim, depth, expand_factor, d_state, d_conv, dt_rank, bias, conv_bias).
 */
export function checkpointConfig(file: Safetensors, source = "checkpoint"): MambaConfig {
  const { metadata, tensors } = file;
  if (metadata.config !== undefined) {
    try {
      return new MambaConfig(JSON.parse(metadata.config));
    } catch (cause) {
      throw new Error(`${source}: its config metadata is invalid`, { cause });
    }
  }
  const shape = (name: string): number[] => {
    const t = tensors.get(name);
    if (!t) throw new Error(`${source}: no config metadata and no "${name}" to infer it from`);
    return t.shape;
  };
  const layer = "backbone.layers.0.mixer.";
  const [, dim] = shape("backbone.embedding.weight");
  let depth = 0;
  while (tensors.has(`backbone.layers.${depth}.mixer.in_proj.weight`)) depth++;
  const [twoED] = shape(`${layer}in_proj.weight`);
  const [ED, d_state] = shape(`${layer}A_log`);
  const options: MambaConfigOptions = {
    dim,
    depth,
    expand_factor: twoED / 2 / dim,
    d_state,
    d_conv: shape(`${layer}conv1d.weight`)[2],
    dt_rank: shape(`${layer}dt_proj.weight`)[1],
    bias: tensors.has(`${layer}in_proj.bias`),
    conv_bias: tensors.has(`${layer}conv1d.bias`),
  };
  if (ED !== twoED / 2 || !Number.isInteger(options.expand_factor)) {
    throw new Error(
      `${source}: in_proj [${twoED}, ${dim}] and A_log [${ED}, ${d_state}] do not fit one config`,
    );
  }
  try {
    return new MambaConfig(options);
  } catch (cause) {
    throw new Error(`${source}: cannot infer a config from its tensor shapes`, { cause });
  }
}

/** A MambaByte with the config and weights of a parsed checkpoint. */
export function modelFromCheckpoint(
  file: Safetensors,
  options: { backend?: Backend; source?: string } = {},
): MambaByte {
  const source = options.source ?? "checkpoint";
  const config = checkpointConfig(file, source);
  const flat = tensorsToFlat(paramTable(config, true), file.tensors, "", source);
  const model = new MambaByte(config, { backend: options.backend });
  model.writeParams(flat);
  return model;
}

/** Loads a MambaByte from a safetensors checkpoint (ours, or a converted mamba_ssm one). */
export async function loadModel(path: string, options: { backend?: Backend } = {}): Promise<MambaByte> {
  return modelFromCheckpoint(await readSafetensors(path), { ...options, source: `checkpoint ${path}` });
}

/** The model's weights (mamba_ssm names) plus `extra` tensors, with its config in the metadata. */
export async function saveModel(
  path: string,
  model: MambaByte,
  metadata: Record<string, string> = {},
  extra: Map<string, NamedTensor> = new Map(),
): Promise<void> {
  const tensors = flatToTensors(model.table, await model.readParams());
  for (const [name, t] of extra) tensors.set(name, t);
  await writeSafetensors(path, tensors, {
    format: "mambabyte",
    config: JSON.stringify(model.config.toJSON()),
    ...metadata,
  });
}
