/**
 * `deno task eval --checkpoint FILE|RUN_DIR [--data PATH] [--quantize int8]`: bits per byte of a
 * checkpoint on held-out text (the validation split of --data, else of the run's own corpus,
 * else the default corpus). With --quantize int8 the same windows are also evaluated with the
 * fp32 weights, and the difference is printed: the quality check of int8 decode.
 */
import { createBackend, type DeviceChoice } from "../lib/backend.ts";
import { modelFromCheckpoint, readSafetensors } from "../lib/checkpoint.ts";
import { type OptionSpec, parseOptions, runCli, usage, UsageError } from "../lib/cli_args.ts";
import { checkCorpus, openCorpus, validationBatches } from "../lib/data.ts";
import { type Quantization, QUANTIZATIONS } from "../lib/quantize.ts";
import { checkpointFile, evaluateBpb, type TrainSettings } from "../lib/train.ts";

const SPECS = {
  checkpoint: { kind: "string", help: "a .safetensors file, or a run directory (its best, else latest)" },
  data: { kind: "string", help: "corpus file, directory or glob (default: the run's corpus)" },
  "seq-len": { kind: "int", min: 1, help: "bytes per window (default: the run's, else 128)" },
  "batch-size": { kind: "int", min: 1, help: "windows per batch (default: the run's, else 8)" },
  "eval-batches": { kind: "int", min: 1, default: 16, help: "batches of held-out windows" },
  backend: { kind: "string", choices: ["auto", "cpu", "webgpu", "cuda"], default: "auto", help: "device" },
  quantize: {
    kind: "string",
    choices: QUANTIZATIONS,
    default: "none",
    help: "int8: evaluate with int8 Linear weights, and report the change from fp32",
  },
} satisfies Record<string, OptionSpec>;

async function main(): Promise<number> {
  const { options: o, help } = parseOptions(Deno.args, SPECS);
  if (help) {
    console.log(usage("deno task eval", SPECS));
    return 0;
  }
  if (o.checkpoint === undefined) throw new UsageError("--checkpoint FILE (or a run directory) is required");
  const file = await readSafetensors(await checkpointFile(o.checkpoint));
  const backend = await createBackend(o.backend as DeviceChoice);
  const model = modelFromCheckpoint(file, { backend, source: `checkpoint ${o.checkpoint}` });
  const run = file.metadata.train_options
    ? JSON.parse(file.metadata.train_options) as TrainSettings
    : undefined;
  const seqLen = o["seq-len"] ?? run?.seq_len ?? 128;
  const corpus = await openCorpus(o.data ?? run?.data ?? undefined);
  checkCorpus(corpus, seqLen);
  const batches = validationBatches(
    corpus.val,
    seqLen,
    o["batch-size"] ?? run?.batch_size ?? 8,
    o["eval-batches"],
  );
  const windows = batches.reduce((n, b) => n + b.shape[0], 0);
  const fp32 = o.quantize === "none" ? undefined : await evaluateBpb(model, batches);
  await model.quantize(o.quantize as Quantization);
  const bpb = await evaluateBpb(model, batches);
  const weights = fp32 === undefined ? "" : `, ${o.quantize} weights`;
  console.log(
    `${
      bpb.toFixed(4)
    } bits per byte on ${windows} held-out windows of ${seqLen} bytes (${corpus.description})${weights}`,
  );
  if (fp32 !== undefined) {
    const delta = bpb - fp32;
    console.log(
      `${o.quantize} − fp32 weights: ${delta >= 0 ? "+" : ""}${delta.toFixed(4)} bits per byte ` +
        `(fp32: ${fp32.toFixed(4)})`,
    );
  }
  return 0;
}

if (import.meta.main) await runCli("eval", main);
