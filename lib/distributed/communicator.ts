/**
 * The one collective data-parallel training needs, behind a small interface: NCCL implements it
 * on CUDA device buffers (./nccl.ts), a single process implements it as the identity, and tests
 * implement it in-process over simulated ranks.
 */
import type { DeviceBuffer } from "../backend.ts";

/** One rank's end of a group of `worldSize` processes that average buffers together. */
export interface Communicator {
  /** This process's rank, 0 … worldSize - 1; rank 0 logs, evaluates and writes checkpoints. */
  readonly rank: number;
  readonly worldSize: number;
  /**
   * buffer ← the mean over all ranks of their `buffer` (same length on every rank), in place.
   * Ordered after the backend ops enqueued before it and before those enqueued after it; every
   * rank must call it the same number of times with the same lengths, in the same order.
   */
  allReduceMean(buffer: DeviceBuffer): Promise<void>;
  /** Releases the group's resources. */
  close(): void;
}

/** A group of one: the mean over one rank is the buffer itself (training without NCCL). */
export class SingleProcessCommunicator implements Communicator {
  readonly rank = 0;
  readonly worldSize = 1;

  allReduceMean(_buffer: DeviceBuffer): Promise<void> {
    return Promise.resolve();
  }

  close(): void {}
}
