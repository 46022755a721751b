/** Sampling (temperature, top-k, top-p) and the UTF-8 stream that never splits a character. */
import assert from "node:assert/strict";
import { Random } from "../lib/random.ts";
import { checkSampling, sampleLogits, Utf8Stream } from "../lib/sample.ts";

const logits = [0.5, 2, -1, 1.5, 0]; // probabilities ∝ exp: index 1 > 3 > 0 > 4 > 2

function counts(options: { temperature: number; topK: number; topP: number }, n = 4000): number[] {
  const rng = new Random(1), c = new Array(logits.length).fill(0);
  for (let i = 0; i < n; i++) c[sampleLogits(logits, options, rng)]++;
  return c;
}

Deno.test("temperature 0 and top-k 1 pick the most likely byte", () => {
  assert.deepEqual(counts({ temperature: 0, topK: 0, topP: 1 }, 50), [0, 50, 0, 0, 0]);
  assert.deepEqual(counts({ temperature: 3, topK: 1, topP: 1 }, 50), [0, 50, 0, 0, 0]);
});

Deno.test("plain sampling follows the softmax", () => {
  const n = 20000, c = counts({ temperature: 1, topK: 0, topP: 1 }, n);
  const z = logits.reduce((a, l) => a + Math.exp(l), 0);
  logits.forEach((l, i) => assert.ok(Math.abs(c[i] / n - Math.exp(l) / z) < 0.015, `index ${i}`));
});

Deno.test("top-k keeps the k most likely, renormalised", () => {
  const n = 10000, c = counts({ temperature: 1, topK: 2, topP: 1 }, n);
  assert.equal(c[0] + c[2] + c[4], 0);
  const p1 = Math.exp(2) / (Math.exp(2) + Math.exp(1.5));
  assert.ok(Math.abs(c[1] / n - p1) < 0.02);
});

Deno.test("top-p keeps the smallest set reaching p", () => {
  const z = logits.reduce((a, l) => a + Math.exp(l), 0);
  const p1 = Math.exp(2) / z, p13 = p1 + Math.exp(1.5) / z;
  assert.deepEqual(counts({ temperature: 1, topK: 0, topP: p1 * 0.99 }, 100), [0, 100, 0, 0, 0]);
  const c = counts({ temperature: 1, topK: 0, topP: (p1 + p13) / 2 }, 1000);
  assert.equal(c[0] + c[2] + c[4], 0);
  assert.ok(c[1] > 0 && c[3] > 0);
});

Deno.test("a high temperature flattens the distribution", () => {
  const cold = counts({ temperature: 0.5, topK: 0, topP: 1 }),
    hot = counts({ temperature: 5, topK: 0, topP: 1 });
  assert.ok(hot[2] > 3 * cold[2], `least likely byte: ${hot[2]} hot vs ${cold[2]} cold`);
});

Deno.test("bad sampling options are rejected by name", () => {
  assert.throws(
    () => checkSampling({ temperature: 1, topK: 0, topP: 1.5 }),
    /top-p must be in \(0, 1\], got 1.5/,
  );
  assert.throws(() => checkSampling({ temperature: 1, topK: 0, topP: 0 }), /top-p/);
  assert.throws(() => checkSampling({ temperature: -1, topK: 0, topP: 1 }), /temperature/);
  assert.throws(() => checkSampling({ temperature: 1, topK: 1.5, topP: 1 }), /top-k/);
});

Deno.test("UTF-8 stream: split anywhere, characters come out whole and in order", () => {
  const text = "aé€😀b", bytes = new TextEncoder().encode(text);
  for (let cut = 0; cut <= bytes.length; cut++) {
    const s = new Utf8Stream();
    const parts = [s.push(bytes.subarray(0, cut)), s.push(bytes.subarray(cut)), s.flush()];
    assert.equal(parts.join(""), text);
    assert.ok(!parts.join("").includes("\uFFFD"));
  }
  const s = new Utf8Stream(), out: string[] = [];
  for (const byte of bytes) out.push(s.push(new Uint8Array([byte])));
  assert.deepEqual(out, ["a", "", "é", "", "", "€", "", "", "", "😀", "b"]);
});

Deno.test("UTF-8 stream: invalid bytes and a cut-off ending become U+FFFD", () => {
  const s = new Utf8Stream();
  assert.equal(s.push(new Uint8Array([0x61, 0xff, 0x62])), "a\uFFFDb");
  assert.equal(s.push(new Uint8Array([0xe2, 0x82])), "");
  assert.equal(s.push(new Uint8Array([0x63])), "\uFFFDc", "an interrupted sequence");
  assert.equal(s.push(new Uint8Array([0xf0, 0x9f])), "");
  assert.equal(s.flush(), "\uFFFD");
});
