/**
 * The routed mixture of SwiGLU experts inside BlackMamba's MoE blocks, on normalized input xn:
 *
 *   logits = xn·W_rᵀ                      (T, E)   router
 *   choice, gates = top-k, softmax over the chosen logits          (T, k)
 *   xe = gather(xn)                       (E·C, D) each expert's rows, C = capacity
 *   ye_e = W2_e·(silu(W1_e·xe_e) ⊙ W3_e·xe_e)   one matmul per expert over its C rows
 *   out += Σ_j gates_j · ye[slot_j]       (T, D)   scatter-add (dropped choices add nothing)
 *
 * plus the Switch load-balancing loss, written to `stats` as [aux, dropped] by the route op.
 * Written only against the Backend interface and its optional MoeOps.
 *
 * Glossary: T routed positions (B·L, or B in decode), E experts, k = top_k, H = hidden,
 * C = rows per expert (lib/moe_config.ts: expertCapacity).
 */
import type { Backend, DeviceBuffer, IndexBuffer, MoeDims, MoeOps } from "./backend.ts";
import type { MambaConfig } from "./config.ts";
import type { MoeSettings } from "./moe_config.ts";
import type { MoeLayerParams, ParamSpec } from "./params.ts";
import type { LinearWeights } from "./quantize.ts";

/** The parameter (or gradient) views of one MoE block. */
export interface MoeViews {
  kind: "moe";
  norm: DeviceBuffer; // (D)
  router: DeviceBuffer; // (E, D)
  experts: { w1: DeviceBuffer; w3: DeviceBuffer; w2: DeviceBuffer }[]; // (H, D), (H, D), (D, H)
}

/** Views of one MoE block's tensors inside a flat buffer laid out by the parameter table. */
export function moeViews(backend: Backend, flat: DeviceBuffer, layer: MoeLayerParams): MoeViews {
  const v = (spec: ParamSpec) => backend.view(flat, spec.offset, spec.size);
  return {
    kind: "moe",
    norm: v(layer.norm),
    router: v(layer.router),
    experts: layer.experts.map((e) => ({ w1: v(e.w1), w3: v(e.w3), w2: v(e.w2) })),
  };
}

/**
 * The expert weights of an MoE block with their specs: what int8 quantization replaces. The
 * router stays fp32: it is small (E, D), and its logits make a discrete top-k choice that a
 * rounding error can flip.
 */
export function moeLinears(
  layer: MoeLayerParams,
  views: MoeViews,
): { spec: ParamSpec; weight: DeviceBuffer }[] {
  return layer.experts.flatMap((e, i) => {
    const w = views.experts[i];
    return [{ spec: e.w1, weight: w.w1 }, { spec: e.w3, weight: w.w3 }, { spec: e.w2, weight: w.w2 }];
  });
}

/** What the mixture's forward saves for its backward, for T positions and capacity C. */
export interface MoeBuffers {
  logits: DeviceBuffer; // (T, E)
  probs: DeviceBuffer; // (T, E) softmax over every expert
  gates: DeviceBuffer; // (T, k)
  choice: IndexBuffer; // (T, k) experts, best first
  slot: IndexBuffer; // (T, k) dispatched row or -1
  slotRows: IndexBuffer; // (E·C) source position or -1
  xe: DeviceBuffer; // (E·C, D) dispatched inputs
  h1: DeviceBuffer; // (E·C, H) W1·xe
  h3: DeviceBuffer; // (E·C, H) W3·xe
  act: DeviceBuffer; // (E·C, H) silu(h1) ⊙ h3
  ye: DeviceBuffer; // (E·C, D) expert outputs
}

/** Backward scratch of the mixture, shared by the MoE blocks of a stack. */
export interface MoeScratch {
  dlogits: DeviceBuffer; // (T, E)
  dgates: DeviceBuffer; // (T, k)
  dye: DeviceBuffer; // (E·C, D)
  dact: DeviceBuffer; // (E·C, H)
  dh1: DeviceBuffer; // (E·C, H)
  dh3: DeviceBuffer; // (E·C, H)
  dxe: DeviceBuffer; // (E·C, D)
}

/** Allocation callbacks of the owner of the buffers (it frees them). */
export interface Allocator {
  alloc(length: number): DeviceBuffer;
  allocIndices(length: number): IndexBuffer;
}

/** Forward buffers for T positions with C rows per expert. */
export function allocMoeBuffers(m: Allocator, moe: MoeSettings, D: number, T: number, C: number): MoeBuffers {
  const { experts: E, top_k: k, hidden: H } = moe;
  return {
    logits: m.alloc(T * E),
    probs: m.alloc(T * E),
    gates: m.alloc(T * k),
    choice: m.allocIndices(T * k),
    slot: m.allocIndices(T * k),
    slotRows: m.allocIndices(E * C),
    xe: m.alloc(E * C * D),
    h1: m.alloc(E * C * H),
    h3: m.alloc(E * C * H),
    act: m.alloc(E * C * H),
    ye: m.alloc(E * C * D),
  };
}

/** Backward scratch for T positions with C rows per expert. */
export function allocMoeScratch(m: Allocator, moe: MoeSettings, D: number, T: number, C: number): MoeScratch {
  const { experts: E, top_k: k, hidden: H } = moe;
  return {
    dlogits: m.alloc(T * E),
    dgates: m.alloc(T * k),
    dye: m.alloc(E * C * D),
    dact: m.alloc(E * C * H),
    dh1: m.alloc(E * C * H),
    dh3: m.alloc(E * C * H),
    dxe: m.alloc(E * C * D),
  };
}

/** The backend's MoE ops, or an Error naming the backend when it has none. */
export function requireMoeOps(backend: Backend): MoeOps {
  if (!backend.moe) {
    throw new Error(
      `the ${backend.device} backend (${backend.description}) has no mixture-of-experts ops, ` +
        "which this config's moe blocks need; use the cpu, cuda or webgpu backend",
    );
  }
  return backend.moe;
}

/**
 * The mixture's forward, backward and scatter for one config, over given views and buffers.
 * The forward's expert products go through `linears` (fp32, or int8 once quantized).
 */
export class MoeMlp {
  readonly ops: MoeOps;
  readonly moe: MoeSettings;

  constructor(readonly backend: Backend, readonly config: MambaConfig, readonly linears: LinearWeights) {
    if (!config.moe) throw new Error("MoeMlp: the config has no moe settings");
    this.ops = requireMoeOps(backend);
    this.moe = config.moe;
  }

  dims(rows: number, capacity: number): MoeDims {
    return { rows, experts: this.moe.experts, topK: this.moe.top_k, capacity, dim: this.config.dim };
  }

  /** Rows [e·C, (e+1)·C) of a dispatched (E·C, width) buffer: expert e's. */
  #expertRows(buffer: DeviceBuffer, e: number, capacity: number, width: number): DeviceBuffer {
    return this.backend.view(buffer, e * capacity * width, capacity * width);
  }

  /** xn (T, D) → a.ye (E·C, D): routing, dispatch, and every expert's SwiGLU; stats ← [aux, dropped]. */
  mixture(p: MoeViews, a: MoeBuffers, xn: DeviceBuffer, stats: DeviceBuffer, rows: number, C: number): void {
    const be = this.backend, ops = this.ops, dims = this.dims(rows, C);
    const { experts: E, hidden: H } = this.moe, D = this.config.dim;
    const rowsOf = (buffer: DeviceBuffer, e: number, width: number) => this.#expertRows(buffer, e, C, width);
    be.matmul(a.logits, xn, p.router, rows, E, D, { transB: true }); // (T, E)
    ops.route(a.gates, a.choice, a.slot, a.slotRows, a.probs, stats, a.logits, dims);
    ops.gather(a.xe, xn, a.slotRows, dims); // (E·C, D)
    for (let e = 0; e < E; e++) {
      const w = p.experts[e], xe = rowsOf(a.xe, e, D);
      this.linears.apply(rowsOf(a.h1, e, H), xe, w.w1, C, H, D); // (C, H)
      this.linears.apply(rowsOf(a.h3, e, H), xe, w.w3, C, H, D); // (C, H)
    }
    ops.swiglu(a.act, a.h1, a.h3, E * C * H); // (E·C, H)
    for (let e = 0; e < E; e++) {
      this.linears.apply(rowsOf(a.ye, e, D), rowsOf(a.act, e, H), p.experts[e].w2, C, D, H); // (C, D)
    }
  }

  /** out (T, D) += the gated expert outputs of `mixture`. */
  scatter(out: DeviceBuffer, a: MoeBuffers, rows: number, C: number): void {
    this.ops.scatter(out, a.ye, a.gates, a.slot, this.dims(rows, C));
  }

  /**
   * Given dout = ∂loss/∂out (T, D): dxn (T, D) overwritten with ∂loss/∂xn, parameter gradients
   * in `g` +=, and auxScale · ∂aux/∂(router, xn) included.
   */
  backward(
    p: MoeViews,
    g: MoeViews,
    a: MoeBuffers,
    s: MoeScratch,
    xn: DeviceBuffer,
    dout: DeviceBuffer,
    dxn: DeviceBuffer,
    rows: number,
    C: number,
    auxScale: number,
  ): void {
    const be = this.backend, ops = this.ops, dims = this.dims(rows, C);
    const { experts: E, hidden: H } = this.moe, D = this.config.dim;
    const rowsOf = (buffer: DeviceBuffer, e: number, width: number) => this.#expertRows(buffer, e, C, width);
    ops.scatterBackward(s.dye, s.dgates, dout, a.ye, a.gates, a.slot, dims);
    // ye_e = act_e·W2_eᵀ
    for (let e = 0; e < E; e++) {
      const dye = rowsOf(s.dye, e, D);
      be.matmul(g.experts[e].w2, dye, rowsOf(a.act, e, H), D, H, C, { transA: true, accumulate: true }); // (D, H)
      be.matmul(rowsOf(s.dact, e, H), dye, p.experts[e].w2, C, H, D); // (C, H)
    }
    ops.swigluBackward(s.dh1, s.dh3, s.dact, a.h1, a.h3, E * C * H);
    // h1_e = xe_e·W1_eᵀ, h3_e = xe_e·W3_eᵀ
    for (let e = 0; e < E; e++) {
      const xe = rowsOf(a.xe, e, D), dh1 = rowsOf(s.dh1, e, H), dh3 = rowsOf(s.dh3, e, H);
      const dxe = rowsOf(s.dxe, e, D), w = p.experts[e], gw = g.experts[e];
      be.matmul(gw.w1, dh1, xe, H, D, C, { transA: true, accumulate: true }); // (H, D)
      be.matmul(gw.w3, dh3, xe, H, D, C, { transA: true, accumulate: true }); // (H, D)
      be.matmul(dxe, dh1, w.w1, C, D, H); // (C, D)
      be.matmul(dxe, dh3, w.w3, C, D, H, { accumulate: true }); // (C, D)
    }
    // router: logits = xn·W_rᵀ, through the gates and the aux loss
    ops.routeBackward(s.dlogits, s.dgates, a.gates, a.choice, a.probs, auxScale, dims);
    be.matmul(g.router, s.dlogits, xn, E, D, rows, { transA: true, accumulate: true }); // (E, D)
    be.matmul(dxn, s.dlogits, p.router, rows, D, E); // (T, D)
    ops.gatherBackward(dxn, s.dxe, a.slotRows, dims); // (T, D) +=
  }
}
