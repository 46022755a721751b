/**
 * Starts one worker thread of the CPU backend (lib/backends/cpu_worker.ts). Deno's
 * node:worker_threads Worker, because it can be unref'd: idle workers never keep a finished
 * program alive, whether or not the backend was disposed. tasks/build_web.ts replaces this
 * module in the browser bundle by one that returns null (the bundle runs single-threaded).
 */
import { Worker } from "node:worker_threads";
// The worker's module, in this thread's module graph too: a worker of a program that imported
// this module over http loads it from the module cache, as it cannot fetch it while the
// calling thread blocks in Atomics.wait (the fetch needs that thread's event loop).
import "./cpu_worker.ts";

/** The calling thread's end of a worker. */
export interface WorkerHandle {
  post(message: unknown): void;
  terminate(): void;
}

/** A started worker, or null where this runtime cannot start one. */
export function spawnCpuWorker(): WorkerHandle | null {
  const url = new URL("./cpu_worker.ts", import.meta.url);
  let worker: Worker;
  try {
    // node:worker_threads takes file: and data: URLs: a module imported over http starts its
    // worker from a data: module that imports the worker module from the same server.
    worker = new Worker(
      url.protocol === "file:"
        ? url
        : new URL(`data:text/javascript,${encodeURIComponent(`import "${url}";`)}`),
    );
  } catch {
    return null;
  }
  worker.unref();
  return {
    post: (message) => worker.postMessage(message),
    terminate: () => void worker.terminate(),
  };
}
