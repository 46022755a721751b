/**
 * The selective scan alone, for `deno task bench`: forward and backward time at a training
 * shape (the layer's B, L, ED = 2·D, d_state 16, dt_rank ⌈D / 16⌉, in the model's strided
 * layout), the forward's bandwidth over the bytes it must move (u, δ and z read, y written), and
 * a device copy of one (B·L, ED) tensor on the same backend as the yardstick (read + write). On
 * WebGPU the times are the GPU's own (timestamps).
 */
import type { Backend, DeviceBuffer } from "../lib/backend.ts";
import { WebGpuBackend } from "../lib/backends/webgpu.ts";
import { Random } from "../lib/random.ts";
import { timeIt } from "./time_it.ts";

export interface ScanShape {
  batch: number;
  length: number;
  dim: number;
}

export interface ScanTimes {
  forwardSeconds: number;
  backwardSeconds: number;
  /** Bytes of u, δ, z and y over the forward's time. */
  forwardBytesPerSec: number;
  /** 2 · bytes of one (B·L, ED) tensor over the time of copying it. */
  copyBytesPerSec: number;
}

const STATE = 16;
/** Seconds of queued calls per timed batch on a GPU. */
const REPEAT_SECONDS = 0.25;
/** Calls timed by GPU timestamps on WebGPU, after this many seconds of them. */
const GPU_TIMED_CALLS = 20;
const WARM_UP_SECONDS = 1;

export async function benchScan(backend: Backend, shape: ScanShape): Promise<ScanTimes> {
  const ED = 2 * shape.dim, N = STATE, R = Math.ceil(shape.dim / 16), S = R + 2 * N;
  const rows = shape.batch * shape.length, rng = new Random(4);
  const owned: DeviceBuffer[] = [];
  const random = (n: number, scale: number, shift = 0) => {
    const buffer = backend.alloc(n);
    backend.write(buffer, Float32Array.from({ length: n }, () => shift + scale * rng.normal()));
    owned.push(buffer);
    return buffer;
  };
  const u = random(rows * ED, 1), delta = random(rows * ED, 1), dy = random(rows * ED, 1);
  const xz = random(rows * 2 * ED, 1), bc = random(rows * S, 1); // (B·L, 2ED) and (B·L, R + 2N)
  const dtBias = random(ED, 0.5, -2), aLog = random(ED * N, 0.5, 1), d = random(ED, 1);
  const [y, du, ddelta, dxz, dbc] = [rows * ED, rows * ED, rows * ED, rows * 2 * ED, rows * S].map((n) =>
    random(n, 0)
  );
  const [ddtBias, daLog, dd] = [ED, ED * N, ED].map((n) => random(n, 0));
  const strided = (buffer: DeviceBuffer, offset: number, total: number) =>
    backend.view(buffer, offset, total - offset);
  const b = strided(bc, R, rows * S - N), c = strided(bc, R + N, rows * S);
  const db = strided(dbc, R, rows * S - N), dc = strided(dbc, R + N, rows * S);
  const z = strided(xz, ED, rows * 2 * ED), dz = strided(dxz, ED, rows * 2 * ED);
  const dims = {
    batch: shape.batch,
    length: shape.length,
    channels: ED,
    state: N,
    bcStride: S,
    zStride: 2 * ED,
    parallel: true,
  };
  const probe = backend.view(y, 0, 1);
  // WebGPU: the GPU time of the op's kernels (timestamps, where the adapter has them), since a
  // read-back's own wait (about 12 ms in Deno) would swamp them, after a second of calls
  // (pipelines, scratch, and the GPU's clocks, which rise only under sustained work). Elsewhere
  // calls are queued REPEAT_SECONDS' worth at a time between reads, so that the read is a small
  // part of what is timed.
  const timed = async (op: () => void) => {
    if (backend instanceof WebGpuBackend && backend.canTimeKernels) {
      await timeIt(
        async () => {
          for (let r = 0; r < GPU_TIMED_CALLS; r++) op();
          await backend.read(probe);
        },
        WARM_UP_SECONDS,
        1,
      );
      backend.startKernelTiming();
      for (let r = 0; r < GPU_TIMED_CALLS; r++) op();
      const kernels = await backend.stopKernelTiming();
      return kernels.reduce((sum, k) => sum + k.seconds, 0) / GPU_TIMED_CALLS;
    }
    const batch = (repeats: number, minSeconds: number, minRuns: number) =>
      timeIt(
        async () => {
          for (let r = 0; r < repeats; r++) op();
          await backend.read(probe); // waits for the device
        },
        minSeconds,
        minRuns,
      );
    const once = await batch(1, 0, 1);
    const repeats = backend.device === "cpu"
      ? 1
      : Math.min(1000, Math.max(10, Math.ceil(REPEAT_SECONDS / once)));
    return await batch(repeats, 1, 2) / repeats;
  };
  const forwardSeconds = await timed(() =>
    backend.selectiveScan(y, u, delta, dtBias, aLog, b, c, d, z, dims)
  );
  const backwardSeconds = await timed(() =>
    backend.selectiveScanBackward(
      du,
      ddelta,
      ddtBias,
      daLog,
      db,
      dc,
      dd,
      dz,
      dy,
      u,
      delta,
      dtBias,
      aLog,
      b,
      c,
      d,
      z,
      dims,
    )
  );
  const copySeconds = await timed(() => backend.copy(y, du));
  for (const buffer of owned) backend.free(buffer);
  const tensorBytes = rows * ED * 4;
  return {
    forwardSeconds,
    backwardSeconds,
    forwardBytesPerSec: (4 * tensorBytes) / forwardSeconds,
    copyBytesPerSec: (2 * tensorBytes) / copySeconds,
  };
}
