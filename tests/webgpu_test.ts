/**
 * The WebGPU backend: the conformance suite every backend passes, plus cases aimed at this
 * backend's own machinery, against the CPU reference — every matmul transposition with padded
 * strides, matmuls past a 128×128 tile in every dimension and over a long k (split-K); column
 * reductions over several row blocks; rows wider than a workgroup; scans over several backward
 * chunks and several workgroups of channels; sumOfSquares past one grid stride; WGSL errors. Runs on any adapter,
 * including Mesa's lavapipe; with CI set, a missing adapter is a failure.
 */
import assert from "node:assert/strict";
import type { Backend, DeviceBuffer, IndexBuffer, MatmulOptions } from "../lib/backend.ts";
import { CpuBackend } from "../lib/backends/cpu.ts";
import { createWebGpuBackend, type WebGpuBackend } from "../lib/backends/webgpu.ts";
import { loadKernelSources } from "../lib/backends/webgpu_kernel_source.ts";
import { GpuRuntime } from "../lib/backends/webgpu_runtime.ts";
import { MambaConfig } from "../lib/config.ts";
import { Random } from "../lib/random.ts";
import { conformanceSuite, expectHalfTrainingMatchesCpu } from "./backend_conformance.ts";

const TOLERANCE = 1e-4;

const gpu = await createWebGpuBackend();
if (!gpu && Deno.env.get("CI")) throw new Error("CI is set but WebGPU has no adapter on this machine");
if (gpu) console.log(`webgpu adapter: ${gpu.description}`);
const cpu = new CpuBackend();
const ignore = gpu === null;

await conformanceSuite("webgpu", createWebGpuBackend, { requiredInCI: true });

/** The same buffer on both backends. */
interface Pair {
  c: DeviceBuffer;
  g: DeviceBuffer;
}

function pair(values: ArrayLike<number>): Pair {
  const c = cpu.alloc(values.length), g = gpu!.alloc(values.length);
  cpu.write(c, values);
  gpu!.write(g, values);
  return { c, g };
}

function indices(values: number[]): { c: IndexBuffer; g: IndexBuffer } {
  const c = cpu.allocIndices(values.length), g = gpu!.allocIndices(values.length);
  cpu.writeIndices(c, values);
  gpu!.writeIndices(g, values);
  return { c, g };
}

function view(p: Pair, offset: number, length: number): Pair {
  return { c: cpu.view(p.c, offset, length), g: gpu!.view(p.g, offset, length) };
}

function randoms(n: number, rng: Random, scale = 1): Float32Array {
  return Float32Array.from({ length: n }, () => scale * rng.normal());
}

/** max |gpu - cpu| / max |cpu|: fails above TOLERANCE. */
async function assertClose(p: Pair, what: string): Promise<void> {
  const want = await cpu.read(p.c), got = await gpu!.read(p.g);
  assert.equal(got.length, want.length, `${what}: length`);
  let diff = 0, scale = 1e-30;
  for (let i = 0; i < want.length; i++) {
    assert.ok(Number.isFinite(got[i]), `${what}[${i}] is ${got[i]}`);
    diff = Math.max(diff, Math.abs(got[i] - want[i]));
    scale = Math.max(scale, Math.abs(want[i]));
  }
  assert.ok(diff / scale <= TOLERANCE, `${what}: relative error ${(diff / scale).toExponential(2)}`);
}

/** Runs the same op on both backends. */
function both(op: (be: Backend, side: "c" | "g") => void): void {
  op(cpu, "c");
  op(gpu!, "g");
}

Deno.test({ name: "webgpu: matmul, every transposition, strides, accumulate", ignore }, async () => {
  const rng = new Random(2);
  const [m, n, k] = [70, 45, 33];
  for (const transA of [false, true]) {
    for (const transB of [false, true]) {
      for (const accumulate of [false, true]) {
        const lda = (transA ? m : k) + 3, ldb = (transB ? k : n) + 2, ldc = n + 5;
        const a = pair(randoms((transA ? k : m) * lda, rng));
        const b = pair(randoms((transB ? n : k) * ldb, rng));
        const c = pair(randoms(m * ldc, rng));
        const options: MatmulOptions = { transA, transB, accumulate, lda, ldb, ldc };
        both((be, s) => be.matmul(c[s], a[s], b[s], m, n, k, options));
        await assertClose(c, `matmul ${JSON.stringify(options)}`);
      }
    }
  }
});

Deno.test(
  { name: "webgpu: vec4 matmul, every transposition, views, strides, partial tiles", ignore },
  async () => {
    // Multiples of 4 (the vec4 kernel's condition) that are not multiples of its 128×128×16 tiles.
    const rng = new Random(21);
    const [m, n, k] = [132, 136, 36];
    const at = 8; // every operand is a view starting 8 floats into its buffer
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        for (const accumulate of [false, true]) {
          const lda = (transA ? m : k) + 4, ldb = (transB ? k : n) + 8, ldc = n + 4;
          const a = pair(randoms(at + (transA ? k : m) * lda, rng));
          const b = pair(randoms(at + (transB ? n : k) * ldb, rng));
          const c = pair(randoms(at + m * ldc, rng));
          const [av, bv, cv] = [
            view(a, at, a.c.length - at),
            view(b, at, b.c.length - at),
            view(c, at, c.c.length - at),
          ];
          const options: MatmulOptions = { transA, transB, accumulate, lda, ldb, ldc };
          both((be, s) => be.matmul(cv[s], av[s], bv[s], m, n, k, options));
          await assertClose(c, `vec4 matmul ${JSON.stringify(options)}`);
        }
      }
    }
  },
);

Deno.test({ name: "webgpu: decode-sized matmul (gemv kernel) with views and strides", ignore }, async () => {
  const rng = new Random(23);
  const [n, k, at] = [44, 36, 8];
  for (const m of [1, 3]) {
    for (const accumulate of [false, true]) {
      const lda = k + 4, ldb = k + 8, ldc = n + 4;
      const a = pair(randoms(at + m * lda, rng)), b = pair(randoms(at + n * ldb, rng));
      const c = pair(randoms(at + m * ldc, rng));
      const [av, bv, cv] = [view(a, at, m * lda), view(b, at, n * ldb), view(c, at, m * ldc)];
      const options: MatmulOptions = { transB: true, accumulate, lda, ldb, ldc };
      both((be, s) => be.matmul(cv[s], av[s], bv[s], m, n, k, options));
      await assertClose(c, `gemv m=${m} ${JSON.stringify(options)}`);
    }
  }
});

// A model's flat weights beyond maxStorageBufferBindingSize (MambaByte-972M on any adapter; 128 MiB
// on lavapipe) are bound as windows; the GEMV must still take them. Run where that size is small.
const maxBinding = (await navigator.gpu?.requestAdapter())?.limits.maxStorageBufferBindingSize ?? 0;
Deno.test({
  name: "webgpu: decode-sized matmul on weights past maxStorageBufferBindingSize (windowed bindings)",
  ignore: ignore || maxBinding > 256 * 2 ** 20,
}, async () => {
  const rng = new Random(29);
  const [n, k] = [44, 36];
  const limit = maxBinding / 4; // floats in one binding
  const big = gpu!.alloc(limit + 4096);
  for (const at of [limit - 1000, limit + 1024]) { // across the limit, and wholly past it
    const w = randoms(n * k, rng), weights = gpu!.view(big, at, n * k), cpuWeights = cpu.alloc(n * k);
    gpu!.write(weights, w);
    cpu.write(cpuWeights, w);
    for (const m of [1, 3]) {
      const a = pair(randoms(m * k, rng)), c = pair(randoms(m * n, rng));
      cpu.matmul(c.c, a.c, cpuWeights, m, n, k, { transB: true, accumulate: true });
      gpu!.matmul(c.g, a.g, weights, m, n, k, { transB: true, accumulate: true });
      await assertClose(c, `gemv m=${m} on weights at float ${at} of a ${limit + 4096}-float buffer`);
    }
  }
  gpu!.free(big);
});

Deno.test({ name: "webgpu: vec4 matmul over a long k (split-K)", ignore }, async () => {
  const rng = new Random(22);
  const [m, n, k] = [40, 44, 2052];
  for (const accumulate of [false, true]) {
    const a = pair(randoms(k * m, rng)), b = pair(randoms(k * n, rng)), c = pair(randoms(m * n, rng));
    both((be, s) => be.matmul(c[s], a[s], b[s], m, n, k, { transA: true, accumulate }));
    await assertClose(c, `vec4 matmul ${m}×${n}×${k} accumulate ${accumulate}`);
  }
});

Deno.test({ name: "webgpu: matmul larger than a 128×128 tile in every dimension", ignore }, async () => {
  const rng = new Random(3);
  const [m, n, k] = [1030, 1043, 141];
  const a = pair(randoms(m * k, rng)), b = pair(randoms(n * k, rng)), c = pair(new Float32Array(m * n));
  both((be, s) => be.matmul(c[s], a[s], b[s], m, n, k, { transB: true }));
  await assertClose(c, "matmul 1030×1043×141");
});

Deno.test({ name: "webgpu: matmul over a long k (split-K), as weight gradients", ignore }, async () => {
  const rng = new Random(14);
  const [m, n, k] = [37, 45, 3001];
  for (const accumulate of [false, true]) {
    const a = pair(randoms(k * m, rng)),
      b = pair(randoms(k * (n + 3), rng)),
      c = pair(randoms(m * (n + 1), rng));
    const options = { transA: true, accumulate, ldb: n + 3, ldc: n + 1 };
    both((be, s) => be.matmul(c[s], a[s], b[s], m, n, k, options));
    await assertClose(c, `matmul ${m}×${n}×${k} ${JSON.stringify(options)}`);
  }
});

Deno.test({ name: "webgpu: addBias and its backward", ignore }, async () => {
  const rng = new Random(4);
  const [rows, cols] = [300, 37];
  const out = pair(randoms(rows * cols, rng)),
    bias = pair(randoms(cols, rng)),
    dbias = pair(randoms(cols, rng));
  both((be, s) => be.addBias(out[s], bias[s], rows, cols));
  both((be, s) => be.addBiasBackward(dbias[s], out[s], rows, cols));
  await assertClose(out, "addBias");
  await assertClose(dbias, "addBiasBackward");
});

Deno.test({ name: "webgpu: rmsnorm and its backward", ignore }, async () => {
  const rng = new Random(6);
  const [rows, dim] = [130, 300];
  const x = pair(randoms(rows * dim, rng)), w = pair(randoms(dim, rng));
  const out = pair(new Float32Array(rows * dim)), rstd = pair(new Float32Array(rows));
  const dx = pair(randoms(rows * dim, rng)),
    dw = pair(randoms(dim, rng)),
    dout = pair(randoms(rows * dim, rng));
  both((be, s) => be.rmsnorm(out[s], rstd[s], x[s], w[s], rows, dim, 1e-5));
  both((be, s) => be.rmsnormBackward(dx[s], dw[s], dout[s], x[s], w[s], rstd[s], rows, dim));
  await assertClose(out, "rmsnorm");
  await assertClose(rstd, "rmsnorm rstd");
  await assertClose(dx, "rmsnormBackward dx");
  await assertClose(dw, "rmsnormBackward dweight");
});

Deno.test({ name: "webgpu: conv1d + SiLU, its backward and its step", ignore }, async () => {
  const rng = new Random(7);
  const [B, L, C, K] = [2, 70, 37, 4];
  for (const withBias of [true, false]) {
    const dims = { batch: B, length: L, channels: C, width: K, xStride: 2 * C };
    const xz = pair(randoms(B * L * 2 * C, rng)), dxz = pair(randoms(B * L * 2 * C, rng));
    const x = view(xz, 0, B * L * 2 * C - C), dx = view(dxz, 0, B * L * 2 * C - C);
    const w = pair(randoms(C * K, rng)), bias = withBias ? pair(randoms(C, rng)) : null;
    const dw = pair(randoms(C * K, rng)), dbias = withBias ? pair(randoms(C, rng)) : null;
    const out = pair(new Float32Array(B * L * C)), dout = pair(randoms(B * L * C, rng));
    both((be, s) => be.conv1dSilu(out[s], x[s], w[s], bias && bias[s], dims));
    both((be, s) =>
      be.conv1dSiluBackward(dx[s], dw[s], dbias && dbias[s], dout[s], x[s], w[s], bias && bias[s], dims)
    );
    await assertClose(out, "conv1dSilu");
    await assertClose(dxz, "conv1dSiluBackward dx (and the untouched z half)");
    await assertClose(dw, "conv1dSiluBackward dweight");
    if (dbias) await assertClose(dbias, "conv1dSiluBackward dbias");
    const state = pair(randoms(B * C * (K - 1), rng)), step = pair(new Float32Array(B * C));
    both((be, s) => be.conv1dSiluStep(step[s], state[s], x[s], w[s], bias && bias[s], B, C, K, 2 * C));
    await assertClose(step, "conv1dSiluStep out");
    await assertClose(state, "conv1dSiluStep state");
  }
});

/** Random inputs of the selective scan, B and C strided inside (rows, R + 2N), z inside (rows, 2ED). */
function scanInputs(B: number, L: number, ED: number, N: number, R: number, rng: Random) {
  const rows = B * L, S = R + 2 * N;
  const dbc = pair(randoms(rows * S, rng)), xz = pair(randoms(rows * 2 * ED, rng));
  return {
    u: pair(randoms(rows * ED, rng)),
    delta: pair(randoms(rows * ED, rng, 0.5)),
    dtIn: view(dbc, 0, rows * S - 2 * N),
    dtBias: pair(randoms(ED, rng, 0.5)),
    aLog: pair(Float32Array.from({ length: ED * N }, (_, i) => Math.log(1 + (i % N)) + 0.1 * rng.normal())),
    b: view(dbc, R, rows * S - R - N),
    c: view(dbc, R + N, rows * S - R - N),
    d: pair(randoms(ED, rng)),
    z: view(xz, ED, rows * 2 * ED - ED),
    dims: { batch: B, length: L, channels: ED, state: N, bcStride: S, zStride: 2 * ED, parallel: true },
  };
}

// L = 150 and 650: 10 and 41 forward chunks of 16 steps, 19 and 82 backward chunks of 8, the last
// one partial each time; ED = 70: three workgroups of 32 channels, the last mostly lanes past ED.
for (const L of [150, 650]) {
  Deno.test(
    { name: `webgpu: selective scan forward and backward over several chunks (L=${L})`, ignore },
    async () => {
      const rng = new Random(8);
      const [B, ED, N, R] = [2, 70, 5, 3];
      const rows = B * L;
      const s = scanInputs(B, L, ED, N, R, rng);
      const y = pair(new Float32Array(rows * ED)), dy = pair(randoms(rows * ED, rng));
      both((be, k) =>
        be.selectiveScan(
          y[k],
          s.u[k],
          s.delta[k],
          s.dtBias[k],
          s.aLog[k],
          s.b[k],
          s.c[k],
          s.d[k],
          s.z[k],
          s.dims,
        )
      );
      await assertClose(y, "selectiveScan y");

      const du = pair(new Float32Array(rows * ED)), ddelta = pair(new Float32Array(rows * ED));
      const ddtBias = pair(randoms(ED, rng)), daLog = pair(randoms(ED * N, rng)), dd = pair(randoms(ED, rng));
      const S = R + 2 * N;
      const ddbc = pair(randoms(rows * S, rng)), dxz = pair(randoms(rows * 2 * ED, rng));
      const db = view(ddbc, R, rows * S - R - N), dc = view(ddbc, R + N, rows * S - R - N);
      const dz = view(dxz, ED, rows * 2 * ED - ED);
      both((be, k) =>
        be.selectiveScanBackward(
          du[k],
          ddelta[k],
          ddtBias[k],
          daLog[k],
          db[k],
          dc[k],
          dd[k],
          dz[k],
          dy[k],
          s.u[k],
          s.delta[k],
          s.dtBias[k],
          s.aLog[k],
          s.b[k],
          s.c[k],
          s.d[k],
          s.z[k],
          s.dims,
        )
      );
      await assertClose(du, "du");
      await assertClose(ddelta, "ddelta");
      await assertClose(ddtBias, "ddtBias");
      await assertClose(daLog, "daLog");
      await assertClose(ddbc, "dB, dC (and the untouched δr columns)");
      await assertClose(dd, "dD");
      await assertClose(dxz, "dz (and the untouched u half)");
    },
  );
}

Deno.test({ name: "webgpu: selective scan step", ignore }, async () => {
  const rng = new Random(9);
  const [B, ED, N, R] = [3, 70, 5, 3];
  const s = scanInputs(B, 1, ED, N, R, rng);
  const dtProj = pair(randoms(ED * R, rng, 0.5));
  const h = pair(randoms(B * ED * N, rng)), y = pair(new Float32Array(B * ED));
  both((be, k) =>
    be.selectiveScanStep(
      y[k],
      h[k],
      s.u[k],
      s.dtIn[k],
      dtProj[k],
      s.dtBias[k],
      s.aLog[k],
      s.b[k],
      s.c[k],
      s.d[k],
      s.z[k],
      { ...s.dims, rank: R },
    )
  );
  await assertClose(y, "selectiveScanStep y");
  await assertClose(h, "selectiveScanStep h");
});

Deno.test({
  name: "webgpu: kernel timing counts each kernel's dispatches and leaves results as they were",
  ignore,
}, async () => {
  const be = gpu as WebGpuBackend;
  const x = be.alloc(1000), y = be.alloc(1000), values = randoms(1000, new Random(3));
  be.write(x, values);
  if (!be.canTimeKernels) {
    // An adapter without timestamp-query says so (lavapipe, in CI, has it).
    assert.throws(() => be.startKernelTiming(), /no timestamp-query feature/);
    return;
  }
  be.startKernelTiming();
  for (let i = 0; i < 3; i++) be.copy(y, x);
  be.matmul(y, x, x, 20, 8, 12); // C (20, 8) = A (20, 12) · B (12, 8): named by its shape, 2·M·N·K flops
  be.fill(x, 2);
  const times = await be.stopKernelTiming();
  assert.deepEqual(
    times.map((t) => [t.kernel.replace(/^matmul\S*/, "matmul"), t.dispatches, t.flops]).sort(),
    [["copy:copy", 3, 0], ["copy:fill", 1, 0], ["matmul 20×8×12", 1, 2 * 20 * 8 * 12]],
  );
  for (const t of times) assert.ok(t.seconds > 0 && t.seconds < 1, `${t.kernel}: ${t.seconds} s`);
  // the timed dispatches did their work: y past the product's 160 outputs is x's copy
  assert.deepEqual((await be.read(y)).slice(160), values.slice(160));
  be.copy(y, x); // untimed again
  assert.deepEqual(await be.read(y), new Float32Array(1000).fill(2));
  await assert.rejects(() => be.stopKernelTiming(), /stopTiming without startTiming/);
  be.free(x);
  be.free(y);
});

Deno.test({ name: "webgpu: a d_state above 16 is a clear error, not a wrong scan", ignore }, () => {
  const s = scanInputs(1, 4, 8, 17, 2, new Random(11));
  const y = pair(new Float32Array(4 * 8));
  assert.throws(
    () => gpu!.selectiveScan(y.g, s.u.g, s.delta.g, s.dtBias.g, s.aLog.g, s.b.g, s.c.g, s.d.g, s.z.g, s.dims),
    /webgpu selective scan: d_state 17 is above the supported 16/,
  );
});

Deno.test({ name: "webgpu: cross-entropy with and without gradients", ignore }, async () => {
  const rng = new Random(10);
  for (const vocab of [256, 300]) {
    const rows = 37;
    const logits = pair(randoms(rows * vocab, rng, 3)),
      targets = indices(Array.from({ length: rows }, () => rng.int(256)));
    const losses = pair(new Float32Array(rows)), dlogits = pair(new Float32Array(rows * vocab));
    both((be, s) => be.crossEntropy(losses[s], dlogits[s], logits[s], targets[s], rows, vocab, 0.25));
    await assertClose(losses, "crossEntropy losses");
    await assertClose(dlogits, "crossEntropy dlogits");
    const only = pair(new Float32Array(rows));
    both((be, s) => be.crossEntropy(only[s], null, logits[s], targets[s], rows, vocab, 1));
    await assertClose(only, "crossEntropy without gradients");
  }
});

Deno.test({ name: "webgpu: sumOfSquares over more than one grid stride", ignore }, async () => {
  const rng = new Random(11);
  const x = pair(randoms(300_001, rng));
  const want = await cpu.sumOfSquares(x.c), got = await gpu!.sumOfSquares(view(x, 0, 300_001).g);
  assert.ok(Math.abs(got - want) / want < TOLERANCE, `sumOfSquares ${got} vs ${want}`);
});

Deno.test({ name: "webgpu: a WGSL error names the kernel file, line and column", ignore }, async () => {
  const adapter = await navigator.gpu.requestAdapter();
  const device = await adapter!.requestDevice();
  const sources = await loadKernelSources();
  const lines = sources.get("adamw")!.split("\n");
  const broken = lines.findIndex((line) => line.includes("let beta1 = arg_f(2u);"));
  lines[broken] = "  let beta1 = arg_f(2u) + undefined_name;";
  sources.set("adamw", lines.join("\n"));
  const runtime = new GpuRuntime(device, sources);
  await assert.rejects(
    () => runtime.check("adamw", {}),
    (error: Error) =>
      error.message.includes(`kernels/adamw.wgsl:${broken + 1}:`) &&
      /undefined_name|no definition/.test(error.message),
  );
  device.destroy();
});

for (const format of ["bf16", "f16"] as const) {
  Deno.test(
    {
      name:
        `webgpu: training at ${format} (16-bit activations) gives the cpu's ${format} emulation's gradients and losses`,
      ignore,
    },
    () =>
      expectHalfTrainingMatchesCpu(
        gpu!,
        format,
        new MambaConfig({ dim: 16, depth: 2, d_state: 4, bias: true }),
        [2, 40],
        5,
        1e-2,
      ),
  );
}

Deno.test({ name: "webgpu: tf32 is refused, naming the precisions it has", ignore }, () => {
  assert.throws(
    () => gpu!.setMatmulPrecision!("tf32"),
    /webgpu: unsupported matmul precision "tf32"; choose fp32, bf16 or f16/,
  );
});
