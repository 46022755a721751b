/**
 * The backend contract: device memory plus a fixed set of coarse, fused ops, each with its
 * backward. lib/model.ts is written only against this interface.
 *
 * Conventions (the same on every backend):
 * - Data is row-major; "(B, L, C)" means index ((b·L + t)·C + c). Every buffer holds float32
 *   elements (the CPU backend can hold float64 for gradient checks), except IndexBuffer (int32).
 * - Outputs come first, then inputs, then dimensions (llm.c's order).
 * - A backward op OVERWRITES the gradients of activations (dx, du, …) unless its doc says "+=",
 *   and always ACCUMULATES (+=) into parameter gradients (dweight, dbias, dA_log, dD, …).
 * - A "stride" is the distance in elements between consecutive rows of a strided view: it lets
 *   ops read B and C inside x_proj's output (B·L, R + 2N), or z inside in_proj's (B·L, 2ED).
 * - Buffers are views: `view(buffer, offset, length)` shares memory with `buffer` (`viewIndices`
 *   for index buffers).
 * - Nothing is read back to the host except by `read` / `readIndices` / `sumOfSquares`.
 */
import type { SamplingOptions } from "./sample.ts";

/**
 * The 16-bit float formats of storage and matmul inputs: "bf16" keeps fp32's 8-bit exponent and 7
 * mantissa bits (fp32's range, about 1e-2 relative); "f16" (IEEE half) a 5-bit exponent and 10
 * mantissa bits (about 1e-3 relative, but finite only up to 65504, and subnormal below 6.1e-5).
 */
export type HalfFormat = "bf16" | "f16";

/** Every HalfFormat. */
export const HALF_FORMATS: readonly HalfFormat[] = ["bf16", "f16"];

/**
 * How a backend's training matmuls round their inputs: "fp32" exact; "tf32" (10 mantissa bits
 * kept), "bf16" and "f16" (HalfFormat) on tensor cores; sums in fp32 whichever is chosen.
 */
export type MatmulPrecision = "fp32" | "tf32" | HalfFormat;

/** The HalfFormat of a precision whose matmuls read 16-bit inputs; null for fp32 and tf32. */
export function halfFormatOf(precision: MatmulPrecision | undefined): HalfFormat | null {
  return precision === "bf16" || precision === "f16" ? precision : null;
}

/** Device ops recorded once and replayed (Backend.capture). */
export interface RecordedOps {
  replay(): void;
  free(): void;
}

/** Where the model runs. */
export type Device = "cpu" | "webgpu" | "cuda";

/** Every device, in the order "auto" tries them. */
export const DEVICES: readonly Device[] = ["cuda", "webgpu", "cpu"];

/** Opaque handle to device memory holding `length` floats. */
export interface DeviceBuffer {
  readonly length: number;
}

/**
 * Opaque handle to device memory holding `length` int32 indices (byte values), or 8-bit codes
 * packed four to a word (lib/quant8.ts).
 */
export interface IndexBuffer {
  readonly length: number;
}

/** Host-side float arrays that `read` returns. */
export type FloatArray = Float32Array | Float64Array;

export interface MatmulOptions {
  /** A is stored (K, M) and used transposed. */
  transA?: boolean;
  /** B is stored (N, K) and used transposed (a Linear layer's weight). */
  transB?: boolean;
  /** C += A·B instead of C = A·B. */
  accumulate?: boolean;
  /** Row strides of the stored matrices; default: packed (the stored row length). */
  lda?: number;
  ldb?: number;
  ldc?: number;
  /**
   * A (B) holds 16-bit values in the format of the matmul precision (halfFormatOf), as packHalf
   * stores them, strides counted in values: it is used as is instead of being rounded again. Only
   * with matmul precision "bf16" or "f16" (see checkHalfOperands).
   */
  aHalf?: boolean;
  bHalf?: boolean;
}

/** Floats of storage that `n` 16-bit values take (two per float): a packHalf destination's length. */
export function halfFloats(n: number): number {
  return Math.ceil(n / 2);
}

/**
 * Throws unless `format` is a HalfFormat, n a count, `packed` has room for n 16-bit values and
 * `values` holds n floats.
 */
export function checkHalfLengths(
  op: string,
  packed: DeviceBuffer,
  values: DeviceBuffer,
  n: number,
  format: HalfFormat,
): void {
  if (!HALF_FORMATS.includes(format)) {
    throw new Error(`${op}: unknown 16-bit format "${format}"; choose ${HALF_FORMATS.join(" or ")}`);
  }
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`${op}: n must be an integer >= 0, not ${n}`);
  if (values.length < n) {
    throw new RangeError(`${op}: ${n} values, but the fp32 buffer holds ${values.length}`);
  }
  if (packed.length < halfFloats(n)) {
    throw new RangeError(
      `${op}: ${n} ${format} values need ${
        halfFloats(n)
      } floats of storage, but the packed buffer has ${packed.length}`,
    );
  }
}

/** Throws unless a matmul with 16-bit-stored operands runs at a 16-bit matmul precision. */
export function checkHalfOperands(device: string, precision: MatmulPrecision, options: MatmulOptions): void {
  if ((options.aHalf || options.bHalf) && !halfFormatOf(precision)) {
    throw new Error(
      `${device}: a matmul with 16-bit-stored operands (aHalf/bHalf) needs matmul precision bf16 or f16, ` +
        `not ${precision}: call setMatmulPrecision("bf16") or setMatmulPrecision("f16") first`,
    );
  }
}

/** The most rows (sequences) rmsnormMatmul and rmsnormMatmulInt8 take: decode's batch. */
export const NORMED_MATMUL_MAX_ROWS = 8;

/**
 * The decode conv step fused into rmsnormMatmul(Int8): after the product, columns 0..channels-1 of
 * each row of C (M, N) (row stride N) take conv1dSiluStep(out, state, C, weight, bias, M, channels,
 * width, N): out (M, channels) = silu(conv over [state, C[:, :channels]]), then the state shifts
 * left and takes those columns. C itself is written as without it. Decode is bound by launches,
 * and this saves one per layer.
 */
export interface ConvStepOperands {
  /** (M, channels), overwritten. */
  out: DeviceBuffer;
  /** (M, channels, width - 1): each channel's last width - 1 inputs, oldest first; updated. */
  state: DeviceBuffer;
  /** (channels, width). */
  weight: DeviceBuffer;
  /** (channels), or null for none. */
  bias: DeviceBuffer | null;
  /** 1 ≤ channels ≤ N. */
  channels: number;
  /** d_conv: 1 ≤ width ≤ CONV_STEP_MAX_WIDTH. */
  width: number;
}

/** The widest conv (d_conv) that rmsnormMatmul and rmsnormMatmulInt8 fuse (ConvStepOperands). */
export const CONV_STEP_MAX_WIDTH = 8;

/**
 * Throws a RangeError unless rmsnormMatmul's operands fit (M, N) = rmsnorm(A (M, K)) · W (N, K)ᵀ
 * with M ≤ NORMED_MATMUL_MAX_ROWS; `weights` names W's buffers with the values each needs (fp32:
 * W, N·K floats; int8: codes, ⌈K/4⌉·N words, and scales, N floats); `conv`, if given, must fit
 * its M rows and N columns.
 */
export function checkRmsnormMatmul(
  op: string,
  c: DeviceBuffer,
  a: DeviceBuffer,
  norm: DeviceBuffer,
  weights: [string, { length: number }, number][],
  m: number,
  n: number,
  k: number,
  conv?: ConvStepOperands,
): void {
  const shape = `${op} (M=${m}, N=${n}, K=${k})`;
  if (![m, n, k].every((d) => Number.isInteger(d) && d >= 1) || m > NORMED_MATMUL_MAX_ROWS) {
    throw new RangeError(`${shape}: needs integers >= 1 and M <= ${NORMED_MATMUL_MAX_ROWS} (a decode step)`);
  }
  const needs: [string, number, number][] = [
    ["A", a.length, m * k],
    ["norm", norm.length, k],
    ...weights.map(([name, buffer, needed]): [string, number, number] => [name, buffer.length, needed]),
    ["C", c.length, m * n],
  ];
  if (conv) {
    const { channels: C, width: K } = conv;
    if (!Number.isInteger(C) || C < 1 || C > n || !Number.isInteger(K) || K < 1 || K > CONV_STEP_MAX_WIDTH) {
      throw new RangeError(
        `${shape}: conv step of ${C} channels, width ${K} (needs integers 1 <= channels <= N ` +
          `and 1 <= width <= ${CONV_STEP_MAX_WIDTH})`,
      );
    }
    needs.push(
      ["conv out", conv.out.length, m * C],
      ["conv state", conv.state.length, m * C * (K - 1)],
      ["conv weight", conv.weight.length, C * K],
    );
    if (conv.bias) needs.push(["conv bias", conv.bias.length, C]);
  }
  for (const [name, has, needed] of needs) {
    if (has < needed) throw new RangeError(`${shape}: ${name} holds ${has} values, needs ${needed}`);
  }
}

/** Options of matmulInt8 (C = A·dequant(W)ᵀ, W a Linear weight in int8). */
export interface Int8MatmulOptions {
  /** C += A·dequant(W)ᵀ instead of C = A·dequant(W)ᵀ. */
  accumulate?: boolean;
  /** Row stride of A; default K. */
  lda?: number;
}

/** Dimensions of the fused selective scan. */
export interface ScanDims {
  /** B */
  batch: number;
  /** L */
  length: number;
  /** ED */
  channels: number;
  /** N */
  state: number;
  /** Row stride of the B and C views (R + 2N inside x_proj's output). */
  bcStride: number;
  /** Row stride of the z view (2ED inside in_proj's output). */
  zStride: number;
  /** Parallel (log-depth, work-efficient) scan over L when true, sequential when false. */
  parallel: boolean;
}

/** Dimensions of a decode step of the selective scan. */
export interface ScanStepDims extends Omit<ScanDims, "length" | "parallel"> {
  /** R: dt_proj's input width (dt_rank). */
  rank: number;
}

/** Dimensions of the causal depthwise convolution. */
export interface ConvDims {
  /** B */
  batch: number;
  /** L */
  length: number;
  /** ED */
  channels: number;
  /** K = d_conv */
  width: number;
  /** Row stride of the input view (2ED inside in_proj's output). */
  xStride: number;
}

export interface AdamWOptions {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1-based step count, for bias correction. */
  step: number;
  /** Gradients are multiplied by this before use (clipping and accumulation folded in). */
  gradScale: number;
}

/** Dimensions of a routed mixture-of-experts block. */
export interface MoeDims {
  /** T: routed positions (B·L in training, B in decode). */
  rows: number;
  /** E */
  experts: number;
  /** k: experts per position. */
  topK: number;
  /** C: rows per expert; expert e owns rows [e·C, (e+1)·C) of the dispatched buffers. */
  capacity: number;
  /** D: width of the rows that are gathered and scattered. */
  dim: number;
}

/**
 * The optional mixture-of-experts ops (BlackMamba). Routing state stays on the device:
 * - `choice` (T, k) int32: the experts picked for each position, best first;
 * - `slot` (T, k) int32: where that choice sits in the (E·C) dispatched rows, or -1 if dropped;
 * - `slotRows` (E·C) int32: the position each dispatched row came from, or -1 if empty.
 * Expert MLPs run as one matmul per expert over its C rows (empty rows are zero).
 */
export interface MoeOps {
  /**
   * From router logits (T, E): probs (T, E) = softmax over all experts; choice = top k
   * (ties: lower expert first); gates (T, k) = softmax over the chosen logits. Positions are
   * dispatched in order t = 0, 1, … (and choice order within t), each expert taking the first
   * C; later ones are dropped (slot -1), so no position's dispatch depends on later positions.
   * stats (2) = [aux, dropped]: aux = E · Σ_e f_e·P_e (Switch), f_e the fraction of the T·k
   * choices that picked e (before dropping), P_e the mean of probs[:, e]; dropped = number of
   * choices beyond capacity.
   */
  route(
    gates: DeviceBuffer,
    choice: IndexBuffer,
    slot: IndexBuffer,
    slotRows: IndexBuffer,
    probs: DeviceBuffer,
    stats: DeviceBuffer,
    logits: DeviceBuffer,
    dims: MoeDims,
  ): void;
  /**
   * dlogits (T, E) overwritten: through the gates' softmax over the chosen logits (from dgates),
   * plus auxScale · ∂aux/∂logits through probs (f_e is a constant: counts of choices).
   */
  routeBackward(
    dlogits: DeviceBuffer,
    dgates: DeviceBuffer,
    gates: DeviceBuffer,
    choice: IndexBuffer,
    probs: DeviceBuffer,
    auxScale: number,
    dims: MoeDims,
  ): void;
  /** xe (E·C, D) = x[slotRows] (zero rows where slotRows is -1); x (T, D). */
  gather(xe: DeviceBuffer, x: DeviceBuffer, slotRows: IndexBuffer, dims: MoeDims): void;
  /** dx (T, D) += the rows of dxe (E·C, D) sent back to their positions. */
  gatherBackward(dx: DeviceBuffer, dxe: DeviceBuffer, slotRows: IndexBuffer, dims: MoeDims): void;
  /** out (T, D) += Σ_j gates[t, j] · ye[slot[t, j]] over the choices not dropped. */
  scatter(out: DeviceBuffer, ye: DeviceBuffer, gates: DeviceBuffer, slot: IndexBuffer, dims: MoeDims): void;
  /**
   * dye (E·C, D) overwritten (zero for empty rows): gates · dout of its position;
   * dgates (T, k) overwritten: dout[t] · ye[slot] (0 when dropped).
   */
  scatterBackward(
    dye: DeviceBuffer,
    dgates: DeviceBuffer,
    dout: DeviceBuffer,
    ye: DeviceBuffer,
    gates: DeviceBuffer,
    slot: IndexBuffer,
    dims: MoeDims,
  ): void;
  /** act = silu(h1) ⊙ h3, elementwise over `length` values. */
  swiglu(act: DeviceBuffer, h1: DeviceBuffer, h3: DeviceBuffer, length: number): void;
  /** dh1, dh3 overwritten from dact. */
  swigluBackward(
    dh1: DeviceBuffer,
    dh3: DeviceBuffer,
    dact: DeviceBuffer,
    h1: DeviceBuffer,
    h3: DeviceBuffer,
    length: number,
  ): void;
}

/** A backend: memory and the ops of the model. See the conventions above. */
export interface Backend {
  readonly device: Device;
  /** A human-readable description of the hardware (adapter name, GPU name, "cpu"). */
  readonly description: string;
  /** Mixture-of-experts ops, on backends that have them (needed by configs with `moe`). */
  readonly moe?: MoeOps;
  /**
   * On backends that can: records the device ops that `record` enqueues (no host reads or
   * writes inside) so that `replay()` reruns them with one launch, on the same buffers.
   */
  capture?(record: () => void): RecordedOps;
  /**
   * On backends with reduced-precision matmuls (cuda): how the training matmuls round their
   * inputs from now on (see MatmulPrecision). Buffers stay fp32 whatever is chosen.
   */
  setMatmulPrecision?(precision: MatmulPrecision): void;
  /** The precision setMatmulPrecision chose last ("fp32" before); absent where there is no choice. */
  readonly matmulPrecision?: MatmulPrecision;
  /**
   * On backends with 16-bit matmuls: dst ← the n values of src rounded to `format` (to nearest,
   * ties to even; f16 beyond 65504 becomes ±infinity), two per float of dst (halfFloats(n) floats;
   * value j in bytes 2j, 2j + 1): what matmul's aHalf/bHalf read at that precision. Training with
   * 16-bit matmuls saves activations this way.
   */
  packHalf?(dst: DeviceBuffer, src: DeviceBuffer, n: number, format: HalfFormat): void;
  /** dst (n floats) ← the n `format` values that packHalf stored in src. */
  unpackHalf?(dst: DeviceBuffer, src: DeviceBuffer, n: number, format: HalfFormat): void;

  // ---- memory ----
  /** A new zero-filled buffer of `length` floats. */
  alloc(length: number): DeviceBuffer;
  /** A new zero-filled buffer of `length` int32 indices. */
  allocIndices(length: number): IndexBuffer;
  /** A view of `length` floats of `buffer` starting at element `offset`. */
  view(buffer: DeviceBuffer, offset: number, length: number): DeviceBuffer;
  /** A view of `length` int32 words of an index buffer starting at word `offset`. */
  viewIndices(buffer: IndexBuffer, offset: number, length: number): IndexBuffer;
  write(dst: DeviceBuffer, src: ArrayLike<number>): void;
  /** Any int32 words: byte tokens, or packed codes (lib/quantize.ts, lib/quant8.ts). */
  writeIndices(dst: IndexBuffer, src: ArrayLike<number>): void;
  read(src: DeviceBuffer): Promise<FloatArray>;
  readIndices(src: IndexBuffer): Promise<Int32Array>;
  fill(dst: DeviceBuffer, value: number): void;
  /** dst ← src (same length). */
  copy(dst: DeviceBuffer, src: DeviceBuffer): void;
  /** Releases a buffer allocated by alloc/allocIndices (not a view). */
  free(buffer: DeviceBuffer | IndexBuffer): void;
  /** Releases everything this backend holds. */
  dispose(): void;

  // ---- dense ----
  /** C (M, N) = op(A) (M, K) · op(B) (K, N), or += with `accumulate`. */
  matmul(
    c: DeviceBuffer,
    a: DeviceBuffer,
    b: DeviceBuffer,
    m: number,
    n: number,
    k: number,
    options?: MatmulOptions,
  ): void;
  /** out (rows, cols) += bias (cols), broadcast over rows. */
  addBias(out: DeviceBuffer, bias: DeviceBuffer, rows: number, cols: number): void;
  /** dbias (cols) += Σ_rows dout (rows, cols). */
  addBiasBackward(dbias: DeviceBuffer, dout: DeviceBuffer, rows: number, cols: number): void;

  // ---- embedding ----
  /** out (rows, dim) = table[tokens[r]] with table (256, dim). */
  embedding(
    out: DeviceBuffer,
    table: DeviceBuffer,
    tokens: IndexBuffer,
    rows: number,
    dim: number,
  ): void;
  /** dtable[tokens[r]] += dout[r]. */
  embeddingBackward(
    dtable: DeviceBuffer,
    dout: DeviceBuffer,
    tokens: IndexBuffer,
    rows: number,
    dim: number,
  ): void;

  // ---- RMSNorm ----
  /** out = x · rstd · weight with rstd (rows) = 1/sqrt(mean(x²) + eps), saved for backward. */
  rmsnorm(
    out: DeviceBuffer,
    rstd: DeviceBuffer,
    x: DeviceBuffer,
    weight: DeviceBuffer,
    rows: number,
    dim: number,
    eps: number,
  ): void;
  /** dx += ∂/∂x, dweight += ∂/∂weight (dx accumulates: it already holds the residual grad). */
  rmsnormBackward(
    dx: DeviceBuffer,
    dweight: DeviceBuffer,
    dout: DeviceBuffer,
    x: DeviceBuffer,
    weight: DeviceBuffer,
    rstd: DeviceBuffer,
    rows: number,
    dim: number,
  ): void;

  // ---- causal depthwise conv1d + SiLU ----
  /** out (B, L, C) = silu(bias[c] + Σ_k weight[c, k] · x[b, t - K + 1 + k, c]), x zero before t=0. */
  conv1dSilu(
    out: DeviceBuffer,
    x: DeviceBuffer,
    weight: DeviceBuffer,
    bias: DeviceBuffer | null,
    dims: ConvDims,
  ): void;
  /** dx (strided like x) overwritten; dweight, dbias +=. Recomputes the pre-activation. */
  conv1dSiluBackward(
    dx: DeviceBuffer,
    dweight: DeviceBuffer,
    dbias: DeviceBuffer | null,
    dout: DeviceBuffer,
    x: DeviceBuffer,
    weight: DeviceBuffer,
    bias: DeviceBuffer | null,
    dims: ConvDims,
  ): void;

  // ---- fused selective scan ----
  /**
   * y (B, L, ED) = (Σ_n h[t, n] · C[t, n] + D ⊙ u) ⊙ silu(z), where
   * δ = softplus(delta + dtBias), A = -exp(A_log) (ED, N),
   * h[t] = exp(δ[t] A) ⊙ h[t-1] + δ[t] B[t] u[t], h[-1] = 0.
   * u, delta: (B, L, ED) packed; B, C: (B, L, N) with row stride bcStride; z: (B, L, ED) with
   * row stride zStride. Never stores (B, L, ED, N).
   */
  selectiveScan(
    y: DeviceBuffer,
    u: DeviceBuffer,
    delta: DeviceBuffer,
    dtBias: DeviceBuffer,
    aLog: DeviceBuffer,
    b: DeviceBuffer,
    c: DeviceBuffer,
    d: DeviceBuffer,
    z: DeviceBuffer,
    dims: ScanDims,
  ): void;
  /**
   * Backward of selectiveScan: du, ddelta, dB, dC, dz overwritten (dB, dC, dz strided like
   * their inputs); ddtBias, daLog, dD +=. Recomputes the states instead of storing them.
   */
  selectiveScanBackward(
    du: DeviceBuffer,
    ddelta: DeviceBuffer,
    ddtBias: DeviceBuffer,
    daLog: DeviceBuffer,
    db: DeviceBuffer,
    dc: DeviceBuffer,
    dd: DeviceBuffer,
    dz: DeviceBuffer,
    dy: DeviceBuffer,
    u: DeviceBuffer,
    delta: DeviceBuffer,
    dtBias: DeviceBuffer,
    aLog: DeviceBuffer,
    b: DeviceBuffer,
    c: DeviceBuffer,
    d: DeviceBuffer,
    z: DeviceBuffer,
    dims: ScanDims,
  ): void;

  // ---- loss ----
  /**
   * Fused softmax cross-entropy over logits (rows, vocab): losses (rows) in nats; when dlogits
   * is given, dlogits = gradScale · (softmax(logits) - onehot(targets)).
   */
  crossEntropy(
    losses: DeviceBuffer,
    dlogits: DeviceBuffer | null,
    logits: DeviceBuffer,
    targets: IndexBuffer,
    rows: number,
    vocab: number,
    gradScale: number,
  ): void;

  // ---- optimizer ----
  /** Σ x², read back to the host (the global gradient norm for clipping). */
  sumOfSquares(x: DeviceBuffer): Promise<number>;
  /** One AdamW update over param/grad/m/v views of equal length (decoupled weight decay). */
  adamw(
    param: DeviceBuffer,
    grad: DeviceBuffer,
    m: DeviceBuffer,
    v: DeviceBuffer,
    options: AdamWOptions,
  ): void;
  /**
   * adamw with 8-bit moments (lib/quant8.ts), over blocks of 256 elements (the last partial):
   * per block, m and v are dequantized from their codes and scales, updated as `adamw` updates
   * them, the parameter updated from the new m and v exactly as `adamw` does, and the new m and v
   * requantized with the block's new absmax. param, grad: (n); mCodes, vCodes: (blocks · 64)
   * int32 words (4 codes each; padding codes 0); scales: (blocks, 2) = absmax of m, absmax of v.
   */
  adamw8bit(
    param: DeviceBuffer,
    grad: DeviceBuffer,
    mCodes: IndexBuffer,
    vCodes: IndexBuffer,
    scales: DeviceBuffer,
    options: AdamWOptions,
  ): void;

  // ---- int8 weights ----
  /**
   * C (M, N) = A (M, K) · dequant(W)ᵀ, or += with `accumulate`, in fp32: W (N, K) is a Linear
   * weight in int8 (lib/quantize.ts), codes (N, ⌈K/4⌉) int32 words, four codes per word
   * (little-endian, rows padded with zero codes), dequant(W)[o, k] = scales[o] · code[o, k].
   * Rows of A are `lda` apart (default K); C is packed (M, N).
   */
  matmulInt8(
    c: DeviceBuffer,
    a: DeviceBuffer,
    codes: IndexBuffer,
    scales: DeviceBuffer,
    m: number,
    n: number,
    k: number,
    options?: Int8MatmulOptions,
  ): void;

  // ---- single-step decode ----
  /**
   * Optional: C (M, N) = rmsnorm(A, norm) · Wᵀ in one op, for decode (M ≤ NORMED_MATMUL_MAX_ROWS):
   * A (M, K) packed, norm (K), W (N, K) fp32; rmsnorm(A)[i] = A[i] · norm / √(mean(A[i]²) + eps),
   * as the rmsnorm op. Decode is bound by launches, and this saves one per layer; without it the
   * model runs rmsnorm, then the matmul. With `conv`, the conv step on C's first columns follows
   * in the same op (ConvStepOperands).
   */
  rmsnormMatmul?(
    c: DeviceBuffer,
    a: DeviceBuffer,
    norm: DeviceBuffer,
    w: DeviceBuffer,
    m: number,
    n: number,
    k: number,
    eps: number,
    conv?: ConvStepOperands,
  ): void;
  /** Optional: rmsnormMatmul with W in int8, codes and scales as matmulInt8's. */
  rmsnormMatmulInt8?(
    c: DeviceBuffer,
    a: DeviceBuffer,
    norm: DeviceBuffer,
    codes: IndexBuffer,
    scales: DeviceBuffer,
    m: number,
    n: number,
    k: number,
    eps: number,
    conv?: ConvStepOperands,
  ): void;
  /**
   * out (B, C) = silu(conv over [state, x]); then state (B, C, K-1) shifts left and takes x.
   * x: (B, C) with row stride xStride.
   */
  conv1dSiluStep(
    out: DeviceBuffer,
    state: DeviceBuffer,
    x: DeviceBuffer,
    weight: DeviceBuffer,
    bias: DeviceBuffer | null,
    batch: number,
    channels: number,
    width: number,
    xStride: number,
  ): void;
  /**
   * One step of selectiveScan with the state h (B, ED, N) updated in place (length = 1), with
   * dt_proj fused in: δ (B, ED) = δr · dt_projᵀ is computed by the op from δr (B, R), whose rows
   * are bcStride apart (the head of x_proj's output, as b and c), and dt_proj (ED, R). Decode is
   * bound by launches, and this saves one per layer.
   */
  selectiveScanStep(
    y: DeviceBuffer,
    h: DeviceBuffer,
    u: DeviceBuffer,
    deltaLowRank: DeviceBuffer,
    dtProj: DeviceBuffer,
    dtBias: DeviceBuffer,
    aLog: DeviceBuffer,
    b: DeviceBuffer,
    c: DeviceBuffer,
    d: DeviceBuffer,
    z: DeviceBuffer,
    dims: ScanStepDims,
  ): void;

  // ---- sampling ----
  /**
   * Draws the next byte of each sequence on the device, exactly as lib/sample.ts's
   * `sampleWithUniform(logits[b], options, uniforms[b])` (rank by logit with ties to the lower
   * byte; temperature 0 is greedy; top-k, then top-p over prefix sums of the weights; the first
   * rank whose prefix sum exceeds uniforms[b] · the kept mass): tokens[b] (the next step's input)
   * and history[b] (the byte as a float, in a block the host reads back at once) are overwritten.
   * logits (B, 256); uniforms (B) in [0, 1), unused when greedy.
   */
  sampleTokens(
    tokens: IndexBuffer,
    history: DeviceBuffer,
    logits: DeviceBuffer,
    uniforms: DeviceBuffer,
    batch: number,
    options: SamplingOptions,
  ): void;
}

/** What `createBackend` accepts: a device, or "auto" for the best one available. */
export type DeviceChoice = Device | "auto";

/**
 * A backend for `device`. "auto" tries cuda, then webgpu on a hardware adapter, then cpu,
 * taking the first that is available (a software Vulkan device such as Mesa's lavapipe is
 * slower than the cpu backend, so "auto" passes it over; ask for "webgpu" to use it anyway).
 * Asking for an unavailable device by name throws an Error that says why.
 */
export async function createBackend(device: DeviceChoice = "auto"): Promise<Backend> {
  if (device === "auto") {
    for (const candidate of DEVICES) {
      const backend = await openBackend(candidate);
      if (backend && !(candidate === "webgpu" && isSoftwareAdapter(backend.description))) return backend;
      backend?.dispose();
    }
    throw new Error("no backend is available (the cpu backend always should be)");
  }
  if (!DEVICES.includes(device)) {
    throw new Error(`unknown backend "${device}"; choose one of auto, ${DEVICES.join(", ")}`);
  }
  if (device === "cuda") {
    // Asked for by name: the error says why (no library built, no driver, no GPU).
    const { openCudaBackend } = await import("./backends/cuda.ts");
    return await openCudaBackend();
  }
  const backend = await openBackend(device);
  if (!backend) throw new Error(unavailableMessage(device));
  return backend;
}

/** Mesa's lavapipe / llvmpipe, SwiftShader and other GPUs emulated on the CPU. */
function isSoftwareAdapter(description: string): boolean {
  return /llvmpipe|lavapipe|swiftshader|software/i.test(description);
}

function unavailableMessage(device: Exclude<Device, "cuda">): string {
  switch (device) {
    case "webgpu":
      return "the webgpu backend is not available: navigator.gpu found no adapter " +
        "(on Linux without a GPU, install Mesa's Vulkan driver: apt-get install mesa-vulkan-drivers libvulkan1)";
    case "cpu":
      return "the cpu backend is not available";
    default:
      return device satisfies never;
  }
}

/** The backend for a device, or null when this machine cannot run it. */
async function openBackend(device: Device): Promise<Backend | null> {
  switch (device) {
    case "cpu": {
      const { CpuBackend } = await import("./backends/cpu.ts");
      return new CpuBackend();
    }
    case "webgpu": {
      const { createWebGpuBackend } = await import("./backends/webgpu.ts");
      return await createWebGpuBackend();
    }
    case "cuda": {
      const { createCudaBackend } = await import("./backends/cuda.ts");
      return await createCudaBackend();
    }
    default:
      return device satisfies never;
  }
}
