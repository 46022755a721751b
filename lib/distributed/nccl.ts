/**
 * NCCL from Deno: a Deno.dlopen binding of libnccl.so.2 and a Communicator that averages CUDA
 * device buffers with ncclAllReduce (ncclAvg, float32) on the cuda backend's own stream, so the
 * reduction is ordered after backward and before the optimizer without a host round trip.
 *
 * The library is found at $MAMBABYTE_NCCL_LIB, else through the loader's search path
 * (libnccl.so.2: a distribution's package), else in a Python environment's
 * site-packages/nvidia/nccl/lib (PyTorch's `nvidia-nccl-cu12`/`-cu13` wheels).
 */
import type { Backend, DeviceBuffer } from "../backend.ts";
import type { Communicator } from "./communicator.ts";

/** ncclUniqueId: 128 opaque bytes made by rank 0 and handed to every rank. */
export const NCCL_UNIQUE_ID_BYTES = 128;

/** ncclAvg needs NCCL 2.10 (version code 21000). */
const MIN_VERSION = 21000;
const NCCL_FLOAT32 = 7;
const NCCL_AVG = 4;

const I32 = "i32";
/** ncclComm_t, cudaStream_t and device pointers travel as u64 addresses. */
const ADDR = "u64";

/** The NCCL functions used here, with their Deno FFI signatures (nccl.h). */
export const NCCL_SYMBOLS = {
  ncclGetVersion: { parameters: ["buffer"], result: I32 },
  ncclGetUniqueId: { parameters: ["buffer"], result: I32 },
  ncclGetErrorString: { parameters: [I32], result: "pointer" },
  ncclGetLastError: { parameters: [ADDR], result: "pointer", optional: true },
  ncclCommInitRank: {
    parameters: ["buffer", I32, { struct: new Array<"u8">(NCCL_UNIQUE_ID_BYTES).fill("u8") }, I32],
    result: I32,
  },
  ncclCommGetAsyncError: { parameters: [ADDR, "buffer"], result: I32 },
  ncclCommDestroy: { parameters: [ADDR], result: I32 },
  ncclCommAbort: { parameters: [ADDR], result: I32 },
  ncclAllReduce: { parameters: [ADDR, ADDR, "usize", I32, I32, ADDR, ADDR], result: I32 },
} as const satisfies Deno.ForeignLibraryInterface;

type NcclSymbols = Deno.DynamicLibrary<typeof NCCL_SYMBOLS>["symbols"];

/** What to tell a user whose NCCL cannot be loaded. */
export const NCCL_HINT =
  "install NCCL (a distribution's libnccl2 package, or `pip install nvidia-nccl-cu12`) " +
  "or set MAMBABYTE_NCCL_LIB to a libnccl.so.2";

/** Where to look: the environment and the Python prefixes whose site-packages may hold NCCL. */
export interface NcclSearch {
  /** $MAMBABYTE_NCCL_LIB; when set, nothing else is tried. */
  fromEnv?: string;
  /** Prefixes holding lib/python3.*\/{site,dist}-packages (a venv, conda, ~/.local, /usr …). */
  pythonPrefixes: string[];
}

/** The search of this process: its environment, its virtual or conda environment, ~/.local, /usr. */
export function defaultNcclSearch(): NcclSearch {
  const env = (name: string) => {
    try {
      return Deno.env.get(name) || undefined;
    } catch {
      return undefined; // no --allow-env
    }
  };
  const home = env("HOME");
  const prefixes = [env("VIRTUAL_ENV"), env("CONDA_PREFIX"), home && `${home}/.local`, "/usr/local", "/usr"];
  return { fromEnv: env("MAMBABYTE_NCCL_LIB"), pythonPrefixes: prefixes.filter((p) => p !== undefined) };
}

/**
 * The paths to try, in order: $MAMBABYTE_NCCL_LIB alone when set; else "libnccl.so.2" (the
 * loader's search path) and every site-packages/nvidia/nccl/lib/libnccl.so.2 that exists.
 */
export function ncclCandidates(search: NcclSearch): string[] {
  if (search.fromEnv) return [search.fromEnv];
  const found: string[] = [];
  for (const prefix of search.pythonPrefixes) {
    for (const python of listDir(`${prefix}/lib`).filter((name) => /^python3/.test(name))) {
      for (const packages of ["site-packages", "dist-packages"]) {
        const path = `${prefix}/lib/${python}/${packages}/nvidia/nccl/lib/libnccl.so.2`;
        if (isFile(path)) found.push(path);
      }
    }
  }
  return ["libnccl.so.2", ...found];
}

/** A loaded NCCL library. */
export class Nccl {
  private constructor(readonly symbols: NcclSymbols, readonly path: string, readonly version: number) {}

  /**
   * Loads the first candidate that opens; throws an Error naming every path tried and why it
   * failed, with what to install, when none does or the version is older than 2.10.
   */
  static open(search: NcclSearch = defaultNcclSearch()): Nccl {
    const failures: string[] = [];
    for (const path of ncclCandidates(search)) {
      let symbols: NcclSymbols;
      try {
        symbols = Deno.dlopen(path, NCCL_SYMBOLS).symbols;
      } catch (error) {
        failures.push(`${path}: ${(error as Error).message}`);
        continue;
      }
      const version = new Int32Array(1);
      check(symbols, symbols.ncclGetVersion(version), "ncclGetVersion");
      if (version[0] < MIN_VERSION) {
        throw new Error(
          `${path} is NCCL ${versionText(version[0])}; ncclAvg needs NCCL 2.10 or newer: ${NCCL_HINT}`,
        );
      }
      return new Nccl(symbols, path, version[0]);
    }
    throw new Error(`NCCL (libnccl.so.2) could not be loaded: tried ${failures.join("; ")}. ${NCCL_HINT}`);
  }

  /** "2.30.7" */
  get versionText(): string {
    return versionText(this.version);
  }

  /** A new unique id (rank 0 makes it; it also starts rank 0's bootstrap listener). */
  uniqueId(): Uint8Array {
    const id = new Uint8Array(NCCL_UNIQUE_ID_BYTES);
    check(this.symbols, this.symbols.ncclGetUniqueId(id), "ncclGetUniqueId");
    return id;
  }
}

/** What NCCL needs from the CUDA backend: raw device addresses and the stream its ops run on. */
export interface CudaDeviceAccess {
  /** The device address of a buffer's (or view's) first element. */
  devicePointer(buffer: DeviceBuffer): bigint;
  /** The cudaStream_t, as an address, on which the backend enqueues every op. */
  streamHandle(): bigint;
}

/** The backend's CudaDeviceAccess; throws unless it is a cuda backend that offers one. */
export function cudaDeviceAccess(backend: Backend): CudaDeviceAccess {
  const access = backend as Backend & Partial<CudaDeviceAccess>;
  if (
    backend.device !== "cuda" || typeof access.devicePointer !== "function" ||
    typeof access.streamHandle !== "function"
  ) {
    throw new Error(
      `NCCL all-reduces need the cuda backend's devicePointer() and streamHandle(); ` +
        `the ${backend.device} backend (${backend.description}) has none`,
    );
  }
  return access as CudaDeviceAccess;
}

/** One rank of an NCCL communicator; collectives run on the cuda backend's stream. */
export class NcclCommunicator implements Communicator {
  #comm: bigint;

  private constructor(
    readonly nccl: Nccl,
    readonly access: CudaDeviceAccess,
    comm: bigint,
    readonly rank: number,
    readonly worldSize: number,
  ) {
    this.#comm = comm;
  }

  /**
   * Joins the communicator of `worldSize` ranks named by rank 0's `id` (blocks until every rank
   * has joined). The calling thread's current CUDA device is the one used: device 0 of the
   * process (the launcher makes each worker see only its own GPU).
   */
  static init(nccl: Nccl, access: CudaDeviceAccess, id: Uint8Array, rank: number, worldSize: number) {
    if (id.length !== NCCL_UNIQUE_ID_BYTES) {
      throw new Error(`an NCCL unique id has 128 bytes, not ${id.length}`);
    }
    const out = new BigUint64Array(1);
    check(
      nccl.symbols,
      nccl.symbols.ncclCommInitRank(out, worldSize, id, rank),
      `ncclCommInitRank (rank ${rank})`,
    );
    return new NcclCommunicator(nccl, access, out[0], rank, worldSize);
  }

  allReduceMean(buffer: DeviceBuffer): Promise<void> {
    const ptr = this.access.devicePointer(buffer);
    const { symbols } = this.nccl;
    const status = symbols.ncclAllReduce(
      ptr,
      ptr,
      BigInt(buffer.length),
      NCCL_FLOAT32,
      NCCL_AVG,
      this.#live(),
      this.access.streamHandle(),
    );
    check(symbols, status, `ncclAllReduce of ${buffer.length} floats`, this.#comm);
    return Promise.resolve();
  }

  /** Destroys the communicator, aborting it instead when it holds an asynchronous error. */
  close(): void {
    if (this.#comm === 0n) return;
    const comm = this.#comm;
    this.#comm = 0n;
    const error = new Int32Array(1);
    const ok = this.nccl.symbols.ncclCommGetAsyncError(comm, error) === 0 && error[0] === 0;
    if (ok) this.nccl.symbols.ncclCommDestroy(comm);
    else this.nccl.symbols.ncclCommAbort(comm);
  }

  #live(): bigint {
    if (this.#comm === 0n) throw new Error("the NCCL communicator is closed");
    return this.#comm;
  }
}

/** Throws an Error with NCCL's message (and its last error detail) unless `status` is success. */
function check(symbols: NcclSymbols, status: number, op: string, comm = 0n): void {
  if (status === 0) return;
  const text = (p: Deno.PointerValue) => (p ? Deno.UnsafePointerView.getCString(p) : "");
  const detail = symbols.ncclGetLastError ? text(symbols.ncclGetLastError(comm)) : "";
  throw new Error(`nccl ${op}: ${text(symbols.ncclGetErrorString(status))}${detail ? ` (${detail})` : ""}`);
}

function versionText(code: number): string {
  return `${Math.floor(code / 10000)}.${Math.floor(code / 100) % 100}.${code % 100}`;
}

function listDir(path: string): string[] {
  try {
    return [...Deno.readDirSync(path)].map((entry) => entry.name).sort();
  } catch {
    return [];
  }
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}
