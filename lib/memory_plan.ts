/**
 * The memory a training run allocates, by component, before running it. The plan does not
 * model the allocations with formulas of its own: it runs the real model code (construction,
 * gradients, optimizer, one training step) on a backend whose ops do nothing and whose
 * buffers only count their bytes. So the plan follows the code whenever the code changes.
 *
 * Not included: the backend's own workspace (e.g. the CUDA scan's chunk-boundary states), its
 * library handles and the driver's context.
 */
import type { Backend, DeviceBuffer, IndexBuffer } from "./backend.ts";
import type { MambaConfig } from "./config.ts";
import { MambaByte } from "./model.ts";
import { AdamW, ADAMW_DEFAULTS, type OptimizerBits } from "./optim.ts";

export interface MemoryPlan {
  /** Bytes of each component, in the order a training run allocates them. */
  components: { name: string; bytes: number }[];
  /** All components: they are alive together during a training step. */
  total: number;
  parameters: number;
}

/** Allocations are counted in bytes; views and ops cost nothing; reads return zeros. */
class CountingBackend {
  readonly device = "cpu";
  readonly description = "memory plan (counts allocations, runs nothing)";
  bytes = 0;

  alloc(length: number): DeviceBuffer {
    this.bytes += 4 * length;
    return { length };
  }
  allocIndices(length: number): IndexBuffer {
    this.bytes += 4 * length;
    return { length };
  }
  view(_buffer: DeviceBuffer, _offset: number, length: number): DeviceBuffer {
    return { length };
  }
  viewIndices(_buffer: IndexBuffer, _offset: number, length: number): IndexBuffer {
    return { length };
  }
  read(src: DeviceBuffer): Promise<Float32Array> {
    return Promise.resolve(new Float32Array(src.length));
  }
  sumOfSquares(): Promise<number> {
    return Promise.resolve(0);
  }
}

/** Every method that is not CountingBackend's own is an op that does nothing. */
function countingBackend(): { backend: Backend; counter: CountingBackend } {
  const counter = new CountingBackend();
  const noOps: ProxyHandler<object> = { get: () => () => {} };
  const backend = new Proxy(counter, {
    get(target, property) {
      if (property === "moe") return new Proxy({}, noOps);
      if (property in target) {
        const value = target[property as keyof CountingBackend];
        return typeof value === "function" ? value.bind(target) : value;
      }
      return () => {};
    },
  }) as unknown as Backend;
  return { backend, counter };
}

/**
 * What training `config` on batches of (batch, length) bytes allocates, with AdamW's moments
 * in `optimizerBits` (default 32).
 */
export async function memoryPlan(
  config: MambaConfig,
  options: { batch: number; length: number; recompute: boolean; optimizerBits?: OptimizerBits },
): Promise<MemoryPlan> {
  const { backend, counter } = countingBackend();
  const components: { name: string; bytes: number }[] = [];
  const measure = async (name: string, allocate: () => unknown) => {
    const before = counter.bytes;
    await allocate();
    components.push({ name, bytes: counter.bytes - before });
  };
  let model!: MambaByte;
  await measure("weights", () => model = new MambaByte(config, { backend, recompute: options.recompute }));
  await measure("gradients", () => model.grads);
  const bits = options.optimizerBits ?? 32;
  await measure("AdamW moments", () => new AdamW(backend, model.table, { ...ADAMW_DEFAULTS, bits }));
  const n = options.batch * options.length;
  await measure(
    "activations and scratch",
    () => model.lossAndBackward(new Uint8Array(n), new Uint8Array(n), [options.batch, options.length]),
  );
  return { components, total: counter.bytes, parameters: model.table.count };
}
