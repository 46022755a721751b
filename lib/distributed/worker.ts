/**
 * A launched worker's side: who it is (rank, world size, device, rendezvous), read from the
 * environment the launcher set, and joining the group: NCCL on the cuda backend (rank 0 makes
 * the unique id, the rendezvous hands it out), the identity for a group of one elsewhere.
 */
import type { Backend } from "../backend.ts";
import { type Communicator, SingleProcessCommunicator } from "./communicator.ts";
import { cudaDeviceAccess, Nccl, NCCL_UNIQUE_ID_BYTES, NcclCommunicator } from "./nccl.ts";
import { exchangeUniqueId, type RendezvousAddress } from "./rendezvous.ts";

/** What the launcher tells each worker. */
export interface WorkerInfo {
  /** Global rank, 0 … worldSize - 1. */
  rank: number;
  worldSize: number;
  /** Rank among this host's workers. */
  localRank: number;
  /** The GPU index given to this worker (the only one it sees through CUDA_VISIBLE_DEVICES). */
  device: string;
  rendezvous: RendezvousAddress;
  /** The job's token, checked by the rendezvous. */
  job: string;
}

/** The environment variables that carry a WorkerInfo. */
export const WORKER_ENV = {
  rank: "MAMBABYTE_RANK",
  worldSize: "MAMBABYTE_WORLD_SIZE",
  localRank: "MAMBABYTE_LOCAL_RANK",
  device: "MAMBABYTE_DEVICE",
  rendezvous: "MAMBABYTE_RENDEZVOUS",
  job: "MAMBABYTE_JOB",
} as const;

/** The environment of a worker: its WorkerInfo, and CUDA_VISIBLE_DEVICES set to its one GPU. */
export function workerEnv(info: WorkerInfo): Record<string, string> {
  return {
    [WORKER_ENV.rank]: String(info.rank),
    [WORKER_ENV.worldSize]: String(info.worldSize),
    [WORKER_ENV.localRank]: String(info.localRank),
    [WORKER_ENV.device]: info.device,
    [WORKER_ENV.rendezvous]: `${info.rendezvous.hostname}:${info.rendezvous.port}`,
    [WORKER_ENV.job]: info.job,
    CUDA_VISIBLE_DEVICES: info.device,
  };
}

/** This process's WorkerInfo when a launcher started it, else null; throws on a malformed one. */
export function workerInfo(
  env: (name: string) => string | undefined = (n) => Deno.env.get(n),
): WorkerInfo | null {
  const rank = env(WORKER_ENV.rank);
  if (rank === undefined) return null;
  const int = (name: string, min: number) => {
    const value = Number(env(name));
    if (!Number.isInteger(value) || value < min) throw new Error(`${name} must be an integer >= ${min}`);
    return value;
  };
  const info = {
    rank: int(WORKER_ENV.rank, 0),
    worldSize: int(WORKER_ENV.worldSize, 1),
    localRank: int(WORKER_ENV.localRank, 0),
    device: env(WORKER_ENV.device) ?? "",
    job: env(WORKER_ENV.job) ?? "",
  };
  const match = /^(.+):(\d+)$/.exec(env(WORKER_ENV.rendezvous) ?? "");
  if (!match || info.rank >= info.worldSize) {
    throw new Error(`a malformed worker environment (${WORKER_ENV.rank}, ${WORKER_ENV.rendezvous} …)`);
  }
  return { ...info, rendezvous: { hostname: match[1], port: Number(match[2]) } };
}

/**
 * Joins the job's group on `backend`: NCCL on cuda (any world size, 1 included); the identity
 * for a group of one elsewhere; an Error for several ranks on a backend NCCL cannot reach.
 * Every rank goes through the rendezvous (rank 0 with NCCL's unique id, or random bytes
 * without NCCL), which tells the launcher that it has started.
 */
export async function joinGroup(
  backend: Backend,
  info: WorkerInfo,
  timeoutMs: number,
): Promise<Communicator> {
  const cuda = backend.device === "cuda";
  if (!cuda && info.worldSize > 1) {
    throw new Error(
      `training on ${info.worldSize} GPUs needs the cuda backend (NCCL), not ${backend.device}`,
    );
  }
  const access = cuda ? cudaDeviceAccess(backend) : null;
  const nccl = cuda ? Nccl.open() : null;
  const id = await exchangeUniqueId({
    address: info.rendezvous,
    job: info.job,
    rank: info.rank,
    worldSize: info.worldSize,
    id: info.rank !== 0
      ? undefined
      : nccl?.uniqueId() ?? crypto.getRandomValues(new Uint8Array(NCCL_UNIQUE_ID_BYTES)),
    timeoutMs,
  });
  return nccl && access
    ? NcclCommunicator.init(nccl, access, id, info.rank, info.worldSize)
    : new SingleProcessCommunicator();
}
