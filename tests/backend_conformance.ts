/**
 * The conformance suite every backend passes: each op of the Backend contract, forward and
 * backward, against the CPU reference on random inputs at shapes that are not multiples of
 * any tile size; then the whole model end to end (logits, gradients, 20 AdamW steps, decode).
 *
 * Usage, in a test file:  await conformanceSuite("webgpu", createWebGpuBackend);
 * When the backend is unavailable the tests are registered as ignored — except under CI
 * (env CI set) with `requiredInCI`, where unavailability fails the run.
 */
import assert from "node:assert/strict";
import {
  type AdamWOptions,
  type Backend,
  type ConvStepOperands,
  type DeviceBuffer,
  type FloatArray,
  HALF_FORMATS,
  type HalfFormat,
  type IndexBuffer,
} from "../lib/backend.ts";
import { CpuBackend } from "../lib/backends/cpu.ts";
import { MambaConfig } from "../lib/config.ts";
import { type Loss, MambaByte, type Tensor } from "../lib/model.ts";
import { AdamW, ADAMW_DEFAULTS, type OptimizerBits } from "../lib/optim.ts";
import { quantizeInt8 } from "../lib/quantize.ts";
import { Random } from "../lib/random.ts";
import type { SamplingOptions } from "../lib/sample.ts";

/** Max |a - b| over max |b|: the fp32 budget of the contract is 1e-4. */
export function maxRelativeError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  assert.equal(actual.length, expected.length, "lengths differ");
  let diff = 0, scale = 1e-30;
  for (let i = 0; i < expected.length; i++) {
    diff = Math.max(diff, Math.abs(actual[i] - expected[i]));
    scale = Math.max(scale, Math.abs(expected[i]));
  }
  return diff / scale;
}

/**
 * Trains `config` at a 16-bit matmul precision on `backend` and on the cpu's emulation of it
 * (same seed, `steps` AdamW steps on one batch of shape [B, L], the half activation layout on
 * both), and checks the first step's gradients to 1e-2 and the losses to 1e-3: the same 16-bit
 * products, summed in f32 in another order, some values landing on the other side of a rounding.
 */
export async function expectHalfTrainingMatchesCpu(
  backend: Backend,
  format: HalfFormat,
  config: MambaConfig,
  shape: [number, number],
  steps: number,
  lr: number,
): Promise<void> {
  const n = shape[0] * shape[1];
  const inputs = Array.from({ length: n }, (_, i) => 97 + ((i * 11) % 26));
  const targets = inputs.map((x) => 97 + ((x - 95) % 26));
  const run = async (be: Backend) => {
    be.setMatmulPrecision!(format);
    try {
      const model = new MambaByte(config, { backend: be, seed: 5 });
      assert.equal(model.activationLayout, "half");
      const optimizer = new AdamW(be, model.table);
      const losses: number[] = [];
      let grads: FloatArray | null = null;
      for (let step = 1; step <= steps; step++) {
        model.zeroGrad();
        losses.push((await model.lossAndBackward(inputs, targets, shape)).loss);
        grads ??= await be.read(model.grads);
        optimizer.step(model.params, model.grads, lr, step);
      }
      optimizer.free();
      model.dispose();
      return { losses, grads: grads! };
    } finally {
      be.setMatmulPrecision!("fp32");
    }
  };
  const ours = await run(backend), reference = await run(new CpuBackend({ threads: 1 }));
  const gradError = maxRelativeError(ours.grads, reference.grads);
  assert.ok(gradError <= 1e-2, `first step's gradients: max relative error ${gradError.toExponential(2)}`);
  assert.ok(reference.losses[steps - 1] < reference.losses[0], "the reference learns");
  const lossError = maxRelativeError(ours.losses, reference.losses);
  assert.ok(
    lossError <= 1e-3,
    `losses ${ours.losses.map((x) => x.toFixed(4))} vs ${reference.losses.map((x) => x.toFixed(4))}`,
  );
}

/**
 * Decodes the two sequences of `inputs` (2, 23) byte by byte and checks every step's logits
 * against the forward pass's `logits` (2, 23, 256), to 1e-4 relative.
 */
async function assertStepsMatch(model: MambaByte, inputs: ArrayLike<number>, logits: Tensor): Promise<void> {
  const cache = model.createCache(2);
  for (let t = 0; t < 23; t++) {
    const step = await model.step([inputs[t], inputs[23 + t]], cache);
    for (let b = 0; b < 2; b++) {
      const row = logits.data.subarray((b * 23 + t) * 256, (b * 23 + t + 1) * 256);
      const error = maxRelativeError(step.data.subarray(b * 256, (b + 1) * 256), row);
      assert.ok(error <= 1e-4, `position ${t}, sequence ${b}: max relative error ${error}`);
    }
  }
  cache.free();
}

/** The buffers an op case works on, by name, on one backend. */
type Buffers = Record<string, DeviceBuffer>;
type Indices = Record<string, IndexBuffer>;

interface OpCase {
  /** Float inputs and outputs (outputs start random: that tests overwrite vs +=). */
  floats: Record<string, FloatArray>;
  /** Index buffers: byte tokens, or packed codes. */
  indices?: Record<string, Int32Array>;
  /** Which float buffers to compare after `run`. */
  outputs: string[];
  run: (backend: Backend, f: Buffers, i: Indices) => void | Promise<void>;
  tolerance?: number;
}

async function runCase(backend: Backend, c: OpCase): Promise<Record<string, FloatArray>> {
  const f: Buffers = {}, i: Indices = {};
  for (const [name, data] of Object.entries(c.floats)) {
    f[name] = backend.alloc(data.length);
    backend.write(f[name], data);
  }
  for (const [name, data] of Object.entries(c.indices ?? {})) {
    i[name] = backend.allocIndices(data.length);
    backend.writeIndices(i[name], data);
  }
  await c.run(backend, f, i);
  const out: Record<string, FloatArray> = {};
  for (const name of c.outputs) out[name] = await backend.read(f[name]);
  for (const buffer of [...Object.values(f), ...Object.values(i)]) backend.free(buffer);
  return out;
}

async function expectSame(backend: Backend, reference: Backend, c: OpCase): Promise<void> {
  const expected = await runCase(reference, c);
  const actual = await runCase(backend, c);
  for (const name of c.outputs) {
    const error = maxRelativeError(actual[name], expected[name]);
    assert.ok(error <= (c.tolerance ?? 1e-4), `${name}: max relative error ${error.toExponential(2)}`);
  }
}

const rng = new Random(2024);
const randn = (n: number, scale = 1) => Float32Array.from({ length: n }, () => scale * rng.normal());
const uniform = (n: number, lo: number, hi: number) =>
  Float32Array.from({ length: n }, () => rng.uniform(lo, hi));
const bytes = (n: number) => Int32Array.from({ length: n }, () => rng.int(256));

/** Op cases: name → case. Shapes are odd on purpose. */
/**
 * selectiveScan then its backward on the buffers of a scan case: u, delta, dtBias, aLog, d, dy,
 * bc (B·L, R + 2N) holding B and C after the δ columns, xz (B·L, 2ED) holding z after u, and the
 * outputs y, du, ddelta, ddtBias, daLog, dbc, dd, dxz laid out like their inputs.
 */
export function scanAndBackward(
  be: Backend,
  f: Buffers,
  s: { batch: number; length: number; channels: number; state: number; rank: number; parallel: boolean },
): void {
  const { rank: R, state: N, channels: ED } = s, S = R + 2 * N, zStride = 2 * ED, rows = s.batch * s.length;
  const dims = {
    batch: s.batch,
    length: s.length,
    channels: ED,
    state: N,
    bcStride: S,
    zStride,
    parallel: s.parallel,
  };
  const b = be.view(f.bc, R, rows * S - R - N), c = be.view(f.bc, R + N, rows * S - R - N);
  const db = be.view(f.dbc, R, rows * S - R - N), dc = be.view(f.dbc, R + N, rows * S - R - N);
  const z = be.view(f.xz, ED, rows * zStride - ED), dz = be.view(f.dxz, ED, rows * zStride - ED);
  be.selectiveScan(f.y, f.u, f.delta, f.dtBias, f.aLog, b, c, f.d, z, dims);
  be.selectiveScanBackward(
    f.du,
    f.ddelta,
    f.ddtBias,
    f.daLog,
    db,
    dc,
    f.dd,
    dz,
    f.dy,
    f.u,
    f.delta,
    f.dtBias,
    f.aLog,
    b,
    c,
    f.d,
    z,
    dims,
  );
}

function opCases(): Record<string, OpCase> {
  const cases: Record<string, OpCase> = {};
  for (const transA of [false, true]) {
    for (const transB of [false, true]) {
      for (const accumulate of [false, true]) {
        const [m, n, k] = [67, 45, 70];
        cases[`matmul transA=${transA} transB=${transB} accumulate=${accumulate}`] = {
          floats: { a: randn(m * k), b: randn(k * n), c: randn(m * n) },
          outputs: ["c"],
          run: (be, f) => be.matmul(f.c, f.a, f.b, m, n, k, { transA, transB, accumulate }),
        };
      }
    }
  }
  {
    // Strided: A is columns [3, 3+k) of a (m, 40) matrix, C is columns [5, 5+n) of (m, 31).
    const [m, n, k] = [29, 17, 23];
    cases["matmul with row strides and views"] = {
      floats: { a: randn(m * 40), b: randn(n * k), c: randn(m * 31) },
      outputs: ["c"],
      run: (be, f) =>
        be.matmul(be.view(f.c, 5, m * 31 - 5), be.view(f.a, 3, m * 40 - 3), f.b, m, n, k, {
          transB: true,
          lda: 40,
          ldc: 31,
        }),
    };
  }
  {
    const [m, n, k] = [130, 150, 140];
    cases["matmul larger than a tile in every dimension"] = {
      floats: { a: randn(m * k), b: randn(k * n), c: randn(m * n) },
      outputs: ["c"],
      run: (be, f) => be.matmul(f.c, f.a, f.b, m, n, k),
    };
  }
  {
    const [rows, cols] = [37, 29];
    cases["addBias and its backward"] = {
      floats: { out: randn(rows * cols), bias: randn(cols), dbias: randn(cols), dout: randn(rows * cols) },
      outputs: ["out", "dbias"],
      run: (be, f) => {
        be.addBias(f.out, f.bias, rows, cols);
        be.addBiasBackward(f.dbias, f.dout, rows, cols);
      },
    };
  }
  {
    const [rows, dim] = [53, 19];
    cases["embedding and its backward (repeated tokens)"] = {
      floats: {
        out: randn(rows * dim),
        table: randn(256 * dim),
        dtable: randn(256 * dim),
        dout: randn(rows * dim),
      },
      indices: { tokens: Int32Array.from({ length: rows }, (_, r) => (r % 7 === 0 ? 65 : rng.int(256))) },
      outputs: ["out", "dtable"],
      run: (be, f, i) => {
        be.embedding(f.out, f.table, i.tokens, rows, dim);
        be.embeddingBackward(f.dtable, f.dout, i.tokens, rows, dim);
      },
    };
  }
  {
    const [rows, dim] = [41, 37];
    cases["rmsnorm and its backward"] = {
      floats: {
        out: randn(rows * dim),
        rstd: randn(rows),
        x: randn(rows * dim),
        w: uniform(dim, 0.5, 1.5),
        dx: randn(rows * dim),
        dw: randn(dim),
        dout: randn(rows * dim),
      },
      outputs: ["out", "rstd", "dx", "dw"],
      run: (be, f) => {
        be.rmsnorm(f.out, f.rstd, f.x, f.w, rows, dim, 1e-5);
        be.rmsnormBackward(f.dx, f.dw, f.dout, f.x, f.w, f.rstd, rows, dim);
      },
    };
  }
  for (const withBias of [true, false]) {
    const [B, L, C, K] = [2, 37, 13, 4];
    const xStride = 2 * C + 3;
    cases[`conv1dSilu and its backward (bias ${withBias})`] = {
      floats: {
        out: randn(B * L * C),
        x: randn(B * L * xStride),
        w: randn(C * K, 0.5),
        bias: randn(C),
        dx: randn(B * L * xStride),
        dw: randn(C * K),
        dbias: randn(C),
        dout: randn(B * L * C),
      },
      outputs: withBias ? ["out", "dx", "dw", "dbias"] : ["out", "dx", "dw"],
      run: (be, f) => {
        const dims = { batch: B, length: L, channels: C, width: K, xStride };
        const x = be.view(f.x, 1, B * L * xStride - 1), dx = be.view(f.dx, 1, B * L * xStride - 1);
        be.conv1dSilu(f.out, x, f.w, withBias ? f.bias : null, dims);
        be.conv1dSiluBackward(
          dx,
          f.dw,
          withBias ? f.dbias : null,
          f.dout,
          x,
          f.w,
          withBias ? f.bias : null,
          dims,
        );
      },
    };
  }
  // [B, L, ED, N, R, parallel]; the last two: d_state 12 (states on both sides of 8) and 16 over
  // many chunks, more channels than a block.
  const scanShapes = [
    [2, 37, 11, 5, 3, true],
    [2, 37, 11, 5, 3, false],
    [2, 300, 11, 5, 3, true],
    [2, 1, 11, 5, 3, false],
    [2, 41, 45, 12, 4, true],
    [3, 203, 70, 16, 5, true],
  ] as const;
  for (const [B, L, ED, N, R, parallel] of scanShapes) {
    const S = R + 2 * N, zStride = 2 * ED;
    const rows = B * L;
    cases[`selectiveScan and its backward (B=${B}, L=${L}, ED=${ED}, N=${N}, parallel ${parallel})`] = {
      floats: {
        y: randn(rows * ED),
        u: randn(rows * ED),
        delta: randn(rows * ED),
        dtBias: uniform(ED, -4, -1),
        aLog: Float32Array.from({ length: ED * N }, (_, i) => Math.log(1 + (i % N)) + 0.1 * rng.normal()),
        bc: randn(rows * S),
        d: randn(ED),
        xz: randn(rows * zStride),
        dy: randn(rows * ED),
        du: randn(rows * ED),
        ddelta: randn(rows * ED),
        ddtBias: randn(ED),
        daLog: randn(ED * N),
        dbc: randn(rows * S),
        dd: randn(ED),
        dxz: randn(rows * zStride),
      },
      outputs: ["y", "du", "ddelta", "ddtBias", "daLog", "dbc", "dd", "dxz"],
      tolerance: L > 100 ? 3e-4 : 1e-4,
      run: (be, f) =>
        scanAndBackward(be, f, { batch: B, length: L, channels: ED, state: N, rank: R, parallel }),
    };
  }
  {
    const [rows, V] = [45, 256];
    cases["crossEntropy with and without gradient"] = {
      floats: {
        losses: randn(rows),
        dlogits: randn(rows * V),
        logits: randn(rows * V, 3),
        losses2: randn(rows),
      },
      indices: { targets: bytes(rows) },
      outputs: ["losses", "dlogits", "losses2"],
      run: (be, f, i) => {
        be.crossEntropy(f.losses, f.dlogits, f.logits, i.targets, rows, V, 1 / rows);
        be.crossEntropy(f.losses2, null, f.logits, i.targets, rows, V, 0);
      },
    };
  }
  {
    const n = 10_007;
    cases["sumOfSquares"] = {
      floats: { x: randn(n), s: new Float32Array(1) },
      outputs: ["s"],
      run: async (be, f) => be.write(f.s, [await be.sumOfSquares(f.x)]),
    };
  }
  {
    const n = 1_003;
    cases["adamw on views"] = {
      floats: { p: randn(n), g: randn(n), m: randn(n, 0.1), v: uniform(n, 0, 0.1) },
      outputs: ["p", "m", "v"],
      run: (be, f) => {
        const options = {
          lr: 1e-2,
          beta1: 0.9,
          beta2: 0.95,
          eps: 1e-8,
          weightDecay: 0.1,
          step: 3,
          gradScale: 0.7,
        };
        const [a, b] = [be.view(f.p, 0, 500), be.view(f.p, 500, n - 500)];
        const views = (x: DeviceBuffer) => [be.view(x, 0, 500), be.view(x, 500, n - 500)];
        const [ga, gb] = views(f.g), [ma, mb] = views(f.m), [va, vb] = views(f.v);
        be.adamw(a, ga, ma, va, options);
        be.adamw(b, gb, mb, vb, { ...options, weightDecay: 0, step: 1 });
      },
    };
  }
  {
    const [B, C, K] = [3, 13, 4];
    const xStride = 2 * C;
    cases["conv1dSiluStep over several steps"] = {
      floats: {
        out: randn(B * C),
        state: randn(B * C * (K - 1)),
        x: randn(B * xStride),
        w: randn(C * K),
        bias: randn(C),
      },
      outputs: ["out", "state"],
      run: (be, f) => {
        for (let s = 0; s < 3; s++) be.conv1dSiluStep(f.out, f.state, f.x, f.w, f.bias, B, C, K, xStride);
      },
    };
  }
  {
    // R = 19: more δr terms than a CUDA channel's 16 lanes, not a multiple of 4
    const [B, ED, N, R] = [3, 11, 5, 19];
    const S = R + 2 * N;
    cases["selectiveScanStep"] = {
      floats: {
        y: randn(B * ED),
        h: randn(B * ED * N),
        u: randn(B * ED),
        dtProj: uniform(ED * R, -0.3, 0.3),
        dtBias: uniform(ED, -4, -1),
        aLog: uniform(ED * N, 0, 2),
        bc: randn(B * S),
        d: randn(ED),
        xz: randn(B * 2 * ED),
      },
      outputs: ["y", "h"],
      run: (be, f) => {
        const dims = { batch: B, channels: ED, state: N, rank: R, bcStride: S, zStride: 2 * ED };
        const dtIn = be.view(f.bc, 0, B * S - 2 * N);
        const b = be.view(f.bc, R, B * S - R - N), c = be.view(f.bc, R + N, B * S - R - N);
        const z = be.view(f.xz, ED, B * 2 * ED - ED);
        be.selectiveScanStep(f.y, f.h, f.u, dtIn, f.dtProj, f.dtBias, f.aLog, b, c, f.d, z, dims);
      },
    };
  }
  {
    const n = 333;
    cases["fill, copy and views"] = {
      floats: { a: randn(n), b: randn(n) },
      outputs: ["a", "b"],
      run: (be, f) => {
        be.fill(be.view(f.a, 10, 100), 0.5);
        be.copy(be.view(f.b, 1, 200), be.view(f.a, 3, 200));
      },
    };
  }
  const settings: SamplingOptions[] = [
    { temperature: 0, topK: 0, topP: 1 },
    { temperature: 1, topK: 0, topP: 1 },
    { temperature: 0.7, topK: 10, topP: 1 },
    { temperature: 1.3, topK: 0, topP: 0.8 },
    { temperature: 1, topK: 60, topP: 0.5 },
    { temperature: 2, topK: 300, topP: 0.9 },
  ];
  for (const o of settings) {
    const B = 7;
    const { logits, uniforms } = samplingInputs(B, o);
    cases[`sampleTokens ${JSON.stringify(o)} (into views)`] = {
      // logits at element 100 of their buffer; uniforms and history in row 1 of (3, B) blocks
      floats: {
        logits: Float32Array.of(...randn(100), ...logits),
        uniforms: Float32Array.of(...randn(B), ...uniforms, ...randn(B)),
        history: randn(3 * B),
        table: Float32Array.from({ length: 256 }, (_, v) => v), // (256, 1): echoes the tokens
        echo: randn(B),
      },
      indices: { tokens: bytes(B) },
      outputs: ["history", "echo"],
      run: (be, f, i) => {
        const row = (x: DeviceBuffer) => be.view(x, B, B);
        be.sampleTokens(i.tokens, row(f.history), be.view(f.logits, 100, B * 256), row(f.uniforms), B, o);
        be.embedding(f.echo, f.table, i.tokens, B, 1);
      },
      tolerance: 0,
    };
  }
  return cases;
}

/**
 * Decode's few-row products (x · Wᵀ, accumulated): on CUDA, the GEMV with 1, 4 and 8 warps
 * sharing a row of W (16-byte and scalar loads), at N that does not fill a block of rows.
 * Their own generator, so that adding them leaves the other cases' inputs as they were.
 */
function gemvCases(): Record<string, OpCase> {
  const cases: Record<string, OpCase> = {}, r = new Random(909);
  const normal = (n: number) => Float32Array.from({ length: n }, () => r.normal());
  for (const [m, n, k] of [[1, 37, 45], [3, 13, 1024], [8, 21, 2048], [2, 5, 2051]]) {
    cases[`matmul decode rows M=${m} N=${n} K=${k} transB, accumulate`] = {
      floats: { a: normal(m * k), b: normal(n * k), c: normal(m * n) },
      outputs: ["c"],
      run: (be, f) => be.matmul(f.c, f.a, f.b, m, n, k, { transB: true, accumulate: true }),
    };
  }
  return cases;
}

/**
 * matmulInt8 cases (weights quantized on the host by lib/quantize.ts): decode rows (M = 1, 3),
 * just past the GEMV (9) and a tiled M (64), with N and K multiples of neither 4 nor any tile,
 * K = 64 (CUDA's float4 loads), overwrite and accumulate, and A a strided view (x_proj's δr);
 * then the rmsnorm-fused matmuls of decode, fp32 and int8. Their own generator, so that adding
 * them leaves the other cases' inputs as they were.
 */
function int8Cases(): Record<string, OpCase> {
  const cases: Record<string, OpCase> = {}, r = new Random(808);
  const normal = (n: number, scale = 1) => Float32Array.from({ length: n }, () => scale * r.normal());
  const shapes = [
    [1, 37, 45],
    [3, 45, 70],
    [3, 33, 64],
    [9, 19, 13],
    [64, 67, 29],
    [64, 130, 150],
    [2, 11, 2051],
    [1, 2050, 45], // a GEMV over many rows of W
    [2, 4097, 32], // tall, K % 16 == 0, A strided: not for CUDA's staged GEMV, which reads A as float4
  ];
  for (const [m, n, k] of shapes) {
    for (const accumulate of [false, true]) {
      const { codes, scales } = quantizeInt8(normal(n * k, 0.2), n, k);
      const lda = k + 3, offset = 2; // A: columns [2, 2 + K) of (M, K + 3)
      cases[`matmulInt8 M=${m} N=${n} K=${k} accumulate=${accumulate}, A strided`] = {
        floats: { a: normal(m * lda), scales, c: normal(m * n) },
        indices: { codes },
        outputs: ["c"],
        run: (be, f, i) =>
          be.matmulInt8(f.c, be.view(f.a, offset, m * lda - offset), i.codes, f.scales, m, n, k, {
            lda,
            accumulate,
          }),
      };
    }
  }
  {
    // packed A, 16-byte aligned: the vectorized GEMV paths, with 1 and 4 warps per row of W, and
    // a GEMV over many rows of W; tall ones with K % 16 == 0, up to CUDA's staged GEMV's longest
    // rows (2048), past them, with more of A (M = 8) than it stages, and with more rows than a
    // GPU of up to 132 SMs holds warps (its warps take several rows each)
    const shapes = [
      [1, 20011, 64],
      [2, 40, 64],
      [3, 9, 4096],
      [3, 2053, 64],
      [3, 4099, 48],
      [5, 4096, 2048],
      [1, 4096, 2064],
      [
        8,
        4098,
        1536,
      ],
    ];
    for (const [m, n, k] of shapes) {
      const { codes, scales } = quantizeInt8(normal(n * k, 0.2), n, k);
      cases[`matmulInt8 M=${m} N=${n} K=${k}, A packed`] = {
        floats: { a: normal(m * k), scales, c: normal(m * n) },
        indices: { codes },
        outputs: ["c"],
        run: (be, f, i) => be.matmulInt8(f.c, f.a, i.codes, f.scales, m, n, k),
      };
    }
  }
  // rmsnorm fused into the matmul after it (decode's in_proj and lm_head), fp32 and int8 weights:
  // K = 13 takes the scalar paths, 64 and 4096 the vector ones (4096: several warps per row of W;
  // N = 20011: several rows per warp of CUDA's staged GEMV); backends without the fused ops run
  // rmsnorm, then the matmul, as the model does
  const normedShapes = [[1, 37, 13], [3, 70, 64], [8, 2053, 64], [2, 9, 4096], [2, 4101, 96], [1, 20011, 64]];
  for (const [m, n, k] of normedShapes) {
    const { codes, scales } = quantizeInt8(normal(n * k, 0.2), n, k);
    const floats = () => normedMatmulFloats(r, m, n, k, scales);
    cases[`rmsnormMatmul M=${m} N=${n} K=${k}`] = {
      floats: floats(),
      outputs: ["c"],
      run: (be, f) => {
        if (be.rmsnormMatmul) return be.rmsnormMatmul(f.c, f.a, f.norm, f.w, m, n, k, 1e-5);
        be.rmsnorm(f.xn, f.rstd, f.a, f.norm, m, k, 1e-5);
        be.matmul(f.c, f.xn, f.w, m, n, k, { transB: true });
      },
    };
    cases[`rmsnormMatmulInt8 M=${m} N=${n} K=${k}`] = {
      floats: floats(),
      indices: { codes },
      outputs: ["c"],
      run: (be, f, i) => {
        if (be.rmsnormMatmulInt8) {
          return be.rmsnormMatmulInt8(f.c, f.a, f.norm, i.codes, f.scales, m, n, k, 1e-5);
        }
        be.rmsnorm(f.xn, f.rstd, f.a, f.norm, m, k, 1e-5);
        be.matmulInt8(f.c, f.xn, i.codes, f.scales, m, n, k);
      },
    };
  }
  return cases;
}

/**
 * The operands of an rmsnorm-fused matmul case, C (M, N) = rmsnorm(A (M, K)) · W (N, K)ᵀ (fp32 W,
 * or int8 with `scales`), plus the scratch of the unfused path (xn, rstd).
 */
function normedMatmulFloats(r: Random, m: number, n: number, k: number, scales: Float32Array) {
  const normal = (count: number, scale = 1) => Float32Array.from({ length: count }, () => scale * r.normal());
  return {
    a: normal(m * k, 3),
    norm: Float32Array.from({ length: k }, () => 0.5 + r.next()),
    w: normal(n * k, 0.2),
    scales,
    c: normal(m * n),
    xn: new Float32Array(m * k),
    rstd: new Float32Array(m),
  };
}

/**
 * The conv step fused after the rmsnorm-fused matmuls (decode's in_proj, then conv1d on its x
 * half): C, the step's output and the conv state after two steps (the second reads the state the
 * first left), fp32 and int8 weights, channels < N, widths 4 and 2, with and without a conv bias;
 * K = 13 takes the scalar paths, 64 and 4096 the vector ones. Backends without the fused ops run
 * rmsnorm, the matmul, then conv1dSiluStep, as the model does. Their own generator.
 */
function convStepCases(): Record<string, OpCase> {
  const cases: Record<string, OpCase> = {}, r = new Random(606);
  const normal = (n: number, scale = 1) => Float32Array.from({ length: n }, () => scale * r.normal());
  const shapes = [
    { m: 1, n: 70, k: 64, channels: 29, width: 4, withBias: true },
    { m: 3, n: 37, k: 13, channels: 17, width: 2, withBias: false },
    { m: 3, n: 9, k: 4096, channels: 5, width: 4, withBias: false },
    { m: 1, n: 45, k: 13, channels: 22, width: 2, withBias: true },
    { m: 2, n: 4103, k: 64, channels: 2050, width: 4, withBias: true },
  ];
  for (const { m, n, k, channels, width, withBias } of shapes) {
    const { codes, scales } = quantizeInt8(normal(n * k, 0.2), n, k);
    const floats = () => ({
      ...normedMatmulFloats(r, m, n, k, scales),
      out: normal(m * channels),
      state: normal(m * channels * (width - 1)),
      convWeight: normal(channels * width, 0.5),
      convBias: normal(channels),
    });
    const conv = (f: Buffers): ConvStepOperands => ({
      out: f.out,
      state: f.state,
      weight: f.convWeight,
      bias: withBias ? f.convBias : null,
      channels,
      width,
    });
    // rmsnorm, `matmul` into C, then the conv step on C's first columns
    const unfused = (be: Backend, f: Buffers, matmul: () => void) => {
      be.rmsnorm(f.xn, f.rstd, f.a, f.norm, m, k, 1e-5);
      matmul();
      const { out, state, weight, bias } = conv(f);
      be.conv1dSiluStep(out, state, f.c, weight, bias, m, channels, width, n);
    };
    const tag = `M=${m} N=${n} K=${k} with the conv step (${channels} channels, width ${width}${
      withBias ? ", bias" : ""
    })`;
    cases[`rmsnormMatmul ${tag}`] = {
      floats: floats(),
      outputs: ["c", "out", "state"],
      run: (be, f) => {
        for (let step = 0; step < 2; step++) {
          if (be.rmsnormMatmul) be.rmsnormMatmul(f.c, f.a, f.norm, f.w, m, n, k, 1e-5, conv(f));
          else unfused(be, f, () => be.matmul(f.c, f.xn, f.w, m, n, k, { transB: true }));
        }
      },
    };
    cases[`rmsnormMatmulInt8 ${tag}`] = {
      floats: floats(),
      indices: { codes },
      outputs: ["c", "out", "state"],
      run: (be, f, i) => {
        for (let step = 0; step < 2; step++) {
          if (be.rmsnormMatmulInt8) {
            be.rmsnormMatmulInt8(f.c, f.a, f.norm, i.codes, f.scales, m, n, k, 1e-5, conv(f));
          } else unfused(be, f, () => be.matmulInt8(f.c, f.xn, i.codes, f.scales, m, n, k));
        }
      },
    };
  }
  return cases;
}

/**
 * 16-bit storage (bf16 and f16) and matmuls that read it, for backends with packHalf: each case
 * runs at that matmul precision (the reference emulates it) and puts fp32 back after.
 */
function halfCases(): Record<string, OpCase> {
  const cases: Record<string, OpCase> = {}, r = new Random(707);
  const normal = (n: number, scale = 1) => Float32Array.from({ length: n }, () => scale * r.normal());
  const at = (format: HalfFormat, run: OpCase["run"]): OpCase["run"] => async (be, f, i) => {
    be.setMatmulPrecision!(format);
    try {
      await run(be, f, i);
    } finally {
      be.setMatmulPrecision!("fp32");
    }
  };
  // per format: ties to even both ways, a value past a tie, a large one (f16: its largest value,
  // and one just below the tie to infinity, which tests/half_test.ts checks), a subnormal, and
  // random values over the format's range
  const special: Record<HalfFormat, number[]> = {
    bf16: [1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8 + 2 ** -20), 3e38, 2 ** -130, 0],
    f16: [1 + 2 ** -11, 1 + 3 * 2 ** -11, -(1 + 2 ** -11 + 2 ** -20), 65519, 65504, 2 ** -20, 0],
  };
  const spread: Record<HalfFormat, number> = { bf16: 9, f16: 5 }; // values up to about 4^spread
  for (const format of HALF_FORMATS) {
    // odd n: the vector kernels' tail
    const n = 1_003;
    const x = Float32Array.from(
      { length: n },
      (_, j) => j < special[format].length ? special[format][j] : r.normal() * 4 ** r.int(spread[format]),
    );
    cases[`packHalf then unpackHalf (${format}) round to nearest even`] = {
      floats: { x, packed: new Float32Array(Math.ceil(n / 2)), y: normal(n) },
      outputs: ["y"],
      tolerance: 0,
      run: (be, f) => {
        be.packHalf!(f.packed, f.x, n, format);
        be.unpackHalf!(f.y, f.packed, n, format);
      },
    };
    for (
      const [transA, transB, aHalf, bHalf] of [
        [false, true, true, false], // x·Wᵀ with x stored in 16 bits (forward)
        [true, false, true, true], // Gᵀ·x, both stored (weight gradients)
        [false, false, true, false], // G·W (input gradients)
        [false, true, false, true],
      ]
    ) {
      // 37×29×70: any shape; 40×36×68: shapes that allow 16-byte loads (webgpu's vec4 kernel)
      for (const [m, n, k] of [[37, 29, 70], [40, 36, 68]]) {
        const a = normal(m * k), b = normal(k * n);
        cases[
          `matmul at ${format}, A ${aHalf ? "stored" : "fp32"}, B ${bHalf ? "stored" : "fp32"}, ` +
          `transA=${transA} transB=${transB}, M=${m} N=${n} K=${k}`
        ] = {
          floats: {
            a,
            b,
            a16: new Float32Array(Math.ceil(a.length / 2)),
            b16: new Float32Array(Math.ceil(b.length / 2)),
            c: normal(m * n),
          },
          outputs: ["c"],
          run: at(format, (be, f) => {
            be.packHalf!(f.a16, f.a, a.length, format);
            be.packHalf!(f.b16, f.b, b.length, format);
            const [A, B] = [aHalf ? f.a16 : f.a, bHalf ? f.b16 : f.b];
            be.matmul(f.c, A, B, m, n, k, { transA, transB, accumulate: true, aHalf, bHalf });
          }),
        };
      }
    }
  }
  return cases;
}

/**
 * Logits (B, 256) and uniforms (B) for `o` with every float comparison of the sampler at least
 * 2e-4 of the row's mass away from a tie (the top-p cut and the pick), so that float32 on a
 * device and float64 on the host decide alike. Rows and draws too close are drawn again.
 */
function samplingInputs(B: number, o: SamplingOptions): { logits: Float32Array; uniforms: Float32Array } {
  const logits = new Float32Array(B * 256), uniforms = new Float32Array(B);
  for (let b = 0; b < B; b++) {
    for (;;) {
      const row = randn(256, 2);
      const weights = [...row].sort((x, y) => y - x).slice(0, o.topK || 256)
        .map((l, _, kept) => Math.exp((l - kept[0]) / (o.temperature || 1)));
      const prefix = weights.map(((sum) => (w: number) => sum += w)(0));
      const total = prefix[prefix.length - 1];
      if (o.topP < 1 && prefix.some((x) => Math.abs(x - o.topP * total) < 2e-4 * total)) continue;
      const count = Math.min(prefix.length, 1 + prefix.filter((x) => x < o.topP * total).length);
      const u = Math.fround(rng.next()), threshold = u * prefix[count - 1];
      if (prefix.some((x) => Math.abs(x - threshold) < 2e-4 * total)) continue;
      logits.set(row, b * 256);
      uniforms[b] = u;
      break;
    }
  }
  return { logits, uniforms };
}

/** One adamw8bit call on views: `n` elements at `offset` of their buffers, codes and scales at `block`. */
interface Adamw8bitCase {
  n: number;
  offset: number;
  block: number;
  options: AdamWOptions;
}

const ADAMW8_CASES: Adamw8bitCase[] = [
  { n: 1000, offset: 0, block: 0, options: { ...adamwOptions(), weightDecay: 0.1, step: 3 } },
  { n: 257, offset: 300, block: 2, options: { ...adamwOptions(), step: 1 } },
  { n: 1, offset: 5, block: 1, options: { ...adamwOptions(), step: 7, gradScale: 1.3 } },
  { n: 3 * 256, offset: 64, block: 0, options: { ...adamwOptions(), step: 40 } },
];

function adamwOptions(): AdamWOptions {
  return { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0, step: 1, gradScale: 0.7 };
}

/** Inputs of a case: random state around the views (which must stay untouched), one block all zero. */
function adamw8bitInputs(c: Adamw8bitCase) {
  const blocks = Math.ceil(c.n / 256), allBlocks = c.block + blocks + 1, pad = 37;
  const grads = randn(c.offset + c.n + pad);
  const scales = Float32Array.from(
    { length: 2 * allBlocks },
    (_, i) => rng.uniform(0.01, 1) * (i % 2 ? 0.1 : 1),
  );
  if (blocks > 1) {
    // The case's second block: zero state and zero gradients, so it stays all zero.
    grads.fill(0, c.offset + 256, c.offset + Math.min(512, c.n));
    scales.fill(0, 2 * (c.block + 1), 2 * (c.block + 2));
  }
  const word = () => rng.int(256) | (rng.int(256) << 8) | (rng.int(256) << 16) | (rng.int(256) << 24);
  return {
    params: randn(c.offset + c.n + pad),
    grads,
    mCodes: Int32Array.from({ length: 64 * allBlocks }, word),
    vCodes: Int32Array.from({ length: 64 * allBlocks }, word),
    scales,
  };
}

async function runAdamw8bit(be: Backend, c: Adamw8bitCase, inputs: ReturnType<typeof adamw8bitInputs>) {
  const blocks = Math.ceil(c.n / 256);
  const [p, g, s] = [inputs.params, inputs.grads, inputs.scales].map((data) => {
    const buffer = be.alloc(data.length);
    be.write(buffer, data);
    return buffer;
  });
  const [mc, vc] = [inputs.mCodes, inputs.vCodes].map((data) => {
    const buffer = be.allocIndices(data.length);
    be.writeIndices(buffer, data);
    return buffer;
  });
  const codes = (x: IndexBuffer) => be.viewIndices(x, 64 * c.block, 64 * blocks);
  be.adamw8bit(
    be.view(p, c.offset, c.n),
    be.view(g, c.offset, c.n),
    codes(mc),
    codes(vc),
    be.view(s, 2 * c.block, 2 * blocks),
    c.options,
  );
  const out = {
    params: await be.read(p),
    scales: await be.read(s),
    mCodes: await be.readIndices(mc),
    vCodes: await be.readIndices(vc),
  };
  for (const buffer of [p, g, s, mc, vc]) be.free(buffer);
  return out;
}

/** Bytes of packed codes (m codes as signed values). */
function codeBytes(words: Int32Array, signed: boolean): number[] {
  const bytes = [...new Uint8Array(Int32Array.from(words).buffer)]; // little-endian, as the contract packs them
  return signed ? bytes.map((b) => (b >= 128 ? b - 256 : b)) : bytes;
}

/**
 * adamw8bit on `backend` against the cpu reference: parameters and scales within 1e-5, codes
 * equal but for rounding ties (at most one code apart, at most 1% of them), the rest untouched.
 */
async function expectSameAdamw8bit(backend: Backend, reference: Backend): Promise<void> {
  for (const c of ADAMW8_CASES) {
    const inputs = adamw8bitInputs(c);
    const want = await runAdamw8bit(reference, c, inputs), got = await runAdamw8bit(backend, c, inputs);
    const tag = `n ${c.n} at ${c.offset}`;
    for (const name of ["params", "scales"] as const) {
      const error = maxRelativeError(got[name], want[name]);
      assert.ok(error <= 1e-5, `${tag}: ${name}: max relative error ${error.toExponential(2)}`);
    }
    let ties = 0;
    for (const [name, signed] of [["mCodes", true], ["vCodes", false]] as const) {
      const a = codeBytes(got[name], signed), b = codeBytes(want[name], signed);
      for (let i = 0; i < a.length; i++) {
        assert.ok(Math.abs(a[i] - b[i]) <= 1, `${tag}: ${name} byte ${i}: ${a[i]} vs ${b[i]}`);
        if (a[i] !== b[i]) ties++;
      }
    }
    assert.ok(ties <= Math.max(1, 0.01 * 2 * c.n), `${tag}: ${ties} codes differ in ${2 * c.n}`);
  }
}

/**
 * Mixture-of-experts op cases, for backends with MoeOps. Each runs the ops in a model's order
 * (route, gather, scatter, and the backwards in reverse), so the index outputs (choice, slot,
 * slotRows) are checked through the floats they select: xe, out, dye, dgates, dlogits, dx.
 * The logits hold exact ties (the lower expert must come first) and the last expert is rarely
 * picked (empty rows); with T·k > E·C some choices must be dropped.
 */
function moeCases(): Record<string, OpCase> {
  const cases: Record<string, OpCase> = {};
  // [T, E, k, C, D]: drops; drops over more than one 1024-choice chunk; a decode batch; one expert
  const shapes = [[37, 5, 2, 9, 13], [700, 7, 2, 150, 5], [3, 3, 1, 3, 6], [29, 1, 1, 20, 7]];
  for (const [T, E, k, C, D] of shapes) {
    const logits = randn(T * E, 2); // (T, E)
    for (let t = 0; t < T; t++) {
      const row = logits.subarray(t * E, (t + 1) * E);
      // Most rows favour expert 0: routing is never balanced, so the aux gradient is never 0.
      if (E > 1 && t % 3 !== 2) row[0] = Math.max(...row) + 1;
      if (E > 2 && t % 10 !== 0) row[E - 1] -= 6;
      if (E > 2 && t % 7 === 3) row[0] = row[2] = Math.max(...row) + 0.5; // tie for the top
      if (E > 2 && t % 7 === 4) row[1] = row[2];
    }
    const dims = { rows: T, experts: E, topK: k, capacity: C, dim: D };
    cases[`moe route, gather, scatter and their backwards (T=${T}, E=${E}, k=${k}, C=${C})`] = {
      floats: {
        logits,
        gates: randn(T * k),
        probs: randn(T * E),
        stats: randn(2),
        x: randn(T * D),
        xe: randn(E * C * D),
        ye: randn(E * C * D),
        out: randn(T * D),
        dout: randn(T * D),
        dye: randn(E * C * D),
        dgates: randn(T * k),
        dlogits: randn(T * E),
        dxe: randn(E * C * D),
        dx: randn(T * D),
      },
      indices: {
        choice: new Int32Array(T * k).fill(7),
        slot: new Int32Array(T * k).fill(7),
        slotRows: new Int32Array(E * C).fill(7),
      },
      outputs: ["gates", "probs", "stats", "xe", "out", "dye", "dgates", "dlogits", "dx"],
      run: (be, f, i) => {
        const ops = be.moe!;
        ops.route(f.gates, i.choice, i.slot, i.slotRows, f.probs, f.stats, f.logits, dims);
        ops.gather(f.xe, f.x, i.slotRows, dims);
        ops.scatter(f.out, f.ye, f.gates, i.slot, dims);
        ops.scatterBackward(f.dye, f.dgates, f.dout, f.ye, f.gates, i.slot, dims);
        ops.routeBackward(f.dlogits, f.dgates, f.gates, i.choice, f.probs, 0.3, dims);
        ops.gatherBackward(f.dx, f.dxe, i.slotRows, dims);
      },
    };
  }
  {
    const n = 1_001;
    cases["moe swiglu and its backward"] = {
      floats: { act: randn(n), h1: randn(n, 3), h3: randn(n), dact: randn(n), dh1: randn(n), dh3: randn(n) },
      outputs: ["act", "dh1", "dh3"],
      run: (be, f) => {
        be.moe!.swiglu(f.act, f.h1, f.h3, n);
        be.moe!.swigluBackward(f.dh1, f.dh3, f.dact, f.h1, f.h3, n);
      },
    };
  }
  return cases;
}

/** Tiny model config for the end-to-end checks (odd sizes, both scans, biases). */
const E2E_CONFIGS = [
  new MambaConfig({ dim: 24, depth: 2, d_state: 5, d_conv: 4, pscan: true }),
  new MambaConfig({ dim: 13, depth: 2, d_state: 3, d_conv: 3, dt_rank: 2, bias: true, pscan: false }),
];

/** A BlackMamba (Mamba, MoE, Mamba, MoE; 4 experts, top 2), for backends with MoE ops. */
const MOE_OPTIONS = {
  dim: 12,
  depth: 4,
  d_state: 4,
  d_conv: 3,
  dt_rank: 2,
  moe: { experts: 4, top_k: 2, every: 2, hidden: 10, aux_loss_coef: 0.1, capacity_factor: 2 },
};
/** Capacity factor 2: nothing is dropped, so decoding equals the forward pass. */
const MOE_E2E_CONFIGS = [new MambaConfig(MOE_OPTIONS)];
/** Capacity factor 0.75: some choices are dropped in training. */
const MOE_DROPPING = new MambaConfig({ ...MOE_OPTIONS, moe: { ...MOE_OPTIONS.moe, capacity_factor: 0.75 } });

function batch(B: number, L: number, seed: number): { inputs: number[]; targets: number[] } {
  const r = new Random(seed);
  const text = Array.from({ length: B * (L + 1) }, () => 97 + r.int(26));
  const inputs: number[] = [], targets: number[] = [];
  for (let b = 0; b < B; b++) {
    inputs.push(...text.slice(b * (L + 1), b * (L + 1) + L));
    targets.push(...text.slice(b * (L + 1) + 1, (b + 1) * (L + 1)));
  }
  return { inputs, targets };
}

/** Losses of `steps` AdamW steps (moments of `bits`) on a fixed batch. */
async function trainLosses(model: MambaByte, steps: number, bits: OptimizerBits = 32): Promise<number[]> {
  const optimizer = new AdamW(model.backend, model.table, { ...ADAMW_DEFAULTS, bits });
  const { inputs, targets } = batch(3, 19, 9);
  const losses: number[] = [];
  for (let step = 1; step <= steps; step++) {
    model.zeroGrad();
    losses.push((await model.lossAndBackward(inputs, targets, [3, 19])).loss);
    optimizer.step(model.params, model.grads, 3e-3, 1);
  }
  optimizer.free();
  return losses;
}

/**
 * Logits, loss and every parameter's gradient of `config` on `backend` against the cpu
 * reference; returns both losses (with the MoE statistics where the config has MoE blocks).
 */
async function expectSameGradients(
  backend: Backend,
  reference: Backend,
  config: MambaConfig,
  seed: number,
): Promise<{ loss: Loss; refLoss: Loss }> {
  const { inputs, targets } = batch(2, 23, seed);
  const ours = new MambaByte(config, { backend, seed: 5 });
  const ref = new MambaByte(config, { backend: reference, seed: 5 });
  const logits = await ours.forward(inputs, [2, 23]);
  const expected = await ref.forward(inputs, [2, 23]);
  assert.ok(maxRelativeError(logits.data, expected.data) <= 1e-4, "logits differ");
  ours.zeroGrad();
  ref.zeroGrad();
  const loss = await ours.lossAndBackward(inputs, targets, [2, 23]);
  const refLoss = await ref.lossAndBackward(inputs, targets, [2, 23]);
  assert.ok(
    Math.abs(loss.loss - refLoss.loss) <= 1e-4 * refLoss.loss,
    `loss ${loss.loss} vs ${refLoss.loss}`,
  );
  const grads = await backend.read(ours.grads), refGrads = await reference.read(ref.grads);
  for (const spec of ours.table.specs) {
    const slice = (x: FloatArray) => x.subarray(spec.offset, spec.offset + spec.size);
    const error = maxRelativeError(slice(grads), slice(refGrads));
    assert.ok(error <= 1e-3, `gradient of ${spec.name}: max relative error ${error.toExponential(2)}`);
  }
  return { loss, refLoss };
}

/**
 * Registers the suite for one backend. `create` returns null when the backend is unavailable.
 */
export async function conformanceSuite(
  label: string,
  create: () => Promise<Backend | null>,
  options: { requiredInCI?: boolean } = {},
): Promise<void> {
  const backend = await create();
  const required = options.requiredInCI && Deno.env.get("CI") !== undefined;
  if (!backend) {
    Deno.test({
      name: `${label}: backend available`,
      ignore: !required,
      fn: () => assert.fail(`the ${label} backend is not available on this machine, and CI requires it`),
    });
    return;
  }
  console.log(`${label} backend: ${backend.description}`);
  const reference = new CpuBackend();
  const moe = backend.moe !== undefined;
  const half = backend.packHalf !== undefined && backend.setMatmulPrecision !== undefined;
  const cases = {
    ...opCases(),
    ...(moe ? moeCases() : {}),
    ...int8Cases(),
    ...convStepCases(),
    ...gemvCases(),
    ...(half ? halfCases() : {}),
  };
  for (const [name, c] of Object.entries(cases)) {
    Deno.test(`${label}: ${name} matches the cpu reference`, () => expectSame(backend, reference, c));
  }
  Deno.test(
    `${label}: adamw8bit matches the cpu reference (codes apart only at rounding ties)`,
    () => expectSameAdamw8bit(backend, reference),
  );
  Deno.test(`${label}: readIndices and viewIndices return the words written, packed codes included`, async () => {
    const words = Int32Array.of(0, 1, -1, 0x7fffffff, -0x80000000, 0x01ff80fe, 255, 256);
    const buffer = backend.allocIndices(words.length);
    backend.writeIndices(buffer, words);
    assert.deepEqual(await backend.readIndices(buffer), words);
    assert.deepEqual(await backend.readIndices(backend.viewIndices(buffer, 3, 4)), words.slice(3, 7));
    backend.free(buffer);
  });
  if (moe) {
    Deno.test(`${label}: BlackMamba dropping tokens: gradients, aux loss and drops match the cpu reference`, async () => {
      const { loss, refLoss } = await expectSameGradients(backend, reference, MOE_DROPPING, 99);
      assert.ok(refLoss.dropped! > 0, "the test should drop some choices");
      assert.equal(loss.dropped, refLoss.dropped);
      assert.ok(
        Math.abs(loss.aux! - refLoss.aux!) <= 1e-4 * refLoss.aux!,
        `aux ${loss.aux} vs ${refLoss.aux}`,
      );
    });
  }
  [...E2E_CONFIGS, ...(moe ? MOE_E2E_CONFIGS : [])].forEach((config, index) => {
    const { inputs } = batch(2, 23, 100 + index);
    const kind = config.moe ? `, moe ${config.moe.experts} experts top ${config.moe.top_k}` : "";
    const tag = `model ${index} (dim ${config.dim}, pscan ${config.pscan}, bias ${config.bias}${kind})`;
    Deno.test(`${label}: ${tag}: logits, loss and gradients match the cpu reference`, async () => {
      await expectSameGradients(backend, reference, config, 100 + index);
    });
    Deno.test(`${label}: ${tag}: 20 AdamW steps give the cpu reference's losses`, async () => {
      const ours = await trainLosses(new MambaByte(config, { backend, seed: 6 }), 20);
      const ref = await trainLosses(new MambaByte(config, { backend: reference, seed: 6 }), 20);
      assert.ok(ref[19] < ref[0] - 0.1, `training should lower the loss: ${ref[0]} → ${ref[19]}`);
      for (let s = 0; s < 20; s++) {
        assert.ok(Math.abs(ours[s] - ref[s]) <= 1e-4 * ref[s], `step ${s}: ${ours[s]} vs ${ref[s]}`);
      }
    });
    Deno.test(`${label}: ${tag}: 20 steps with 8-bit moments track the cpu reference's losses`, async () => {
      // Codes may differ at rounding ties, so the losses agree to 1e-3 rather than 1e-4.
      const ours = await trainLosses(new MambaByte(config, { backend, seed: 6 }), 20, 8);
      const ref = await trainLosses(new MambaByte(config, { backend: reference, seed: 6 }), 20, 8);
      assert.ok(ref[19] < ref[0] - 0.1, `training should lower the loss: ${ref[0]} → ${ref[19]}`);
      for (let s = 0; s < 20; s++) {
        assert.ok(Math.abs(ours[s] - ref[s]) <= 1e-3 * ref[s], `step ${s}: ${ours[s]} vs ${ref[s]}`);
      }
    });

    Deno.test(`${label}: ${tag}: int8 weights: logits match the cpu reference's, decoding equals the forward pass`, async () => {
      const model = new MambaByte(config, { backend, seed: 8 }),
        ref = new MambaByte(config, { backend: reference, seed: 8 });
      const fp32 = await model.forward(inputs, [2, 23]);
      await model.quantize("int8");
      await ref.quantize("int8");
      const logits = await model.forward(inputs, [2, 23]);
      const expected = await ref.forward(inputs, [2, 23]);
      assert.ok(maxRelativeError(logits.data, expected.data) <= 1e-4, "int8 logits differ from the cpu's");
      assert.ok(maxRelativeError(logits.data, fp32.data) > 1e-5, "the int8 weights are in use");
      await assertStepsMatch(model, inputs, logits);
      model.dispose();
    });
    Deno.test(`${label}: ${tag}: decoding byte by byte equals one forward pass`, async () => {
      const model = new MambaByte(config, { backend, seed: 8 });
      const logits = await model.forward(inputs, [2, 23]);
      await assertStepsMatch(model, inputs, logits);
    });
  });
}
