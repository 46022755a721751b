/**
 * The ONE ordered parameter table. It gives every tensor's checkpoint name (mamba_ssm's
 * MambaLMHeadModel names), shape, offset in the flat parameter buffer, initialisation and
 * whether weight decay applies. Sizes, offsets, init, checkpoints and the optimizer all read it.
 *
 * BlackMamba's MoE blocks (config.moe; which blocks: lib/moe_config.ts) are named, in order,
 * `backbone.layers.{i}.moe.router.weight` (E, D), then per expert e
 * `backbone.layers.{i}.moe.experts.{e}.w1.weight` (H, D), `….w3.weight` (H, D), `….w2.weight`
 * (D, H), then `backbone.layers.{i}.norm.weight` (D): y = w2·(silu(w1·x) ⊙ w3·x).
 * Router and expert matrices decay; the norm does not.
 */
import type { MambaConfig } from "./config.ts";
import { isMoeBlock } from "./moe_config.ts";
import { Random } from "./random.ts";

/** How a tensor is initialised (the seed's / PyTorch's defaults). */
export type Init =
  | { kind: "normal"; std: number } // nn.Embedding
  | { kind: "uniform"; bound: number } // nn.Linear / nn.Conv1d: ±1/sqrt(fan_in)
  | { kind: "constant"; value: number }
  | { kind: "dt_bias" } // inverse softplus of Δ ~ logU[dt_min, dt_max], floored
  | { kind: "a_log" }; // log(1..N) for every channel

export interface ParamSpec {
  /** Checkpoint name, e.g. "backbone.layers.3.mixer.in_proj.weight". */
  name: string;
  shape: number[];
  /** Offset in the flat buffer, in elements (aligned to ALIGN). */
  offset: number;
  size: number;
  init: Init;
  /** Matrices and kernels decay; biases, norms, A_log and D do not. */
  decay: boolean;
}

/** Offsets are multiples of 64 floats (256 bytes): WebGPU binding offsets need it. */
export const ALIGN = 64;

/** The tensors of one residual Mamba block, by role. */
export interface LayerParams {
  kind: "mamba";
  norm: ParamSpec;
  inProj: ParamSpec;
  inProjBias: ParamSpec | null;
  convWeight: ParamSpec;
  convBias: ParamSpec | null;
  xProj: ParamSpec;
  dtProj: ParamSpec;
  dtBias: ParamSpec;
  aLog: ParamSpec;
  d: ParamSpec;
  outProj: ParamSpec;
  outProjBias: ParamSpec | null;
}

/** One SwiGLU expert: (H, D), (H, D), (D, H). */
export interface ExpertParams {
  w1: ParamSpec;
  w3: ParamSpec;
  w2: ParamSpec;
}

/** The tensors of one residual MoE-MLP block, by role. */
export interface MoeLayerParams {
  kind: "moe";
  norm: ParamSpec;
  /** (E, D) */
  router: ParamSpec;
  experts: ExpertParams[];
}

/** A residual block of either kind. */
export type BlockParams = LayerParams | MoeLayerParams;

/** The whole table plus the tensors by role. */
export interface ParamTable {
  specs: ParamSpec[];
  /** Total floats in the flat buffer (with alignment padding). */
  size: number;
  /** Number of parameters (without padding). */
  count: number;
  layers: BlockParams[];
  /** MambaByte only: (256, D) embedding, final norm, (256, D) head. */
  embedding: ParamSpec | null;
  normF: ParamSpec | null;
  lmHead: ParamSpec | null;
}

/**
 * The table for a residual stack (`lm` false: names "layers.{i}.…", the seed's Mamba) or for
 * the byte LM (`lm` true: "backbone.…" and "lm_head.weight", mamba_ssm's names).
 */
export function paramTable(config: MambaConfig, lm: boolean): ParamTable {
  const { dim: D, d_inner: ED, d_state: N, dt_rank: R, d_conv: K } = config;
  const specs: ParamSpec[] = [];
  let offset = 0;
  const add = (name: string, shape: number[], init: Init, decay: boolean): ParamSpec => {
    const size = shape.reduce((a, b) => a * b, 1);
    const spec = { name, shape, offset, size, init, decay };
    specs.push(spec);
    offset += Math.ceil(size / ALIGN) * ALIGN;
    return spec;
  };
  const linear = (fanIn: number): Init => ({ kind: "uniform", bound: 1 / Math.sqrt(fanIn) });
  const prefix = lm ? "backbone." : "";

  const embedding = lm ? add(`${prefix}embedding.weight`, [256, D], { kind: "normal", std: 1 }, true) : null;
  const layers: BlockParams[] = [];
  for (let i = 0; i < config.depth; i++) {
    const p = `${prefix}layers.${i}.`;
    if (isMoeBlock(config.moe, i)) {
      const { experts: E, hidden: H } = config.moe!;
      layers.push({
        kind: "moe",
        router: add(`${p}moe.router.weight`, [E, D], linear(D), true),
        experts: Array.from({ length: E }, (_, e) => ({
          w1: add(`${p}moe.experts.${e}.w1.weight`, [H, D], linear(D), true),
          w3: add(`${p}moe.experts.${e}.w3.weight`, [H, D], linear(D), true),
          w2: add(`${p}moe.experts.${e}.w2.weight`, [D, H], linear(H), true),
        })),
        norm: add(`${p}norm.weight`, [D], { kind: "constant", value: 1 }, false),
      });
      continue;
    }
    const dtStd = R ** -0.5 * config.dt_scale;
    layers.push({
      kind: "mamba",
      inProj: add(`${p}mixer.in_proj.weight`, [2 * ED, D], linear(D), true),
      inProjBias: config.bias ? add(`${p}mixer.in_proj.bias`, [2 * ED], linear(D), false) : null,
      // PyTorch's Conv1d(groups=ED): fan_in = in_channels/groups · K = K.
      convWeight: add(`${p}mixer.conv1d.weight`, [ED, 1, K], linear(K), true),
      convBias: config.conv_bias ? add(`${p}mixer.conv1d.bias`, [ED], linear(K), false) : null,
      xProj: add(`${p}mixer.x_proj.weight`, [R + 2 * N, ED], linear(ED), true),
      dtProj: add(
        `${p}mixer.dt_proj.weight`,
        [ED, R],
        config.dt_init === "constant"
          ? { kind: "constant", value: dtStd }
          : { kind: "uniform", bound: dtStd },
        true,
      ),
      dtBias: add(`${p}mixer.dt_proj.bias`, [ED], { kind: "dt_bias" }, false),
      aLog: add(`${p}mixer.A_log`, [ED, N], { kind: "a_log" }, false),
      d: add(`${p}mixer.D`, [ED], { kind: "constant", value: 1 }, false),
      outProj: add(`${p}mixer.out_proj.weight`, [D, ED], linear(ED), true),
      outProjBias: config.bias ? add(`${p}mixer.out_proj.bias`, [D], linear(ED), false) : null,
      norm: add(`${p}norm.weight`, [D], { kind: "constant", value: 1 }, false),
    });
  }
  const normF = lm ? add(`${prefix}norm_f.weight`, [D], { kind: "constant", value: 1 }, false) : null;
  const lmHead = lm ? add("lm_head.weight", [256, D], linear(D), true) : null;
  const count = specs.reduce((a, s) => a + s.size, 0);
  return { specs, size: offset, count, layers, embedding, normF, lmHead };
}

/** The initial values of every parameter, laid out in one flat array. */
export function initParams(table: ParamTable, config: MambaConfig, seed: number): Float32Array {
  const flat = new Float32Array(table.size);
  const rng = new Random(seed);
  for (const spec of table.specs) {
    const t = flat.subarray(spec.offset, spec.offset + spec.size);
    const init = spec.init;
    switch (init.kind) {
      case "normal":
        for (let i = 0; i < t.length; i++) t[i] = init.std * rng.normal();
        break;
      case "uniform":
        for (let i = 0; i < t.length; i++) t[i] = rng.uniform(-init.bound, init.bound);
        break;
      case "constant":
        t.fill(init.value);
        break;
      case "dt_bias": {
        const logMin = Math.log(config.dt_min), logMax = Math.log(config.dt_max);
        for (let i = 0; i < t.length; i++) {
          const dt = Math.max(Math.exp(rng.uniform(logMin, logMax)), config.dt_init_floor);
          t[i] = dt + Math.log(-Math.expm1(-dt)); // inverse of softplus
        }
        break;
      }
      case "a_log": {
        const N = spec.shape[1];
        for (let i = 0; i < t.length; i++) t[i] = Math.log((i % N) + 1);
        break;
      }
      default:
        init satisfies never;
    }
  }
  return flat;
}

/** Contiguous runs of the flat buffer with one weight-decay setting (for the optimizer). */
export function decayRuns(table: ParamTable): { offset: number; length: number; decay: boolean }[] {
  const runs: { offset: number; length: number; decay: boolean }[] = [];
  for (const spec of table.specs) {
    const last = runs[runs.length - 1];
    if (last && last.decay === spec.decay && last.offset + last.length === spec.offset) {
      last.length = spec.offset + Math.ceil(spec.size / ALIGN) * ALIGN - last.offset;
    } else {
      runs.push({
        offset: spec.offset,
        length: Math.ceil(spec.size / ALIGN) * ALIGN,
        decay: spec.decay,
      });
    }
  }
  return runs;
}
