/**
 * MambaByte for Deno: token-free byte-level selective state space language models.
 *
 * ```ts
 * import { MambaByte, MambaConfig } from "./mod.ts";
 * const lm = new MambaByte(new MambaConfig({ dim: 32, depth: 2 }));
 * const logits = await lm.forward(bytes, [1, bytes.length]); // shape [1, L, 256]
 * ```
 * @module
 */
export { MambaConfig, type MambaConfigOptions, VOCAB_SIZE } from "./lib/config.ts";
export {
  ByteCache,
  type Loss,
  Mamba,
  MambaByte,
  type ModelOptions,
  type Tensor,
  tensor,
} from "./lib/model.ts";
export {
  type Backend,
  type ConvStepOperands,
  createBackend,
  type Device,
  type DeviceBuffer,
  type DeviceChoice,
  type FloatArray,
  HALF_FORMATS,
  type HalfFormat,
  type IndexBuffer,
  type Int8MatmulOptions,
  type MatmulOptions,
  type MatmulPrecision,
  type MoeDims,
  type MoeOps,
} from "./lib/backend.ts";
export { type MoeConfigOptions, type MoeSettings } from "./lib/moe_config.ts";
export { type Int8Matrix, type Quantization, QUANTIZATIONS, quantizeInt8 } from "./lib/quantize.ts";
export { createWebGpuBackend } from "./lib/backends/webgpu.ts";
export { CpuBackend } from "./lib/backends/cpu.ts";
export { type ParamSpec, type ParamTable, paramTable } from "./lib/params.ts";
export { Random } from "./lib/random.ts";
export {
  loadModel,
  type NamedTensor,
  readSafetensors,
  type Safetensors,
  saveModel,
  writeSafetensors,
} from "./lib/checkpoint.ts";
export { generate, GENERATE_DEFAULTS, type GenerateOptions } from "./lib/generate.ts";
export { sampleLogits, type SamplingOptions, Utf8Stream } from "./lib/sample.ts";
export { type Dtype, DTYPES, evaluateBpb, train, trainDefaults, type TrainSettings } from "./lib/train.ts";
export { type Corpus, loadCorpus, loadDefaultCorpus } from "./lib/data.ts";
export { AdamW, type AdamWConfig, clipScale, learningRate, type OptimizerBits } from "./lib/optim.ts";
export { type MemoryPlan, memoryPlan } from "./lib/memory_plan.ts";
export { type ActivationLayout } from "./lib/residual_stack.ts";
