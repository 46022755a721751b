/**
 * The mixture-of-experts part of MambaConfig (BlackMamba: Mamba blocks alternating with routed
 * SwiGLU expert MLPs): its fields, defaults, validation, and the layer layout they imply.
 *
 * Layout: `depth` counts every residual block, Mamba and MoE alike (BlackMamba's num_layers).
 * Block i (0-based) is an MoE-MLP block when (i + 1) % every === 0, a Mamba block otherwise;
 * with every = 2 the stack reads Mamba, MoE, Mamba, MoE, … (BlackMamba's "r", "8", "r", "8").
 */

/** What a user may pass as `moe` in MambaConfigOptions. `experts` is required. */
export interface MoeConfigOptions {
  /** E: experts per MoE block. */
  experts: number;
  /** k: experts each byte position is routed to (1 ≤ k ≤ E). */
  top_k?: number;
  /** Every `every`-th block is an MoE block (≥ 2: the others are Mamba blocks). */
  every?: number;
  /** H: hidden width of each SwiGLU expert; default 4·dim. */
  hidden?: number;
  /** Weight of the Switch load-balancing loss (mean over MoE blocks) in the training loss. */
  aux_loss_coef?: number;
  /**
   * Each expert takes at most ceil(capacity_factor · tokens · k / E) of a forward pass's tokens
   * (training and evaluation); the rest are dropped. Decode (`step`) never drops.
   */
  capacity_factor?: number;
}

/** Resolved MoE settings (every field present). */
export type MoeSettings = Readonly<Required<MoeConfigOptions>>;

/** Defaults of the optional fields (`hidden` defaults to 4·dim). */
export const MOE_DEFAULTS = {
  top_k: 1,
  every: 2,
  aux_loss_coef: 0.01, // Switch Transformer's α
  capacity_factor: 1.25, // Switch Transformer's training capacity factor
};

const MOE_FIELDS = ["experts", ...Object.keys(MOE_DEFAULTS), "hidden"];

/** Validates `moe` options against the model (`dim`, `depth`); errors name the field and the rule. */
export function resolveMoe(options: unknown, dim: number, depth: number): MoeSettings {
  const fail = (message: string): never => {
    throw new Error(`MambaConfig: moe.${message}`);
  };
  if (options === null || typeof options !== "object" || Array.isArray(options)) {
    throw new Error(
      `MambaConfig: moe is ${JSON.stringify(options)}; it must be an object like { experts: 8 }`,
    );
  }
  for (const key of Object.keys(options)) {
    if (!MOE_FIELDS.includes(key)) {
      fail(`${key} is unknown; allowed fields are ${MOE_FIELDS.join(", ")}`);
    }
  }
  const o = { ...MOE_DEFAULTS, hidden: 4 * dim, ...(options as MoeConfigOptions) };
  const int = (field: string, value: unknown, min: number, max = Infinity, why = ""): number => {
    if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
      const range = max === Infinity ? `an integer ≥ ${min}` : `an integer from ${min} to ${max}`;
      fail(`${field} is ${JSON.stringify(value)}; it must be ${range}${why}`);
    }
    return value as number;
  };
  const experts = int("experts", o.experts, 1);
  const top_k = int("top_k", o.top_k, 1, experts, " (the number of experts)");
  const every = int("every", o.every, 2, depth, " (depth: at least one Mamba block and one MoE block)");
  const hidden = int("hidden", o.hidden, 1);
  if (typeof o.aux_loss_coef !== "number" || !Number.isFinite(o.aux_loss_coef) || o.aux_loss_coef < 0) {
    fail(`aux_loss_coef is ${JSON.stringify(o.aux_loss_coef)}; it must be a finite number ≥ 0`);
  }
  if (
    typeof o.capacity_factor !== "number" || !Number.isFinite(o.capacity_factor) || o.capacity_factor <= 0
  ) {
    fail(`capacity_factor is ${JSON.stringify(o.capacity_factor)}; it must be a finite number > 0`);
  }
  return Object.freeze({
    experts,
    top_k,
    every,
    hidden,
    aux_loss_coef: o.aux_loss_coef,
    capacity_factor: o.capacity_factor,
  });
}

/** Whether block `index` (0-based) of the stack is an MoE-MLP block. */
export function isMoeBlock(moe: MoeSettings | null, index: number): boolean {
  return moe !== null && (index + 1) % moe.every === 0;
}

/** How many of a stack's `depth` blocks are MoE blocks. */
export function moeBlockCount(moe: MoeSettings | null, depth: number): number {
  return moe ? Math.floor(depth / moe.every) : 0;
}

/**
 * C, the rows each expert processes for `tokens` routed positions:
 * ceil(capacity_factor · tokens · k / E), at most `tokens` (an expert is picked once per token).
 */
export function expertCapacity(moe: MoeSettings, tokens: number): number {
  const c = Math.ceil((moe.capacity_factor * tokens * moe.top_k) / moe.experts);
  return Math.max(1, Math.min(tokens, c));
}
