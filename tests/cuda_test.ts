/**
 * The CUDA backend against the CPU reference: the shared conformance suite (every op forward and
 * backward, end to end: logits, gradients, 20 AdamW steps, decode), plus what is specific to the
 * CUDA library: the scan over many chunks at the model's real d_state and across channel blocks, device
 * memory that stays flat over many training steps, errors that carry the library's message, and
 * decode (fp32 and int8 weights) replayed from a captured step.
 * Without a GPU (or without `deno task build:cuda`) every test is registered as ignored.
 */
import assert from "node:assert/strict";
import { CpuBackend } from "../lib/backends/cpu.ts";
import { createCudaBackend, type CudaBackend } from "../lib/backends/cuda.ts";
import { MambaConfig } from "../lib/config.ts";
import { MambaByte } from "../lib/model.ts";
import { AdamW } from "../lib/optim.ts";
import { Random } from "../lib/random.ts";
import type { Backend } from "../lib/backend.ts";
import { conformanceSuite, expectHalfTrainingMatchesCpu, maxRelativeError } from "./backend_conformance.ts";

await conformanceSuite("cuda", createCudaBackend);

const backend = await createCudaBackend();
const ignore = backend === null;
if (ignore) {
  console.log("cuda: no CUDA device or no library (deno task build:cuda): CUDA-specific tests ignored");
}
const cuda = backend as CudaBackend;

const rng = new Random(7);
const randn = (n: number, scale = 1) => Float32Array.from({ length: n }, () => scale * rng.normal());

Deno.test({
  name: "cuda: device memory in use stays flat over 1,000 training steps",
  ignore,
  fn: async () => {
    const model = new MambaByte(new MambaConfig({ dim: 32, depth: 2 }), { backend: cuda, seed: 1 });
    const optimizer = new AdamW(cuda, model.table);
    const inputs = Array.from({ length: 2 * 64 }, (_, i) => 97 + (i % 26));
    const targets = inputs.map((x) => 97 + ((x - 96) % 26));
    const step = async () => {
      model.zeroGrad();
      await model.lossAndBackward(inputs, targets, [2, 64]);
      optimizer.step(model.params, model.grads, 1e-3, 1);
    };
    for (let i = 0; i < 10; i++) await step(); // warm up: activations and workspace allocated
    const before = cuda.memoryInfo().free;
    let last = 0;
    for (let i = 0; i < 1000; i++) {
      await step();
      if (i === 999) last = (await model.loss(inputs, targets, [2, 64])).loss;
    }
    const after = cuda.memoryInfo().free;
    assert.ok(Number.isFinite(last), `loss after 1,000 steps: ${last}`);
    assert.equal(after, before, `free device memory moved from ${before} to ${after} bytes`);
    optimizer.free();
    model.dispose();
  },
});

Deno.test({
  name: "cuda: errors carry the library's message (out of memory, bad cuBLAS arguments, views)",
  ignore,
  fn: () => {
    const { total } = cuda.memoryInfo();
    assert.throws(() => cuda.alloc(total), /out of GPU memory: asked for [\d.]+ MiB, [\d.]+ MiB free of/);
    const a = cuda.alloc(16);
    assert.throws(
      () => cuda.matmul(a, a, a, 4, 4, 4, { lda: 1 }),
      /cuda matmul: cuBLAS fp32 matmul .* failed/,
    );
    assert.throws(() => cuda.free(cuda.view(a, 4, 4)), /view/);
    cuda.free(a);
    assert.throws(() => cuda.free(a), /already freed/);
  },
});

Deno.test({
  name: "cuda: a memory cap refuses allocations beyond it, and the peak is tracked",
  ignore,
  fn: () => {
    const MiB = 2 ** 20;
    const before = cuda.memoryStats().inUse;
    cuda.setMemoryCap(before + 64 * MiB);
    try {
      const a = cuda.alloc((40 * MiB) / 4);
      assert.ok(cuda.memoryStats().peak >= before + 40 * MiB);
      assert.throws(() => cuda.alloc((40 * MiB) / 4), /over the memory cap: asked for 40\.0 MiB/);
      cuda.free(a);
      assert.equal(cuda.memoryStats().inUse, before);
      cuda.free(cuda.alloc((40 * MiB) / 4)); // room again once freed
    } finally {
      cuda.setMemoryCap(0);
    }
  },
});

Deno.test({
  name: "cuda: few-row matmuls (the decode GEMV) match the cpu reference, 16-byte and scalar loads",
  ignore,
  fn: async () => {
    const cpu = new CpuBackend();
    // [m, n, k, offset, lda]: an offset of 1 float and an odd lda force the scalar loads.
    const shapes = [[1, 300, 64, 0, 64], [3, 45, 70, 0, 72], [8, 97, 256, 0, 256], [5, 33, 37, 1, 41]];
    for (const [m, n, k, offset, lda] of shapes) {
      for (const accumulate of [false, true]) {
        const a = randn(offset + m * lda), b = randn(n * k), c = randn(m * n);
        const run = async (be: Backend) => {
          const [fa, fb, fc] = [be.alloc(a.length), be.alloc(b.length), be.alloc(c.length)];
          be.write(fa, a);
          be.write(fb, b);
          be.write(fc, c);
          be.matmul(fc, be.view(fa, offset, a.length - offset), fb, m, n, k, {
            transB: true,
            accumulate,
            lda,
          });
          const out = await be.read(fc);
          [fa, fb, fc].forEach((x) => be.free(x));
          return out;
        };
        const error = maxRelativeError(await run(cuda), await run(cpu));
        assert.ok(error <= 1e-4, `m=${m} n=${n} k=${k} accumulate=${accumulate}: ${error.toExponential(2)}`);
      }
    }
  },
});

Deno.test({
  name:
    "cuda: tf32, bf16 and f16 matmuls round the inputs within their bounds (and do round); fp32 stays exact",
  ignore,
  fn: async () => {
    const cpu = new CpuBackend({ precision: "f64" });
    const [m, n, k] = [130, 150, 140]; // more than the GEMV's 8 rows: cuBLAS
    const a = randn(m * k), b = randn(k * n);
    const product = async (be: Backend) => {
      const [fa, fb, fc] = [be.alloc(a.length), be.alloc(b.length), be.alloc(m * n)];
      be.write(fa, a);
      be.write(fb, b);
      be.matmul(fc, fa, fb, m, n, k);
      const out = await be.read(fc);
      [fa, fb, fc].forEach((x) => be.free(x));
      return out;
    };
    const exact = await product(cpu);
    // [precision, at least, at most]: tf32 and f16 keep 10 mantissa bits, bf16 7 (cuBLAS may use
    // tf32 for it)
    const bounds = [["fp32", 0, 1e-5], ["tf32", 1e-5, 5e-3], ["bf16", 1e-4, 2e-2], [
      "f16",
      1e-5,
      5e-3,
    ]] as const;
    try {
      for (const [precision, low, high] of bounds) {
        cuda.setMatmulPrecision(precision);
        assert.match(cuda.description, precision === "fp32" ? /FP32$/ : new RegExp(`${precision} matmuls$`));
        const error = maxRelativeError(await product(cuda), exact);
        assert.ok(
          low <= error && error <= high,
          `${precision}: ${error.toExponential(2)} not in [${low}, ${high}]`,
        );
      }
    } finally {
      cuda.setMatmulPrecision("fp32");
    }
    assert.throws(() => cuda.setMatmulPrecision("f8" as never), /unknown matmul precision "f8"/);
  },
});

for (const format of ["bf16", "f16"] as const) {
  Deno.test({
    name:
      `cuda: training at ${format} (activations kept in ${format}) gives the cpu's ${format} emulation's gradients and losses`,
    ignore,
    fn: () =>
      expectHalfTrainingMatchesCpu(
        cuda,
        format,
        new MambaConfig({ dim: 48, depth: 2, bias: true }),
        [3, 70],
        20,
        3e-3,
      ),
  });
}

Deno.test({
  name:
    "cuda: 20 AdamW steps with bf16 matmuls track the fp32 cpu reference's losses (5e-2: 7 mantissa bits, compounded)",
  ignore,
  fn: async () => {
    const config = new MambaConfig({ dim: 64, depth: 2 });
    const inputs = Array.from({ length: 4 * 96 }, (_, i) => 97 + ((i * 7) % 26));
    const targets = inputs.map((x) => 97 + ((x - 96) % 26));
    const losses = async (be: Backend) => {
      const model = new MambaByte(config, { backend: be, seed: 3 });
      const optimizer = new AdamW(be, model.table);
      const out: number[] = [];
      for (let step = 1; step <= 20; step++) {
        model.zeroGrad();
        out.push((await model.lossAndBackward(inputs, targets, [4, 96])).loss);
        optimizer.step(model.params, model.grads, 3e-3, step);
      }
      optimizer.free();
      model.dispose();
      return out;
    };
    const reference = await losses(new CpuBackend());
    cuda.setMatmulPrecision("bf16");
    let bf16: number[];
    try {
      bf16 = await losses(cuda);
    } finally {
      cuda.setMatmulPrecision("fp32");
    }
    const error = maxRelativeError(bf16, reference);
    assert.ok(reference[19] < reference[0] - 0.5, `the reference learns: ${reference[0]} → ${reference[19]}`);
    assert.ok(
      error <= 1e-2,
      `losses ${bf16.map((x) => x.toFixed(4))} vs ${reference.map((x) => x.toFixed(4))}`,
    );
  },
});

Deno.test({
  name: "cuda: a captured sequence replays on the buffers' current contents; host copies inside throw",
  ignore,
  fn: async () => {
    const [m, n, k] = [2, 40, 24];
    const [x, w, bias, out] = [cuda.alloc(m * k), cuda.alloc(n * k), cuda.alloc(n), cuda.alloc(m * n)];
    cuda.write(w, randn(n * k));
    cuda.write(bias, randn(n));
    const ops = () => {
      cuda.matmul(out, x, w, m, n, k, { transB: true });
      cuda.addBias(out, bias, m, n);
    };
    const graph = cuda.capture(ops);
    for (let i = 0; i < 3; i++) {
      cuda.write(x, randn(m * k));
      graph.replay();
      const replayed = await cuda.read(out);
      cuda.fill(out, 0);
      ops();
      assert.deepEqual(replayed, await cuda.read(out));
    }
    graph.free();
    assert.throws(() => graph.replay(), /freed/);
    assert.throws(() => cuda.capture(() => cuda.write(x, randn(m * k))), /not allowed while recording/);
    ops(); // the stream runs normally again after a failed recording
    assert.equal((await cuda.read(out)).length, m * n);
    [x, w, bias, out].forEach((buffer) => cuda.free(buffer));
  },
});

/** The same backend without `capture`: a model on it runs its decode step op by op. */
function withoutCapture(backend: Backend): Backend {
  return new Proxy(backend, {
    get(target, key) {
      if (key === "capture") return undefined;
      const value = Reflect.get(target, key, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

Deno.test({
  name: "cuda: decode replayed from a captured step gives the logits of the op-by-op step",
  ignore,
  fn: async () => {
    const config = new MambaConfig({ dim: 48, depth: 2 });
    const direct = new MambaByte(config, { backend: withoutCapture(cuda), seed: 3 });
    const graphed = new MambaByte(config, { backend: cuda, seed: 3 });
    const [plain, cache] = [direct.createCache(2), graphed.createCache(2)];
    for (const bytes of [[72, 105], [101, 33], [0, 255], [10, 10]]) {
      const expected = await direct.step(bytes, plain);
      const replayed = await graphed.step(bytes, cache);
      assert.ok(cache.graph !== null, "the step was recorded as a graph");
      assert.equal(plain.graph, null);
      const error = maxRelativeError(replayed.data, expected.data);
      assert.ok(error <= 1e-5, `logits differ: ${error.toExponential(2)}`);
    }
    plain.free();
    cache.free();
    graphed.dispose();
    direct.dispose();
  },
});

Deno.test({
  name:
    "cuda: int8 decode replays from a captured step, recorded again after quantize(), as the op-by-op step",
  ignore,
  fn: async () => {
    const config = new MambaConfig({ dim: 64, depth: 2 }); // K = 64, 128: 16-byte loads; dt_proj K = 4: scalar
    const direct = new MambaByte(config, { backend: withoutCapture(cuda), seed: 4 });
    const graphed = new MambaByte(config, { backend: cuda, seed: 4 });
    const [plain, cache] = [direct.createCache(3), graphed.createCache(3)];
    await direct.step([65, 66, 67], plain);
    await graphed.step([65, 66, 67], cache); // records the fp32 step
    const fp32Graph = cache.graph;
    await direct.quantize("int8");
    await graphed.quantize("int8");
    for (const bytes of [[72, 105, 0], [101, 33, 255], [10, 10, 10]]) {
      const expected = await direct.step(bytes, plain);
      const replayed = await graphed.step(bytes, cache);
      assert.ok(cache.graph !== null && cache.graph !== fp32Graph, "the int8 step was recorded anew");
      const error = maxRelativeError(replayed.data, expected.data);
      assert.ok(error <= 1e-5, `logits differ: ${error.toExponential(2)}`);
    }
    plain.free();
    cache.free();
    graphed.dispose();
    direct.dispose();
  },
});
