/**
 * `deno task bench`: a table, per backend and model size, of training bytes/s (forward +
 * backward + AdamW; again with bf16 and with f16 matmul inputs where the backend has them: cuda), decode
 * bytes/s at batch 1 with fp32 and with int8 weights, decode bytes/s at batch 64, and matmul
 * GFLOP/s; then, per backend and size, the selective scan alone at the training shape (forward
 * and backward time, the forward's bandwidth beside a device copy's: tasks/bench_scan.ts).
 * Every backend in one run, so that ratios between them are measured side by side.
 * Decode is generation as users get it: `generate` of 256 bytes at batch 1 after a one-byte
 * prompt (bytes sampled on the device, read back in blocks of GENERATE_DEFAULTS.blockSize), the
 * time of the whole call over the bytes generated; the batch-64 figure is the same call with 64
 * samples, counting the bytes of all of them; the int8 figure is the same model at batch 1,
 * quantized (model.quantize("int8"), as `generate.ts --quantize int8`), timed after the fp32 ones.
 *
 *   deno task bench [--backend cpu,webgpu,cuda] [--sizes tiny,small,medium,large] [--steps N] [--torch]
 *                   [--kernel-times]
 *
 * --kernel-times also prints, for WebGPU backends, the GPU time of each kernel of one training step
 * (timestamp-query; each dispatch in a pass of its own while timed).
 *
 * --torch also runs the PyTorch reference (tests/reference/bench_torch.py: the seed's model,
 * Blelloch pscan, fp32) at the same sizes in the same command, and prints ratios against it.
 *
 *   deno task bench --quality [--backend B] [--corpus-dir DIR] [--quality-steps 500] [--torch]
 *
 * runs the training-parity protocol instead (tasks/bench_quality.ts).
 */
import { parseArgs } from "node:util";
import {
  type Backend,
  createBackend,
  type Device,
  type DeviceChoice,
  DEVICES,
  type HalfFormat,
} from "../lib/backend.ts";
import { MambaConfig } from "../lib/config.ts";
import { generate } from "../lib/generate.ts";
import { MambaByte } from "../lib/model.ts";
import { WebGpuBackend } from "../lib/backends/webgpu.ts";
import type { KernelTime } from "../lib/backends/webgpu_kernel_timer.ts";
import { AdamW } from "../lib/optim.ts";
import { Random } from "../lib/random.ts";
import { benchQuality } from "./bench_quality.ts";
import { benchScan, type ScanTimes } from "./bench_scan.ts";
import { timeIt } from "./time_it.ts";

/** Model sizes: the small ones fit a CPU, the large ones are the issues' GPU targets. */
const SIZES = {
  tiny: { dim: 64, depth: 4, batch: 8, length: 256, decodeDim: 64, decodeDepth: 4, matmul: 256 },
  small: { dim: 256, depth: 4, batch: 4, length: 512, decodeDim: 256, decodeDepth: 4, matmul: 1024 },
  medium: { dim: 512, depth: 8, batch: 8, length: 2048, decodeDim: 1024, decodeDepth: 16, matmul: 4096 },
  // training D=1024×16 at 4 × 8 KiB (the seed's PyTorch runs out of memory there), decoding MambaByte-972M
  large: { dim: 1024, depth: 16, batch: 4, length: 8192, decodeDim: 1792, decodeDepth: 48, matmul: 8192 },
} as const;
type Size = keyof typeof SIZES;

const DEFAULT_SIZES: Record<Device, Size[]> = { cpu: ["tiny"], webgpu: ["tiny", "medium"], cuda: ["medium"] };

interface Row {
  backend: string;
  size: string;
  model: string;
  trainBytesPerSec: number;
  /** The same training with bf16, and with f16, matmul inputs (backends with setMatmulPrecision: cuda). */
  trainBf16BytesPerSec?: number;
  trainF16BytesPerSec?: number;
  decodeModel: string;
  decodeBytesPerSec: number;
  /** The same decode with int8 Linear weights (absent for the PyTorch reference). */
  decodeInt8BytesPerSec?: number;
  /** fp32 decode of DECODE_BATCH sequences at once, bytes of all of them (absent for PyTorch). */
  decodeBatchBytesPerSec?: number;
  matmul: string;
}

/** One training step (forward + backward + AdamW) of a size's model on random bytes, as a closure. */
function trainingStep(backend: Backend, size: Size) {
  const s = SIZES[size];
  const model = new MambaByte(new MambaConfig({ dim: s.dim, depth: s.depth }), { backend, seed: 1 });
  const optimizer = new AdamW(backend, model.table);
  const rng = new Random(1);
  const bytes = s.batch * s.length;
  const inputs = Uint8Array.from({ length: bytes }, () => 32 + rng.int(95));
  const targets = Uint8Array.from({ length: bytes }, () => 32 + rng.int(95));
  return {
    bytes,
    step: async () => {
      model.zeroGrad();
      await model.lossAndBackward(inputs, targets, [s.batch, s.length]);
      optimizer.step(model.params, model.grads, 1e-3, 1);
    },
    dispose: () => {
      optimizer.free();
      model.dispose();
    },
  };
}

async function benchTraining(backend: Backend, size: Size, steps: number): Promise<number> {
  const training = trainingStep(backend, size);
  const seconds = await timeIt(training.step, 3, steps);
  training.dispose();
  return training.bytes / seconds;
}

/** GPU time per kernel of one training step (after a warm-up step), on a WebGPU backend. */
async function benchKernelTimes(backend: WebGpuBackend, size: Size): Promise<KernelTime[]> {
  const training = trainingStep(backend, size);
  try {
    await training.step();
    backend.startKernelTiming();
    await training.step();
    return await backend.stopKernelTiming();
  } finally {
    training.dispose();
  }
}

/** Training bytes/s with 16-bit matmul inputs, where the backend has them (else undefined). */
async function benchTrainingHalf(
  backend: Backend,
  size: Size,
  steps: number,
  format: HalfFormat,
): Promise<number | undefined> {
  if (!backend.setMatmulPrecision) return undefined;
  backend.setMatmulPrecision(format);
  try {
    return await benchTraining(backend, size, steps);
  } finally {
    backend.setMatmulPrecision("fp32");
  }
}

/** Bytes generated per sequence and timed run of the decode benchmark. */
const DECODE_BYTES = 256;
/** Sequences of the batched decode figure. */
const DECODE_BATCH = 64;

/**
 * Bytes/s of `generate` (device sampling, the default block size), prompt excluded: at batch 1
 * with fp32 weights, at DECODE_BATCH with fp32 weights, then at batch 1 with the same model's
 * weights in int8.
 */
async function benchDecode(
  backend: Backend,
  size: Size,
): Promise<{ fp32: number; batch: number; int8: number }> {
  const s = SIZES[size];
  const model = new MambaByte(new MambaConfig({ dim: s.decodeDim, depth: s.decodeDepth }), {
    backend,
    seed: 1,
  });
  const bytesPerSec = async (numSamples: number) =>
    numSamples * DECODE_BYTES / await timeIt(
      async () => {
        for await (const _ of generate(model, "A", { maxBytes: DECODE_BYTES, seed: 1, numSamples })) {
          // consumed as a user would: byte by byte, as the generator yields them
        }
      },
      2,
      1,
    );
  const fp32 = await bytesPerSec(1);
  const batch = await bytesPerSec(DECODE_BATCH);
  await model.quantize("int8");
  const int8 = await bytesPerSec(1);
  model.dispose();
  return { fp32, batch, int8 };
}

async function benchMatmul(backend: Backend, n: number): Promise<number> {
  const rng = new Random(2);
  const a = backend.alloc(n * n), b = backend.alloc(n * n), c = backend.alloc(n * n);
  backend.write(a, Float32Array.from({ length: n * n }, () => rng.normal()));
  backend.write(b, Float32Array.from({ length: n * n }, () => rng.normal()));
  const probe = backend.view(c, 0, 1);
  const repeats = backend.device === "cpu" ? 1 : 10;
  const seconds = await timeIt(
    async () => {
      for (let r = 0; r < repeats; r++) backend.matmul(c, a, b, n, n, n);
      await backend.read(probe); // waits for the GPU
    },
    2,
    3,
  );
  for (const x of [a, b, c]) backend.free(x);
  return (2 * n ** 3 * repeats) / seconds / 1e9;
}

/** The PyTorch reference at the same sizes, one row per size (python3 with torch needed). */
async function benchTorch(sizes: Size[]): Promise<Row[]> {
  const args = ["tests/reference/bench_torch.py"];
  for (const size of sizes) {
    const s = SIZES[size];
    args.push(
      "--train",
      `${s.dim},${s.depth},${s.batch},${s.length}`,
      "--decode",
      `${s.decodeDim},${s.decodeDepth}`,
    );
  }
  const output = await new Deno.Command("python3", { args, stderr: "inherit" }).output();
  if (!output.success) throw new Error("the PyTorch benchmark failed (is torch installed?)");
  const results = new TextDecoder().decode(output.stdout).trim().split("\n").map((line) => JSON.parse(line));
  const find = (what: string, dim: number, depth: number) =>
    results.find((r) => r.what === what && r.dim === dim && r.depth === depth);
  return sizes.map((size) => {
    const s = SIZES[size];
    const train = find("train", s.dim, s.depth), decode = find("decode", s.decodeDim, s.decodeDepth);
    return {
      backend: "pytorch (seed)",
      size,
      model: `D=${s.dim}×${s.depth}, ${s.batch}×${s.length}`,
      trainBytesPerSec: train.bytes_per_s ?? NaN,
      decodeModel: `D=${s.decodeDim}×${s.decodeDepth}`,
      decodeBytesPerSec: decode.bytes_per_s,
      matmul: train.peak_gib ? `(peak ${train.peak_gib.toFixed(1)} GiB)` : train.error ?? "",
    };
  });
}

/** The kernels of one training step by GPU time, the longest first. */
function printKernelTimes(backend: string, size: Size, times: KernelTime[]): void {
  const total = times.reduce((sum, t) => sum + t.seconds, 0);
  console.log(`\n${backend} ${size}: one training step's kernels, ${duration(total)} of GPU time in all`);
  console.log("| kernel (matmuls: M×N×K) | dispatches | GPU time | share | TFLOP/s |\n|---|---|---|---|---|");
  for (const t of times) {
    const rate = t.flops ? (t.flops / t.seconds / 1e12).toPrecision(3) : "";
    console.log(
      `| ${t.kernel} | ${t.dispatches} | ${duration(t.seconds)} | ${
        (100 * t.seconds / total).toFixed(1)
      }% | ${rate} |`,
    );
  }
}

/** Seconds as µs below a millisecond, else ms. */
function duration(seconds: number): string {
  return seconds < 1e-3 ? `${(seconds * 1e6).toFixed(1)} µs` : `${(seconds * 1e3).toFixed(2)} ms`;
}

function format(n: number): string {
  return n >= 1e6 ? `${(n / 1e6).toFixed(2)} M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)} K` : n.toFixed(1);
}

async function main() {
  const { values } = parseArgs({
    options: {
      backend: { type: "string" },
      sizes: { type: "string" },
      steps: { type: "string", default: "3" },
      torch: { type: "boolean", default: false },
      quality: { type: "boolean", default: false },
      "corpus-dir": { type: "string", default: ".cache/quality" },
      "quality-steps": { type: "string", default: "500" },
      "kernel-times": { type: "boolean", default: false },
    },
  });
  if (values.quality) {
    return await benchQuality({
      backend: (values.backend ?? "auto") as DeviceChoice,
      corpusDir: values["corpus-dir"],
      steps: Number(values["quality-steps"]),
      torch: values.torch,
    });
  }
  const wanted = values.backend ? values.backend.split(",") : [...DEVICES];
  const steps = Number(values.steps);
  const rows: Row[] = [];
  const scans: { backend: string; size: Size; times: ScanTimes }[] = [];
  const kernelTimes: { backend: string; size: Size; times: KernelTime[] }[] = [];
  for (const name of wanted) {
    if (!DEVICES.includes(name as Device)) throw new Error(`unknown backend ${name}; choose from ${DEVICES}`);
    let backend: Backend;
    try {
      backend = await createBackend(name as Device);
    } catch (error) {
      console.error(`skipping ${name}: ${(error as Error).message}`);
      continue;
    }
    const sizes = values.sizes ? values.sizes.split(",") as Size[] : DEFAULT_SIZES[name as Device];
    for (const size of sizes) {
      const s = SIZES[size];
      if (!s) throw new Error(`unknown size ${size}; choose from ${Object.keys(SIZES)}`);
      console.error(`${name} ${size}: ${backend.description}`);
      const trainBytesPerSec = await benchTraining(backend, size, steps);
      if (values["kernel-times"] && backend instanceof WebGpuBackend) {
        if (backend.canTimeKernels) {
          kernelTimes.push({ backend: name, size, times: await benchKernelTimes(backend, size) });
        } else console.error(`${name}: this adapter has no timestamp-query; no kernel times`);
      }
      const trainBf16BytesPerSec = await benchTrainingHalf(backend, size, steps, "bf16");
      const trainF16BytesPerSec = await benchTrainingHalf(backend, size, steps, "f16");
      const decode = await benchDecode(backend, size);
      rows.push({
        backend: name,
        size,
        model: `D=${s.dim}×${s.depth}, ${s.batch}×${s.length}`,
        trainBytesPerSec,
        trainBf16BytesPerSec,
        trainF16BytesPerSec,
        decodeModel: `D=${s.decodeDim}×${s.decodeDepth}`,
        decodeBytesPerSec: decode.fp32,
        decodeInt8BytesPerSec: decode.int8,
        decodeBatchBytesPerSec: decode.batch,
        matmul: `${(await benchMatmul(backend, s.matmul)).toFixed(1)} GFLOP/s at ${s.matmul}³`,
      });
      const times = await benchScan(backend, { batch: s.batch, length: s.length, dim: s.dim });
      scans.push({ backend: name, size, times });
    }
    backend.dispose();
  }
  if (values.torch) rows.push(...await benchTorch([...new Set(rows.map((r) => r.size as Size))]));
  console.log(
    "| backend | size | training model | train bytes/s | train bf16 bytes/s | train f16 bytes/s | " +
      `decode model (batch 1) | decode bytes/s | decode int8 bytes/s | decode batch ${DECODE_BATCH} bytes/s | ` +
      "matmul fp32 |",
  );
  console.log("|---|---|---|---|---|---|---|---|---|---|---|");
  const against = (value: number | undefined, base: number) =>
    value === undefined ? "" : `${format(value)} (${(value / base).toFixed(2)}×)`;
  for (const r of rows) {
    console.log(
      `| ${r.backend} | ${r.size} | ${r.model} | ${format(r.trainBytesPerSec)} | ` +
        `${against(r.trainBf16BytesPerSec, r.trainBytesPerSec)} | ` +
        `${against(r.trainF16BytesPerSec, r.trainBytesPerSec)} | ${r.decodeModel} | ` +
        `${format(r.decodeBytesPerSec)} | ${against(r.decodeInt8BytesPerSec, r.decodeBytesPerSec)} | ` +
        `${r.decodeBatchBytesPerSec === undefined ? "" : format(r.decodeBatchBytesPerSec)} | ${r.matmul} |`,
    );
  }
  console.log(
    "\n| backend | size | scan B, L, ED (N = 16) | forward | backward | forward GB/s (u, δ, z, y) | device copy GB/s |",
  );
  console.log("|---|---|---|---|---|---|---|");
  for (const { backend, size, times: t } of scans) {
    const s = SIZES[size];
    console.log(
      `| ${backend} | ${size} | ${s.batch}, ${s.length}, ${2 * s.dim} | ${duration(t.forwardSeconds)} | ` +
        `${duration(t.backwardSeconds)} | ${(t.forwardBytesPerSec / 1e9).toPrecision(3)} | ` +
        `${(t.copyBytesPerSec / 1e9).toPrecision(3)} |`,
    );
  }
  for (const { backend, size, times } of kernelTimes) printKernelTimes(backend, size, times);
  const torch = rows.filter((r) => r.backend === "pytorch (seed)");
  if (torch.length) {
    console.log("\n| backend | size | train ÷ pytorch | decode ÷ pytorch |\n|---|---|---|---|");
    for (const r of rows.filter((r) => r.backend !== "pytorch (seed)")) {
      const t = torch.find((x) => x.size === r.size);
      if (!t) continue;
      const ratio = (a: number, b: number) => (a / b).toFixed(2) + "×";
      console.log(
        `| ${r.backend} | ${r.size} | ${ratio(r.trainBytesPerSec, t.trainBytesPerSec)} | ` +
          `${ratio(r.decodeBytesPerSec, t.decodeBytesPerSec)} |`,
      );
    }
  }
}

if (import.meta.main) await main();
