/**
 * Worker threads for the CPU backend's synchronous ops: a job (a kernel of cpu_kernels.ts over
 * a range of work items, its buffers on SharedArrayBuffer) is cut into one contiguous range per
 * thread; the workers take theirs by message, the calling thread runs the first itself and then
 * blocks in Atomics.wait until every worker has signalled, so the op returns with its outputs
 * written. A kernel that throws in a worker throws on the calling thread with its message.
 */
import { type KernelArgs, type KernelName, KERNELS } from "./cpu_kernels.ts";
import { spawnCpuWorker, type WorkerHandle } from "./cpu_spawn.ts";

/** Control words, shared with every worker. */
export const CONTROL = { done: 0, ready: 1, failed: 2, messageLength: 3, words: 4 } as const;
/** Bytes of a worker's error message kept (the rest is cut). */
export const MESSAGE_BYTES = 4096;

/** What the calling thread posts to a worker for its range of a job. */
export interface JobMessage {
  kernel: KernelName;
  args: PostedArgs;
  start: number;
  end: number;
}

/**
 * A kernel's arguments as posted: each typed array as its SharedArrayBuffer and place in it.
 * (Deno's node:worker_threads posts a typed array in time linear in its length, even on shared
 * memory, but a SharedArrayBuffer itself in constant time.)
 */
type PostedArgs = Record<string, number | boolean | PostedArray>;
interface PostedArray {
  buffer: SharedArrayBuffer;
  byteOffset: number;
  length: number;
  type: "Float32Array" | "Float64Array" | "Int32Array";
}
const ARRAY_TYPES = { Float32Array, Float64Array, Int32Array } as const;

function postedArgs(args: object): PostedArgs {
  const posted: PostedArgs = {};
  for (const [key, value] of Object.entries(args)) {
    if (value instanceof Float32Array || value instanceof Float64Array || value instanceof Int32Array) {
      const { buffer, byteOffset, length } = value;
      if (!(buffer instanceof SharedArrayBuffer)) throw new TypeError(`${key} is not on shared memory`);
      posted[key] = { buffer, byteOffset, length, type: value.constructor.name as PostedArray["type"] };
    } else {
      posted[key] = value;
    }
  }
  return posted;
}

/** The kernel's arguments back from what was posted: views of the same shared memory. */
export function receivedArgs(posted: PostedArgs): Record<string, unknown> {
  const args: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(posted)) {
    args[key] = typeof value === "object"
      ? new ARRAY_TYPES[value.type](value.buffer as unknown as ArrayBuffer, value.byteOffset, value.length)
      : value;
  }
  return args;
}

/** What a worker receives first: the shared control words and message bytes. */
export interface InitMessage {
  control: Int32Array;
  message: Uint8Array;
}

/** How long the first job waits for the workers to load their module (over http, possibly). */
const START_TIMEOUT_MS = 30_000;

/** The pools in use on this thread, one per thread count, shared by every backend that asks. */
const sharedPools = new Map<number, CpuThreadPool>();

export class CpuThreadPool {
  readonly #workers: WorkerHandle[];
  /** Holders of this pool through `acquire`; the last `release` ends the workers. */
  #users = 0;
  readonly #control = new Int32Array(new SharedArrayBuffer(4 * CONTROL.words));
  readonly #message = new Uint8Array(new SharedArrayBuffer(MESSAGE_BYTES));
  #started = false;

  /** A pool of threads - 1 workers; null where workers or shared memory are unavailable. */
  static create(threads: number): CpuThreadPool | null {
    if (threads < 2 || typeof SharedArrayBuffer !== "function" || typeof Atomics?.wait !== "function") {
      return null;
    }
    const workers: WorkerHandle[] = [];
    for (let i = 0; i < threads - 1; i++) {
      const worker = spawnCpuWorker();
      if (!worker) {
        for (const w of workers) w.terminate();
        return null;
      }
      workers.push(worker);
    }
    return new CpuThreadPool(workers);
  }

  /**
   * The shared pool of `threads` threads (started on first use), held until `release`: every
   * CPU backend of a program uses the same workers. Null where they cannot be started.
   */
  static acquire(threads: number): CpuThreadPool | null {
    let pool = sharedPools.get(threads) ?? null;
    if (!pool) {
      pool = CpuThreadPool.create(threads);
      if (!pool) return null;
      sharedPools.set(threads, pool);
    }
    pool.#users++;
    return pool;
  }

  /** Gives back a pool taken with `acquire`; the last holder ends its workers. */
  release(): void {
    if (--this.#users > 0) return;
    sharedPools.delete(this.threads);
    this.dispose();
  }

  private constructor(workers: WorkerHandle[]) {
    this.#workers = workers;
    const init: InitMessage = { control: this.#control, message: this.#message };
    for (const worker of workers) worker.post(init);
  }

  /** Threads that run a job: the workers and the calling thread. */
  get threads(): number {
    return this.#workers.length + 1;
  }

  /** Runs items [0, items) of `kernel`, cut into one contiguous range per thread. */
  run<K extends KernelName>(kernel: K, args: KernelArgs<K>, items: number): void {
    const ranges: [number, number][] = [];
    const parts = Math.min(this.threads, items);
    for (let i = 0; i < parts; i++) {
      ranges.push([Math.floor((i * items) / parts), Math.floor(((i + 1) * items) / parts)]);
    }
    this.runRanges(kernel, args, ranges);
  }

  /**
   * Runs ranges[0] on the calling thread and ranges[i] on worker i - 1 (at most one per
   * worker), then waits for all of them. Throws the first error of any of them.
   */
  runRanges<K extends KernelName>(kernel: K, args: KernelArgs<K>, ranges: [number, number][]): void {
    if (ranges.length > this.threads) {
      throw new RangeError(`${ranges.length} ranges for ${this.threads} threads`);
    }
    this.#awaitStart();
    const control = this.#control;
    Atomics.store(control, CONTROL.done, 0);
    const posted = ranges.length > 1 ? postedArgs(args) : {};
    for (let i = 1; i < ranges.length; i++) {
      const [start, end] = ranges[i];
      const job: JobMessage = { kernel, args: posted, start, end };
      this.#workers[i - 1].post(job);
    }
    let error: unknown = null;
    try {
      if (ranges.length > 0) {
        (KERNELS[kernel] as (a: unknown, s: number, e: number) => void)(args, ...ranges[0]);
      }
    } catch (e) {
      error = e;
    }
    const others = Math.max(0, ranges.length - 1);
    for (
      let done = Atomics.load(control, CONTROL.done);
      done < others;
      done = Atomics.load(control, CONTROL.done)
    ) {
      Atomics.wait(control, CONTROL.done, done);
    }
    if (Atomics.load(control, CONTROL.failed) !== 0) {
      const length = Atomics.load(control, CONTROL.messageLength);
      const text = new TextDecoder().decode(this.#message.slice(0, length));
      Atomics.store(control, CONTROL.failed, 0);
      error ??= new Error(`cpu worker thread: ${text}`);
    }
    if (error !== null) throw error;
  }

  /** The first job waits until every worker has loaded its module and taken the control words. */
  #awaitStart(): void {
    if (this.#started) return;
    const control = this.#control, deadline = performance.now() + START_TIMEOUT_MS;
    for (let ready = Atomics.load(control, CONTROL.ready); ready < this.#workers.length;) {
      const left = deadline - performance.now();
      if (left <= 0) {
        throw new Error(
          `cpu backend: ${this.#workers.length - ready} of ${this.#workers.length} worker threads did not ` +
            `start within ${START_TIMEOUT_MS / 1000} s (use threads: 1 to run without them)`,
        );
      }
      Atomics.wait(control, CONTROL.ready, ready, left);
      ready = Atomics.load(control, CONTROL.ready);
    }
    this.#started = true;
  }

  /** Terminates the workers. */
  dispose(): void {
    for (const worker of this.#workers) worker.terminate();
    this.#workers.length = 0;
  }
}
