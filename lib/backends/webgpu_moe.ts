/**
 * The mixture-of-experts ops (lib/backend.ts, MoeOps) on the WebGPU backend: dispatches of
 * kernels/moe.wgsl, which matches the CPU reference (lib/backends/cpu_moe.ts) and its tie rules.
 * Deterministic (no float atomics). gatherBackward expects `slotRows` as `route` writes it (each
 * expert's rows hold increasing positions, then -1s).
 */
import type { DeviceBuffer, IndexBuffer, MoeDims, MoeOps } from "../backend.ts";
import type { Dispatch, GpuView } from "./webgpu_runtime.ts";

/** Records one dispatch. */
type Run = (d: Dispatch) => void;
/** The backend's scratch: a view of at least `length` floats, reused by later ops. */
type Work = (length: number) => GpuView;
/** The GpuView behind a buffer of this backend (throws for another backend's buffer). */
type ViewOf = (buffer: DeviceBuffer | IndexBuffer) => GpuView;

/** Workgroups of 256 invocations for n elements. */
const per256 = (n: number): number => Math.ceil(n / 256);

/** ints 0..4 of the routing and gather / scatter kernels. */
const dimsInts = (d: MoeDims): number[] => [d.rows, d.experts, d.topK, d.capacity, d.dim];

/** Bindings 1..16 of kernels/moe.wgsl by name (the unused ones left undefined). */
interface MoeBindings {
  gates?: GpuView;
  choice?: GpuView;
  slot?: GpuView;
  slotRows?: GpuView;
  probs?: GpuView;
  stats?: GpuView;
  logits?: GpuView;
  work?: GpuView;
  dlogits?: GpuView;
  dgates?: GpuView;
  dst?: GpuView;
  src?: GpuView;
  grad?: GpuView;
  h1?: GpuView;
  h3?: GpuView;
  dh3?: GpuView;
}

const BINDING_ORDER: (keyof MoeBindings)[] = [
  "gates",
  "choice",
  "slot",
  "slotRows",
  "probs",
  "stats",
  "logits",
  "work",
  "dlogits",
  "dgates",
  "dst",
  "src",
  "grad",
  "h1",
  "h3",
  "dh3",
];

export class WebGpuMoeOps implements MoeOps {
  constructor(readonly run: Run, readonly work: Work, readonly viewOf: ViewOf) {}

  #moe(entry: string, b: MoeBindings, ints: number[], groups: number, floats: number[] = []): void {
    const bindings = BINDING_ORDER.map((name) => b[name]);
    this.run({ file: "moe", entry, bindings, ints, floats, groups });
  }

  route(
    gates: DeviceBuffer,
    choice: IndexBuffer,
    slot: IndexBuffer,
    slotRows: IndexBuffer,
    probs: DeviceBuffer,
    stats: DeviceBuffer,
    logits: DeviceBuffer,
    dims: MoeDims,
  ): void {
    const v = this.viewOf, ints = dimsInts(dims), E = dims.experts;
    const work = this.work(2 * E); // (2E): choices of each expert, then its mean prob
    this.#moe(
      "route_rows",
      { gates: v(gates), choice: v(choice), probs: v(probs), logits: v(logits) },
      ints,
      per256(dims.rows),
    );
    this.#moe(
      "route_dispatch",
      { choice: v(choice), slot: v(slot), slotRows: v(slotRows), probs: v(probs), work },
      ints,
      E,
    );
    this.#moe("route_stats", { stats: v(stats), work }, ints, 1);
  }

  routeBackward(
    dlogits: DeviceBuffer,
    dgates: DeviceBuffer,
    gates: DeviceBuffer,
    choice: IndexBuffer,
    probs: DeviceBuffer,
    auxScale: number,
    dims: MoeDims,
  ): void {
    const v = this.viewOf, { rows: T, experts: E, topK: k } = dims;
    const work = this.work(E); // (E): ∂(auxScale · aux)/∂probs[t, e]
    // ∂(auxScale · aux)/∂probs[t, e] = auxScale · E · (picked_e / (T·k)) / T
    const probScale = T > 0 ? (auxScale * E) / (T * k) / T : 0;
    const ints = dimsInts(dims), floats = [probScale];
    this.#moe("route_backward_counts", { choice: v(choice), work }, ints, E, floats);
    this.#moe(
      "route_backward_rows",
      { gates: v(gates), choice: v(choice), probs: v(probs), work, dlogits: v(dlogits), dgates: v(dgates) },
      ints,
      per256(T),
    );
  }

  gather(xe: DeviceBuffer, x: DeviceBuffer, slotRows: IndexBuffer, dims: MoeDims): void {
    const v = this.viewOf;
    this.#moe(
      "gather",
      { slotRows: v(slotRows), dst: v(xe), src: v(x) },
      dimsInts(dims),
      per256(dims.experts * dims.capacity * dims.dim),
    );
  }

  gatherBackward(dx: DeviceBuffer, dxe: DeviceBuffer, slotRows: IndexBuffer, dims: MoeDims): void {
    if (dims.capacity === 0) return;
    const v = this.viewOf;
    this.#moe(
      "gather_backward",
      { slotRows: v(slotRows), dst: v(dx), src: v(dxe) },
      dimsInts(dims),
      dims.rows,
    );
  }

  scatter(out: DeviceBuffer, ye: DeviceBuffer, gates: DeviceBuffer, slot: IndexBuffer, dims: MoeDims): void {
    const v = this.viewOf;
    this.#moe(
      "scatter",
      { gates: v(gates), slot: v(slot), dst: v(out), src: v(ye) },
      dimsInts(dims),
      per256(dims.rows * dims.dim),
    );
  }

  scatterBackward(
    dye: DeviceBuffer,
    dgates: DeviceBuffer,
    dout: DeviceBuffer,
    ye: DeviceBuffer,
    gates: DeviceBuffer,
    slot: IndexBuffer,
    dims: MoeDims,
  ): void {
    const v = this.viewOf, rows = v(dye), n = dims.experts * dims.capacity * dims.dim;
    this.run({ file: "copy", entry: "fill", bindings: [rows], ints: [n], floats: [0], groups: per256(n) });
    this.#moe(
      "scatter_backward",
      { gates: v(gates), slot: v(slot), dgates: v(dgates), dst: rows, src: v(ye), grad: v(dout) },
      dimsInts(dims),
      dims.rows * dims.topK,
    );
  }

  swiglu(act: DeviceBuffer, h1: DeviceBuffer, h3: DeviceBuffer, length: number): void {
    const v = this.viewOf;
    this.#moe("swiglu", { dst: v(act), h1: v(h1), h3: v(h3) }, [length], per256(length));
  }

  swigluBackward(
    dh1: DeviceBuffer,
    dh3: DeviceBuffer,
    dact: DeviceBuffer,
    h1: DeviceBuffer,
    h3: DeviceBuffer,
    length: number,
  ): void {
    const v = this.viewOf;
    this.#moe(
      "swiglu_backward",
      { dst: v(dh1), grad: v(dact), h1: v(h1), h3: v(h3), dh3: v(dh3) },
      [length],
      per256(length),
    );
  }
}
