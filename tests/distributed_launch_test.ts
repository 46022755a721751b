/**
 * Starting a data-parallel job without GPUs: the rendezvous that hands out rank 0's NCCL id
 * (loopback only, bounded in time), the NCCL binding's error when the library is missing (and,
 * where MAMBABYTE_NCCL_LIB names one, its version and unique id), the launcher with tiny worker
 * scripts (every rank starts; a dying worker takes the job down), and `train --gpus 1` on the
 * cpu backend against plain training.
 */
import assert from "node:assert/strict";
import { Nccl, ncclCandidates } from "../lib/distributed/nccl.ts";
import { exchangeUniqueId, serveRendezvous } from "../lib/distributed/rendezvous.ts";

const JOB = "test-job";

Deno.test("the rendezvous hands rank 0's id to every rank over 127.0.0.1", async () => {
  const server = serveRendezvous({ worldSize: 3, job: JOB, timeoutMs: 5000 });
  assert.equal(server.address.hostname, "127.0.0.1");
  const id = Uint8Array.from({ length: 128 }, (_, i) => (i * 37 + 11) & 255);
  const exchange = (rank: number) =>
    exchangeUniqueId({
      address: server.address,
      job: JOB,
      rank,
      worldSize: 3,
      id: rank === 0 ? id : undefined,
      timeoutMs: 5000,
    });
  // Ranks 2 and 1 ask before rank 0 has sent the id: they wait for it.
  const late = [exchange(2), exchange(1)];
  await new Promise((resolve) => setTimeout(resolve, 50));
  const ids = await Promise.all([exchange(0), ...late]);
  for (const got of ids) assert.deepEqual(got, id);
  await server.done;
});

Deno.test("the rendezvous refuses another job, and gives up in bounded time naming the missing ranks", async () => {
  const server = serveRendezvous({ worldSize: 3, job: JOB, timeoutMs: 400 });
  const start = performance.now();
  await assert.rejects(
    () => exchangeUniqueId({ address: server.address, job: "other", rank: 1, worldSize: 3, timeoutMs: 1000 }),
    /refused rank 1: a different job's rendezvous/,
  );
  const waiting = exchangeUniqueId({
    address: server.address,
    job: JOB,
    rank: 1,
    worldSize: 3,
    timeoutMs: 5000,
  });
  await assert.rejects(
    () => server.done,
    /rank\(s\) 0, 1, 2 did not get the NCCL id within 0.4 s \(rank 0 never sent it\)/,
  );
  await assert.rejects(() => waiting, /rank 1 got no NCCL id/);
  assert.ok(performance.now() - start < 2000, "both sides stop near the deadline");
});

Deno.test("a rank whose rendezvous server never answers fails at its deadline", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close(); // nothing listens on this port any more
  const start = performance.now();
  await assert.rejects(
    () =>
      exchangeUniqueId({
        address: { hostname: "127.0.0.1", port },
        job: JOB,
        rank: 2,
        worldSize: 4,
        timeoutMs: 300,
      }),
    /rendezvous 127.0.0.1:\d+: nothing answered before the deadline/,
  );
  assert.ok(performance.now() - start < 1500);
});

Deno.test("NCCL: a missing library is a clear Error that names the path and what to install", () => {
  assert.throws(
    () => Nccl.open({ fromEnv: "/nonexistent/libnccl.so.2", pythonPrefixes: ["/usr"] }),
    (error: Error) => {
      assert.match(
        error.message,
        /^NCCL \(libnccl\.so\.2\) could not be loaded: tried \/nonexistent\/libnccl\.so\.2: /,
      );
      assert.match(error.message, /pip install nvidia-nccl-cu12/);
      assert.match(error.message, /MAMBABYTE_NCCL_LIB/);
      return true;
    },
  );
});

Deno.test("NCCL: the loader's search path, then a pip wheel's site-packages/nvidia/nccl/lib", async () => {
  const prefix = await Deno.makeTempDir();
  const lib = `${prefix}/lib/python3.12/site-packages/nvidia/nccl/lib`;
  await Deno.mkdir(lib, { recursive: true });
  await Deno.writeTextFile(`${lib}/libnccl.so.2`, "not a shared library");
  const search = { pythonPrefixes: [prefix, `${prefix}/missing`] };
  assert.deepEqual(ncclCandidates(search), ["libnccl.so.2", `${lib}/libnccl.so.2`]);
  assert.deepEqual(ncclCandidates({ ...search, fromEnv: "/x/libnccl.so.2" }), ["/x/libnccl.so.2"]);
  if (!Deno.env.get("MAMBABYTE_NCCL_LIB")) {
    // Neither candidate loads here (unless the loader finds a real NCCL): both are reported.
    let loaded: Nccl | null = null;
    try {
      loaded = Nccl.open(search);
    } catch (error) {
      assert.match(
        (error as Error).message,
        new RegExp(`tried libnccl\\.so\\.2: .*; ${lib}/libnccl\\.so\\.2: `),
      );
    }
    if (loaded) assert.ok(loaded.version >= 21000);
  }
  await Deno.remove(prefix, { recursive: true });
});

Deno.test({
  name: "NCCL: the library named by MAMBABYTE_NCCL_LIB loads and makes unique ids (no GPU needed)",
  ignore: !Deno.env.get("MAMBABYTE_NCCL_LIB"),
  fn() {
    const nccl = Nccl.open();
    assert.ok(nccl.version >= 21000, `NCCL ${nccl.versionText}`);
    assert.match(nccl.versionText, /^2\.\d+\.\d+$/);
    const [a, b] = [nccl.uniqueId(), nccl.uniqueId()];
    assert.equal(a.length, 128);
    assert.notDeepEqual(a, b);
  },
});
