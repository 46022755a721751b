/**
 * The CPU backend's worker threads: every op they run gives the same bits with 1, 2 or 7
 * threads (float32 and float64), and so do a few training steps; a thrown kernel error comes
 * back as an Error; a program that never disposes its backend still exits.
 */
import assert from "node:assert/strict";
import type { DeviceBuffer, FloatArray } from "../lib/backend.ts";
import { CpuBackend } from "../lib/backends/cpu.ts";
import { CpuThreadPool } from "../lib/backends/cpu_threads.ts";
import { MambaConfig } from "../lib/config.ts";
import { MambaByte } from "../lib/model.ts";
import { AdamW } from "../lib/optim.ts";
import { Random } from "../lib/random.ts";
import { scanAndBackward } from "./backend_conformance.ts";

const PRECISIONS = ["f32", "f64"] as const;
const THREADS = [2, 7];

/** The first index where the arrays' bits differ, or -1. */
function firstDifference(a: FloatArray, b: FloatArray): number {
  assert.equal(a.length, b.length, "lengths differ");
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return i;
  return -1;
}

function assertSameBits(actual: FloatArray, expected: FloatArray, what: string): void {
  const i = firstDifference(actual, expected);
  assert.equal(i, -1, `${what}[${i}]: ${actual[i]} with threads, ${expected[i]} without`);
}

/** An op case: named random inputs (outputs start random too), the op, the buffers to compare. */
interface Case {
  sizes: Record<string, number>;
  /** Ops that `run` calls (each must be large enough for the threads). */
  ops?: number;
  run: (be: CpuBackend, f: Record<string, DeviceBuffer>) => void;
}

function cases(): Record<string, Case> {
  const all: Record<string, Case> = {};
  for (const transA of [false, true]) {
    for (const transB of [false, true]) {
      for (const accumulate of [false, true]) {
        const [m, n, k] = [131, 77, 69];
        all[`matmul transA=${transA} transB=${transB} accumulate=${accumulate}`] = {
          sizes: { a: m * k, b: k * n, c: m * n },
          run: (be, f) => be.matmul(f.c, f.a, f.b, m, n, k, { transA, transB, accumulate }),
        };
      }
    }
  }
  {
    // Few rows (the dot-product form) and strided views of A and C.
    const [m, n, k] = [9, 301, 203];
    all["matmul transB with 9 rows, row strides and views"] = {
      sizes: { a: m * 210, b: n * k, c: m * 310 },
      run: (be, f) =>
        be.matmul(be.view(f.c, 5, m * 310 - 5), be.view(f.a, 3, m * 210 - 3), f.b, m, n, k, {
          transB: true,
          accumulate: true,
          lda: 210,
          ldc: 310,
        }),
    };
  }
  {
    // One row (a decode step): the threads split the columns of C.
    const [m, n, k] = [1, 1501, 400];
    all["matmul transB with one row"] = {
      sizes: { a: m * k, b: n * k, c: m * n },
      run: (be, f) => be.matmul(f.c, f.a, f.b, m, n, k, { transB: true }),
    };
  }
  {
    const [m, n, k] = [75, 64, 130];
    all["matmul transA with strides (a weight gradient)"] = {
      sizes: { a: k * 80, b: k * 70, c: m * 66 },
      run: (be, f) =>
        be.matmul(f.c, f.a, f.b, m, n, k, { transA: true, accumulate: true, lda: 80, ldb: 70, ldc: 66 }),
    };
  }
  for (const parallel of [true, false]) {
    const [B, L, ED, N, R] = [3, 131, 45, 13, 3];
    const S = R + 2 * N, zStride = 2 * ED, rows = B * L;
    all[`selectiveScan and its backward (parallel ${parallel})`] = {
      ops: 2,
      sizes: {
        y: rows * ED,
        u: rows * ED,
        delta: rows * ED,
        dtBias: ED,
        aLog: ED * N,
        bc: rows * S,
        d: ED,
        xz: rows * zStride,
        dy: rows * ED,
        du: rows * ED,
        ddelta: rows * ED,
        ddtBias: ED,
        daLog: ED * N,
        dbc: rows * S,
        dd: ED,
        dxz: rows * zStride,
      },
      run: (be, f) =>
        scanAndBackward(be, f, { batch: B, length: L, channels: ED, state: N, rank: R, parallel }),
    };
  }
  return all;
}

/** Every buffer of the case after running it on a backend with `threads`. */
async function runCase(c: Case, precision: "f32" | "f64", threads: number) {
  const be = new CpuBackend({ precision, threads });
  const rng = new Random(7);
  const f: Record<string, DeviceBuffer> = {};
  for (const [name, size] of Object.entries(c.sizes)) {
    f[name] = be.alloc(size);
    be.write(f[name], Array.from({ length: size }, () => rng.normal()));
  }
  c.run(be, f);
  const out: Record<string, FloatArray> = {};
  for (const name of Object.keys(f)) out[name] = await be.read(f[name]);
  const threadedOps = be.threadedOps;
  be.dispose();
  return { out, threadedOps };
}

for (const precision of PRECISIONS) {
  for (const [name, c] of Object.entries(cases())) {
    Deno.test(`${name}, ${precision}: the same bits with 1, ${THREADS.join(" and ")} threads`, async () => {
      const { out: expected, threadedOps: none } = await runCase(c, precision, 1);
      assert.equal(none, 0);
      for (const threads of THREADS) {
        const { out, threadedOps } = await runCase(c, precision, threads);
        assert.equal(threadedOps, c.ops ?? 1, "an op ran inline: too small to test the threads");
        for (const key of Object.keys(expected)) {
          assertSameBits(out[key], expected[key], `${key} (${threads} threads)`);
        }
      }
    });
  }
}

/** Losses and parameters after a few AdamW steps of a small model on a backend with `threads`. */
async function train(precision: "f32" | "f64", threads: number, pscan: boolean) {
  const backend = new CpuBackend({ precision, threads });
  const config = new MambaConfig({ dim: 32, depth: 2, d_state: 8, pscan });
  const model = new MambaByte(config, { backend, seed: 3 });
  const optimizer = new AdamW(backend, model.table);
  const rng = new Random(5);
  const [B, L] = [4, 96];
  const losses: number[] = [];
  for (let step = 0; step < 3; step++) {
    const inputs = Array.from({ length: B * L }, () => rng.int(256));
    const targets = Array.from({ length: B * L }, () => rng.int(256));
    model.zeroGrad();
    losses.push((await model.lossAndBackward(inputs, targets, [B, L])).loss);
    optimizer.step(model.params, model.grads, 1e-2, 1);
  }
  const result = {
    losses: Float64Array.from(losses),
    params: await backend.read(model.params),
    grads: await backend.read(model.grads),
    threadedOps: backend.threadedOps,
  };
  optimizer.free();
  model.dispose();
  backend.dispose();
  return result;
}

for (const precision of PRECISIONS) {
  for (const pscan of [true, false]) {
    Deno.test(`3 training steps, ${precision}, pscan ${pscan}: the same bits with 1 and 2 threads`, async () => {
      const expected = await train(precision, 1, pscan);
      const actual = await train(precision, 2, pscan);
      assert.ok(actual.threadedOps > 0, "nothing ran on the threads");
      assertSameBits(actual.losses, expected.losses, "losses");
      assertSameBits(actual.grads, expected.grads, "grads");
      assertSameBits(actual.params, expected.params, "params");
    });
  }
}

Deno.test("backends share one pool: acquire hands out the same workers, the last release ends them", () => {
  const first = CpuThreadPool.acquire(3), second = CpuThreadPool.acquire(3);
  assert.ok(first, "no worker threads here");
  assert.equal(second, first, "a second backend of as many threads gets the same pool");
  first.release();
  assert.equal(CpuThreadPool.acquire(3), first, "one release leaves the pool to the other holder");
  first.release();
  first.release();
  const fresh = CpuThreadPool.acquire(3);
  assert.ok(fresh && fresh !== first, "after the last release, a new pool is started");
  fresh.release();
});

Deno.test("a backend disposed while another one uses the shared workers leaves them running", async () => {
  const [m, n, k] = [131, 77, 69];
  const product = (be: CpuBackend): Promise<FloatArray> => {
    const rng = new Random(8);
    const [a, b, c] = [m * k, k * n, m * n].map((size) => {
      const buffer = be.alloc(size);
      be.write(buffer, Float32Array.from({ length: size }, () => rng.normal()));
      return buffer;
    });
    be.matmul(c, a, b, m, n, k);
    return be.read(c);
  };
  const kept = new CpuBackend({ threads: 2 }), disposed = new CpuBackend({ threads: 2 });
  try {
    await product(disposed);
    await product(kept);
    disposed.dispose();
    const before = kept.threadedOps;
    const actual = await product(kept);
    assert.equal(kept.threadedOps, before + 1, "the product ran on the threads");
    assertSameBits(actual, await product(new CpuBackend({ threads: 1 })), "c");
  } finally {
    kept.dispose();
  }
});

Deno.test("an error thrown in a worker thread is thrown on the calling thread, and the pool goes on", () => {
  const pool = CpuThreadPool.create(2);
  assert.ok(pool, "no worker threads here");
  try {
    const broken = { c: null } as unknown as Parameters<typeof pool.run<"matmulRows">>[1];
    // The calling thread's range is empty: only the worker runs, and fails.
    assert.throws(() => pool.runRanges("matmulRows", broken, [[0, 0], [0, 4]]), /cpu worker thread: .*null/);
    const c = new Float32Array(new SharedArrayBuffer(16 * 4));
    const a = new Float32Array(new SharedArrayBuffer(16 * 4)).fill(2);
    const b = new Float32Array(new SharedArrayBuffer(16 * 4)).fill(3);
    const args = {
      c,
      a,
      b,
      m: 4,
      n: 4,
      k: 4,
      transA: false,
      accumulate: false,
      lda: 4,
      ldb: 4,
      ldc: 4,
    };
    pool.runRanges("matmulRows", args, [[0, 1], [1, 4]]);
    assert.deepEqual(Array.from(c), new Array(16).fill(24));
  } finally {
    pool.dispose();
  }
});

Deno.test("one thread: no workers, no shared memory; the description says the threads", async () => {
  const one = new CpuBackend({ threads: 1 });
  assert.equal(one.description, "cpu (TypeScript, f32, 1 thread)");
  const c = one.alloc(256 * 256), a = one.alloc(256 * 256);
  one.matmul(c, a, a, 256, 256, 256);
  assert.equal(one.threadedOps, 0);
  assert.equal(
    new CpuBackend({ threads: 3, precision: "f64" }).description,
    "cpu (TypeScript, f64, 3 threads)",
  );
  assert.throws(() => new CpuBackend({ threads: 0 }), /threads must be a positive integer/);
  assert.equal((await one.read(c)).length, 256 * 256);
});

/** Runs `code` in a fresh Deno process; its exit code, output and seconds. */
async function runScript(code: string, env: Record<string, string> = {}) {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/main.ts`, code);
    const start = performance.now();
    const { code: exit, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--no-lock", "--no-config", `${dir}/main.ts`],
      env,
      signal: AbortSignal.timeout(60_000),
    }).output();
    const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
    return { exit, stdout: text(stdout), stderr: text(stderr), seconds: (performance.now() - start) / 1000 };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const cpuModule = new URL("../lib/backends/cpu.ts", import.meta.url).href;

Deno.test("a program that never disposes its threaded backend exits when it is done", async () => {
  const { exit, stdout, stderr, seconds } = await runScript(`
    import { CpuBackend } from "${cpuModule}";
    const be = new CpuBackend({ threads: 3 });
    const c = be.alloc(300 * 300), a = be.alloc(300 * 300);
    be.matmul(c, a, a, 300, 300, 300);
    console.log(be.threadedOps);
  `);
  assert.equal(exit, 0, stderr);
  assert.equal(stdout.trim(), "1", "the matmul did not run on the threads");
  assert.ok(seconds < 20, `took ${seconds.toFixed(1)} s to exit`);
});

Deno.test("MAMBABYTE_CPU_THREADS sets the default thread count, and must be a positive integer", async () => {
  const script = `
    import { CpuBackend } from "${cpuModule}";
    console.log(new CpuBackend().description);
  `;
  const three = await runScript(script, { MAMBABYTE_CPU_THREADS: "3" });
  assert.equal(three.stdout.trim(), "cpu (TypeScript, f32, 3 threads)", three.stderr);
  const bad = await runScript(script, { MAMBABYTE_CPU_THREADS: "many" });
  assert.notEqual(bad.exit, 0);
  assert.match(bad.stderr, /MAMBABYTE_CPU_THREADS must be a positive integer, not "many"/);
});
