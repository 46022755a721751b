/**
 * The residual stack of Mamba blocks — x_{l+1} = x_l + MambaBlock(RMSNorm(x_l)) — with its
 * forward pass, hand-written backward pass (the forward call list in reverse) and single-step
 * decode. Written only against the Backend interface.
 *
 * Glossary (code → paper): B batch, L sequence length, D = dim, ED = d_inner (expand·D),
 * N = d_state, R = dt_rank, K = d_conv; delta = Δ before softplus and bias, u = the conv branch
 * after SiLU, z = the gate branch, A = -exp(A_log), h = the SSM state (B, ED, N).
 */
import type { Backend, ConvDims, DeviceBuffer, ScanDims } from "./backend.ts";
import type { MambaConfig } from "./config.ts";
import type { LayerParams, ParamSpec } from "./params.ts";

export const RMS_EPS = 1e-5;

/** The parameter (or gradient) views of one block. */
interface LayerViews {
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

/** Views of one block's tensors inside a flat buffer laid out by the parameter table. */
export function layerViews(backend: Backend, flat: DeviceBuffer, layer: LayerParams): LayerViews {
  const v = (spec: ParamSpec) => backend.view(flat, spec.offset, spec.size);
  const vOrNull = (spec: ParamSpec | null) => (spec ? v(spec) : null);
  return {
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

/** What one block's forward saves for its backward, for one (B, L). */
interface BlockActivations {
  x: DeviceBuffer; // (B, L, D) block input
  xn: DeviceBuffer; // (B, L, D) RMSNorm(x)
  rstd: DeviceBuffer; // (B, L)
  xz: DeviceBuffer; // (B, L, 2ED) in_proj output: [u_in | z]
  u: DeviceBuffer; // (B, L, ED) silu(conv(u_in))
  dbc: DeviceBuffer; // (B, L, R + 2N) x_proj output: [δr | B | C]
  delta: DeviceBuffer; // (B, L, ED) dt_proj(δr), before bias and softplus
  y: DeviceBuffer; // (B, L, ED) gated scan output
}

/**
 * Activations of the whole stack for one (B, L), plus backward scratch shared by blocks.
 * With `recompute`, only each block's input x is kept per block; the block's intermediates
 * share one set of buffers and backward recomputes them, block by block.
 */
export class StackActivations {
  readonly blocks: BlockActivations[] = [];
  /** (B, L, D) output of the last block. */
  readonly out: DeviceBuffer;
  readonly scratch: {
    dxn: DeviceBuffer; // (B, L, D)
    dxz: DeviceBuffer; // (B, L, 2ED)
    du: DeviceBuffer; // (B, L, ED)
    ddbc: DeviceBuffer; // (B, L, R + 2N)
    ddelta: DeviceBuffer; // (B, L, ED)
    dy: DeviceBuffer; // (B, L, ED)
  };
  readonly #owned: DeviceBuffer[] = [];

  constructor(
    readonly backend: Backend,
    config: MambaConfig,
    readonly batch: number,
    readonly length: number,
    readonly recompute = false,
  ) {
    const { dim: D, d_inner: ED, d_state: N, dt_rank: R } = config;
    const rows = batch * length;
    const alloc = (n: number) => {
      const buffer = backend.alloc(n);
      this.#owned.push(buffer);
      return buffer;
    };
    const intermediates = () => ({
      xn: alloc(rows * D),
      rstd: alloc(rows),
      xz: alloc(rows * 2 * ED),
      u: alloc(rows * ED),
      dbc: alloc(rows * (R + 2 * N)),
      delta: alloc(rows * ED),
      y: alloc(rows * ED),
    });
    const shared = recompute ? intermediates() : null;
    for (let l = 0; l < config.depth; l++) {
      this.blocks.push({ x: alloc(rows * D), ...(shared ?? intermediates()) });
    }
    this.out = alloc(rows * D);
    this.scratch = {
      dxn: alloc(rows * D),
      dxz: alloc(rows * 2 * ED),
      du: alloc(rows * ED),
      ddbc: alloc(rows * (R + 2 * N)),
      ddelta: alloc(rows * ED),
      dy: alloc(rows * ED),
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

/** Per-layer decode cache: the SSM state and the last K-1 conv inputs, plus step scratch. */
export class StackCache {
  /** Per layer: h (B, ED, N) and conv inputs (B, ED, K-1). */
  readonly layers: { h: DeviceBuffer; conv: DeviceBuffer }[] = [];
  readonly scratch: {
    xn: DeviceBuffer; // (B, D)
    rstd: DeviceBuffer; // (B)
    xz: DeviceBuffer; // (B, 2ED)
    u: DeviceBuffer; // (B, ED)
    dbc: DeviceBuffer; // (B, R + 2N)
    delta: DeviceBuffer; // (B, ED)
    y: DeviceBuffer; // (B, ED)
  };
  readonly #owned: DeviceBuffer[] = [];

  constructor(readonly backend: Backend, config: MambaConfig, readonly batch: number) {
    const { dim: D, d_inner: ED, d_state: N, dt_rank: R, d_conv: K } = config;
    const alloc = (n: number) => {
      const buffer = backend.alloc(n);
      this.#owned.push(buffer);
      return buffer;
    };
    for (let l = 0; l < config.depth; l++) {
      this.layers.push({ h: alloc(batch * ED * N), conv: alloc(Math.max(1, batch * ED * (K - 1))) });
    }
    this.scratch = {
      xn: alloc(batch * D),
      rstd: alloc(batch),
      xz: alloc(batch * 2 * ED),
      u: alloc(batch * ED),
      dbc: alloc(batch * (R + 2 * N)),
      delta: alloc(batch * ED),
      y: alloc(batch * ED),
    };
  }

  /** Forget the text so far (states back to zero). */
  reset(): void {
    for (const { h, conv } of this.layers) {
      this.backend.fill(h, 0);
      this.backend.fill(conv, 0);
    }
  }

  free(): void {
    for (const buffer of this.#owned) this.backend.free(buffer);
    this.#owned.length = 0;
  }
}

/** The stack's forward, backward and step over given parameter and gradient views. */
export class ResidualStack {
  constructor(
    readonly backend: Backend,
    readonly config: MambaConfig,
    readonly params: LayerViews[],
  ) {}

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
      this.#mixer(l, acts);
      be.copy(next, a.x); // residual
      be.matmul(next, a.y, p.outProj, rows, D, ED, { transB: true, accumulate: true }); // (B, L, D)
      if (p.outProjBias) be.addBias(next, p.outProjBias, rows, D);
    }
  }

  /** Block l from its input a.x up to the gated scan output a.y (everything but out_proj). */
  #mixer(l: number, acts: StackActivations): void {
    const be = this.backend;
    const { dim: D, d_inner: ED, d_state: N, dt_rank: R } = this.config;
    const rows = acts.batch * acts.length;
    const dims = this.#dims(acts.batch, acts.length);
    const p = this.params[l], a = acts.blocks[l];
    const s = splitViews(be, this.config, rows, a.xz, a.dbc);
    be.rmsnorm(a.xn, a.rstd, a.x, p.norm, rows, D, RMS_EPS);
    be.matmul(a.xz, a.xn, p.inProj, rows, 2 * ED, D, { transB: true }); // (B, L, 2ED)
    if (p.inProjBias) be.addBias(a.xz, p.inProjBias, rows, 2 * ED);
    be.conv1dSilu(a.u, s.u, p.convWeight, p.convBias, dims.conv); // (B, L, ED)
    be.matmul(a.dbc, a.u, p.xProj, rows, R + 2 * N, ED, { transB: true }); // (B, L, R + 2N)
    be.matmul(a.delta, s.dtIn, p.dtProj, rows, ED, R, { transB: true, lda: R + 2 * N }); // (B, L, ED)
    be.selectiveScan(a.y, a.u, a.delta, p.dtBias, p.aLog, s.b, s.c, p.d, s.z, dims.scan); // (B, L, ED)
  }

  /**
   * dx (B, L, D) holds ∂loss/∂acts.out on entry and ∂loss/∂acts.input on return; parameter
   * gradients accumulate into `grads`.
   */
  backward(dx: DeviceBuffer, acts: StackActivations, grads: LayerViews[]): void {
    const be = this.backend;
    const { dim: D, d_inner: ED, d_state: N, dt_rank: R } = this.config;
    const S = R + 2 * N;
    const rows = acts.batch * acts.length;
    const dims = this.#dims(acts.batch, acts.length);
    const { dxn, dxz, du, ddbc, ddelta, dy } = acts.scratch;
    for (let l = this.params.length - 1; l >= 0; l--) {
      const p = this.params[l], g = grads[l], a = acts.blocks[l];
      if (acts.recompute) this.#mixer(l, acts);
      const s = splitViews(be, this.config, rows, a.xz, a.dbc);
      const ds = splitViews(be, this.config, rows, dxz, ddbc);
      // out_proj: next = x + y·W_outᵀ (+ b)
      if (g.outProjBias) be.addBiasBackward(g.outProjBias, dx, rows, D);
      be.matmul(g.outProj, dx, a.y, D, ED, rows, { transA: true, accumulate: true }); // (D, ED)
      be.matmul(dy, dx, p.outProj, rows, ED, D); // (B, L, ED)
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
      be.matmul(g.dtProj, ddelta, s.dtIn, ED, R, rows, { transA: true, ldb: S, accumulate: true }); // (ED, R)
      be.matmul(ds.dtIn, ddelta, p.dtProj, rows, R, ED, { ldc: S }); // (B, L, R)
      // x_proj: dbc = u·W_xᵀ
      be.matmul(g.xProj, ddbc, a.u, S, ED, rows, { transA: true, accumulate: true }); // (R + 2N, ED)
      be.matmul(du, ddbc, p.xProj, rows, ED, S, { accumulate: true }); // (B, L, ED)
      // conv1d + SiLU
      be.conv1dSiluBackward(ds.u, g.convWeight, g.convBias, du, s.u, p.convWeight, p.convBias, dims.conv);
      // in_proj: xz = xn·W_inᵀ (+ b)
      if (g.inProjBias) be.addBiasBackward(g.inProjBias, dxz, rows, 2 * ED);
      be.matmul(g.inProj, dxz, a.xn, 2 * ED, D, rows, { transA: true, accumulate: true }); // (2ED, D)
      be.matmul(dxn, dxz, p.inProj, rows, D, 2 * ED); // (B, L, D)
      // RMSNorm, plus the residual path already in dx
      be.rmsnormBackward(dx, g.norm, dxn, a.x, p.norm, a.rstd, rows, D);
    }
  }

  /** One position for every sequence: x (B, D) is updated in place through every block. */
  step(x: DeviceBuffer, cache: StackCache): void {
    const be = this.backend;
    const { dim: D, d_inner: ED, d_state: N, dt_rank: R, d_conv: K } = this.config;
    const batch = cache.batch;
    const { xn, rstd, xz, u, dbc, delta, y } = cache.scratch;
    const s = splitViews(be, this.config, batch, xz, dbc);
    const scanDims = { batch, channels: ED, state: N, bcStride: R + 2 * N, zStride: 2 * ED };
    for (let l = 0; l < this.params.length; l++) {
      const p = this.params[l], c = cache.layers[l];
      be.rmsnorm(xn, rstd, x, p.norm, batch, D, RMS_EPS);
      be.matmul(xz, xn, p.inProj, batch, 2 * ED, D, { transB: true }); // (B, 2ED)
      if (p.inProjBias) be.addBias(xz, p.inProjBias, batch, 2 * ED);
      be.conv1dSiluStep(u, c.conv, s.u, p.convWeight, p.convBias, batch, ED, K, 2 * ED); // (B, ED)
      be.matmul(dbc, u, p.xProj, batch, R + 2 * N, ED, { transB: true }); // (B, R + 2N)
      be.matmul(delta, s.dtIn, p.dtProj, batch, ED, R, { transB: true, lda: R + 2 * N }); // (B, ED)
      be.selectiveScanStep(y, c.h, u, delta, p.dtBias, p.aLog, s.b, s.c, p.d, s.z, scanDims);
      be.matmul(x, y, p.outProj, batch, D, ED, { transB: true, accumulate: true }); // (B, D)
      if (p.outProjBias) be.addBias(x, p.outProjBias, batch, D);
    }
  }
}
