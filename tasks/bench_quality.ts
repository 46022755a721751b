/**
 * `deno task bench --quality`: the training-parity protocol. This project and the PyTorch
 * reference (tests/reference/train_reference.py, the seed's model) each train D=512, 8 layers,
 * d_state 16 on 8 × 2048-byte windows of the default corpus's training split for 500 AdamW steps
 * (lr 1e-3, β 0.9/0.95, weight decay 0.1, 50 warmup steps then cosine to 1e-4, clip 1.0), then
 * report bits per byte on the same fixed held-out windows. They must land within 0.02 bpb.
 */
import { createBackend, type DeviceChoice } from "../lib/backend.ts";
import { type Corpus, loadDefaultCorpus } from "../lib/data.ts";
import { train, trainDefaults, type TrainSettings } from "../lib/train.ts";

export interface QualityOptions {
  backend: DeviceChoice;
  /** A directory holding train.bin and val.bin; else the default corpus, saved there for PyTorch. */
  corpusDir: string;
  steps: number;
  /** Also train the PyTorch reference in the same command. */
  torch: boolean;
}

/** The byte split, read from corpusDir or made from the default corpus and written there. */
async function corpusFiles(dir: string): Promise<Corpus> {
  try {
    const train = await Deno.readFile(`${dir}/train.bin`), val = await Deno.readFile(`${dir}/val.bin`);
    return { train, val, description: `${dir}/{train,val}.bin` };
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  const corpus = await loadDefaultCorpus();
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeFile(`${dir}/train.bin`, corpus.train);
  await Deno.writeFile(`${dir}/val.bin`, corpus.val);
  return corpus;
}

export async function benchQuality(options: QualityOptions): Promise<void> {
  const corpus = await corpusFiles(options.corpusDir);
  const backend = await createBackend(options.backend);
  const settings: TrainSettings = {
    ...trainDefaults("gpu"),
    dim: 512,
    depth: 8,
    d_state: 16,
    steps: options.steps,
    batch_size: 8,
    seq_len: 2048,
    lr: 1e-3,
    min_lr: 1e-4,
    warmup: 50,
    weight_decay: 0.1,
    clip: 1,
    log_every: 50,
    eval_every: options.steps, // once, at the end
    eval_batches: 64,
    save_every: options.steps,
    out: await Deno.makeTempDir({ prefix: "mambabyte-quality-" }),
    data: options.corpusDir,
    backend: options.backend,
  };
  console.error(`quality protocol on ${backend.description}: ${corpus.description}`);
  const start = performance.now();
  const result = await train(settings, backend, corpus, {
    onLog: (record) => console.error(`  step ${record.step} loss ${record.loss.toFixed(3)}`),
  });
  const seconds = (performance.now() - start) / 1000;
  const rows = [[`mambabyte (${backend.device})`, result.bestValBpb, seconds]];
  if (options.torch) {
    const args = [
      "tests/reference/train_reference.py",
      "--corpus",
      options.corpusDir,
      "--steps",
      `${options.steps}`,
    ];
    const output = await new Deno.Command("python3", { args, stderr: "inherit" }).output();
    if (!output.success) throw new Error("the PyTorch reference run failed (is torch installed?)");
    const reference = JSON.parse(new TextDecoder().decode(output.stdout).trim().split("\n").pop()!);
    rows.push(["pytorch (seed)", reference.val_bpb, reference.seconds]);
  }
  console.log(`| implementation | held-out bits per byte after ${options.steps} steps | seconds |`);
  console.log("|---|---|---|");
  for (const [name, bpb, s] of rows) {
    console.log(`| ${name} | ${(bpb as number).toFixed(4)} | ${(s as number).toFixed(0)} |`);
  }
  if (rows.length === 2) {
    const gap = Math.abs((rows[0][1] as number) - (rows[1][1] as number));
    console.log(`\ndifference: ${gap.toFixed(4)} bpb (${gap <= 0.02 ? "within" : "OUTSIDE"} the 0.02 bound)`);
  }
}
