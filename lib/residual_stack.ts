/**
 * The residual stack of Mamba blocks — x_{l+1} = x_l + MambaBlock(RMSNorm(x_l)) — with its
 * forward pass, hand-written backward pass (the forward call list in reverse) and single-step
 * decode. Written only against the Backend interface. With config.moe (BlackMamba), every
 * moe.every-th block is x_{l+1} = x_l + MoE(RMSNorm(x_l)) instead (lib/moe_mlp.ts).
 *
 * Glossary (code → paper): B batch, L sequence length, D = dim, ED = d_inner (expand·D),
 * N = d_state, R = dt_rank, K = d_conv; delta = Δ before softplus and bias, u = the conv branch
 * after SiLU, z = the gate branch, A = -exp(A_log), h = the SSM state (B, ED, N).
 */
import {
  type Backend,
  CONV_STEP_MAX_WIDTH,
  type ConvDims,
  type ConvStepOperands,
  type DeviceBuffer,
  halfFloats,
  type HalfFormat,
  halfFormatOf,
  type IndexBuffer,
  type ScanDims,
} from "./backend.ts";
import type { MambaConfig } from "./config.ts";
import { expertCapacity, isMoeBlock, moeBlockCount } from "./moe_config.ts";
import {
  type Allocator,
  allocMoeBuffers,
  allocMoeScratch,
  type MoeBuffers,
  moeLinears,
  MoeMlp,
  type MoeScratch,
  type MoeViews,
  moeViews,
} from "./moe_mlp.ts";
import type { BlockParams, LayerParams, ParamSpec } from "./params.ts";
import type { LinearWeights } from "./quantize.ts";

export const RMS_EPS = 1e-5;

/** The parameter (or gradient) views of one Mamba block. */
interface LayerViews {
  kind: "mamba";
  norm: DeviceBuffer;
  inProj: DeviceBuffer;
  inProjBias: DeviceBuffer | null;
  convWeight: DeviceBuffer;
  convBias: DeviceBuffer | null;
  xProj: DeviceBuffer;
  dtProj: DeviceBuffer;
  dtBias: DeviceBuffer;
  aLog: DeviceBuffer;
  d: DeviceBuffer;
  outProj: DeviceBuffer;
  outProjBias: DeviceBuffer | null;
}

/** The parameter (or gradient) views of one block of either kind. */
export type BlockViews = LayerViews | MoeViews;

/** Views of one block's tensors inside a flat buffer laid out by the parameter table. */
export function layerViews(backend: Backend, flat: DeviceBuffer, layer: BlockParams): BlockViews {
  return layer.kind === "moe" ? moeViews(backend, flat, layer) : mambaViews(backend, flat, layer);
}

function mambaViews(backend: Backend, flat: DeviceBuffer, layer: LayerParams): LayerViews {
  const v = (spec: ParamSpec) => backend.view(flat, spec.offset, spec.size);
  const vOrNull = (spec: ParamSpec | null) => (spec ? v(spec) : null);
  return {
    kind: "mamba",
    norm: v(layer.norm),
    inProj: v(layer.inProj),
    inProjBias: vOrNull(layer.inProjBias),
    convWeight: v(layer.convWeight),
    convBias: vOrNull(layer.convBias),
    xProj: v(layer.xProj),
    dtProj: v(layer.dtProj),
    dtBias: v(layer.dtBias),
    aLog: v(layer.aLog),
    d: v(layer.d),
    outProj: v(layer.outProj),
    outProjBias: vOrNull(layer.outProjBias),
  };
}

/**
 * The Linear weights of a block (x·Wᵀ products of forward and decode) with their parameter
 * specs, views into `views`: what int8 quantization replaces (lib/quantize.ts). dt_proj stays
 * fp32: decode fuses it into the scan step, and it is small (ED × dt_rank).
 */
export function blockLinears(
  layer: BlockParams,
  views: BlockViews,
): { spec: ParamSpec; weight: DeviceBuffer }[] {
  if (layer.kind === "moe") return moeLinears(layer, views as MoeViews);
  const v = views as LayerViews;
  return [
    { spec: layer.inProj, weight: v.inProj },
    { spec: layer.xProj, weight: v.xProj },
    { spec: layer.outProj, weight: v.outProj },
  ];
}

/** Views into a (rows, 2ED) in_proj output and a (rows, R + 2N) x_proj output. */
function splitViews(
  backend: Backend,
  config: MambaConfig,
  rows: number,
  xz: DeviceBuffer,
  dbc: DeviceBuffer,
) {
  const { d_inner: ED, d_state: N, dt_rank: R } = config;
  const S = R + 2 * N;
  return {
    u: backend.view(xz, 0, rows * 2 * ED - ED), // (rows, ED), stride 2ED
    z: backend.view(xz, ED, rows * 2 * ED - ED), // (rows, ED), stride 2ED
    dtIn: backend.view(dbc, 0, rows * S - 2 * N), // (rows, R), stride R + 2N
    b: backend.view(dbc, R, rows * S - R - N), // (rows, N), stride R + 2N
    c: backend.view(dbc, R + N, rows * S - R - N), // (rows, N), stride R + 2N
  };
}

/**
 * What forward keeps per Mamba block for backward. "full": every fp32 intermediate. "half" (for
 * bf16 or f16 matmul inputs): x, rstd and dbc in fp32, and 16-bit copies of xn, xz and y in the
 * matmuls' format; backward unpacks xz and recomputes u and delta, and the matmuls read the 16-bit
 * copies as they are. "recompute": only x; backward recomputes the block. The intermediates that are not kept share one set of
 * buffers for all blocks. MoE blocks keep everything unless "recompute".
 */
export type ActivationLayout = "full" | "half" | "recompute";

/**
 * The layout a model's training uses: "recompute" when asked; "half" when the backend's matmuls
 * take 16-bit inputs and it can store them (packHalf, unpackHalf), for fp32 weights; else "full".
 */
export function activationLayout(backend: Backend, recompute: boolean, quantized: boolean): ActivationLayout {
  if (recompute) return "recompute";
  const half = halfFormatOf(backend.matmulPrecision) && backend.packHalf && backend.unpackHalf;
  return half && !quantized ? "half" : "full";
}

/** The 16-bit copies (halfFloats of the values) a block keeps in the "half" layout. */
interface HalfActivations {
  xn: DeviceBuffer; // (B, L, D) RMSNorm(x): in_proj's input
  xz: DeviceBuffer; // (B, L, 2ED) in_proj output
  y: DeviceBuffer; // (B, L, ED) gated scan output: out_proj's input
}

/** What one Mamba block's forward saves for its backward, for one (B, L). */
interface BlockActivations {
  kind: "mamba";
  x: DeviceBuffer; // (B, L, D) block input
  xn: DeviceBuffer; // (B, L, D) RMSNorm(x)
  rstd: DeviceBuffer; // (B, L)
  xz: DeviceBuffer; // (B, L, 2ED) in_proj output: [u_in | z]
  u: DeviceBuffer; // (B, L, ED) silu(conv(u_in))
  dbc: DeviceBuffer; // (B, L, R + 2N) x_proj output: [δr | B | C]
  delta: DeviceBuffer; // (B, L, ED) dt_proj(δr), before bias and softplus
  y: DeviceBuffer; // (B, L, ED) gated scan output
  half: HalfActivations | null; // the "half" layout's kept copies
}

/** What one MoE block's forward saves for its backward, for one (B, L). */
interface MoeBlockActivations extends MoeBuffers {
  kind: "moe";
  x: DeviceBuffer; // (B, L, D) block input
  xn: DeviceBuffer; // (B, L, D) RMSNorm(x)
  rstd: DeviceBuffer; // (B, L)
  stats: DeviceBuffer; // (2) [aux, dropped]
}

/**
 * Activations of the whole stack for one (B, L) in a given layout (see ActivationLayout), plus
 * backward scratch shared by blocks.
 */
export class StackActivations {
  readonly blocks: (BlockActivations | MoeBlockActivations)[] = [];
  /** (B, L, D) output of the last block. */
  readonly out: DeviceBuffer;
  /** C: rows per expert in the MoE blocks (0 without moe). */
  readonly capacity: number;
  /** (MoE blocks, 2): [aux, dropped] of each MoE block's last forward; null without moe. */
  readonly stats: DeviceBuffer | null;
  readonly scratch: {
    dxn: DeviceBuffer; // (B, L, D)
    dxz: DeviceBuffer; // (B, L, 2ED)
    du: DeviceBuffer; // (B, L, ED)
    ddbc: DeviceBuffer; // (B, L, R + 2N)
    ddelta: DeviceBuffer; // (B, L, ED)
    dy: DeviceBuffer; // (B, L, ED)
    /** "half" layout: a gradient in 16 bits for the two matmuls that read it, up to (B, L, 2ED). */
    half: DeviceBuffer | null;
    moe: MoeScratch | null;
  };
  readonly #owned: (DeviceBuffer | IndexBuffer)[] = [];

  /**
   * `stats` ((MoE blocks, 2) floats, for configs with moe) lets the caller read the MoE
   * statistics together with other values; allocated here when omitted.
   */
  constructor(
    readonly backend: Backend,
    config: MambaConfig,
    readonly batch: number,
    readonly length: number,
    readonly layout: ActivationLayout = "full",
    stats?: DeviceBuffer,
  ) {
    const { dim: D, d_inner: ED, d_state: N, dt_rank: R } = config;
    const rows = batch * length;
    const m = ownedAllocator(backend, this.#owned), alloc = m.alloc;
    const moe = config.moe;
    this.capacity = moe ? expertCapacity(moe, rows) : 0;
    const moeBlocks = moeBlockCount(moe, config.depth);
    this.stats = moe ? (stats ?? alloc(2 * moeBlocks)) : null;
    const moeIntermediates = () => ({
      xn: alloc(rows * D),
      rstd: alloc(rows),
      ...allocMoeBuffers(m, moe!, D, rows, this.capacity),
    });
    const intermediates = () => ({
      xn: alloc(rows * D),
      rstd: alloc(rows),
      xz: alloc(rows * 2 * ED),
      u: alloc(rows * ED),
      dbc: alloc(rows * (R + 2 * N)),
      delta: alloc(rows * ED),
      y: alloc(rows * ED),
    });
    const shared = layout === "recompute" ? intermediates() : null;
    const sharedMoe = layout === "recompute" && moe ? moeIntermediates() : null;
    // "half": the fp32 intermediates that forward packs or backward refills, shared by the blocks
    const refilled = layout === "half"
      ? {
        xn: alloc(rows * D),
        xz: alloc(rows * 2 * ED),
        u: alloc(rows * ED),
        delta: alloc(rows * ED),
        y: alloc(rows * ED),
      }
      : null;
    const kept = (): BlockActivations => {
      const block = { kind: "mamba" as const, x: alloc(rows * D), half: null };
      if (layout === "full") return { ...block, ...intermediates() };
      if (layout === "recompute") return { ...block, ...shared! };
      const half = {
        xn: alloc(halfFloats(rows * D)),
        xz: alloc(halfFloats(rows * 2 * ED)),
        y: alloc(halfFloats(rows * ED)),
      };
      return { ...block, ...refilled!, rstd: alloc(rows), dbc: alloc(rows * (R + 2 * N)), half };
    };
    for (let l = 0, i = 0; l < config.depth; l++) {
      if (isMoeBlock(moe, l)) {
        const stats = backend.view(this.stats!, 2 * i++, 2);
        this.blocks.push({ kind: "moe", x: alloc(rows * D), stats, ...(sharedMoe ?? moeIntermediates()) });
      } else {
        this.blocks.push(kept());
      }
    }
    this.out = alloc(rows * D);
    this.scratch = {
      dxn: alloc(rows * D),
      dxz: alloc(rows * 2 * ED),
      du: alloc(rows * ED),
      ddbc: alloc(rows * (R + 2 * N)),
      ddelta: alloc(rows * ED),
      dy: alloc(rows * ED),
      half: layout === "half" ? alloc(halfFloats(rows * 2 * ED)) : null,
      moe: moe ? allocMoeScratch(m, moe, D, rows, this.capacity) : null,
    };
  }

  /** (B, L, D) input of the first block: the caller writes it. */
  get input(): DeviceBuffer {
    return this.blocks[0].x;
  }

  free(): void {
    for (const buffer of this.#owned) this.backend.free(buffer);
    this.#owned.length = 0;
  }
}

/**
 * Per-layer decode cache: the SSM state and the last K-1 conv inputs, plus step scratch.
 * MoE blocks keep no state (null); decode routes the B positions with capacity B (no drops).
 */
export class StackCache {
  /** Per layer: h (B, ED, N) and conv inputs (B, ED, K-1); null for an MoE block. */
  readonly layers: ({ h: DeviceBuffer; conv: DeviceBuffer } | null)[] = [];
  readonly scratch: {
    xn: DeviceBuffer; // (B, D)
    rstd: DeviceBuffer; // (B)
    xz: DeviceBuffer; // (B, 2ED)
    u: DeviceBuffer; // (B, ED)
    dbc: DeviceBuffer; // (B, R + 2N)
    y: DeviceBuffer; // (B, ED)
    moe: (MoeBuffers & { stats: DeviceBuffer }) | null; // MoE blocks, capacity B
  };
  readonly #owned: (DeviceBuffer | IndexBuffer)[] = [];

  constructor(readonly backend: Backend, config: MambaConfig, readonly batch: number) {
    const { dim: D, d_inner: ED, d_state: N, dt_rank: R, d_conv: K } = config;
    const m = ownedAllocator(backend, this.#owned), alloc = m.alloc;
    for (let l = 0; l < config.depth; l++) {
      this.layers.push(
        isMoeBlock(config.moe, l)
          ? null
          : { h: alloc(batch * ED * N), conv: alloc(Math.max(1, batch * ED * (K - 1))) },
      );
    }
    this.scratch = {
      xn: alloc(batch * D),
      rstd: alloc(batch),
      xz: alloc(batch * 2 * ED),
      u: alloc(batch * ED),
      dbc: alloc(batch * (R + 2 * N)),
      y: alloc(batch * ED),
      moe: config.moe ? { stats: alloc(2), ...allocMoeBuffers(m, config.moe, D, batch, batch) } : null,
    };
  }

  /** Forget the text so far (states back to zero). */
  reset(): void {
    for (const layer of this.layers) {
      if (!layer) continue;
      this.backend.fill(layer.h, 0);
      this.backend.fill(layer.conv, 0);
    }
  }

  free(): void {
    for (const buffer of this.#owned) this.backend.free(buffer);
    this.#owned.length = 0;
  }
}

/** An Allocator whose buffers are recorded in `owned`, for the owner's free(). */
function ownedAllocator(backend: Backend, owned: (DeviceBuffer | IndexBuffer)[]): Allocator {
  return {
    alloc: (n: number) => {
      const buffer = backend.alloc(n);
      owned.push(buffer);
      return buffer;
    },
    allocIndices: (n: number) => {
      const buffer = backend.allocIndices(n);
      owned.push(buffer);
      return buffer;
    },
  };
}

/**
 * The stack's forward, backward and step over given parameter and gradient views. Forward and
 * step run the Linear products through `linears` (fp32, or int8 once quantized); backward,
 * which only an fp32 model runs, uses the fp32 views.
 */
export class ResidualStack {
  /** The MoE blocks' mixture; null without config.moe. Throws when the backend lacks MoE ops. */
  readonly #moe: MoeMlp | null;

  constructor(
    readonly backend: Backend,
    readonly config: MambaConfig,
    readonly params: BlockViews[],
    readonly linears: LinearWeights,
  ) {
    this.#moe = config.moe ? new MoeMlp(backend, config, linears) : null;
  }

  #dims(batch: number, length: number): { conv: ConvDims; scan: ScanDims } {
    const { d_inner: ED, d_state: N, dt_rank: R, d_conv: K, pscan } = this.config;
    return {
      conv: { batch, length, channels: ED, width: K, xStride: 2 * ED },
      scan: {
        batch,
        length,
        channels: ED,
        state: N,
        bcStride: R + 2 * N,
        zStride: 2 * ED,
        parallel: pscan,
      },
    };
  }

  /** acts.input (B, L, D) → acts.out (B, L, D), saving what backward needs. */
  forward(acts: StackActivations): void {
    const be = this.backend;
    const { dim: D, d_inner: ED } = this.config;
    const rows = acts.batch * acts.length;
    for (let l = 0; l < this.params.length; l++) {
      const p = this.params[l], a = acts.blocks[l];
      const next = l + 1 < this.params.length ? acts.blocks[l + 1].x : acts.out;
      be.copy(next, a.x); // residual
      if (p.kind === "moe") {
        const m = a as MoeBlockActivations;
        this.#moeMixer(p, m, acts);
        this.#moe!.scatter(next, m, rows, acts.capacity); // (B, L, D) +=
        continue;
      }
      const mamba = a as BlockActivations;
      this.#mixer(p, mamba, acts);
      const y = mamba.half?.y ?? mamba.y, aHalf = mamba.half !== null;
      this.linears.apply(next, y, p.outProj, rows, D, ED, { accumulate: true, aHalf }); // (B, L, D)
      if (p.outProjBias) be.addBias(next, p.outProjBias, rows, D);
    }
  }

  /** Mamba block from its input a.x up to the gated scan output a.y (everything but out_proj). */
  #mixer(p: LayerViews, a: BlockActivations, acts: StackActivations): void {
    const be = this.backend;
    const { dim: D, d_inner: ED, d_state: N, dt_rank: R } = this.config;
    const rows = acts.batch * acts.length;
    const dims = this.#dims(acts.batch, acts.length);
    const s = splitViews(be, this.config, rows, a.xz, a.dbc);
    be.rmsnorm(a.xn, a.rstd, a.x, p.norm, rows, D, RMS_EPS);
    const linear = this.linears, half = a.half;
    if (half) this.#pack(half.xn, a.xn, rows * D);
    linear.apply(a.xz, half?.xn ?? a.xn, p.inProj, rows, 2 * ED, D, { aHalf: half !== null }); // (B, L, 2ED)
    if (p.inProjBias) be.addBias(a.xz, p.inProjBias, rows, 2 * ED);
    if (half) this.#pack(half.xz, a.xz, rows * 2 * ED);
    be.conv1dSilu(a.u, s.u, p.convWeight, p.convBias, dims.conv); // (B, L, ED)
    linear.apply(a.dbc, a.u, p.xProj, rows, R + 2 * N, ED); // (B, L, R + 2N)
    this.#dtProj(p, a, s.dtIn, rows); // (B, L, ED)
    be.selectiveScan(a.y, a.u, a.delta, p.dtBias, p.aLog, s.b, s.c, p.d, s.z, dims.scan); // (B, L, ED)
    if (half) this.#pack(half.y, a.y, rows * ED);
  }

  /** a.delta (rows, ED) = δr · W_dtᵀ, δr (rows, R) the head of each row of a.dbc (dtIn). */
  #dtProj(p: LayerViews, a: BlockActivations, dtIn: DeviceBuffer, rows: number): void {
    const { d_inner: ED, d_state: N, dt_rank: R } = this.config;
    this.linears.apply(a.delta, dtIn, p.dtProj, rows, ED, R, { lda: R + 2 * N });
  }

  /** MoE block from its input a.x up to the expert outputs a.ye (everything but the scatter). */
  #moeMixer(p: MoeViews, a: MoeBlockActivations, acts: StackActivations): void {
    const rows = acts.batch * acts.length;
    this.backend.rmsnorm(a.xn, a.rstd, a.x, p.norm, rows, this.config.dim, RMS_EPS);
    this.#moe!.mixture(p, a, a.xn, a.stats, rows, acts.capacity);
  }

  /**
   * dx (B, L, D) holds ∂loss/∂acts.out on entry and ∂loss/∂acts.input on return; parameter
   * gradients accumulate into `grads`. MoE blocks add auxScale · ∂(aux loss of the block)/∂·.
   */
  backward(dx: DeviceBuffer, acts: StackActivations, grads: BlockViews[], auxScale = 0): void {
    const be = this.backend;
    const rows = acts.batch * acts.length;
    for (let l = this.params.length - 1; l >= 0; l--) {
      const p = this.params[l], g = grads[l], a = acts.blocks[l];
      if (p.kind === "moe") {
        const m = a as MoeBlockActivations;
        if (acts.layout === "recompute") this.#moeMixer(p, m, acts);
        const dxn = acts.scratch.dxn;
        this.#moe!.backward(
          p,
          g as MoeViews,
          m,
          acts.scratch.moe!,
          m.xn,
          dx,
          dxn,
          rows,
          acts.capacity,
          auxScale,
        );
        be.rmsnormBackward(dx, g.norm, dxn, m.x, p.norm, m.rstd, rows, this.config.dim);
      } else {
        this.#mambaBackward(p, g as LayerViews, a as BlockActivations, dx, acts);
      }
    }
  }

  #mambaBackward(
    p: LayerViews,
    g: LayerViews,
    a: BlockActivations,
    dx: DeviceBuffer,
    acts: StackActivations,
  ) {
    const be = this.backend;
    const { dim: D, d_inner: ED, d_state: N, dt_rank: R } = this.config;
    const S = R + 2 * N;
    const rows = acts.batch * acts.length;
    const dims = this.#dims(acts.batch, acts.length);
    const { dxn, dxz, du, ddbc, ddelta, dy } = acts.scratch;
    const s = splitViews(be, this.config, rows, a.xz, a.dbc);
    const ds = splitViews(be, this.config, rows, dxz, ddbc);
    if (acts.layout === "recompute") this.#mixer(p, a, acts);
    if (a.half) {
      // "half" layout: xz from its 16-bit copy, then u and delta recomputed from it
      be.unpackHalf!(a.xz, a.half.xz, rows * 2 * ED, this.#halfFormat());
      be.conv1dSilu(a.u, s.u, p.convWeight, p.convBias, dims.conv); // (B, L, ED)
      this.#dtProj(p, a, s.dtIn, rows); // (B, L, ED)
    }
    // out_proj: next = x + y·W_outᵀ (+ b)
    if (g.outProjBias) be.addBiasBackward(g.outProjBias, dx, rows, D);
    const half = a.half !== null, y = a.half?.y ?? a.y;
    const dOut = this.#matmulInput(dx, rows * D, acts, half);
    be.matmul(g.outProj, dOut.a, y, D, ED, rows, {
      transA: true,
      accumulate: true,
      aHalf: dOut.aHalf,
      bHalf: half,
    }); // (D, ED)
    be.matmul(dy, dOut.a, p.outProj, rows, ED, D, { aHalf: dOut.aHalf }); // (B, L, ED)
    // fused selective scan
    be.selectiveScanBackward(
      du,
      ddelta,
      g.dtBias,
      g.aLog,
      ds.b,
      ds.c,
      g.d,
      ds.z,
      dy,
      a.u,
      a.delta,
      p.dtBias,
      p.aLog,
      s.b,
      s.c,
      p.d,
      s.z,
      dims.scan,
    );
    // dt_proj: delta = δr·W_dtᵀ
    const dDelta = this.#matmulInput(ddelta, rows * ED, acts, half);
    be.matmul(g.dtProj, dDelta.a, s.dtIn, ED, R, rows, {
      transA: true,
      ldb: S,
      accumulate: true,
      aHalf: dDelta.aHalf,
    }); // (ED, R)
    be.matmul(ds.dtIn, dDelta.a, p.dtProj, rows, R, ED, { ldc: S, aHalf: dDelta.aHalf }); // (B, L, R)
    // x_proj: dbc = u·W_xᵀ
    be.matmul(g.xProj, ddbc, a.u, S, ED, rows, { transA: true, accumulate: true }); // (R + 2N, ED)
    be.matmul(du, ddbc, p.xProj, rows, ED, S, { accumulate: true }); // (B, L, ED)
    // conv1d + SiLU
    be.conv1dSiluBackward(ds.u, g.convWeight, g.convBias, du, s.u, p.convWeight, p.convBias, dims.conv);
    // in_proj: xz = xn·W_inᵀ (+ b)
    if (g.inProjBias) be.addBiasBackward(g.inProjBias, dxz, rows, 2 * ED);
    const dXz = this.#matmulInput(dxz, rows * 2 * ED, acts, half), xn = a.half?.xn ?? a.xn;
    be.matmul(g.inProj, dXz.a, xn, 2 * ED, D, rows, {
      transA: true,
      accumulate: true,
      aHalf: dXz.aHalf,
      bHalf: half,
    }); // (2ED, D)
    be.matmul(dxn, dXz.a, p.inProj, rows, D, 2 * ED, { aHalf: dXz.aHalf }); // (B, L, D)
    // RMSNorm, plus the residual path already in dx
    be.rmsnormBackward(dx, g.norm, dxn, a.x, p.norm, a.rstd, rows, D);
  }

  /**
   * A gradient of n values as the two matmuls after it read it (as A): itself, or in the "half"
   * layout one 16-bit copy of it in acts.scratch.half instead of a rounding in each.
   */
  #matmulInput(gradient: DeviceBuffer, n: number, acts: StackActivations, half: boolean) {
    if (!half) return { a: gradient, aHalf: false };
    this.#pack(acts.scratch.half!, gradient, n);
    return { a: acts.scratch.half!, aHalf: true };
  }

  /** The 16-bit format of the "half" layout's copies: the one the backend's matmuls read now. */
  #halfFormat(): HalfFormat {
    const format = halfFormatOf(this.backend.matmulPrecision);
    if (!format) {
      throw new Error(
        `the "half" activation layout needs matmul precision bf16 or f16, not ${this.backend.matmulPrecision}`,
      );
    }
    return format;
  }

  /** dst ← n values of src in 16 bits, for the "half" layout's matmuls. */
  #pack(dst: DeviceBuffer, src: DeviceBuffer, n: number): void {
    this.backend.packHalf!(dst, src, n, this.#halfFormat());
  }

  /** One position for every sequence: x (B, D) is updated in place through every block. */
  step(x: DeviceBuffer, cache: StackCache): void {
    const be = this.backend, linear = this.linears;
    const { dim: D, d_inner: ED, d_state: N, dt_rank: R, d_conv: K } = this.config;
    const batch = cache.batch;
    const { xn, rstd, xz, u, dbc, y, moe } = cache.scratch;
    const s = splitViews(be, this.config, batch, xz, dbc);
    const scanDims = { batch, channels: ED, state: N, rank: R, bcStride: R + 2 * N, zStride: 2 * ED };
    for (let l = 0; l < this.params.length; l++) {
      const p = this.params[l], c = cache.layers[l];
      if (p.kind === "moe") {
        be.rmsnorm(xn, rstd, x, p.norm, batch, D, RMS_EPS);
        // position-wise: the forward pass over B positions, with room for all of them
        this.#moe!.mixture(p, moe!, xn, moe!.stats, batch, batch);
        this.#moe!.scatter(x, moe!, batch, batch); // (B, D) +=
        continue;
      }
      // in_proj with rmsnorm fused in where the backend can, and the conv step of its x half too
      // when no bias comes between them: xz (B, 2ED) and u (B, ED) in one op
      const conv: ConvStepOperands | undefined = !p.inProjBias && K <= CONV_STEP_MAX_WIDTH
        ? { out: u, state: c!.conv, weight: p.convWeight, bias: p.convBias, channels: ED, width: K }
        : undefined;
      const fused = linear.applyNormed(xz, x, p.norm, RMS_EPS, p.inProj, batch, 2 * ED, D, conv);
      if (!fused) {
        be.rmsnorm(xn, rstd, x, p.norm, batch, D, RMS_EPS);
        linear.apply(xz, xn, p.inProj, batch, 2 * ED, D); // (B, 2ED)
      }
      if (p.inProjBias) be.addBias(xz, p.inProjBias, batch, 2 * ED);
      if (!(fused && conv)) {
        be.conv1dSiluStep(u, c!.conv, s.u, p.convWeight, p.convBias, batch, ED, K, 2 * ED); // (B, ED)
      }
      linear.apply(dbc, u, p.xProj, batch, R + 2 * N, ED); // (B, R + 2N)
      // dt_proj of δr happens inside the step (B, ED)
      be.selectiveScanStep(y, c!.h, u, s.dtIn, p.dtProj, p.dtBias, p.aLog, s.b, s.c, p.d, s.z, scanDims);
      linear.apply(x, y, p.outProj, batch, D, ED, { accumulate: true }); // (B, D)
      if (p.outProjBias) be.addBias(x, p.outProjBias, batch, D);
    }
  }
}
