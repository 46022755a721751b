/**
 * GPU time per kernel, to find where a WebGPU step's time goes. While a KernelTimer is on, the
 * runtime gives every dispatch a compute pass of its own whose start and end the device stamps
 * (the adapter's "timestamp-query" feature); the stamps of each submit are read back after it.
 * A pass per dispatch costs the device a little between dispatches, so the total runs above an
 * untimed run's; the split between kernels is what this is for.
 */

/** The summed GPU time of one kernel (file:entry, or the name its dispatches give) over the dispatches timed. */
export interface KernelTime {
  kernel: string;
  dispatches: number;
  seconds: number;
  /** Floating-point operations of those dispatches, where they say (matmuls), else 0. */
  flops: number;
}

export class KernelTimer {
  readonly #querySet: GPUQuerySet;
  /** The stamps of a submit, resolved (two u64 nanosecond counts per dispatch). */
  readonly #resolved: GPUBuffer;
  /** Kernel and floating-point operations of each dispatch stamped since the last submit. */
  #kernels: { kernel: string; flops: number }[] = [];
  #pending: Promise<void>[] = [];
  readonly #totals = new Map<string, KernelTime>();

  /** `capacity`: the most dispatches the runtime records between two submits. */
  constructor(readonly device: GPUDevice, readonly capacity: number) {
    if (!device.features.has("timestamp-query")) {
      throw new Error("webgpu: this adapter has no timestamp-query feature, which kernel timing needs");
    }
    this.#querySet = device.createQuerySet({ type: "timestamp", count: 2 * capacity });
    this.#resolved = device.createBuffer({
      size: 16 * capacity,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
  }

  /** The descriptor of the pass of the next dispatch, a dispatch of `kernel` doing `flops`. */
  pass(kernel: string, flops: number): GPUComputePassDescriptor {
    const i = this.#kernels.length;
    if (i === this.capacity) {
      throw new Error(`KernelTimer: more than ${this.capacity} dispatches in one submit`);
    }
    this.#kernels.push({ kernel, flops });
    return {
      timestampWrites: {
        querySet: this.#querySet,
        beginningOfPassWriteIndex: 2 * i,
        endOfPassWriteIndex: 2 * i + 1,
      },
    };
  }

  /**
   * Records, at the end of a submit's commands, the copy of its stamps to a buffer the host can map;
   * returns what to call once it is submitted (nothing when no dispatch was stamped).
   */
  resolve(encoder: GPUCommandEncoder): (() => void) | null {
    const kernels = this.#kernels, count = kernels.length;
    if (!count) return null;
    this.#kernels = [];
    const readable = this.device.createBuffer({
      size: 16 * count,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    encoder.resolveQuerySet(this.#querySet, 0, 2 * count, this.#resolved, 0);
    encoder.copyBufferToBuffer(this.#resolved, 0, readable, 0, 16 * count);
    return () => {
      this.#pending.push(
        readable.mapAsync(GPUMapMode.READ).then(() => {
          const stamps = new BigUint64Array(readable.getMappedRange());
          kernels.forEach(({ kernel, flops }, i) => {
            const total = this.#totals.get(kernel) ?? { kernel, dispatches: 0, seconds: 0, flops: 0 };
            total.dispatches++;
            total.seconds += Number(stamps[2 * i + 1] - stamps[2 * i]) / 1e9;
            total.flops += flops;
            this.#totals.set(kernel, total);
          });
          readable.destroy();
        }),
      );
    };
  }

  /** Every kernel's total since the timer started, the longest first (after the last submit's stamps are in). */
  async times(): Promise<KernelTime[]> {
    await Promise.all(this.#pending);
    return [...this.#totals.values()].sort((a, b) => b.seconds - a.seconds);
  }

  dispose(): void {
    this.#querySet.destroy();
    this.#resolved.destroy();
  }
}
