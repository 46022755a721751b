/**
 * MambaConfig: the seed's fields, names and defaults, the derived fields, and validation.
 * The optional `moe` field turns the stack into BlackMamba (see lib/moe_config.ts).
 *
 * Glossary (paper symbol → field): D = dim, N = d_state, E = expand_factor, ED = d_inner,
 * R = dt_rank, K = d_conv.
 */
import { type MoeConfigOptions, type MoeSettings, resolveMoe } from "./moe_config.ts";

/** What a user may pass to `new MambaConfig(…)`. `dim` and `depth` are required. */
export interface MambaConfigOptions {
  /** D: model width. */
  dim: number;
  /** Number of residual blocks (Mamba blocks, plus the MoE blocks when `moe` is set). */
  depth: number;
  /** R: rank of the Δ projection; "auto" → ceil(dim / 16). */
  dt_rank?: number | "auto";
  /** N: state size per channel. */
  d_state?: number;
  /** E: inner width is E·D. */
  expand_factor?: number;
  /** K: width of the causal depthwise convolution. */
  d_conv?: number;

  /** Δ is initialised log-uniform in [dt_min, dt_max]. */
  dt_min?: number;
  dt_max?: number;
  /** How dt_proj.weight is initialised: uniform ±σ ("random") or constant σ. */
  dt_init?: "random" | "constant";
  /** σ = dt_rank^-0.5 · dt_scale. */
  dt_scale?: number;
  /** Lower bound on the initial Δ. */
  dt_init_floor?: number;

  /** Bias in in_proj and out_proj. */
  bias?: boolean;
  /** Bias in the depthwise convolution. */
  conv_bias?: boolean;

  /** Training scan: parallel (log-depth) when true, sequential when false. Same numbers. */
  pscan?: boolean;

  /** BlackMamba: every `moe.every`-th block is a routed mixture of SwiGLU experts. Absent: MambaByte. */
  moe?: MoeConfigOptions;
}

/** What `toJSON` returns (and checkpoints store): every field resolved; `moe` only when set. */
export type MambaConfigJSON = Required<Omit<MambaConfigOptions, "moe">> & { moe?: MoeSettings };

/** Bytes: the vocabulary of MambaByte. */
export const VOCAB_SIZE = 256;

const DEFAULTS = {
  dt_rank: "auto" as number | "auto",
  d_state: 16,
  expand_factor: 2,
  d_conv: 4,
  dt_min: 0.001,
  dt_max: 0.1,
  dt_init: "random" as "random" | "constant",
  dt_scale: 1.0,
  dt_init_floor: 1e-4,
  bias: false,
  conv_bias: true,
  pscan: true,
};

const FIELDS = ["dim", "depth", ...Object.keys(DEFAULTS), "moe"] as const;

/** A resolved, validated configuration. Immutable once built. */
export class MambaConfig {
  readonly dim: number;
  readonly depth: number;
  readonly dt_rank: number;
  readonly d_state: number;
  readonly expand_factor: number;
  readonly d_conv: number;
  readonly dt_min: number;
  readonly dt_max: number;
  readonly dt_init: "random" | "constant";
  readonly dt_scale: number;
  readonly dt_init_floor: number;
  readonly bias: boolean;
  readonly conv_bias: boolean;
  readonly pscan: boolean;
  /** The mixture-of-experts settings, or null for plain MambaByte. */
  readonly moe: MoeSettings | null;

  /** ED = expand_factor · dim. */
  readonly d_inner: number;
  /** 256 byte values. */
  readonly vocab_size = VOCAB_SIZE;

  constructor(options: MambaConfigOptions) {
    if (options === null || typeof options !== "object") {
      throw new Error("MambaConfig: expected an object with at least { dim, depth }");
    }
    for (const key of Object.keys(options)) {
      if (!(FIELDS as readonly string[]).includes(key)) {
        throw new Error(
          `MambaConfig: unknown field "${key}"; allowed fields are ${FIELDS.join(", ")}`,
        );
      }
    }
    const o = { ...DEFAULTS, ...options };
    this.dim = positiveInt("dim", o.dim);
    this.depth = positiveInt("depth", o.depth);
    this.d_state = positiveInt("d_state", o.d_state);
    this.expand_factor = positiveInt("expand_factor", o.expand_factor);
    this.d_conv = positiveInt("d_conv", o.d_conv);
    this.dt_rank = o.dt_rank === "auto"
      ? Math.ceil(this.dim / 16)
      : positiveInt("dt_rank", o.dt_rank, 'or "auto"');
    this.dt_min = positiveNumber("dt_min", o.dt_min);
    this.dt_max = positiveNumber("dt_max", o.dt_max);
    if (this.dt_min >= this.dt_max) {
      throw new Error(
        `MambaConfig: dt_min (${this.dt_min}) must be smaller than dt_max (${this.dt_max})`,
      );
    }
    if (o.dt_init !== "random" && o.dt_init !== "constant") {
      throw new Error(
        `MambaConfig: dt_init is ${JSON.stringify(o.dt_init)}; allowed: "random" or "constant"`,
      );
    }
    this.dt_init = o.dt_init;
    this.dt_scale = positiveNumber("dt_scale", o.dt_scale);
    this.dt_init_floor = positiveNumber("dt_init_floor", o.dt_init_floor);
    this.bias = bool("bias", o.bias);
    this.conv_bias = bool("conv_bias", o.conv_bias);
    this.pscan = bool("pscan", o.pscan);
    this.moe = options.moe === undefined ? null : resolveMoe(options.moe, this.dim, this.depth);
    this.d_inner = this.expand_factor * this.dim;
    Object.freeze(this);
  }

  /** The seed's fields with resolved values: what checkpoints store. */
  toJSON(): MambaConfigJSON {
    return {
      dim: this.dim,
      depth: this.depth,
      dt_rank: this.dt_rank,
      d_state: this.d_state,
      expand_factor: this.expand_factor,
      d_conv: this.d_conv,
      dt_min: this.dt_min,
      dt_max: this.dt_max,
      dt_init: this.dt_init,
      dt_scale: this.dt_scale,
      dt_init_floor: this.dt_init_floor,
      bias: this.bias,
      conv_bias: this.conv_bias,
      pscan: this.pscan,
      ...(this.moe ? { moe: this.moe } : {}),
    };
  }
}

function positiveInt(field: string, value: unknown, alternative = ""): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1) {
    const also = alternative ? ` ${alternative}` : "";
    throw new Error(
      `MambaConfig: ${field} is ${JSON.stringify(value)}; it must be a positive integer${also}`,
    );
  }
  return value;
}

function positiveNumber(field: string, value: unknown): number {
  if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) {
    throw new Error(
      `MambaConfig: ${field} is ${JSON.stringify(value)}; it must be a finite number > 0`,
    );
  }
  return value;
}

function bool(field: string, value: unknown): boolean {
  if (typeof value !== "boolean") {
    throw new Error(`MambaConfig: ${field} is ${JSON.stringify(value)}; it must be true or false`);
  }
  return value;
}
