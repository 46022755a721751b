/**
 * Corpora: files, directories and globs, the held-out split, the default corpus's split by
 * year, training windows (resumable stream) and the fixed validation windows.
 */
import assert from "node:assert/strict";
import {
  BatchStream,
  checkCorpus,
  globToRegExp,
  loadCorpus,
  loadDefaultCorpus,
  splitDocuments,
  validationBatches,
} from "../lib/data.ts";

async function tree(files: Record<string, string>): Promise<string> {
  const dir = await Deno.makeTempDir();
  for (const [name, text] of Object.entries(files)) {
    await Deno.mkdir(`${dir}/${name}`.replace(/\/[^/]*$/, ""), { recursive: true });
    await Deno.writeTextFile(`${dir}/${name}`, text);
  }
  return dir;
}

const decode = (b: Uint8Array) => new TextDecoder().decode(b);

Deno.test("a file: its raw bytes, the last 5% held out", async () => {
  const dir = await tree({ "a.txt": "x".repeat(190) + "y".repeat(10) });
  const corpus = await loadCorpus(`${dir}/a.txt`);
  assert.equal(decode(corpus.train), "x".repeat(190));
  assert.equal(decode(corpus.val), "y".repeat(10));
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a directory (recursively) and a glob: files joined in sorted path order", async () => {
  const dir = await tree({ "b.txt": "BB", "a/z.md": "ZZ", "a/c.txt": "CC", "a/d/e.txt": "EE" });
  assert.equal(decode((await loadCorpus(dir)).train) + decode((await loadCorpus(dir)).val), "CCEEZZBB");
  const txt = await loadCorpus(`${dir}/**/*.txt`);
  assert.equal(decode(txt.train) + decode(txt.val), "CCEEBB");
  const top = await loadCorpus(`${dir}/a/*.txt`);
  assert.equal(decode(top.train) + decode(top.val), "CC");
  await assert.rejects(() => loadCorpus(`${dir}/*.nothing`), /no files match/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("globToRegExp: ** crosses directories, * and ? do not", () => {
  const re = globToRegExp("**/*.t?t");
  assert.ok(re.test("a.txt") && re.test("x/y/a.tst"));
  assert.ok(!re.test("a.text") && !re.test("a.txt.bak"));
  assert.ok(!globToRegExp("*.txt").test("d/a.txt"));
  assert.ok(globToRegExp("[ab].c").test("b.c") && !globToRegExp("[!ab].c").test("a.c"));
});

Deno.test("missing, empty and too-short corpora are errors that say what to do", async () => {
  const dir = await tree({ "empty.txt": "", "short.txt": "0123456789" });
  await assert.rejects(() => loadCorpus(`${dir}/nope`), /cannot read the corpus .*nope: no such file/);
  await assert.rejects(() => loadCorpus(`${dir}/empty.txt`), /is empty/);
  const short = await loadCorpus(`${dir}/short.txt`);
  assert.throws(() => checkCorpus(short, 16), /training split .* has 9 bytes, fewer than seq-len \+ 1 = 17/);
  assert.throws(() => checkCorpus(short, 4), /validation split .* has 1 bytes/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("documents: the latest years are held out, whatever their order", () => {
  const docs = Array.from({ length: 40 }, (_, i) => ({ year: 2000 - i, text: `y${2000 - i}` }));
  const corpus = splitDocuments(docs, "test");
  assert.equal(decode(corpus.val), "y1999\n\ny2000");
  assert.ok(decode(corpus.train).startsWith("y1961\n\ny1962"));
  assert.ok(decode(corpus.train).endsWith("y1998"));
});

// The default corpus comes from the npm registry: offline (and not in CI) the test is ignored.
const defaultCorpus = await loadDefaultCorpus().catch((error: Error) => error);
const offline = defaultCorpus instanceof Error && !Deno.env.get("CI");
if (offline) console.log(`default corpus test ignored: ${(defaultCorpus as Error).message}`);

Deno.test(
  { name: "the default corpus: 233 addresses, the latest 12 (2010 on) held out", ignore: offline },
  () => {
    if (defaultCorpus instanceof Error) throw defaultCorpus;
    const corpus = defaultCorpus;
    assert.match(corpus.description, /221 for training, 12 held out \(2010–\)/);
    assert.ok(corpus.train.length > 9_000_000 && corpus.val.length > 300_000);
    assert.match(decode(corpus.train.subarray(0, 200)), /Fellow-Citizens/i);
  },
);

Deno.test("training windows: targets are inputs shifted by one; the stream resumes exactly", () => {
  const bytes = Uint8Array.from({ length: 1000 }, (_, i) => i % 251);
  const stream = new BatchStream(bytes, 16, 7);
  const first = stream.next(4);
  assert.deepEqual(first.shape, [4, 16]);
  for (let b = 0; b < 4; b++) {
    const start = first.inputs[b * 16];
    for (let t = 0; t < 16; t++) {
      assert.equal(first.inputs[b * 16 + t], (start + t) % 251);
      assert.equal(first.targets[b * 16 + t], (start + t + 1) % 251);
    }
  }
  const saved = stream.state;
  const next = [stream.next(4), stream.next(4)];
  const resumed = new BatchStream(bytes, 16, 999);
  resumed.state = saved;
  assert.deepEqual([resumed.next(4), resumed.next(4)], next);
  assert.notDeepEqual(new BatchStream(bytes, 16, 8).next(4), first);
});

Deno.test("validation windows: fixed, spread over the split, inside it", () => {
  const val = Uint8Array.from({ length: 100 }, (_, i) => i);
  const batches = validationBatches(val, 10, 3, 2);
  assert.deepEqual(batches.map((b) => b.shape), [[3, 10], [3, 10]]);
  const starts = batches.flatMap((b) => [0, 1, 2].map((r) => b.inputs[r * 10]));
  assert.deepEqual(starts, [0, 15, 30, 45, 60, 75]);
  assert.equal(batches[1].targets[29], 85, "the last target is inside the split");
  const short = validationBatches(val.subarray(0, 13), 10, 4, 2);
  assert.deepEqual(short.map((b) => b.shape), [[3, 10]], "only as many windows as fit");
});
