/** generate(): byte counts, determinism per seed, batching, and agreement with the full forward pass. */
import assert from "node:assert/strict";
import { MambaConfig } from "../lib/config.ts";
import { generate } from "../lib/generate.ts";
import { MambaByte } from "../lib/model.ts";

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

Deno.test("an empty prompt and bad options are errors", async () => {
  await assert.rejects(() => collect("", { maxBytes: 3 }), /the prompt is empty/);
  await assert.rejects(() => collect("a", { topP: 1.5 }), /top-p must be in \(0, 1\]/);
  await assert.rejects(() => collect("a", { numSamples: 0 }), /numSamples/);
});
