/**
 * `deno task train --gpus N|all`: the launcher side of tasks/train.ts. It checks the options,
 * picks the GPUs, fixes the output directory, then runs tasks/train.ts once per GPU as a worker
 * (lib/distributed/launcher.ts) and waits for them. Several hosts: the same command on each with
 * --nodes, --node-rank, --master-addr and --master-port (host 0 serves the rendezvous there).
 */
import { UsageError } from "../lib/cli_args.ts";
import { launch, selectDevices } from "../lib/distributed/launcher.ts";

/** How long every rank has to start (backend, corpus) and reach the rendezvous. */
export const RENDEZVOUS_TIMEOUT_MS = 300_000;

/** The launcher's options, as tasks/train.ts parsed them. */
export interface LaunchSettings {
  gpus: string;
  backend: string;
  nodes: number;
  nodeRank: number;
  masterAddr?: string;
  masterPort?: number;
  /** The run directory every worker writes to (rank 0 only) or resumes from. */
  out: string;
  resume: boolean;
}

/** The launcher options of tasks/train.ts, which its workers ignore. */
export const LAUNCH_SPECS = {
  gpus: { kind: "string", help: "data-parallel training on N GPUs (or all) through NCCL, one process each" },
  nodes: { kind: "int", min: 1, help: "hosts in a multi-host job (same command on each)" },
  "node-rank": {
    kind: "int",
    min: 0,
    help: "this host's index in a multi-host job (0 serves the rendezvous)",
  },
  "master-addr": { kind: "string", help: "host 0's address for the multi-host rendezvous" },
  "master-port": { kind: "int", min: 1, help: "host 0's port for the multi-host rendezvous" },
} as const;

/** Parses --gpus: "all" or an integer >= 1. */
export function parseGpus(value: string): number | "all" {
  if (value === "all") return "all";
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) {
    throw new UsageError(`--gpus must be "all" or an integer >= 1, got "${value}"`);
  }
  return n;
}

/**
 * Runs `workerArgs` (tasks/train.ts's arguments) once per GPU of this host and waits; returns
 * the exit code (130: the workers stopped on Ctrl-C after a checkpoint). Throws an Error naming
 * the failed rank when a worker fails.
 */
export async function launchTraining(settings: LaunchSettings, workerArgs: string[]): Promise<number> {
  const gpus = parseGpus(settings.gpus);
  const multiHost = settings.nodes > 1;
  if (multiHost && (settings.masterAddr === undefined || settings.masterPort === undefined)) {
    throw new UsageError("--nodes > 1 needs --master-addr and --master-port (host 0's rendezvous)");
  }
  if (settings.nodeRank >= settings.nodes) {
    throw new UsageError(`--node-rank must be below --nodes ${settings.nodes}, got ${settings.nodeRank}`);
  }
  let devices: string[];
  if (settings.backend === "cpu" || settings.backend === "webgpu") {
    if (gpus !== 1 || multiHost) {
      throw new UsageError(
        `--gpus ${settings.gpus} needs --backend cuda (or auto): NCCL reduces CUDA buffers`,
      );
    }
    devices = [""]; // one worker, no GPU: a group of one, without NCCL
  } else {
    try {
      devices = selectDevices(gpus, Deno.env.get("CUDA_VISIBLE_DEVICES"), countGpus);
    } catch (error) {
      throw new UsageError((error as Error).message);
    }
  }
  const worldSize = devices.length * settings.nodes;
  const controller = new AbortController();
  const onTerm = () => controller.abort();
  const onInt = () => {}; // Ctrl-C reaches every worker from the terminal: they stop together after a checkpoint
  Deno.addSignalListener("SIGTERM", onTerm);
  Deno.addSignalListener("SIGINT", onInt);
  const out = settings.resume ? [] : ["--out", settings.out];
  const where = devices[0] === "" ? "without a GPU" : `on GPU(s) ${devices.join(",")}`;
  console.log(`launching ${devices.length} worker(s) ${where}; ${worldSize} rank(s) in all`);
  const result = await launch({
    command: [
      Deno.execPath(),
      "run",
      "-A",
      new URL("./train.ts", import.meta.url).pathname,
      ...workerArgs,
      ...out,
    ],
    devices,
    worldSize,
    firstRank: settings.nodeRank * devices.length,
    rendezvous: multiHost
      ? { hostname: settings.masterAddr!, port: settings.masterPort! }
      : { hostname: "127.0.0.1", port: settings.masterPort ?? 0 },
    serve: settings.nodeRank === 0,
    job: multiHost ? `mambabyte-${settings.masterAddr}:${settings.masterPort}` : crypto.randomUUID(),
    rendezvousTimeoutMs: RENDEZVOUS_TIMEOUT_MS,
    signal: controller.signal,
  });
  Deno.removeSignalListener("SIGTERM", onTerm);
  Deno.removeSignalListener("SIGINT", onInt);
  if (result.failure !== undefined) throw new Error(`a worker failed: ${result.failure}`);
  return result.code;
}

/** GPUs that `nvidia-smi -L` lists; 0 without a driver. */
function countGpus(): number {
  try {
    const { success, stdout } = new Deno.Command("nvidia-smi", { args: ["-L"], stderr: "null" }).outputSync();
    return success
      ? new TextDecoder().decode(stdout).split("\n").filter((l) => l.startsWith("GPU ")).length
      : 0;
  } catch {
    return 0;
  }
}
