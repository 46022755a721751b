/**
 * The models, written only against the Backend interface:
 * - `Mamba`: the seed's module, a residual stack of Mamba blocks, (B, L, D) → (B, L, D);
 * - `MambaByte`: byte embedding (256, D) → Mamba → RMSNorm → LM head, logits (B, L, 256).
 *
 * Glossary (code → paper): B batch, L sequence length, D = dim, ED = d_inner, N = d_state,
 * R = dt_rank, K = d_conv, Δ = softplus(dt_proj(δr) + bias), A = -exp(A_log),
 * h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t, y_t = (h_t · C_t + D ⊙ u_t) ⊙ silu(z_t).
 *
 * BlackMamba (config.moe): every moe.every-th residual block is a routed mixture of SwiGLU
 * experts instead (lib/moe_mlp.ts); training adds aux_loss_coef · (Switch load-balancing loss,
 * averaged over the MoE blocks) to the cross-entropy.
 *
 * Parameters, gradients (and the optimizer's moments) each live in ONE flat buffer laid out
 * by lib/params.ts.
 *
 * `quantize("int8")` (lib/quantize.ts) gives forward and decode int8 copies of the Linear weights
 * (in_proj, x_proj, out_proj, the MoE experts, lm_head), made from the fp32 parameters, which stay
 * as they are for everything else (embedding, norms, conv, dt_proj, A_log, D, Δ bias) and for
 * training, which a quantized model refuses.
 */
import type { Backend, DeviceBuffer, FloatArray, IndexBuffer, RecordedOps } from "./backend.ts";
import { CpuBackend } from "./backends/cpu.ts";
import { MambaConfig, VOCAB_SIZE } from "./config.ts";
import { initParams, type ParamSpec, type ParamTable, paramTable } from "./params.ts";
import { moeBlockCount } from "./moe_config.ts";
import { requireMoeOps } from "./moe_mlp.ts";
import { LinearWeights, type Quantization } from "./quantize.ts";
import { checkSampling, type SamplingOptions } from "./sample.ts";
import {
  type ActivationLayout,
  activationLayout,
  blockLinears,
  layerViews,
  ResidualStack,
  RMS_EPS,
  StackActivations,
  StackCache,
} from "./residual_stack.ts";

/** Host-side data with a shape. */
export interface Tensor {
  data: FloatArray;
  shape: number[];
}

/** A tensor from data and a shape (checked to agree). */
export function tensor(data: FloatArray, shape: number[]): Tensor {
  const size = shape.reduce((a, b) => a * b, 1);
  if (data.length !== size) {
    throw new Error(`tensor: ${data.length} values do not fill shape [${shape.join(", ")}] (${size})`);
  }
  return { data, shape };
}

export interface ModelOptions {
  /** Where the model runs; a new CPU backend when omitted. */
  backend?: Backend;
  /** Seed of the initial weights. */
  seed?: number;
  /**
   * Activation recomputation: keep only each block's input during forward and recompute the
   * block during backward (less memory, about one more forward pass of compute).
   */
  recompute?: boolean;
}

/** What Mamba and MambaByte share: config, backend, parameter table, flat buffers. */
abstract class FlatModel {
  readonly config: MambaConfig;
  readonly backend: Backend;
  readonly table: ParamTable;
  /** All parameters, one flat buffer laid out by `table`. */
  readonly params: DeviceBuffer;
  /** Recompute block activations in backward instead of keeping them (see ModelOptions). */
  readonly recompute: boolean;
  #grads: DeviceBuffer | null = null;
  protected readonly stack: ResidualStack;
  /** The Linear products of forward and decode: fp32, or int8 after `quantize`. */
  protected readonly linears: LinearWeights;
  /** View of lm_head (256, D) in `params`; null for the Mamba module. */
  protected readonly lmHead: DeviceBuffer | null;
  #gradStack: ReturnType<typeof layerViews>[] | null = null;

  constructor(config: MambaConfig, lm: boolean, options: ModelOptions) {
    if (!(config instanceof MambaConfig)) {
      throw new Error("expected a MambaConfig: build one with new MambaConfig({ dim, depth, … })");
    }
    this.config = config;
    this.backend = options.backend ?? new CpuBackend();
    if (config.moe) requireMoeOps(this.backend); // before allocating anything
    this.recompute = options.recompute ?? false;
    this.table = paramTable(config, lm);
    this.params = this.backend.alloc(this.table.size);
    this.backend.write(this.params, initParams(this.table, config, options.seed ?? 0));
    this.linears = new LinearWeights(this.backend);
    this.lmHead = this.table.lmHead && this.view(this.table.lmHead);
    this.stack = new ResidualStack(
      this.backend,
      config,
      this.table.layers.map((layer) => layerViews(this.backend, this.params, layer)),
      this.linears,
    );
  }

  /**
   * What the next forward keeps for backward (see ActivationLayout): follows `recompute`, the
   * backend's matmul precision and the weights' quantization at the time of the forward.
   */
  get activationLayout(): ActivationLayout {
    return activationLayout(this.backend, this.recompute, this.quantization !== "none");
  }

  /** How the Linear weights are held for forward and decode ("none": fp32). */
  get quantization(): Quantization {
    return this.linears.quantization;
  }

  /**
   * From now on forward, loss and decode use int8 copies of the Linear weights, quantized per
   * output channel from the current parameters (lib/quantize.ts) — or, with "none", the fp32
   * weights again. Training a quantized model is an error.
   */
  async quantize(mode: Quantization): Promise<void> {
    const values = mode === "none" ? null : await this.readParams();
    const linears = this.table.layers.flatMap((layer, l) => blockLinears(layer, this.stack.params[l]));
    if (this.table.lmHead) linears.push({ spec: this.table.lmHead, weight: this.lmHead! });
    this.linears.quantize(
      mode,
      values
        ? linears.map(({ spec, weight }) => ({
          weight,
          values: values.subarray(spec.offset, spec.offset + spec.size),
          rows: spec.shape[0],
          cols: spec.size / spec.shape[0],
        }))
        : [],
    );
  }

  /** Throws unless the weights are fp32: `op` computes gradients. */
  protected requireTrainable(op: string): void {
    if (this.quantization !== "none") {
      throw new Error(
        `${op}: this model's Linear weights are quantized to ${this.quantization}, for inference only; ` +
          `training needs the fp32 weights (call quantize("none") first, or load the model without --quantize)`,
      );
    }
  }

  /** All parameter gradients, one flat buffer laid out like `params` (allocated on first use). */
  get grads(): DeviceBuffer {
    if (!this.#grads) this.#grads = this.backend.alloc(this.table.size);
    return this.#grads;
  }

  protected get gradStack(): ReturnType<typeof layerViews>[] {
    this.#gradStack ??= this.table.layers.map((layer) => layerViews(this.backend, this.grads, layer));
    return this.#gradStack;
  }

  /** View of one parameter tensor in `params` (or in `grads`). */
  view(spec: ParamSpec, flat: DeviceBuffer = this.params): DeviceBuffer {
    return this.backend.view(flat, spec.offset, spec.size);
  }

  /** Sets every gradient to zero. */
  zeroGrad(): void {
    this.backend.fill(this.grads, 0);
  }

  /** The flat parameters on the host. */
  readParams(): Promise<FloatArray> {
    return this.backend.read(this.params);
  }

  /** Releases the device memory of parameters, gradients and activations. */
  dispose(): void {
    this.linears.free();
    this.backend.free(this.params);
    if (this.#grads) this.backend.free(this.#grads);
    this.freeActivations();
  }

  /** Releases the saved activations (they are rebuilt on the next forward). */
  protected abstract freeActivations(): void;

  /** Replaces the flat parameters (length must match `table.size`; the model must not be quantized). */
  writeParams(values: ArrayLike<number>): void {
    if (values.length !== this.table.size) {
      throw new Error(`writeParams: expected ${this.table.size} values, got ${values.length}`);
    }
    if (this.quantization !== "none") {
      throw new Error(
        `writeParams: the model is quantized to ${this.quantization}; call quantize("none") first ` +
          "(and quantize again after writing)",
      );
    }
    this.backend.write(this.params, values);
  }
}

/** The seed's Mamba module: a residual stack of Mamba blocks, (B, L, D) → (B, L, D). */
export class Mamba extends FlatModel {
  #acts: StackActivations | null = null;

  constructor(config: MambaConfig, options: ModelOptions = {}) {
    super(config, false, options);
  }

  protected freeActivations(): void {
    this.#acts?.free();
    this.#acts = null;
  }

  #activations(batch: number, length: number): StackActivations {
    const layout = this.activationLayout;
    let acts = this.#acts;
    if (!acts || acts.batch !== batch || acts.length !== length || acts.layout !== layout) {
      acts?.free();
      acts = this.#acts = new StackActivations(this.backend, this.config, batch, length, layout);
    }
    return acts;
  }

  /** x (B, L, D) → (B, L, D). Saves activations for `backward`. */
  async forward(x: Tensor): Promise<Tensor> {
    const [batch, length, dim] = x.shape;
    if (x.shape.length !== 3 || dim !== this.config.dim) {
      throw new Error(
        `Mamba.forward: expected shape [B, L, ${this.config.dim}], got [${x.shape.join(", ")}]`,
      );
    }
    const acts = this.#activations(batch, length);
    this.backend.write(acts.input, x.data);
    this.stack.forward(acts);
    return tensor(await this.backend.read(acts.out), [batch, length, dim]);
  }

  /**
   * Given ∂loss/∂out (B, L, D) of the last forward: accumulates parameter grads, returns ∂loss/∂x.
   * (MoE blocks add no load-balancing gradient here: this module has no training loss.)
   */
  async backward(dout: Tensor): Promise<Tensor> {
    this.requireTrainable("Mamba.backward");
    const acts = this.#acts;
    if (!acts) throw new Error("Mamba.backward: call forward first");
    const dx = this.backend.alloc(dout.data.length);
    this.backend.write(dx, dout.data);
    this.stack.backward(dx, acts, this.gradStack);
    const result = tensor(await this.backend.read(dx), dout.shape);
    this.backend.free(dx);
    return result;
  }

  /** A decode cache for `batch` sequences: per layer h (B, ED, N) and conv inputs (B, ED, K-1). */
  createCache(batch: number): StackCache {
    return new StackCache(this.backend, this.config, batch);
  }

  /** One position: x (B, D) → (B, D), advancing the cache. */
  async step(x: Tensor, cache: StackCache): Promise<Tensor> {
    const buffer = this.backend.alloc(x.data.length);
    this.backend.write(buffer, x.data);
    this.stack.step(buffer, cache);
    const result = tensor(await this.backend.read(buffer), x.shape);
    this.backend.free(buffer);
    return result;
  }
}

/** Buffers of one MambaByte forward/backward at a given (B, L). */
class LmActivations {
  readonly stack: StackActivations;
  readonly tokens: IndexBuffer; // (B, L) input bytes
  readonly targets: IndexBuffer; // (B, L) next bytes
  /** (B·L + 2·MoE blocks): the losses, then each MoE block's [aux, dropped]; read back at once. */
  readonly readback: DeviceBuffer;
  readonly hidden: DeviceBuffer; // (B, L, D) RMSNorm of the stack's output
  readonly rstd: DeviceBuffer; // (B, L)
  readonly logits: DeviceBuffer; // (B, L, 256)
  readonly losses: DeviceBuffer; // (B, L) nats
  readonly dlogits: DeviceBuffer; // (B, L, 256)
  readonly dhidden: DeviceBuffer; // (B, L, D)
  readonly dx: DeviceBuffer; // (B, L, D)

  constructor(
    readonly backend: Backend,
    config: MambaConfig,
    readonly batch: number,
    readonly length: number,
    layout: ActivationLayout,
  ) {
    const rows = batch * length, D = config.dim, moeBlocks = moeBlockCount(config.moe, config.depth);
    this.readback = backend.alloc(rows + 2 * moeBlocks);
    const stats = moeBlocks ? backend.view(this.readback, rows, 2 * moeBlocks) : undefined;
    this.stack = new StackActivations(backend, config, batch, length, layout, stats);
    this.tokens = backend.allocIndices(rows);
    this.targets = backend.allocIndices(rows);
    this.hidden = backend.alloc(rows * D);
    this.rstd = backend.alloc(rows);
    this.logits = backend.alloc(rows * VOCAB_SIZE);
    this.losses = backend.view(this.readback, 0, rows);
    this.dlogits = backend.alloc(rows * VOCAB_SIZE);
    this.dhidden = backend.alloc(rows * D);
    this.dx = backend.alloc(rows * D);
  }

  free(): void {
    this.stack.free();
    const b = this.backend;
    for (const x of [this.tokens, this.targets, this.hidden, this.rstd, this.logits]) b.free(x);
    for (const x of [this.readback, this.dlogits, this.dhidden, this.dx]) b.free(x);
  }
}

/** A block's device buffers: uniforms (K, B) in, sampled bytes (K, B) out. */
interface BlockBuffers {
  uniforms: DeviceBuffer;
  history: DeviceBuffer;
}

/** Decode state of MambaByte for `batch` sequences. */
export class ByteCache {
  readonly stack: StackCache;
  readonly tokens: IndexBuffer; // (B)
  readonly x: DeviceBuffer; // (B, D)
  readonly hidden: DeviceBuffer; // (B, D)
  readonly rstd: DeviceBuffer; // (B)
  readonly logits: DeviceBuffer; // (B, 256)
  /** The recorded decode step, on backends that can replay one (see Backend.capture). */
  graph: RecordedOps | null = null;
  /** The model's LinearWeights.version when `graph` was recorded (it holds those weight buffers). */
  graphWeights = -1;
  /**
   * Two sets of (K, B) uniforms and sampled bytes of a block of device-sampled steps (grown on
   * demand), used in turn, so that one block's bytes can be read back while the next is recorded.
   */
  #blocks: [BlockBuffers | null, BlockBuffers | null] = [null, null];
  /** The set the next block takes. */
  #nextBlock: 0 | 1 = 0;

  constructor(readonly backend: Backend, config: MambaConfig, readonly batch: number) {
    this.stack = new StackCache(backend, config, batch);
    this.tokens = backend.allocIndices(batch);
    this.x = backend.alloc(batch * config.dim);
    this.hidden = backend.alloc(batch * config.dim);
    this.rstd = backend.alloc(batch);
    this.logits = backend.alloc(batch * VOCAB_SIZE);
  }

  /** Forget the text so far. */
  reset(): void {
    this.stack.reset();
  }

  /**
   * Views of `steps` rows (steps, B) of a block's buffers: uniforms in, sampled bytes out. Each
   * call takes the other of two sets, so a block's buffers stay untouched until the next call but one.
   */
  blockBuffers(steps: number): BlockBuffers {
    const n = steps * this.batch, slot = this.#nextBlock;
    this.#nextBlock = slot === 0 ? 1 : 0;
    let block = this.#blocks[slot];
    if (!block || block.uniforms.length < n) {
      this.#freeBlock(slot);
      block = this.#blocks[slot] = { uniforms: this.backend.alloc(n), history: this.backend.alloc(n) };
    }
    return {
      uniforms: this.backend.view(block.uniforms, 0, n),
      history: this.backend.view(block.history, 0, n),
    };
  }

  #freeBlock(slot: 0 | 1): void {
    const block = this.#blocks[slot];
    if (block) { for (const x of [block.uniforms, block.history]) this.backend.free(x); }
    this.#blocks[slot] = null;
  }

  free(): void {
    this.graph?.free();
    this.graph = null;
    this.#freeBlock(0);
    this.#freeBlock(1);
    this.stack.free();
    for (const x of [this.tokens, this.x, this.hidden, this.rstd, this.logits]) this.backend.free(x);
  }
}

/**
 * The loss of a batch: mean cross-entropy in nats, and the same in bits per byte. MoE models
 * (config.moe) add their routing statistics; their training objective is
 * loss + aux_loss_coef · aux.
 */
export interface Loss {
  loss: number;
  bpb: number;
  /** Switch load-balancing loss, mean over the MoE blocks (1 when perfectly balanced). */
  aux?: number;
  /** Choices (byte position → expert) beyond capacity, summed over the MoE blocks. */
  dropped?: number;
}

/** MambaByte: bytes (B, L) → logits (B, L, 256) over the next byte. */
export class MambaByte extends FlatModel {
  #acts: LmActivations | null = null;

  constructor(config: MambaConfig, options: ModelOptions = {}) {
    super(config, true, options);
  }

  /**
   * A model from a safetensors checkpoint (this project's, or mamba_ssm's MambaLMHeadModel
   * layout): config from its metadata when present, else inferred from the tensor shapes.
   */
  static async load(path: string, options: { backend?: Backend } = {}): Promise<MambaByte> {
    const { loadModel } = await import("./checkpoint.ts");
    return await loadModel(path, options);
  }

  protected freeActivations(): void {
    this.#acts?.free();
    this.#acts = null;
  }

  #activations(batch: number, length: number): LmActivations {
    const layout = this.activationLayout;
    let acts = this.#acts;
    if (!acts || acts.batch !== batch || acts.length !== length || acts.stack.layout !== layout) {
      acts?.free();
      acts = this.#acts = new LmActivations(this.backend, this.config, batch, length, layout);
    }
    return acts;
  }

  #forward(inputs: ArrayLike<number>, shape: [number, number]): LmActivations {
    const [batch, length] = checkShape(inputs, shape);
    const be = this.backend, t = this.table, D = this.config.dim, rows = batch * length;
    const acts = this.#activations(batch, length);
    be.writeIndices(acts.tokens, inputs);
    be.embedding(acts.stack.input, this.view(t.embedding!), acts.tokens, rows, D); // (B, L, D)
    this.stack.forward(acts.stack);
    be.rmsnorm(acts.hidden, acts.rstd, acts.stack.out, this.view(t.normF!), rows, D, RMS_EPS);
    this.linears.apply(acts.logits, acts.hidden, this.lmHead!, rows, VOCAB_SIZE, D); // (B, L, 256)
    return acts;
  }

  /** Logits (B, L, 256) for bytes (B·L values in 0..255) of shape [B, L]. */
  async forward(bytes: ArrayLike<number>, shape: [number, number]): Promise<Tensor> {
    const acts = this.#forward(bytes, shape);
    return tensor(await this.backend.read(acts.logits), [shape[0], shape[1], VOCAB_SIZE]);
  }

  /** Mean next-byte loss of `targets` given `inputs`, both (B, L). No gradients. */
  async loss(inputs: ArrayLike<number>, targets: ArrayLike<number>, shape: [number, number]): Promise<Loss> {
    const acts = this.#forward(inputs, shape);
    checkShape(targets, shape);
    const rows = shape[0] * shape[1];
    this.backend.writeIndices(acts.targets, targets);
    this.backend.crossEntropy(acts.losses, null, acts.logits, acts.targets, rows, VOCAB_SIZE, 0);
    return lossOf(await this.backend.read(acts.readback), rows);
  }

  /**
   * Forward, loss and backward: `grads` += gradScale · ∂(mean loss)/∂params (MoE models:
   * ∂(mean loss + aux_loss_coef · aux)/∂params). Returns the loss.
   * (gradScale = 1 / accumulation steps when gradients are accumulated over several batches.)
   */
  async lossAndBackward(
    inputs: ArrayLike<number>,
    targets: ArrayLike<number>,
    shape: [number, number],
    gradScale = 1,
  ): Promise<Loss> {
    this.requireTrainable("MambaByte.lossAndBackward");
    const acts = this.#forward(inputs, shape);
    checkShape(targets, shape);
    const be = this.backend, t = this.table, D = this.config.dim;
    const rows = shape[0] * shape[1];
    be.writeIndices(acts.targets, targets);
    be.crossEntropy(acts.losses, acts.dlogits, acts.logits, acts.targets, rows, VOCAB_SIZE, gradScale / rows);
    // lm_head: logits = hidden·W_headᵀ
    be.matmul(this.view(t.lmHead!, this.grads), acts.dlogits, acts.hidden, VOCAB_SIZE, D, rows, {
      transA: true,
      accumulate: true,
    });
    be.matmul(acts.dhidden, acts.dlogits, this.lmHead!, rows, D, VOCAB_SIZE); // (B, L, D)
    // final RMSNorm (dx starts at zero: nothing else reads the stack's output)
    be.fill(acts.dx, 0);
    be.rmsnormBackward(
      acts.dx,
      this.view(t.normF!, this.grads),
      acts.dhidden,
      acts.stack.out,
      this.view(t.normF!),
      acts.rstd,
      rows,
      D,
    );
    const moe = this.config.moe;
    const auxScale = moe ? (gradScale * moe.aux_loss_coef) / moeBlockCount(moe, this.config.depth) : 0;
    this.stack.backward(acts.dx, acts.stack, this.gradStack, auxScale);
    be.embeddingBackward(this.view(t.embedding!, this.grads), acts.dx, acts.tokens, rows, D);
    return lossOf(await be.read(acts.readback), rows);
  }

  /** A decode cache for `batch` sequences (memory constant in the length of the text). */
  createCache(batch: number): ByteCache {
    return new ByteCache(this.backend, this.config, batch);
  }

  /** Feeds one byte per sequence (B values) and returns the next-byte logits (B, 256). */
  async step(bytes: ArrayLike<number>, cache: ByteCache): Promise<Tensor> {
    this.stepLogits(bytes, cache);
    return tensor(await this.backend.read(cache.logits), [cache.batch, VOCAB_SIZE]);
  }

  /** Like `step`, leaving the logits on the device in `cache.logits`. */
  stepLogits(bytes: ArrayLike<number>, cache: ByteCache): void {
    if (bytes.length !== cache.batch) {
      throw new Error(
        `MambaByte.step: expected ${cache.batch} bytes (one per sequence), got ${bytes.length}`,
      );
    }
    checkBytes(bytes);
    this.backend.writeIndices(cache.tokens, bytes); // outside any recording: the bytes change every step
    this.#advance(cache);
  }

  /**
   * Samples `uniforms.length / B` bytes per sequence on the device, continuing from the logits
   * of the last step (`cache.logits`), with no read-back until the end. Step k draws the bytes
   * with uniforms[k·B + b] (Backend.sampleTokens: lib/sample.ts's sampleWithUniform), then feeds
   * them through the model — after the last step only when `feedLast` (at the end of a text
   * nothing needs the next logits). Returns the sampled bytes (steps, B), read back at once.
   * The steps are recorded before this returns its promise, so a caller may start the next
   * block before awaiting this one (lib/generate.ts): at most two calls in flight per cache.
   */
  async sampleSteps(
    cache: ByteCache,
    uniforms: ArrayLike<number>,
    options: SamplingOptions,
    feedLast = true,
  ): Promise<Uint8Array> {
    checkSampling(options);
    const be = this.backend, B = cache.batch, steps = uniforms.length / B;
    if (!Number.isInteger(steps) || steps < 1) {
      throw new Error(
        `MambaByte.sampleSteps: ${uniforms.length} uniforms are not a positive multiple of ${B}`,
      );
    }
    const block = cache.blockBuffers(steps);
    be.write(block.uniforms, uniforms);
    for (let k = 0; k < steps; k++) {
      const drawn = be.view(block.uniforms, k * B, B), history = be.view(block.history, k * B, B); // (B)
      be.sampleTokens(cache.tokens, history, cache.logits, drawn, B, options);
      if (feedLast || k + 1 < steps) this.#advance(cache);
    }
    return Uint8Array.from(await be.read(block.history));
  }

  /** One decode step on the bytes in cache.tokens, replaying the recorded step where the backend can. */
  #advance(cache: ByteCache): void {
    const be = this.backend;
    if (be.capture) {
      if (cache.graph && cache.graphWeights !== this.linears.version) {
        cache.graph.free(); // recorded before quantize() replaced the weights
        cache.graph = null;
      }
      cache.graph ??= be.capture(() => this.#stepOps(cache));
      cache.graphWeights = this.linears.version;
      cache.graph.replay();
    } else {
      this.#stepOps(cache);
    }
  }

  /** The device ops of one decode step: cache.tokens (B) → cache.logits (B, 256). */
  #stepOps(cache: ByteCache): void {
    const be = this.backend, t = this.table, D = this.config.dim, B = cache.batch;
    be.embedding(cache.x, this.view(t.embedding!), cache.tokens, B, D); // (B, D)
    this.stack.step(cache.x, cache.stack);
    const normF = this.view(t.normF!);
    if (!this.linears.applyNormed(cache.logits, cache.x, normF, RMS_EPS, this.lmHead!, B, VOCAB_SIZE, D)) {
      be.rmsnorm(cache.hidden, cache.rstd, cache.x, normF, B, D, RMS_EPS);
      this.linears.apply(cache.logits, cache.hidden, this.lmHead!, B, VOCAB_SIZE, D); // (B, 256)
    }
  }
}

function checkShape(values: ArrayLike<number>, shape: [number, number]): [number, number] {
  const [batch, length] = shape;
  if (!Number.isInteger(batch) || !Number.isInteger(length) || batch < 1 || length < 1) {
    throw new Error(`expected a shape [B, L] of positive integers, got [${shape.join(", ")}]`);
  }
  if (values.length !== batch * length) {
    throw new Error(`${values.length} bytes do not fill shape [${batch}, ${length}]`);
  }
  checkBytes(values);
  return [batch, length];
}

/** Throws unless every value is a byte (an integer in 0..255): the model's only tokens. */
function checkBytes(values: ArrayLike<number>): void {
  if (values instanceof Uint8Array) return;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (!(Number.isInteger(v) && v >= 0 && v <= 255)) {
      throw new RangeError(`value ${i} is ${v}, not a byte (an integer in 0..255)`);
    }
  }
}

/** The Loss from a read-back (rows) losses followed by each MoE block's [aux, dropped]. */
function lossOf(values: FloatArray, rows: number): Loss {
  let sum = 0;
  for (let i = 0; i < rows; i++) sum += values[i];
  const loss = sum / rows;
  const moeBlocks = (values.length - rows) / 2;
  if (moeBlocks === 0) return { loss, bpb: loss / Math.LN2 };
  let aux = 0, dropped = 0;
  for (let i = rows; i < values.length; i += 2) {
    aux += values[i] / moeBlocks;
    dropped += values[i + 1];
  }
  return { loss, bpb: loss / Math.LN2, aux, dropped };
}
