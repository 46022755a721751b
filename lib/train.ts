/**
 * The training loop: random windows → forward/backward (with gradient accumulation) →
 * global-norm clipping → AdamW with warmup + cosine schedule; periodic evaluation on fixed
 * held-out windows, metrics.jsonl, loss.svg, checkpoint.safetensors (latest, with the optimizer
 * moments and data-stream state, so a resumed run reproduces the uninterrupted one exactly) and
 * best.safetensors (lowest validation bits per byte).
 *
 * Data-parallel training (hooks.parallel): every rank draws the step's global stream of windows
 * and trains on its own share; gradients are averaged over the ranks after backward, before
 * clipping; rank 0 alone evaluates, logs and writes files.
 */
import type { Backend } from "./backend.ts";
import type { DataParallel } from "./distributed/data_parallel.ts";
import { type Safetensors, saveModel, tensorsToFlat } from "./checkpoint.ts";
import { MambaConfig } from "./config.ts";
import { MOE_DEFAULTS, type MoeConfigOptions } from "./moe_config.ts";
import { type Batch, BatchStream, checkCorpus, type Corpus, validationBatches } from "./data.ts";
import { type Loss, MambaByte } from "./model.ts";
import { AdamW, ADAMW_DEFAULTS, clipScale, gradNorm, learningRate, type OptimizerBits } from "./optim.ts";
import { DEFAULT_LOSS_SCALE, LossScaler } from "./loss_scale.ts";
import { lossPlotSvg, type MetricPoint } from "./plot.ts";
import type { ProgressInfo } from "./progress.ts";

/** Everything a run is defined by; saved with every checkpoint (keys are the CLI's, `-` → `_`). */
export interface TrainSettings {
  // model
  dim: number;
  depth: number;
  d_state: number;
  expand_factor: number;
  d_conv: number;
  pscan: boolean;
  // mixture of experts (BlackMamba, lib/moe_config.ts); absent: lib/moe_config.ts's defaults
  /** Experts per MoE block; 0 or absent: plain MambaByte (no MoE blocks). */
  moe_experts?: number;
  /** Experts per byte position. */
  moe_top_k?: number;
  /** Every moe_every-th block is an MoE block. */
  moe_every?: number;
  /** Hidden width of each SwiGLU expert; 0: 4·dim. */
  moe_hidden?: number;
  /** Weight of the load-balancing loss. */
  moe_aux_loss_coef?: number;
  /** Expert capacity factor (tokens beyond capacity are dropped). */
  moe_capacity_factor?: number;
  // run
  /** Recompute each block's activations in backward instead of keeping them (less memory). */
  recompute?: boolean;
  /** Optimizer steps. */
  steps: number;
  /** Windows per micro-batch. */
  batch_size: number;
  /** Bytes per window (plus one for the last target). */
  seq_len: number;
  /** Micro-batches per step (on each GPU). */
  grad_accum: number;
  /** Data-parallel ranks (GPUs); absent: 1. Global batch = batch_size · grad_accum · gpus. */
  gpus?: number;
  /** Peak learning rate, reached at the end of warmup. */
  lr: number;
  /** Learning rate at the last step (cosine decay). */
  min_lr: number;
  /** Steps of linear warmup. */
  warmup: number;
  weight_decay: number;
  /** Bits per AdamW moment: 32 (float32) or 8 (blockwise-quantized); absent: 32. */
  optimizer_bits?: OptimizerBits;
  /**
   * The training matmuls' inputs: "fp32", or "bf16" or "f16" (rounded so: on cuda's tensor cores,
   * in webgpu's shaders, or emulated on cpu; sums in fp32). With bf16 or f16 the activations that
   * matmuls read are kept in 16 bits (ActivationLayout "half"); weights, gradients and optimizer
   * state stay fp32. f16 trains with dynamic loss scaling (lib/loss_scale.ts). Absent: fp32.
   */
  dtype?: Dtype;
  /** f16: the loss scale to start from (halved on overflow, doubled after 2000 good steps); absent: 2^16. */
  loss_scale?: number;
  /** Global gradient-norm clip (0: off). */
  clip: number;
  /** Seeds the initial weights and the stream of training windows. */
  seed: number;
  log_every: number;
  eval_every: number;
  /** Validation batches (of batch_size windows) per evaluation. */
  eval_batches: number;
  save_every: number;
  /** Output directory. */
  out: string;
  /** Corpus path (file, directory or glob); null for the default corpus. */
  data: string | null;
  /** The backend asked for (auto, cpu, webgpu, cuda). */
  backend: string;
}

/** The dtypes a run can train in (TrainSettings.dtype). */
export const DTYPES = ["fp32", "bf16", "f16"] as const;
export type Dtype = typeof DTYPES[number];

/** The settings with defaults: `out`, `data` and `backend` are the caller's. */
export type TrainDefaults = Omit<TrainSettings, "out" | "data" | "backend">;

/** Which defaults a backend gets: "gpu" for a hardware accelerator, else "cpu". */
export type DefaultsKind = "cpu" | "gpu";

/**
 * "gpu" for cuda and for webgpu on a hardware adapter; "cpu" for the cpu backend and for a
 * software WebGPU adapter (Mesa's llvmpipe/lavapipe, SwiftShader), which runs on the CPU.
 */
export function defaultsKind(backend: Pick<Backend, "device" | "description">): DefaultsKind {
  if (backend.device === "cpu") return "cpu";
  return /llvmpipe|lavapipe|swiftshader|software/i.test(backend.description) ? "cpu" : "gpu";
}

/**
 * Default settings. "cpu": a small model whose loss visibly falls within the first minute on
 * a 2-core machine. "gpu": a larger model and longer windows.
 */
export function trainDefaults(kind: DefaultsKind): TrainDefaults {
  const shared = {
    d_state: 16,
    expand_factor: 2,
    d_conv: 4,
    pscan: true,
    moe_experts: 0,
    moe_top_k: MOE_DEFAULTS.top_k,
    moe_every: MOE_DEFAULTS.every,
    moe_hidden: 0,
    moe_aux_loss_coef: MOE_DEFAULTS.aux_loss_coef,
    moe_capacity_factor: MOE_DEFAULTS.capacity_factor,
    recompute: false,
    grad_accum: 1,
    weight_decay: 0.1,
    optimizer_bits: 32,
    dtype: "fp32",
    loss_scale: DEFAULT_LOSS_SCALE,
    clip: 1,
    seed: 1337,
  } satisfies Partial<TrainDefaults>;
  if (kind === "cpu") {
    return {
      ...shared,
      dim: 64,
      depth: 2,
      steps: 1000,
      batch_size: 8,
      seq_len: 128,
      lr: 3e-3,
      min_lr: 3e-4,
      warmup: 20,
      log_every: 10,
      eval_every: 100,
      eval_batches: 4,
      save_every: 100,
    };
  }
  return {
    ...shared,
    dim: 512,
    depth: 8,
    steps: 20000,
    batch_size: 16,
    seq_len: 1024,
    lr: 1e-3,
    min_lr: 1e-4,
    warmup: 500,
    log_every: 20,
    eval_every: 500,
    eval_batches: 16,
    save_every: 500,
  };
}

/** The model config of a run. */
export function runConfig(s: TrainSettings): MambaConfig {
  return new MambaConfig({
    dim: s.dim,
    depth: s.depth,
    d_state: s.d_state,
    expand_factor: s.expand_factor,
    d_conv: s.d_conv,
    pscan: s.pscan,
    ...(s.moe_experts ? { moe: moeOptions(s) } : {}),
  });
}

/** The `moe` config options of a run's settings (fields it leaves out take their defaults). */
function moeOptions(s: TrainSettings): MoeConfigOptions {
  const optional = {
    top_k: s.moe_top_k,
    every: s.moe_every,
    hidden: s.moe_hidden || undefined,
    aux_loss_coef: s.moe_aux_loss_coef,
    capacity_factor: s.moe_capacity_factor,
  };
  return {
    experts: s.moe_experts!,
    ...Object.fromEntries(Object.entries(optional).filter(([, v]) => v !== undefined)),
  };
}

/** One line of metrics.jsonl. */
export interface MetricRecord extends MetricPoint {
  step: number;
  /** Mean training loss (nats per byte) since the previous record. */
  loss: number;
  bpb: number;
  lr: number;
  bytes_per_s: number;
  val_bpb?: number;
  /** MoE models: mean load-balancing loss since the previous record (1 = balanced). */
  aux_loss?: number;
  /** MoE models: mean per step, since the previous record, of the choices dropped beyond capacity. */
  dropped?: number;
  /** f16: the loss scale after this step. */
  loss_scale?: number;
  /** f16: steps since the previous record whose gradients overflowed (skipped: no update). */
  skipped?: number;
}

export interface TrainHooks {
  /** Stops after the current step; a checkpoint is written first. */
  signal?: AbortSignal;
  /** After every step (for a progress bar). */
  onStep?(info: ProgressInfo): void;
  /** After every metrics record is written. */
  onLog?(record: MetricRecord, info: ProgressInfo): void;
  /** f16: a step's gradients overflowed, so it was skipped and the loss scale lowered to `scale`. */
  onOverflow?(step: number, scale: number): void;
  /**
   * This process is one rank of data-parallel training (its world size must equal
   * settings.gpus). Stopping (signal) is agreed on by all ranks, after the current step.
   */
  parallel?: DataParallel;
}

export interface TrainResult {
  /** Steps completed. */
  step: number;
  interrupted: boolean;
  bestValBpb: number;
}

/** File names inside a run directory. */
export const RUN_FILES = {
  checkpoint: "checkpoint.safetensors",
  best: "best.safetensors",
  metrics: "metrics.jsonl",
  plot: "loss.svg",
} as const;

/** A file as is; a run directory → its best.safetensors, else its checkpoint.safetensors. */
export async function checkpointFile(path: string): Promise<string> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch {
    throw new Error(`checkpoint ${path}: no such file or directory`);
  }
  if (!info.isDirectory) return path;
  for (const name of [RUN_FILES.best, RUN_FILES.checkpoint]) {
    if (await Deno.stat(`${path}/${name}`).then(() => true, () => false)) return `${path}/${name}`;
  }
  throw new Error(`${path} holds neither ${RUN_FILES.best} nor ${RUN_FILES.checkpoint}`);
}

/**
 * Trains from scratch, or from `resume` (a checkpoint written by this loop) when given, writing
 * the run's files into `settings.out`.
 */
export async function train(
  settings: TrainSettings,
  backend: Backend,
  corpus: Corpus,
  hooks: TrainHooks = {},
  resume?: Safetensors,
): Promise<TrainResult> {
  checkCorpus(corpus, settings.seq_len);
  const s = settings;
  const parallel = hooks.parallel;
  const rank = parallel?.rank ?? 0, world = parallel?.worldSize ?? 1;
  if (world !== (s.gpus ?? 1)) {
    throw new Error(`the run asks for ${s.gpus ?? 1} GPU(s) but this process is one of ${world} ranks`);
  }
  const root = rank === 0;
  useDtype(backend, s.dtype ?? "fp32");
  const config = runConfig(s);
  const model = new MambaByte(config, { backend, seed: s.seed, recompute: s.recompute ?? false });
  const optimizer = new AdamW(backend, model.table, {
    ...ADAMW_DEFAULTS,
    weightDecay: s.weight_decay,
    bits: s.optimizer_bits ?? 32,
  });
  const scaler = s.dtype === "f16" ? new LossScaler(s.loss_scale ?? DEFAULT_LOSS_SCALE) : null;
  const stream = new BatchStream(corpus.train, s.seq_len, s.seed + 1);
  const valBatches = validationBatches(corpus.val, s.seq_len, s.batch_size, s.eval_batches);
  const out = (name: string) => `${s.out}/${name}`;
  if (root) await Deno.mkdir(s.out, { recursive: true });

  let step = 0, bestValBpb = Infinity;
  let history: MetricRecord[] = [];
  if (resume) {
    const state = restore(resume, model, optimizer, stream, scaler);
    step = state.step;
    bestValBpb = state.bestValBpb;
    if (root) history = (await readMetrics(out(RUN_FILES.metrics))).filter((r) => r.step <= step);
  }
  if (root) {
    await Deno.writeTextFile(out(RUN_FILES.metrics), history.map((r) => JSON.stringify(r) + "\n").join(""));
  }

  const save = async () => {
    const { tensors, t } = await optimizer.readState();
    await saveModel(out(RUN_FILES.checkpoint), model, {
      step: String(step),
      optimizer_step: String(t),
      train_options: JSON.stringify(s),
      data_state: JSON.stringify(stream.state),
      best_val_bpb: String(bestValBpb),
      ...(scaler ? { loss_scale: JSON.stringify(scaler.state) } : {}),
    }, tensors);
  };

  const bytesPerStep = s.batch_size * s.seq_len * s.grad_accum * world;
  const startStep = step, startTime = performance.now();
  let intervalLoss = 0, intervalSteps = 0, intervalStart = startTime, savedStep = step;
  let intervalAux = 0, intervalDropped = 0, intervalSkipped = 0;
  let stopping = false;
  while (step < s.steps && !stopping) {
    await yieldToEventLoop(); // lets a SIGINT listener run between steps, even on the synchronous CPU backend
    if (!parallel && hooks.signal?.aborted) break;
    step++;
    const lr = learningRate(step, { lr: s.lr, minLr: s.min_lr, warmup: s.warmup, steps: s.steps });
    model.zeroGrad();
    const lossScale = scaler?.scale ?? 1; // f16: backward runs on the loss times this
    let loss = 0, aux = 0, dropped = 0;
    // The step's windows are world · grad_accum micro-batches of one stream; rank r trains on
    // the r-th run of grad_accum of them, so any number of ranks sees the same global batch.
    const pending: Promise<Loss>[] = [];
    for (let micro = 0; micro < world * s.grad_accum; micro++) {
      const batch = stream.next(s.batch_size);
      if (Math.floor(micro / s.grad_accum) !== rank) continue;
      pending.push(model.lossAndBackward(batch.inputs, batch.targets, batch.shape, lossScale / s.grad_accum));
    }
    // The step's reads are awaited together: on WebGPU each waits about 10 ms however small
    // (Deno's mapAsync), and waits in flight at once overlap. The gradient norm joins them unless
    // gradients are first averaged over ranks.
    const [results, localNorm] = await Promise.all([
      Promise.all(pending),
      parallel ? null : gradNorm(backend, model.grads),
    ]);
    for (const result of results) {
      loss += result.loss / s.grad_accum;
      aux += (result.aux ?? 0) / s.grad_accum;
      dropped += result.dropped ?? 0;
    }
    if (parallel) {
      await parallel.averageGradients(model.grads);
      const [l, a, d, stop] = await parallel.averageScalars([
        loss,
        aux,
        dropped,
        hooks.signal?.aborted ? 1 : 0,
      ]);
      loss = l;
      aux = a;
      dropped = d * world; // a sum over the ranks, like one rank's sum over its micro-batches
      stopping = stop > 0; // any rank asked to stop: all stop after this step
    }
    intervalAux += aux;
    intervalDropped += dropped;
    if (!Number.isFinite(loss)) {
      throw new Error(`the training loss became ${loss} at step ${step}; try a lower --lr or --clip`);
    }
    const scaledNorm = localNorm ?? await gradNorm(backend, model.grads);
    if (!scaler || scaler.update(scaledNorm)) {
      optimizer.step(model.params, model.grads, lr, clipScale(scaledNorm / lossScale, s.clip) / lossScale);
    } else {
      intervalSkipped++;
      hooks.onOverflow?.(step, scaler.scale);
    }
    intervalLoss += loss;
    intervalSteps++;

    const now = performance.now();
    const info: ProgressInfo = {
      step,
      steps: s.steps,
      loss,
      lr,
      bytesPerSecond: (intervalSteps * bytesPerStep) / Math.max(1e-9, (now - intervalStart) / 1000),
      etaSeconds: ((s.steps - step) * (now - startTime)) / 1000 / (step - startStep),
    };
    hooks.onStep?.(info);
    if (!root) continue;

    const last = step === s.steps;
    if (step % s.eval_every === 0 || last) {
      info.valBpb = await evaluateBpb(model, valBatches);
      if (info.valBpb < bestValBpb) {
        bestValBpb = info.valBpb;
        // the run's settings ride along, so that `eval --checkpoint RUN_DIR` uses its data and windows
        await saveModel(out(RUN_FILES.best), model, {
          step: String(step),
          val_bpb: String(info.valBpb),
          train_options: JSON.stringify(s),
        });
      }
    }
    if (step % s.log_every === 0 || info.valBpb !== undefined || last) {
      const mean = intervalLoss / intervalSteps;
      const record: MetricRecord = {
        step,
        loss: mean,
        bpb: mean / Math.LN2,
        lr,
        bytes_per_s: info.bytesPerSecond,
        ...(info.valBpb !== undefined ? { val_bpb: info.valBpb } : {}),
        ...(config.moe
          ? { aux_loss: intervalAux / intervalSteps, dropped: intervalDropped / intervalSteps }
          : {}),
        ...(scaler ? { loss_scale: scaler.scale, skipped: intervalSkipped } : {}),
      };
      history.push(record);
      await Deno.writeTextFile(out(RUN_FILES.metrics), JSON.stringify(record) + "\n", { append: true });
      await Deno.writeTextFile(out(RUN_FILES.plot), lossPlotSvg(history));
      hooks.onLog?.(record, { ...info, loss: mean });
      intervalLoss =
        intervalSteps =
        intervalAux =
        intervalDropped =
        intervalSkipped =
          0;
      intervalStart = performance.now();
    }
    if (step % s.save_every === 0 || last) {
      await save();
      savedStep = step;
    }
  }
  if (root && savedStep !== step) await save();
  optimizer.free();
  return { step, interrupted: step < s.steps, bestValBpb };
}

/** Batches evaluated before their losses are awaited (together: see the training step's reads). */
const EVAL_READS_IN_FLIGHT = 16;

/** Mean bits per byte of `model` over `batches` (weighted by their windows). */
export async function evaluateBpb(model: MambaByte, batches: Batch[]): Promise<number> {
  let sum = 0, rows = 0;
  for (let first = 0; first < batches.length; first += EVAL_READS_IN_FLIGHT) {
    const group = batches.slice(first, first + EVAL_READS_IN_FLIGHT);
    const losses = await Promise.all(group.map((b) => model.loss(b.inputs, b.targets, b.shape)));
    group.forEach((batch, i) => {
      sum += losses[i].bpb * batch.shape[0];
      rows += batch.shape[0];
    });
  }
  return sum / rows;
}

/**
 * Sets the backend's matmul precision for a run's dtype; bf16 and f16 need a backend with 16-bit
 * matmuls (cuda; webgpu and cpu round their inputs so), and say so.
 */
export function useDtype(backend: Backend, dtype: Dtype): void {
  if (!DTYPES.includes(dtype)) throw new Error(`unknown dtype "${dtype}"; choose ${DTYPES.join(", ")}`);
  if (backend.setMatmulPrecision) backend.setMatmulPrecision(dtype);
  else if (dtype !== "fp32") {
    throw new Error(
      `dtype ${dtype} needs 16-bit matmul inputs ` +
        `(cuda: on tensor cores; webgpu and cpu round them in their kernels); ` +
        `${backend.device} trains in fp32`,
    );
  }
}

/** The settings saved in a checkpoint written by `train`. */
export function checkpointSettings(file: Safetensors, source: string): TrainSettings {
  const json = file.metadata.train_options;
  if (json === undefined || file.metadata.step === undefined || file.metadata.data_state === undefined) {
    throw new Error(`${source} holds no training state (not a checkpoint.safetensors written by train)`);
  }
  return JSON.parse(json) as TrainSettings;
}

/**
 * Loads weights, moments, step, data-stream state and (f16) the loss scale from a checkpoint
 * written by `train`.
 */
function restore(
  file: Safetensors,
  model: MambaByte,
  optimizer: AdamW,
  stream: BatchStream,
  scaler: LossScaler | null,
): { step: number; bestValBpb: number } {
  const meta = file.metadata;
  model.writeParams(tensorsToFlat(model.table, file.tensors, "", "checkpoint"));
  optimizer.writeState(file.tensors, Number(meta.optimizer_step), "checkpoint");
  stream.state = JSON.parse(meta.data_state);
  // a run that changes to f16 on resume starts from its initial scale
  if (scaler && meta.loss_scale !== undefined) scaler.state = JSON.parse(meta.loss_scale);
  return { step: Number(meta.step), bestValBpb: Number(meta.best_val_bpb ?? Infinity) };
}

function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

async function readMetrics(path: string): Promise<MetricRecord[]> {
  let text = "";
  try {
    text = await Deno.readTextFile(path);
  } catch {
    return [];
  }
  return text.split("\n").filter((line) => line.trim()).map((line) => JSON.parse(line) as MetricRecord);
}
