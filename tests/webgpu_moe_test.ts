/**
 * The WebGPU MoE kernels' own machinery beyond the conformance suite's cases, against the CPU
 * reference: more than 256 experts (gather_backward looks up 256 experts' rows at a time) and
 * more than 65535 choices (scatter_backward's workgroups spread over a 2-D grid).
 */
import assert from "node:assert/strict";
import type { Backend, DeviceBuffer, FloatArray, IndexBuffer, MoeDims } from "../lib/backend.ts";
import { CpuBackend } from "../lib/backends/cpu.ts";
import { createWebGpuBackend } from "../lib/backends/webgpu.ts";
import { Random } from "../lib/random.ts";
import { maxRelativeError } from "./backend_conformance.ts";

const gpu = await createWebGpuBackend();
const ignore = gpu === null;

/** Route, gather, scatter and their backwards on one backend; returns every float output. */
async function runOps(be: Backend, dims: MoeDims, seed: number): Promise<Record<string, FloatArray>> {
  const { rows: T, experts: E, topK: k, capacity: C, dim: D } = dims;
  const rng = new Random(seed);
  const floats = (n: number, scale = 1): DeviceBuffer => {
    const buffer = be.alloc(n);
    be.write(buffer, Float32Array.from({ length: n }, () => scale * rng.normal()));
    return buffer;
  };
  const indices = (n: number): IndexBuffer => be.allocIndices(n);
  const logits = floats(T * E, 2), x = floats(T * D), ye = floats(E * C * D), out = floats(T * D);
  const dout = floats(T * D), dxe = floats(E * C * D), dx = floats(T * D);
  const gates = be.alloc(T * k), probs = be.alloc(T * E), stats = be.alloc(2), xe = be.alloc(E * C * D);
  const dye = be.alloc(E * C * D), dgates = be.alloc(T * k), dlogits = be.alloc(T * E);
  const choice = indices(T * k), slot = indices(T * k), slotRows = indices(E * C);
  const ops = be.moe!;
  ops.route(gates, choice, slot, slotRows, probs, stats, logits, dims);
  ops.gather(xe, x, slotRows, dims);
  ops.scatter(out, ye, gates, slot, dims);
  ops.scatterBackward(dye, dgates, dout, ye, gates, slot, dims);
  ops.routeBackward(dlogits, dgates, gates, choice, probs, 0.3, dims);
  ops.gatherBackward(dx, dxe, slotRows, dims);
  const result: Record<string, FloatArray> = {};
  for (const [name, buffer] of Object.entries({ gates, probs, stats, xe, out, dye, dgates, dlogits, dx })) {
    result[name] = await be.read(buffer);
  }
  return result;
}

async function expectSameAsCpu(dims: MoeDims, seed: number): Promise<Record<string, FloatArray>> {
  const expected = await runOps(new CpuBackend(), dims, seed);
  const actual = await runOps(gpu!, dims, seed);
  for (const name of Object.keys(expected)) {
    const error = maxRelativeError(actual[name], expected[name]);
    assert.ok(error <= 1e-4, `${name}: max relative error ${error.toExponential(2)}`);
  }
  return expected;
}

Deno.test({ name: "webgpu moe: 300 experts, top 3, some dropped", ignore }, async () => {
  const expected = await expectSameAsCpu({ rows: 200, experts: 300, topK: 3, capacity: 2, dim: 5 }, 1);
  assert.ok(expected.stats[1] > 0, "the case should drop some choices");
});

Deno.test({ name: "webgpu moe: 70000 choices (a 2-D grid of workgroups)", ignore }, async () => {
  await expectSameAsCpu({ rows: 35_000, experts: 3, topK: 2, capacity: 20_000, dim: 2 }, 2);
});
