/**
 * `deno task train [options]`: trains MambaByte on the default corpus (or --data PATH) with the
 * best backend available. `--help` lists the options; `--resume DIR` continues a run exactly.
 * `--gpus N|all` launches one worker per GPU (tasks/train_distributed.ts); a worker is this same
 * script, told its rank by the launcher's environment.
 */
import { type Backend, createBackend, type DeviceChoice } from "../lib/backend.ts";
import { CudaBackend } from "../lib/backends/cuda.ts";
import { readSafetensors } from "../lib/checkpoint.ts";
import { type OptionSpec, parseOptions, parseSize, runCli, usage, UsageError } from "../lib/cli_args.ts";
import { openCorpus } from "../lib/data.ts";
import { DataParallel, gradAccumForWorld } from "../lib/distributed/data_parallel.ts";
import { joinGroup, type WorkerInfo, workerInfo } from "../lib/distributed/worker.ts";
import { LOSS_SCALE_GROWTH_INTERVAL } from "../lib/loss_scale.ts";
import { OPTIMIZER_BITS } from "../lib/optim.ts";
import { logLine, progressBar } from "../lib/progress.ts";
import {
  checkpointSettings,
  defaultsKind,
  type Dtype,
  DTYPES,
  type MetricRecord,
  RUN_FILES,
  runConfig,
  train,
  trainDefaults,
  type TrainSettings,
  useDtype,
} from "../lib/train.ts";
import { LAUNCH_SPECS, launchTraining, RENDEZVOUS_TIMEOUT_MS } from "./train_distributed.ts";

const BACKENDS = ["auto", "cpu", "webgpu", "cuda"] as const;
const cpu = trainDefaults("cpu"), gpu = trainDefaults("gpu");
const int = (help: string, min = 1) => ({ kind: "int" as const, help, min });
const num = (help: string, min = 0) => ({ kind: "number" as const, help, min });

/** Options without a default take the backend's (see trainDefaults): shown as cpu / gpu. */
const SPECS = {
  dim: int("model width D"),
  depth: int("number of Mamba blocks"),
  "d-state": int("SSM state size N"),
  "expand-factor": int("inner width E·D"),
  "d-conv": int("causal conv width K"),
  pscan: { kind: "bool" as const, help: "parallel scan in training (else sequential)" },
  recompute: { kind: "bool" as const, help: "recompute block activations in backward (less memory)" },
  "moe-experts": int("BlackMamba: experts per MoE block, 0 = plain MambaByte", 0),
  "moe-top-k": int("experts per byte position"),
  "moe-every": int("every N-th block is an MoE block (depth counts both kinds)", 2),
  "moe-hidden": int("hidden width of each SwiGLU expert, 0 = 4·dim", 0),
  "moe-aux-loss-coef": num("weight of the load-balancing loss"),
  "moe-capacity-factor": { kind: "number", gt: 0, help: "expert capacity factor (extra tokens are dropped)" },
  steps: int("optimizer steps"),
  "batch-size": int("windows per micro-batch"),
  "seq-len": int("bytes per window"),
  "grad-accum": int("micro-batches per step"),
  lr: { kind: "number", gt: 0, help: "peak learning rate" },
  "min-lr": num("final learning rate (cosine decay)"),
  warmup: int("linear warmup steps", 0),
  "weight-decay": num("AdamW weight decay"),
  "optimizer-bits": {
    kind: "int",
    choices: OPTIMIZER_BITS,
    help: "bits per AdamW moment: 32 float32, 8 blockwise-quantized (about 1/4 of the memory)",
  },
  dtype: {
    kind: "string",
    choices: DTYPES,
    help: "matmul inputs: fp32, or bf16 or f16 (cuda: on tensor cores; webgpu: rounded in its shaders), " +
      "their activations kept in 16 bits; sums, weights, moments fp32; f16 with dynamic loss scaling",
  },
  "loss-scale": num(
    `f16: the loss scale to start from (halved on overflow, doubled after ${LOSS_SCALE_GROWTH_INTERVAL} good steps)`,
    1,
  ),
  clip: num("global gradient-norm clip, 0 = off"),
  seed: int("seed of the weights and data windows", 0),
  "log-every": int("steps per log line"),
  "eval-every": int("steps per validation"),
  "eval-batches": int("validation batches"),
  "save-every": int("steps per checkpoint"),
  out: { kind: "string", help: "output directory (default runs/<timestamp>)" },
  data: { kind: "string", help: "corpus file, directory or glob (default: State of the Union)" },
  resume: { kind: "string", help: "continue the run in this directory" },
  backend: { kind: "string", choices: BACKENDS, default: "auto", help: "device" },
  "max-memory": { kind: "string", help: "cuda: cap on device memory, e.g. 24GiB (fails beyond it)" },
  ...LAUNCH_SPECS,
} satisfies Record<string, OptionSpec>;

/**
 * Options allowed with --resume (everything else comes from the checkpoint); --optimizer-bits
 * only when it matches the checkpoint's moments; --dtype may change (the weights are fp32).
 */
const RESUME_OPTIONS = ["resume", "backend", "steps", "max-memory", "optimizer-bits", "dtype"];

function helpText(): string {
  const specs: Record<string, OptionSpec> = { ...SPECS };
  for (const key of Object.keys(cpu) as (keyof typeof cpu)[]) {
    const name = key.replaceAll("_", "-");
    if (specs[name]) {
      specs[name] = { ...specs[name], help: `${specs[name].help} [cpu ${cpu[key]}, gpu ${gpu[key]}]` };
    }
  }
  return usage("deno task train", specs);
}

async function main(): Promise<number> {
  const { options, help } = parseOptions(Deno.args, SPECS);
  if (help) {
    console.log(helpText());
    return 0;
  }
  const worker = workerInfo();
  if (options.gpus !== undefined && !worker) {
    const out = options.resume ?? options.out ?? defaultOut();
    if (options.resume !== undefined) await readResume(options.resume);
    else await checkFreshOut(out);
    return await launchTraining({
      gpus: options.gpus,
      backend: options.backend,
      nodes: options.nodes ?? 1,
      nodeRank: options["node-rank"] ?? 0,
      masterAddr: options["master-addr"],
      masterPort: options["master-port"],
      out,
      resume: options.resume !== undefined,
    }, Deno.args);
  }
  const backend = await createBackend(options.backend as DeviceChoice);
  if (options["max-memory"] !== undefined) {
    capMemory(backend, parseSize(options["max-memory"], "--max-memory"));
  }
  const comm = worker ? await joinGroup(backend, worker, RENDEZVOUS_TIMEOUT_MS) : null;
  const world = comm?.worldSize ?? 1;
  const root = !comm || comm.rank === 0;
  const say = root ? console.log : () => {};
  let settings: TrainSettings;
  const resume = options.resume === undefined ? undefined : await readResume(options.resume);
  if (resume) {
    const extra = Object.keys(options).filter((k) =>
      (options as Record<string, unknown>)[k] !== undefined && !RESUME_OPTIONS.includes(k) &&
      !(k in LAUNCH_SPECS)
    );
    if (extra.length) {
      throw new UsageError(
        `--resume takes its settings from the checkpoint; only ${
          RESUME_OPTIONS.map((o) => `--${o}`).join(", ")
        } may be given, with the launch options (got --${extra.join(", --")})`,
      );
    }
    const saved = resume.settings;
    const bits = options["optimizer-bits"], savedBits = saved.optimizer_bits ?? 32;
    if (bits !== undefined && bits !== savedBits) {
      throw new UsageError(
        `--optimizer-bits ${bits} does not match the checkpoint's ${savedBits}-bit AdamW moments; ` +
          `resume with --optimizer-bits ${savedBits} or without it (converting moments is not supported)`,
      );
    }
    settings = {
      ...saved,
      out: options.resume!,
      backend: options.backend,
      steps: options.steps ?? saved.steps,
      dtype: (options.dtype as Dtype | undefined) ?? saved.dtype,
      // another number of GPUs: the same global batch, through grad-accum
      grad_accum: gradAccumForWorld(saved.gpus ?? 1, saved.grad_accum, world),
      gpus: world,
    };
  } else {
    const defaults = trainDefaults(defaultsKind(backend));
    const given: Partial<TrainSettings> = {};
    for (const key of Object.keys(defaults) as (keyof typeof defaults)[]) {
      const value = (options as Record<string, unknown>)[key.replaceAll("_", "-")];
      if (value !== undefined) (given as Record<string, unknown>)[key] = value;
    }
    settings = {
      ...defaults,
      ...given,
      out: options.out ?? defaultOut(),
      data: options.data ?? null,
      backend: options.backend,
      ...(worker ? { gpus: world } : {}),
    };
    if (!worker) await checkFreshOut(settings.out);
  }
  useDtype(backend, settings.dtype ?? "fp32"); // before the backend's line, which names its precision
  const config = runConfig(settings);
  const corpus = await openCorpus(settings.data ?? undefined);
  say(`backend: ${backend.device} (${backend.description})${comm ? `, ${world} rank(s)` : ""}`);
  say(`corpus: ${corpus.description}; ${corpus.train.length} training bytes, ${corpus.val.length} held out`);
  say(`config: ${JSON.stringify(settings)}`);
  say(`model: ${JSON.stringify(config.toJSON())}`);
  if (resume) say(`resuming from step ${resume.step} of ${settings.out}`);

  const controller = new AbortController();
  const onSigint = () => {
    if (controller.signal.aborted) Deno.exit(130);
    controller.abort();
    console.error("\ninterrupted: finishing this step and writing a checkpoint (Ctrl-C again to quit now)");
  };
  Deno.addSignalListener("SIGINT", onSigint);
  const tty = root && Deno.stdout.isTerminal();
  const encoder = new TextEncoder();
  const write = (text: string) => Deno.stdout.writeSync(encoder.encode(text));
  const parallel = comm ? new DataParallel(comm, backend) : undefined;
  const result = await train(settings, backend, corpus, {
    signal: controller.signal,
    parallel,
    onStep: tty ? (info) => write(`\r${progressBar(info)}\x1b[K`) : undefined,
    onLog: !root ? undefined : (record, info) => {
      const extra = moeLog(record) + lossScaleLog(record);
      if (!tty) write(logLine(info) + extra + "\n");
      else if (record.val_bpb !== undefined) write(`\r${logLine(info)}${extra}\x1b[K\n`);
    },
    onOverflow: !root ? undefined : (step, scale) => {
      write(
        `${tty ? "\r" : ""}step ${step}: f16 gradients overflowed; step skipped, loss scale now ${scale}` +
          `${tty ? "\x1b[K" : ""}\n`,
      );
    },
  }, resume?.file);
  Deno.removeSignalListener("SIGINT", onSigint);
  parallel?.free();
  comm?.close();
  if (tty) write("\n");
  const files = Object.values(RUN_FILES).map((f) => `${settings.out}/${f}`).join(", ");
  if (result.interrupted) {
    const gpus = worker ? ` --gpus ${world}` : "";
    say(`stopped at step ${result.step}; resume with: deno task train --resume ${settings.out}${gpus}`);
    return 130;
  }
  say(
    `done: ${result.step} steps, best validation ${result.bestValBpb.toFixed(4)} bits/byte; wrote ${files}`,
  );
  if (backend instanceof CudaBackend) {
    say(
      `peak device memory held by the cuda library: ${(backend.memoryStats().peak / 2 ** 30).toFixed(2)} GiB`,
    );
  }
  return 0;
}

/** --max-memory: only the cuda backend keeps a cap on its allocations. */
function capMemory(backend: Backend, bytes: number): void {
  if (!(backend instanceof CudaBackend)) {
    throw new UsageError(`--max-memory needs the cuda backend (this run uses ${backend.device})`);
  }
  backend.setMemoryCap(bytes);
}

/** ` aux 1.012 dropped 3.5` for MoE runs (mean per step since the last line), else "". */
function moeLog(record: MetricRecord): string {
  if (record.aux_loss === undefined) return "";
  return ` aux ${record.aux_loss.toFixed(3)} dropped ${record.dropped}`;
}

/** ` loss scale 65536 (1 skipped)` for f16 runs, else "". */
function lossScaleLog(record: MetricRecord): string {
  if (record.loss_scale === undefined) return "";
  return ` loss scale ${record.loss_scale}${record.skipped ? ` (${record.skipped} skipped)` : ""}`;
}

async function readResume(dir: string) {
  const path = `${dir}/${RUN_FILES.checkpoint}`;
  const file = await readSafetensors(path);
  const settings = checkpointSettings(file, path);
  return { file, settings, step: Number(file.metadata.step) };
}

/** runs/<timestamp> */
function defaultOut(): string {
  return `runs/${new Date().toISOString().slice(0, 19).replaceAll(":", "-")}`;
}

/** "train", or "train (rank 3)" in a launched worker, before its error messages. */
function cliName(info: WorkerInfo | null): string {
  return info ? `train (rank ${info.rank})` : "train";
}

async function checkFreshOut(dir: string): Promise<void> {
  try {
    await Deno.stat(`${dir}/${RUN_FILES.checkpoint}`);
  } catch {
    return;
  }
  throw new UsageError(
    `${dir} already holds a run; continue it with --resume ${dir} or choose another --out`,
  );
}

if (import.meta.main) await runCli(cliName(workerInfo()), main);
