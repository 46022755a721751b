/** generate(): byte counts, determinism per seed, batching, and agreement with the full forward pass. */
import assert from "node:assert/strict";
import type { FloatArray } from "../lib/backend.ts";
import { MambaConfig } from "../lib/config.ts";
import { generate } from "../lib/generate.ts";
import { MambaByte } from "../lib/model.ts";
import { Random } from "../lib/random.ts";
import { sampleLogits, type SamplingOptions } from "../lib/sample.ts";

const model = new MambaByte(new MambaConfig({ dim: 16, depth: 2, d_state: 4 }), { seed: 3 });

async function collect(prompt: string, options: Parameters<typeof generate>[2]): Promise<Uint8Array[]> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of generate(model, prompt, options)) chunks.push(chunk);
  return chunks;
}

Deno.test("generate yields the requested bytes, one chunk of numSamples bytes per position", async () => {
  const one = await collect("Hello", { maxBytes: 20, seed: 1 });
  assert.equal(one.length, 20);
  assert.ok(one.every((c) => c.length === 1));
  const three = await collect("Hello", { maxBytes: 7, seed: 1, numSamples: 3 });
  assert.deepEqual(three.map((c) => c.length), new Array(7).fill(3));
  assert.deepEqual(await collect("Hello", { maxBytes: 0 }), []);
});

Deno.test("generate is deterministic for a seed and varies with it", async () => {
  const a = await collect("The ", { maxBytes: 24, seed: 42, temperature: 1.5 });
  const b = await collect("The ", { maxBytes: 24, seed: 42, temperature: 1.5 });
  const c = await collect("The ", { maxBytes: 24, seed: 43, temperature: 1.5 });
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
});

Deno.test("greedy decoding with step() agrees with the argmax of the full forward pass", async () => {
  const prompt = new TextEncoder().encode("abc");
  const generated = (await collect("abc", { maxBytes: 10, temperature: 0, numSamples: 2 })).map((c) => {
    assert.equal(c[0], c[1], "greedy samples of one prompt are identical");
    return c[0];
  });
  const text = [...prompt, ...generated];
  const L = text.length - 1;
  const logits = await model.forward(text.slice(0, L), [1, L]); // (1, L, 256)
  for (let t = prompt.length - 1; t < L; t++) {
    const row = logits.data.subarray(t * 256, (t + 1) * 256);
    const argmax = row.indexOf(Math.max(...row));
    assert.equal(text[t + 1], argmax, `position ${t}`);
  }
});

/** The bytes of the host-side loop: read the logits every step, sample them with sampleLogits. */
async function hostSampled(prompt: string, n: number, B: number, seed: number, o: SamplingOptions) {
  const rng = new Random(seed), cache = model.createCache(B), chunks: Uint8Array[] = [];
  let logits: FloatArray = new Float32Array(0);
  for (const byte of new TextEncoder().encode(prompt)) {
    logits = (await model.step(new Uint8Array(B).fill(byte), cache)).data;
  }
  for (let i = 0; i < n; i++) {
    const next = Uint8Array.from(
      { length: B },
      (_, b) => sampleLogits(logits.subarray(b * 256, (b + 1) * 256), o, rng),
    );
    chunks.push(next);
    logits = (await model.step(next, cache)).data;
  }
  cache.free();
  return chunks;
}

Deno.test("device sampling in blocks gives the host sampler's bytes for the same seed (cpu)", async () => {
  const settings: SamplingOptions[] = [
    { temperature: 1.5, topK: 0, topP: 1 },
    { temperature: 0.8, topK: 40, topP: 1 },
    { temperature: 1.2, topK: 0, topP: 0.9 },
    { temperature: 1, topK: 7, topP: 0.6 },
    { temperature: 0, topK: 0, topP: 1 },
  ];
  for (const o of settings) {
    const expected = await hostSampled("The ", 23, 3, 11, o);
    assert.ok(new Set(expected.flatMap((c) => [...c])).size > (o.temperature ? 3 : 0), "varied bytes");
    for (const blockSize of [1, 5, 64]) {
      const got = await collect("The ", { ...o, maxBytes: 23, numSamples: 3, seed: 11, blockSize });
      assert.deepEqual(got, expected, `${JSON.stringify(o)}, blockSize ${blockSize}`);
    }
  }
});

Deno.test("a consumer that stops early gets the full run's first bytes, and the model decodes as before afterwards", async () => {
  const options = { maxBytes: 40, seed: 5, temperature: 1, blockSize: 2 };
  const full = await collect("The ", options);
  const head: Uint8Array[] = [];
  for await (const chunk of generate(model, "The ", options)) {
    head.push(chunk);
    if (head.length === 3) break;
  }
  assert.deepEqual(head, full.slice(0, 3));
  assert.deepEqual(await collect("The ", options), full, "the model decodes as before afterwards");
});

Deno.test("an empty prompt and bad options are errors", async () => {
  await assert.rejects(() => collect("", { maxBytes: 3 }), /the prompt is empty/);
  await assert.rejects(() => collect("a", { topP: 1.5 }), /top-p must be in \(0, 1\]/);
  await assert.rejects(() => collect("a", { numSamples: 0 }), /numSamples/);
  await assert.rejects(() => collect("a", { blockSize: 0 }), /blockSize must be an integer >= 1, got 0/);
});

Deno.test("generate with int8 weights yields the requested bytes and is deterministic for a seed", async () => {
  const quantized = new MambaByte(new MambaConfig({ dim: 16, depth: 2, d_state: 4 }), { seed: 3 });
  await quantized.quantize("int8");
  const run = async (seed: number, numSamples = 1) => {
    const chunks: Uint8Array[] = [];
    for await (const c of generate(quantized, "The ", { maxBytes: 40, seed, numSamples, temperature: 1 })) {
      chunks.push(c);
    }
    return chunks;
  };
  const a = await run(42), b = await run(42);
  assert.equal(a.length, 40);
  assert.ok(a.every((c) => c.length === 1));
  assert.deepEqual(a, b);
  assert.notDeepEqual(await run(43), a);
  assert.deepEqual((await run(5, 3)).map((c) => c.length), new Array(40).fill(3));
});
