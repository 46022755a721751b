/**
 * `deno task eval --checkpoint FILE [--data PATH]`: bits per byte of a checkpoint on held-out
 * text (the validation split of --data, else of the run's own corpus, else the default corpus).
 */
import { createBackend, type DeviceChoice } from "../lib/backend.ts";
import { modelFromCheckpoint, readSafetensors } from "../lib/checkpoint.ts";
import { type OptionSpec, parseOptions, runCli, usage, UsageError } from "../lib/cli_args.ts";
import { checkCorpus, openCorpus, validationBatches } from "../lib/data.ts";
import { evaluateBpb, type TrainSettings } from "../lib/train.ts";

const SPECS = {
  checkpoint: { kind: "string", help: "a .safetensors checkpoint" },
  data: { kind: "string", help: "corpus file, directory or glob (default: the run's corpus)" },
  "seq-len": { kind: "int", min: 1, help: "bytes per window (default: the run's, else 128)" },
  "batch-size": { kind: "int", min: 1, help: "windows per batch (default: the run's, else 8)" },
  "eval-batches": { kind: "int", min: 1, default: 16, help: "batches of held-out windows" },
  backend: { kind: "string", choices: ["auto", "cpu", "webgpu", "cuda"], default: "auto", help: "device" },
} satisfies Record<string, OptionSpec>;

async function main(): Promise<number> {
  const { options: o, help } = parseOptions(Deno.args, SPECS);
  if (help) {
    console.log(usage("deno task eval", SPECS));
    return 0;
  }
  if (o.checkpoint === undefined) throw new UsageError("--checkpoint FILE is required");
  const file = await readSafetensors(o.checkpoint);
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
  const bpb = await evaluateBpb(model, batches);
  console.log(
    `${
      bpb.toFixed(4)
    } bits per byte on ${windows} held-out windows of ${seqLen} bytes (${corpus.description})`,
  );
  return 0;
}

if (import.meta.main) await runCli("eval", main);
