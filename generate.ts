/**
 * `deno run -A generate.ts --checkpoint FILE|RUN_DIR --prompt TEXT`: streams bytes sampled
 * from a checkpoint to stdout (never splitting a UTF-8 character) and reports bytes/s on
 * stderr. `--prompt -` reads the prompt from stdin; `--quantize int8` decodes with int8 Linear
 * weights (lib/quantize.ts); `--help` lists the options.
 */
import { createBackend, type DeviceChoice } from "./lib/backend.ts";
import { loadModel } from "./lib/checkpoint.ts";
import { type OptionSpec, parseOptions, runCli, usage, UsageError } from "./lib/cli_args.ts";
import { generate, GENERATE_DEFAULTS } from "./lib/generate.ts";
import { type Quantization, QUANTIZATIONS } from "./lib/quantize.ts";
import { Utf8Stream } from "./lib/sample.ts";
import { checkpointFile } from "./lib/train.ts";

const d = GENERATE_DEFAULTS;
const SPECS = {
  checkpoint: { kind: "string", help: "a .safetensors file, or a run directory (its best, else latest)" },
  prompt: { kind: "string", help: "text to continue; - reads stdin" },
  "max-bytes": { kind: "int", min: 0, default: d.maxBytes, help: "bytes to generate per sample" },
  temperature: { kind: "number", min: 0, default: d.temperature, help: "0 = greedy" },
  "top-k": { kind: "int", min: 0, default: d.topK, help: "keep the k most likely bytes, 0 = all" },
  "top-p": { kind: "number", gt: 0, max: 1, default: d.topP, help: "nucleus probability mass" },
  seed: { kind: "int", min: 0, default: d.seed, help: "sampling seed" },
  "num-samples": {
    kind: "int",
    min: 1,
    default: d.numSamples,
    help: "samples decoded together as one batch",
  },
  "block-size": {
    kind: "int",
    min: 1,
    default: d.blockSize,
    help: "bytes sampled on the device between reads back to the host",
  },
  backend: { kind: "string", choices: ["auto", "cpu", "webgpu", "cuda"], default: "auto", help: "device" },
  quantize: {
    kind: "string",
    choices: QUANTIZATIONS,
    default: "none",
    help: "int8: Linear weights in int8 per output channel (4× fewer weight bytes read per byte)",
  },
} satisfies Record<string, OptionSpec>;

async function main(): Promise<number> {
  const { options: o, help } = parseOptions(Deno.args, SPECS);
  if (help) {
    console.log(usage("deno run -A generate.ts", SPECS));
    return 0;
  }
  if (o.checkpoint === undefined) throw new UsageError("--checkpoint FILE (or a run directory) is required");
  if (o.prompt === undefined) throw new UsageError("--prompt TEXT is required (--prompt - reads stdin)");
  const prompt = o.prompt === "-" ? await readStdin() : new TextEncoder().encode(o.prompt);
  if (prompt.length === 0) {
    throw new UsageError("the prompt is empty; give at least one byte of text to continue");
  }
  const backend = await createBackend(o.backend as DeviceChoice);
  const model = await loadModel(await checkpointFile(o.checkpoint), { backend });
  await model.quantize(o.quantize as Quantization);

  const B = o["num-samples"];
  const stdout = Deno.stdout;
  const encoder = new TextEncoder();
  const out = (text: string) => text && stdout.writeSync(encoder.encode(text));
  const start = performance.now();
  const stream = generate(model, prompt, {
    maxBytes: o["max-bytes"],
    temperature: o.temperature,
    topK: o["top-k"],
    topP: o["top-p"],
    seed: o.seed,
    numSamples: B,
    blockSize: o["block-size"],
  });
  let generated = 0;
  if (B === 1) {
    // one sample: stream it as it comes, completing characters only
    const utf8 = new Utf8Stream();
    out(new TextDecoder().decode(prompt));
    for await (const chunk of stream) {
      out(utf8.push(chunk));
      generated += chunk.length;
    }
    out(utf8.flush() + "\n");
  } else {
    // a batch: every sample is printed when the batch is done
    const samples = Array.from({ length: B }, () => [] as number[]);
    for await (const chunk of stream) {
      chunk.forEach((byte, b) => samples[b].push(byte));
      generated += chunk.length;
    }
    samples.forEach((s, b) =>
      out(
        `--- sample ${b + 1}/${B} ---\n${new TextDecoder().decode(prompt)}${
          new TextDecoder().decode(new Uint8Array(s))
        }\n`,
      )
    );
  }
  const seconds = (performance.now() - start) / 1000;
  console.error(
    `${generated} bytes in ${seconds.toFixed(2)} s: ${
      (generated / seconds).toFixed(1)
    } bytes/s (${backend.device}${model.quantization === "none" ? "" : `, ${model.quantization} weights`})`,
  );
  return 0;
}

async function readStdin(): Promise<Uint8Array> {
  return new Uint8Array(await new Response(Deno.stdin.readable).arrayBuffer());
}

if (import.meta.main) await runCli("generate", main);
