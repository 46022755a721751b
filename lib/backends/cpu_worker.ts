/**
 * A worker thread of the CPU backend (started by cpu_spawn.ts, driven by cpu_threads.ts): runs
 * its range of each job with the kernels of cpu_kernels.ts on the shared buffers, then counts
 * itself done and wakes the calling thread. An error is recorded (the first one's message) and
 * counted done like a success, so the calling thread never waits forever.
 */
import { isMainThread, parentPort } from "node:worker_threads";
import { KERNELS } from "./cpu_kernels.ts";
import { CONTROL, type InitMessage, type JobMessage, MESSAGE_BYTES, receivedArgs } from "./cpu_threads.ts";

let shared: InitMessage | null = null;

function fail(error: unknown, { control, message }: InitMessage): void {
  if (Atomics.compareExchange(control, CONTROL.failed, 0, 1) !== 0) return; // keep the first
  const text = error instanceof Error ? error.message : String(error);
  const { written } = new TextEncoder().encodeInto(text, message.subarray(0, MESSAGE_BYTES));
  Atomics.store(control, CONTROL.messageLength, written);
}

// cpu_spawn.ts imports this module on the calling thread too (so that a program importing the
// backend over http has it cached before a worker loads it), where it does nothing.
if (!isMainThread) {
  parentPort!.on("message", (data: InitMessage | JobMessage) => {
    if (!shared) {
      shared = data as InitMessage;
      Atomics.add(shared.control, CONTROL.ready, 1);
      Atomics.notify(shared.control, CONTROL.ready);
      return;
    }
    const { kernel, args, start, end } = data as JobMessage;
    try {
      const run = KERNELS[kernel] as ((a: unknown, s: number, e: number) => void) | undefined;
      if (!run) throw new Error(`unknown kernel "${kernel}"`);
      run(receivedArgs(args), start, end);
    } catch (error) {
      fail(error, shared);
    } finally {
      Atomics.add(shared.control, CONTROL.done, 1);
      Atomics.notify(shared.control, CONTROL.done);
    }
  });
}
