/**
 * The CLIs as a user runs them (subprocesses): a tiny end-to-end train → eval → generate, and
 * for each bad input one clear line on stderr, the right exit code, no stack trace and no file
 * left half-written.
 */
import assert from "node:assert/strict";
import { readSafetensors, saveModel } from "../lib/checkpoint.ts";
import { MambaConfig } from "../lib/config.ts";
import { MambaByte } from "../lib/model.ts";

const ROOT = new URL("../", import.meta.url).pathname;

async function run(
  args: string[],
  stdin?: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...args],
    cwd: ROOT,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  if (stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(stdin));
    await writer.close();
  }
  const { code, stdout, stderr } = await child.output();
  return { code, stdout: new TextDecoder().decode(stdout), stderr: new TextDecoder().decode(stderr) };
}

/** Exit code `code` and exactly one stderr line matching `message`, without a stack trace. */
async function fails(args: string[], code: number, message: RegExp, stdin?: string): Promise<void> {
  const r = await run(args, stdin);
  const lines = r.stderr.trim().split("\n");
  assert.equal(r.code, code, `exit code of ${args.join(" ")}: ${r.stderr}`);
  assert.equal(lines.length, 1, `one line on stderr, got:\n${r.stderr}`);
  assert.match(lines[0], message);
  assert.doesNotMatch(r.stderr, /^\s+at /m);
}

const dir = await Deno.makeTempDir();
const text = "we the people of the united states, in order to form a more perfect union. ".repeat(40);
await Deno.writeTextFile(`${dir}/corpus.txt`, text);
await Deno.writeTextFile(`${dir}/empty.txt`, "");
await Deno.writeTextFile(`${dir}/short.txt`, "too short");
const model = new MambaByte(new MambaConfig({ dim: 8, depth: 1, d_state: 4 }), { seed: 1 });
await saveModel(`${dir}/tiny.safetensors`, model);
const good = await Deno.readFile(`${dir}/tiny.safetensors`);
await Deno.writeFile(`${dir}/truncated.safetensors`, good.subarray(0, good.length - 100));
const tiny = ["--dim", "8", "--depth", "1", "--d-state", "4", "--batch-size", "2", "--seq-len", "16"];

Deno.test("train → eval → generate on a tiny model, end to end", async () => {
  const out = `${dir}/run`;
  const trained = await run([
    "tasks/train.ts",
    ...tiny,
    "--steps=6",
    "--log-every=2",
    "--eval-every=3",
    `--data=${dir}/corpus.txt`,
    "--out",
    out,
    "--backend=cpu",
  ]);
  assert.equal(trained.code, 0, trained.stderr);
  assert.match(trained.stdout, /^config: \{.*"dim":8.*"steps":6/m, "prints the resolved config");
  const logged = [...trained.stdout.matchAll(/^step (\d+)\/6 loss/gm)].map((m) => Number(m[1]));
  assert.deepEqual(logged, [2, 3, 4, 6], "a plain line per log interval and per evaluation");
  const files = [...Deno.readDirSync(out)].map((e) => e.name).sort();
  assert.deepEqual(files, ["best.safetensors", "checkpoint.safetensors", "loss.svg", "metrics.jsonl"]);

  const evaluated = await run([
    "tasks/eval.ts",
    "--checkpoint",
    `${out}/checkpoint.safetensors`,
    "--eval-batches=2",
  ]);
  assert.equal(evaluated.code, 0, evaluated.stderr);
  assert.match(evaluated.stdout, /^\d+\.\d{4} bits per byte on 4 held-out windows of 16 bytes/);
  const fp32Bpb = evaluated.stdout.slice(0, 6);
  const evalOf = (checkpoint: string) =>
    run(["tasks/eval.ts", "--checkpoint", checkpoint, "--eval-batches=2"]);
  const [ofDir, ofBest] = await Promise.all([evalOf(out), evalOf(`${out}/best.safetensors`)]);
  assert.equal(ofDir.code, 0, ofDir.stderr);
  assert.equal(ofDir.stdout, ofBest.stdout, "a run directory evaluates its best.safetensors");
  assert.match(
    ofBest.stdout,
    /on 4 held-out windows of 16 bytes \(.*corpus\.txt/,
    "with the run's data and windows",
  );
  const quantized = await run([
    "tasks/eval.ts",
    "--checkpoint",
    `${out}/checkpoint.safetensors`,
    "--eval-batches=2",
    "--quantize=int8",
  ]);
  assert.equal(quantized.code, 0, quantized.stderr);
  assert.match(
    quantized.stdout,
    /^\d+\.\d{4} bits per byte on 4 held-out windows of 16 bytes .*, int8 weights\n/,
  );
  assert.match(
    quantized.stdout,
    new RegExp(`^int8 − fp32 weights: [+-]\\d\\.\\d{4} bits per byte \\(fp32: ${fp32Bpb}\\)$`, "m"),
  );

  const generated = await run([
    "generate.ts",
    "--checkpoint",
    out,
    "--prompt",
    "We the",
    "--max-bytes=12",
    "--seed=4",
  ]);
  assert.equal(generated.code, 0, generated.stderr);
  assert.ok(generated.stdout.startsWith("We the"));
  assert.match(generated.stderr, /^12 bytes in [\d.]+ s: [\d.]+ bytes\/s \(cpu\)/);
  const again = await run(
    ["generate.ts", "--checkpoint", out, "--prompt", "-", "--max-bytes=12", "--seed=4"],
    "We the",
  );
  assert.equal(again.stdout, generated.stdout, "stdin prompt, same seed, same text");
  const int8 = ["generate.ts", "--checkpoint", out, "--prompt", "We the", "--max-bytes=12", "--seed=4"];
  const quantizedText = await run([...int8, "--quantize", "int8"]);
  assert.equal(quantizedText.code, 0, quantizedText.stderr);
  assert.ok(quantizedText.stdout.startsWith("We the"));
  assert.match(quantizedText.stderr, /^12 bytes in [\d.]+ s: [\d.]+ bytes\/s \(cpu, int8 weights\)/);
  assert.equal(
    (await run([...int8, "--quantize=int8"])).stdout,
    quantizedText.stdout,
    "int8: same seed, same text",
  );
  const batch = await run([
    "generate.ts",
    "--checkpoint",
    `${out}/best.safetensors`,
    "--prompt=W",
    "--num-samples=3",
    "--max-bytes=5",
  ]);
  assert.equal(batch.stdout.match(/^--- sample \d\/3 ---$/gm)?.length, 3);

  await fails(["tasks/train.ts", "--out", out], 2, /already holds a run; continue it with --resume/);
  await fails(
    ["tasks/train.ts", "--resume", out, "--dim=9"],
    2,
    /only --resume, --backend, --steps, --max-memory, --optimizer-bits, --dtype may be given/,
  );
  await fails(
    ["tasks/train.ts", "--resume", out, "--optimizer-bits=8"],
    2,
    /--optimizer-bits 8 does not match the checkpoint's 32-bit AdamW moments; resume with --optimizer-bits 32 or without it/,
  );
  const resumed = await run(["tasks/train.ts", "--resume", out, "--steps=7", "--optimizer-bits=32"]);
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.match(resumed.stdout, /resuming from step 6/);
  assert.match(resumed.stdout, /^step 7\/7 /m);
});

Deno.test("bad options: exit 2 and a line that lists what is valid", async () => {
  await fails(
    ["tasks/train.ts", "--bogus=1"],
    2,
    /Unknown option '--bogus'; valid options: --dim --depth .* --backend/,
  );
  await fails(["tasks/train.ts", "--lr", "fast"], 2, /--lr must be a number > 0, got "fast"/);
  await fails(["tasks/train.ts", "--steps=2.5"], 2, /--steps must be an integer >= 1, got "2.5"/);
  await fails(["tasks/train.ts", "--backend=tpu"], 2, /--backend must be one of auto, cpu, webgpu, cuda/);
  await fails(
    ["tasks/train.ts", "--optimizer-bits=16"],
    2,
    /--optimizer-bits must be one of 32, 8, got "16"/,
  );
  await fails(["tasks/train.ts", "--dtype=fp8"], 2, /--dtype must be one of fp32, bf16, f16, got "fp8"/);
  await fails(["tasks/train.ts", "--loss-scale=0.5"], 2, /--loss-scale must be a number >= 1, got "0.5"/);
  await fails(
    ["tasks/plan.ts", "--dim=8", "--depth=1", "--seq-len=8", "--optimizer-bits=4"],
    2,
    /--optimizer-bits must be one of 32, 8, got "4"/,
  );
  await fails(
    ["generate.ts", "--checkpoint", `${dir}/tiny.safetensors`, "--prompt=a", "--top-p", "1.5"],
    2,
    /--top-p must be a number > 0 and <= 1, got "1.5"/,
  );
  await fails(["generate.ts", "--prompt=a"], 2, /--checkpoint FILE \(or a run directory\) is required/);
  await fails(
    ["generate.ts", "--checkpoint", `${dir}/tiny.safetensors`, "--prompt=a", "--quantize=int4"],
    2,
    /--quantize must be one of none, int8, got "int4"/,
  );
  await fails(["tasks/eval.ts", "--quantize", "fp8"], 2, /--quantize must be one of none, int8, got "fp8"/);
  await fails(["tasks/eval.ts", "extra"], 2, /Unexpected argument 'extra'/);
});

Deno.test("bad inputs: one clear line, exit 1, nothing half-written", async () => {
  const out = `${dir}/bad-run`;
  const train = ["tasks/train.ts", ...tiny, "--steps=2", "--out", out];
  await fails(
    [...train, `--data=${dir}/missing.txt`],
    1,
    /cannot read the corpus .*missing\.txt: no such file/,
  );
  await fails([...train, `--data=${dir}/empty.txt`], 1, /the corpus .*empty\.txt is empty/);
  await fails(
    [...train, `--data=${dir}/short.txt`],
    1,
    /has 8 bytes, fewer than seq-len \+ 1 = 17; use more data or a smaller --seq-len/,
  );
  assert.throws(() => Deno.statSync(out), Deno.errors.NotFound);

  const gen = (
    checkpoint: string,
    ...more: string[]
  ) => ["generate.ts", "--checkpoint", checkpoint, "--prompt=a", ...more];
  await fails(gen(`${dir}/none.safetensors`), 1, /checkpoint .*none\.safetensors: no such file/);
  await fails(
    gen(`${dir}/truncated.safetensors`),
    1,
    /truncated\.safetensors is not a valid safetensors file: .*truncated/,
  );
  await fails(gen(`${dir}/corpus.txt`), 1, /corpus\.txt is not a valid safetensors file/);
  await fails(
    ["generate.ts", "--checkpoint", `${dir}/tiny.safetensors`, "--prompt="],
    2,
    /the prompt is empty/,
  );
  await fails(
    ["generate.ts", "--checkpoint", `${dir}/tiny.safetensors`, "--prompt=-"],
    2,
    /the prompt is empty/,
    "",
  );

  const mismatched = new MambaByte(new MambaConfig({ dim: 8, depth: 2, d_state: 4 }));
  await saveModel(`${dir}/mismatch.safetensors`, mismatched, {
    config: JSON.stringify({ dim: 8, depth: 1, d_state: 4 }),
  });
  await fails(
    gen(`${dir}/mismatch.safetensors`),
    1,
    /does not match its config: unexpected tensors: backbone\.layers\.1\./,
  );
  await fails(
    ["tasks/eval.ts", "--checkpoint", `${dir}/truncated.safetensors`],
    1,
    /not a valid safetensors file/,
  );
});

globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

Deno.test("Ctrl-C (SIGINT) writes a checkpoint of the last finished step and exits 130", async () => {
  const out = `${dir}/interrupted`;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "tasks/train.ts",
      ...tiny,
      "--steps=100000",
      "--log-every=1",
      `--data=${dir}/corpus.txt`,
      "--out",
      out,
    ],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let stdout = "";
  while (!/^step 3\//m.test(stdout)) stdout += (await reader.read()).value ?? "";
  const seen = Number([...stdout.matchAll(/^step (\d+)\//gm)].at(-1)![1]);
  child.kill("SIGINT");
  for (let r = await reader.read(); !r.done; r = await reader.read()) stdout += r.value;
  const { code } = await child.status;
  await child.stderr.cancel();
  assert.equal(code, 130);
  const last = Number([...stdout.matchAll(/^step (\d+)\//gm)].at(-1)![1]);
  assert.match(stdout, new RegExp(`stopped at step ${last}; resume with: deno task train --resume `));
  const { metadata } = await readSafetensors(`${out}/checkpoint.safetensors`);
  assert.equal(metadata.step, String(last));
  assert.ok(
    last >= seen && last < seen + 50,
    `stopped promptly: signalled after step ${seen}, stopped at ${last}`,
  );
});
