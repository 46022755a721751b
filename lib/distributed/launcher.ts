/**
 * The launcher of a data-parallel job: one worker process per GPU of this host, each told its
 * rank, world size, device and rendezvous through the environment (./worker.ts). The launcher
 * of host 0 serves the rendezvous that hands rank 0's NCCL id to everyone. A worker that fails
 * takes the job down: the others get SIGTERM, then SIGKILL after a grace period, so a rank
 * blocked in a collective never hangs the job.
 */
import { type RendezvousAddress, serveRendezvous } from "./rendezvous.ts";
import { workerEnv } from "./worker.ts";

/** A worker's exit code for "interrupted, after the agreed last step and checkpoint": not a failure. */
export const INTERRUPTED_CODE = 130;

export interface LaunchOptions {
  /** The worker's command line: program, then arguments. */
  command: string[];
  /** This host's GPUs, one worker each (CUDA indices, as CUDA_VISIBLE_DEVICES takes them). */
  devices: string[];
  /** Ranks over all hosts (devices.length on one host). */
  worldSize: number;
  /** Global rank of this host's first worker (0 on host 0). */
  firstRank: number;
  /** Where the rendezvous listens: 127.0.0.1 and port 0 (any) on one host. */
  rendezvous: RendezvousAddress;
  /** This launcher serves the rendezvous (host 0). */
  serve: boolean;
  /** The job's token, shared by every host's launcher. */
  job: string;
  /** Every rank must have reached the rendezvous within this many milliseconds. */
  rendezvousTimeoutMs: number;
  /** Between SIGTERM and SIGKILL when the job is taken down (default 5000). */
  graceMs?: number;
  /** More environment for the workers. */
  env?: Record<string, string>;
  /** Workers' output: the launcher's own (default) or discarded. */
  output?: "inherit" | "null";
  /** Aborting takes the job down like a failed worker (e.g. on SIGTERM to the launcher). */
  signal?: AbortSignal;
}

export interface LaunchResult {
  /** 0 when every worker succeeded, 130 when they stopped on an interrupt, else the failure's code. */
  code: number;
  /** What went wrong, for the user: which rank failed and how. */
  failure?: string;
}

/** Starts the workers and waits for all of them; never returns while one is still running. */
export async function launch(options: LaunchOptions): Promise<LaunchResult> {
  const server = options.serve
    ? serveRendezvous({
      hostname: options.rendezvous.hostname,
      port: options.rendezvous.port,
      worldSize: options.worldSize,
      job: options.job,
      timeoutMs: options.rendezvousTimeoutMs,
    })
    : null;
  const rendezvous = server?.address ?? options.rendezvous;
  const [program, ...args] = options.command;
  const workers = options.devices.map((device, localRank) => {
    const rank = options.firstRank + localRank;
    const env = workerEnv({
      rank,
      worldSize: options.worldSize,
      localRank,
      device,
      rendezvous,
      job: options.job,
    });
    const child = new Deno.Command(program, {
      args,
      env: { ...options.env, ...env },
      stdin: "null",
      stdout: options.output ?? "inherit",
      stderr: options.output ?? "inherit",
    }).spawn();
    return { rank, child, exit: child.status.then((status) => ({ rank, status })), running: true };
  });

  let failure: string | undefined, code = 0;
  const timers: ReturnType<typeof setTimeout>[] = [];
  const takeDown = (why: string, exitCode: number) => {
    if (failure !== undefined) return;
    const others = workers.filter((w) => w.running);
    failure = `${why}; stopping the other ${others.length} worker(s)`;
    code = exitCode;
    for (const w of others) {
      signal(w.child, "SIGTERM");
      timers.push(setTimeout(() => w.running && signal(w.child, "SIGKILL"), options.graceMs ?? 5000));
    }
  };
  const onAbort = () => takeDown("the launcher was asked to stop", 143);
  options.signal?.addEventListener("abort", onAbort);
  if (options.signal?.aborted) onAbort();
  server?.done.catch((error: Error) => takeDown(error.message, 1));

  while (workers.some((w) => w.running)) {
    const { rank, status } = await Promise.race(workers.filter((w) => w.running).map((w) => w.exit));
    const worker = workers.find((w) => w.rank === rank)!;
    worker.running = false;
    if (status.success) continue;
    if (status.code === INTERRUPTED_CODE && status.signal === null) {
      if (code === 0) code = INTERRUPTED_CODE;
      continue;
    }
    const how = status.signal ? `was killed by ${status.signal}` : `exited with code ${status.code}`;
    takeDown(`rank ${rank} (pid ${worker.child.pid}) ${how}`, status.code || 1);
  }
  timers.forEach(clearTimeout);
  options.signal?.removeEventListener("abort", onAbort);
  server?.close();
  return failure === undefined ? { code } : { code, failure };
}

/**
 * The GPUs for `--gpus`: `count` of them, or "all". Taken from CUDA_VISIBLE_DEVICES when it is
 * set (so a user's restriction is kept), else indices 0 … n-1 of the `detected` GPUs.
 */
export function selectDevices(
  gpus: number | "all",
  visible: string | undefined,
  detected: () => number,
): string[] {
  const available = visible !== undefined
    ? visible.split(",").map((d) => d.trim()).filter((d) => d !== "")
    : Array.from({ length: detected() }, (_, i) => String(i));
  const where = visible !== undefined ? `CUDA_VISIBLE_DEVICES=${visible}` : "this machine";
  if (available.length === 0) throw new Error(`--gpus ${gpus}: ${where} has no GPU`);
  if (gpus === "all") return available;
  if (!Number.isInteger(gpus) || gpus < 1) {
    throw new Error(`--gpus must be "all" or an integer >= 1, got ${gpus}`);
  }
  if (gpus > available.length) {
    throw new Error(`--gpus ${gpus}: ${where} has ${available.length} GPU(s)`);
  }
  return available.slice(0, gpus);
}

function signal(child: Deno.ChildProcess, name: Deno.Signal): void {
  try {
    child.kill(name);
  } catch {
    // it has exited meanwhile
  }
}
