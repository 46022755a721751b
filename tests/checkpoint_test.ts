/**
 * safetensors: bit-exact round trips, the PyTorch fixtures, every dtype the reader converts,
 * config inference, and a clear Error for each kind of bad file.
 */
import assert from "node:assert/strict";
import {
  checkpointConfig,
  encodeSafetensors,
  loadModel,
  type NamedTensor,
  parseSafetensors,
  readSafetensors,
  saveModel,
  writeSafetensors,
} from "../lib/checkpoint.ts";
import { MambaConfig } from "../lib/config.ts";
import { MambaByte } from "../lib/model.ts";

const FIXTURES = new URL("./reference/fixtures/", import.meta.url).pathname;

/** A safetensors file built by hand from a header object and raw data bytes. */
function rawFile(header: unknown, data: number[] = []): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

function bits(x: ArrayLike<number>): Uint32Array {
  return new Uint32Array(Float32Array.from(x).buffer);
}

Deno.test("a model checkpoint round-trips bit-exact, with its config, metadata and extra tensors", async () => {
  const dir = await Deno.makeTempDir();
  const config = new MambaConfig({ dim: 8, depth: 2, d_state: 4, bias: true, pscan: false });
  const model = new MambaByte(config, { seed: 5 });
  const extra = new Map<string, NamedTensor>([
    ["optimizer.m.x", { dtype: "F32", shape: [3], data: new Float32Array([1e-30, -0, NaN]) }],
    ["optimizer.flags", { dtype: "U8", shape: [2, 2], data: new Uint8Array([0, 255, 7, 128]) }],
  ]);
  await saveModel(`${dir}/m.safetensors`, model, { step: "12" }, extra);
  const file = await readSafetensors(`${dir}/m.safetensors`);
  assert.equal(file.metadata.step, "12");
  assert.deepEqual(JSON.parse(file.metadata.config), config.toJSON());
  assert.deepEqual(bits(file.tensors.get("optimizer.m.x")!.data), bits([1e-30, -0, NaN]));
  assert.deepEqual(file.tensors.get("optimizer.flags"), extra.get("optimizer.flags"));
  const loaded = await loadModel(`${dir}/m.safetensors`);
  assert.deepEqual(loaded.config.toJSON(), config.toJSON());
  assert.deepEqual(bits(await loaded.readParams()), bits(await model.readParams()));
  assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["m.safetensors"], "no temp file left");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("reads the PyTorch fixtures: names, shapes, U8 tokens, and the same loss", async () => {
  const model = await loadModel(`${FIXTURES}small_seq_bias.model.safetensors`);
  assert.equal(model.config.dim, 12);
  assert.equal(model.config.bias, true);
  const golden = await readSafetensors(`${FIXTURES}small_seq_bias.golden.safetensors`);
  const tokens = golden.tensors.get("tokens")!;
  assert.equal(tokens.dtype, "U8");
  assert.ok(tokens.data instanceof Uint8Array);
  assert.deepEqual(golden.tensors.get("logits")!.shape, [2, 13, 256]);
  const [B, L1] = tokens.shape, L = L1 - 1;
  const inputs: number[] = [], targets: number[] = [];
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < L; t++) {
      inputs.push(tokens.data[b * L1 + t]);
      targets.push(tokens.data[b * L1 + t + 1]);
    }
  }
  const { loss } = await model.loss(inputs, targets, [B, L]);
  assert.ok(Math.abs(loss - golden.tensors.get("loss")!.data[0]) < 1e-5);
});

Deno.test("converts F16, BF16 and F64 to float32", () => {
  const f64 = new Uint8Array(new Float64Array([0.5, -3.25]).buffer);
  const file = parseSafetensors(rawFile({
    h: { dtype: "F16", shape: [3], data_offsets: [0, 6] },
    b: { dtype: "BF16", shape: [2], data_offsets: [6, 10] },
    d: { dtype: "F64", shape: [2], data_offsets: [10, 26] },
  }, [0x00, 0x3c, 0x00, 0xc0, 0x00, 0x35, 0x80, 0x3f, 0x40, 0xc0, ...f64]));
  assert.deepEqual([...file.tensors.get("h")!.data], [1, -2, 0.3125]);
  assert.deepEqual([...file.tensors.get("b")!.data], [1, -3]);
  assert.deepEqual([...file.tensors.get("d")!.data], [0.5, -3.25]);
  assert.ok(file.tensors.get("d")!.data instanceof Float32Array);
});

Deno.test("bad files give an Error that says what is wrong", () => {
  const good = encodeSafetensors(
    new Map([["w", { dtype: "F32", shape: [2], data: new Float32Array([1, 2]) }]]),
    { a: "b" },
  );
  const cases: [Uint8Array, RegExp][] = [
    [new Uint8Array(3), /fewer than the 8-byte header length/],
    [good.subarray(0, good.length - 1), /ends at byte 8 of a 7-byte data section \(truncated\)/],
    [good.subarray(0, 20), /header length \d+ does not fit/],
    [
      rawFile({ w: { dtype: "I64", shape: [1], data_offsets: [0, 8] } }, [0, 0, 0, 0, 0, 0, 0, 0]),
      /dtype "I64"/,
    ],
    [
      rawFile({ w: { dtype: "F32", shape: [2], data_offsets: [0, 4] } }, [0, 0, 0, 0]),
      /4 bytes for shape \[2\]/,
    ],
    [rawFile({ w: { dtype: "F32", shape: [-1], data_offsets: [0, 4] } }, [0, 0, 0, 0]), /invalid shape/],
    [rawFile({ __metadata__: { n: 1 } }), /metadata "n" is not a string/],
    [rawFile([1, 2]), /not a JSON object/],
  ];
  const corrupt = good.slice();
  corrupt[9] = 0x7b; // a second "{" breaks the JSON
  cases.push([corrupt, /not valid JSON/]);
  for (const [bytes, message] of cases) {
    assert.throws(() => parseSafetensors(bytes, "x.safetensors"), (e: Error) => {
      assert.match(e.message, /^x\.safetensors is not a valid safetensors file: /);
      assert.match(e.message, message);
      return true;
    });
  }
});

Deno.test("a missing file, and tensors that do not match the config, are named", async () => {
  const dir = await Deno.makeTempDir();
  await assert.rejects(() => loadModel(`${dir}/nope.safetensors`), /nope\.safetensors: no such file/);
  const model = new MambaByte(new MambaConfig({ dim: 8, depth: 1, d_state: 4 }));
  const path = `${dir}/m.safetensors`;
  await saveModel(path, model);
  const file = await readSafetensors(path);
  const edit = async (change: (t: Map<string, NamedTensor>) => void) => {
    const tensors = new Map(file.tensors);
    change(tensors);
    await writeSafetensors(path, tensors, file.metadata);
  };
  await edit((t) => t.delete("backbone.layers.0.mixer.A_log"));
  await assert.rejects(
    () => loadModel(path),
    /does not match its config: missing tensors: backbone\.layers\.0\.mixer\.A_log/,
  );
  await edit((t) => t.set("backbone.norm_f.weight", { dtype: "F32", shape: [3], data: new Float32Array(3) }));
  await assert.rejects(
    () => loadModel(path),
    /wrong shapes: backbone\.norm_f\.weight is F32 \[3\], expected \[8\]/,
  );
  await edit((t) =>
    t.set("backbone.layers.1.norm.weight", { dtype: "F32", shape: [8], data: new Float32Array(8) })
  );
  await assert.rejects(() => loadModel(path), /unexpected tensors: backbone\.layers\.1\.norm\.weight/);
  await writeSafetensors(path, file.tensors, { config: '{"dim": 8, "depth": 0}' });
  await assert.rejects(() => loadModel(path), /config metadata is invalid/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("without config metadata the config is inferred from shapes; a missing lm_head is tied", async () => {
  const config = new MambaConfig({
    dim: 8,
    depth: 3,
    d_state: 5,
    expand_factor: 3,
    d_conv: 2,
    dt_rank: 2,
    bias: true,
    conv_bias: false,
  });
  const model = new MambaByte(config, { seed: 2 });
  const dir = await Deno.makeTempDir();
  const path = `${dir}/m.safetensors`;
  await saveModel(path, model);
  const { tensors } = await readSafetensors(path);
  const inferred = checkpointConfig({ tensors, metadata: {} });
  for (
    const key of [
      "dim",
      "depth",
      "d_state",
      "expand_factor",
      "d_conv",
      "dt_rank",
      "bias",
      "conv_bias",
    ] as const
  ) {
    assert.equal(inferred[key], config[key], key);
  }
  tensors.delete("lm_head.weight");
  await writeSafetensors(path, tensors, {});
  const tied = await loadModel(path);
  const flat = await tied.readParams(), t = tied.table;
  assert.deepEqual(
    bits(flat.subarray(t.lmHead!.offset, t.lmHead!.offset + t.lmHead!.size)),
    bits(tensors.get("backbone.embedding.weight")!.data),
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a write that fails leaves no file behind", async () => {
  const dir = await Deno.makeTempDir();
  await assert.rejects(
    () => writeSafetensors(`${dir}/missing/x.safetensors`, new Map(), {}),
    /cannot write .*missing\/x\.safetensors/,
  );
  assert.deepEqual([...Deno.readDirSync(dir)], []);
  await Deno.remove(dir, { recursive: true });
});
