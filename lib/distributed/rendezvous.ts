/**
 * The rendezvous that hands rank 0's NCCL unique id (128 opaque bytes) to every rank: a small TCP
 * server (the launcher's: on 127.0.0.1 for one host, on --master-addr for several) and a client
 * each rank runs once. Every exchange is one JSON line each way; both sides give up after a
 * deadline with a message that says who is missing, so a rank that never comes cannot hang a job.
 *
 * client → server: {"job": token, "rank": r, "world": W, "id": hex (rank 0 only)}
 * server → client: {"id": hex} once rank 0's id is known, or {"error": message}
 */

/** Where a rendezvous server listens. */
export interface RendezvousAddress {
  hostname: string;
  port: number;
}

export interface RendezvousServerOptions {
  /** Address to listen on (default 127.0.0.1: this host's ranks only). */
  hostname?: string;
  /** Port (default 0: any free port, see `address`). */
  port?: number;
  worldSize: number;
  /** A token every rank of this job sends; connections with another token are refused. */
  job: string;
  /** Every rank must have fetched the id within this many milliseconds of the start. */
  timeoutMs: number;
}

export interface RendezvousServer {
  readonly address: RendezvousAddress;
  /** Resolves once every rank has received the id; rejects when the deadline passes first. */
  readonly done: Promise<void>;
  /** Stops listening and drops waiting ranks. */
  close(): void;
}

/** A line longer than this is not a rendezvous message. */
const MAX_LINE = 4096;

/** Starts a rendezvous server for `worldSize` ranks. */
export function serveRendezvous(options: RendezvousServerOptions): RendezvousServer {
  const hostname = options.hostname ?? "127.0.0.1";
  const listener = Deno.listen({ hostname, port: options.port ?? 0, transport: "tcp" });
  const address = { hostname, port: (listener.addr as Deno.NetAddr).port };
  const where = `rendezvous on ${hostname}:${address.port}`;
  const reading = new Set<Deno.Conn>(); // connections whose request has not arrived yet
  const waiting = new Map<number, Deno.Conn>(); // ranks waiting for rank 0's id
  const served = new Set<number>();
  let id: string | null = null;
  let closed = false;
  let settle!: { resolve: () => void; reject: (error: Error) => void };
  const done = new Promise<void>((resolve, reject) => (settle = { resolve, reject }));
  done.catch(() => {}); // the caller may only close(); an unawaited rejection must not end the process

  const close = () => {
    if (closed) return;
    closed = true;
    clearTimeout(timer);
    listener.close();
    for (const conn of [...reading, ...waiting.values()]) conn.close();
    reading.clear();
    waiting.clear();
  };
  const timer = setTimeout(() => {
    const missing = Array.from({ length: options.worldSize }, (_, r) => r).filter((r) => !served.has(r));
    close();
    settle.reject(
      new Error(
        `${where}: rank(s) ${missing.join(", ")} did not get the NCCL id within ${
          options.timeoutMs / 1000
        } s` +
          (id === null ? " (rank 0 never sent it)" : ""),
      ),
    );
  }, options.timeoutMs);

  const reply = async (conn: Deno.Conn, message: object) => {
    try {
      await conn.write(new TextEncoder().encode(JSON.stringify(message) + "\n"));
    } catch {
      // the rank is gone; the deadline reports it
    }
    conn.close();
  };
  const serve = (rank: number, conn: Deno.Conn) => {
    served.add(rank);
    reply(conn, { id });
    if (served.size === options.worldSize) {
      close();
      settle.resolve();
    }
  };
  const handle = async (conn: Deno.Conn) => {
    let request: { job?: unknown; rank?: unknown; world?: unknown; id?: unknown };
    reading.add(conn);
    try {
      request = JSON.parse(await readLine(conn));
    } catch {
      if (reading.delete(conn)) conn.close();
      return;
    }
    reading.delete(conn);
    const rank = request.rank;
    const problem = request.job !== options.job
      ? "a different job's rendezvous"
      : request.world !== options.worldSize
      ? `this job has ${options.worldSize} ranks, not ${request.world}`
      : !Number.isInteger(rank) || (rank as number) < 0 || (rank as number) >= options.worldSize
      ? `no rank ${rank} in a job of ${options.worldSize}`
      : served.has(rank as number) || waiting.has(rank as number)
      ? `rank ${rank} already joined`
      : rank === 0 && !/^([0-9a-f]{2})+$/.test(String(request.id))
      ? "rank 0 must send the id"
      : null;
    if (problem || closed) return await reply(conn, { error: problem ?? `${where} is closed` });
    if (rank === 0) {
      id = request.id as string;
      const ready = [...waiting];
      waiting.clear();
      serve(0, conn);
      for (const [r, c] of ready) serve(r, c);
    } else if (id !== null) serve(rank as number, conn);
    else waiting.set(rank as number, conn);
  };
  (async () => {
    try {
      for await (const conn of listener) handle(conn);
    } catch {
      // the listener was closed
    }
  })();
  return { address, done, close };
}

export interface ExchangeOptions {
  address: RendezvousAddress;
  job: string;
  rank: number;
  worldSize: number;
  /** Rank 0's NCCL unique id (rank 0 only). */
  id?: Uint8Array;
  /** Give up after this many milliseconds (connecting is retried until then). */
  timeoutMs: number;
}

/** Sends rank 0's id (rank 0) or fetches it (every other rank); returns the id. */
export async function exchangeUniqueId(options: ExchangeOptions): Promise<Uint8Array> {
  const { address, rank } = options;
  const where = `rendezvous ${address.hostname}:${address.port}`;
  if ((rank === 0) !== (options.id !== undefined)) {
    throw new Error(`exchangeUniqueId: rank 0 sends the id, other ranks do not (rank ${rank})`);
  }
  const deadline = Date.now() + options.timeoutMs;
  const conn = await connectBefore(address, deadline, where);
  const timer = setTimeout(() => conn.close(), Math.max(0, deadline - Date.now()));
  let line: string;
  try {
    const request = { job: options.job, rank, world: options.worldSize, id: options.id && toHex(options.id) };
    await conn.write(new TextEncoder().encode(JSON.stringify(request) + "\n"));
    line = await readLine(conn);
  } catch (cause) {
    throw new Error(`${where}: rank ${rank} got no NCCL id within ${options.timeoutMs / 1000} s`, { cause });
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch {
      // already closed by the server or the timer
    }
  }
  const answer = JSON.parse(line) as { id?: string; error?: string };
  if (answer.error !== undefined || answer.id === undefined) {
    throw new Error(`${where} refused rank ${rank}: ${answer.error ?? "no id in the answer"}`);
  }
  return fromHex(answer.id);
}

/** Connects, retrying while nothing listens yet (the server's host may start later). */
async function connectBefore(
  address: RendezvousAddress,
  deadline: number,
  where: string,
): Promise<Deno.Conn> {
  for (;;) {
    try {
      return await Deno.connect({ hostname: address.hostname, port: address.port, transport: "tcp" });
    } catch (cause) {
      if (Date.now() + 100 > deadline) {
        throw new Error(`${where}: nothing answered before the deadline`, { cause });
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

/** One newline-terminated line (without the newline); throws at end of stream or past MAX_LINE. */
async function readLine(conn: Deno.Conn): Promise<string> {
  const chunks: Uint8Array[] = [];
  let length = 0;
  const buffer = new Uint8Array(512);
  for (;;) {
    const n = await conn.read(buffer);
    if (n === null) throw new Error("the connection closed before a full line");
    const newline = buffer.subarray(0, n).indexOf(10);
    chunks.push(buffer.slice(0, newline < 0 ? n : newline));
    length += n;
    if (newline >= 0) break;
    if (length > MAX_LINE) throw new Error(`a line longer than ${MAX_LINE} bytes`);
  }
  const line = new Uint8Array(chunks.reduce((sum, c) => sum + c.length, 0));
  let offset = 0;
  for (const c of chunks) {
    line.set(c, offset);
    offset += c.length;
  }
  return new TextDecoder().decode(line);
}

function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function fromHex(hex: string): Uint8Array {
  return Uint8Array.from(hex.match(/../g) ?? [], (pair) => parseInt(pair, 16));
}
