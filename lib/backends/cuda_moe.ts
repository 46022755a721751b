/**
 * The mixture-of-experts ops (lib/backend.ts, MoeOps) on the CUDA backend: thin calls into
 * ffi/moe.cu, which matches the CPU reference (lib/backends/cpu_moe.ts) and its tie rules.
 * Deterministic (no float atomics); at most 1024 experts. gatherBackward expects `slotRows` as
 * `route` writes it (each expert's rows hold increasing positions, then -1s).
 */
import type { DeviceBuffer, IndexBuffer, MoeDims, MoeOps } from "../backend.ts";
import type { CudaLibrary } from "./cuda_ffi.ts";

/** The device address of a buffer or view. */
type Address = (buffer: DeviceBuffer | IndexBuffer) => bigint;
/** Throws an Error carrying the library's message when `status` is nonzero. */
type Check = (status: number, op: string) => void;

const dimsOf = (d: MoeDims): [number, number, number, number, number] => [
  d.rows,
  d.experts,
  d.topK,
  d.capacity,
  d.dim,
];

export class CudaMoeOps implements MoeOps {
  constructor(readonly lib: CudaLibrary, readonly address: Address, readonly check: Check) {}

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
    const a = this.address;
    this.check(
      this.lib.mb_moe_route(
        a(gates),
        a(choice),
        a(slot),
        a(slotRows),
        a(probs),
        a(stats),
        a(logits),
        ...dimsOf(dims),
      ),
      "moe route",
    );
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
    const a = this.address;
    this.check(
      this.lib.mb_moe_route_backward(
        a(dlogits),
        a(dgates),
        a(gates),
        a(choice),
        a(probs),
        auxScale,
        ...dimsOf(dims),
      ),
      "moe routeBackward",
    );
  }

  gather(xe: DeviceBuffer, x: DeviceBuffer, slotRows: IndexBuffer, dims: MoeDims): void {
    const a = this.address;
    this.check(this.lib.mb_moe_gather(a(xe), a(x), a(slotRows), ...dimsOf(dims)), "moe gather");
  }

  gatherBackward(dx: DeviceBuffer, dxe: DeviceBuffer, slotRows: IndexBuffer, dims: MoeDims): void {
    const a = this.address;
    this.check(
      this.lib.mb_moe_gather_backward(a(dx), a(dxe), a(slotRows), ...dimsOf(dims)),
      "moe gatherBackward",
    );
  }

  scatter(out: DeviceBuffer, ye: DeviceBuffer, gates: DeviceBuffer, slot: IndexBuffer, dims: MoeDims): void {
    const a = this.address;
    this.check(this.lib.mb_moe_scatter(a(out), a(ye), a(gates), a(slot), ...dimsOf(dims)), "moe scatter");
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
    const a = this.address;
    this.check(
      this.lib.mb_moe_scatter_backward(a(dye), a(dgates), a(dout), a(ye), a(gates), a(slot), ...dimsOf(dims)),
      "moe scatterBackward",
    );
  }

  swiglu(act: DeviceBuffer, h1: DeviceBuffer, h3: DeviceBuffer, length: number): void {
    const a = this.address;
    this.check(this.lib.mb_moe_swiglu(a(act), a(h1), a(h3), length), "moe swiglu");
  }

  swigluBackward(
    dh1: DeviceBuffer,
    dh3: DeviceBuffer,
    dact: DeviceBuffer,
    h1: DeviceBuffer,
    h3: DeviceBuffer,
    length: number,
  ): void {
    const a = this.address;
    this.check(
      this.lib.mb_moe_swiglu_backward(a(dh1), a(dh3), a(dact), a(h1), a(h3), length),
      "moe swigluBackward",
    );
  }
}
