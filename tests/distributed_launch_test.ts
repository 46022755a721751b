/**
 * Starting a data-parallel job without GPUs: the rendezvous that hands out rank 0's NCCL id
 * (loopback only, bounded in time), the NCCL binding's error when the library is missing (and,
 * where MAMBABYTE_NCCL_LIB names one, its version and unique id), the launcher with tiny worker
 * scripts (every rank starts; a dying worker takes the job down), and `train --gpus 1` on the
 * cpu backend against plain training.
 */
import assert from "node:assert/strict";
import { launch, selectDevices } from "../lib/distributed/launcher.ts";
import { Nccl, ncclCandidates } from "../lib/distributed/nccl.ts";
import { exchangeUniqueId, serveRendezvous } from "../lib/distributed/rendezvous.ts";
import { workerEnv, workerInfo } from "../lib/distributed/worker.ts";

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

/** A worker that joins the rendezvous, writes what it was told, then (mode "die") rank 1 fails. */
const WORKER_SCRIPT = `
import { exchangeUniqueId } from "${new URL("../lib/distributed/rendezvous.ts", import.meta.url)}";
import { workerInfo } from "${new URL("../lib/distributed/worker.ts", import.meta.url)}";
const [mode, dir] = Deno.args;
const info = workerInfo();
const id = await exchangeUniqueId({
  address: info.rendezvous, job: info.job, rank: info.rank, worldSize: info.worldSize,
  id: info.rank === 0 ? new Uint8Array(128).fill(42) : undefined, timeoutMs: 20000,
});
const visible = Deno.env.get("CUDA_VISIBLE_DEVICES");
await Deno.writeTextFile(dir + "/rank" + info.rank + ".json", JSON.stringify({ ...info, visible, id: [...id.slice(0, 2)] }));
const others = ["rank0.json", "rank2.json"].map((name) => dir + "/" + name);
while (mode === "die" && info.rank === 1 && !others.every((f) => { try { return Deno.statSync(f).isFile; } catch { return false; } })) {
  await new Promise((resolve) => setTimeout(resolve, 20));
}
if (mode === "die" && info.rank === 1) Deno.exit(3); // after the others have started
if (mode === "die" && info.rank === 2) Deno.addSignalListener("SIGTERM", () => {}); // only SIGKILL stops it
if (mode === "die") await new Promise((resolve) => setTimeout(resolve, 60000));
`;

async function launchScript(mode: "ok" | "die") {
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(`${dir}/worker.ts`, WORKER_SCRIPT);
  const start = performance.now();
  const result = await launch({
    command: [Deno.execPath(), "run", "-A", `${dir}/worker.ts`, mode, dir],
    devices: ["4", "5", "6"],
    worldSize: 3,
    firstRank: 0,
    rendezvous: { hostname: "127.0.0.1", port: 0 },
    serve: true,
    job: "job-1",
    rendezvousTimeoutMs: 20000,
    graceMs: 500,
    output: "null",
  });
  const ranks = [];
  for (
    const name of [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.startsWith("rank")).sort()
  ) {
    ranks.push(JSON.parse(await Deno.readTextFile(`${dir}/${name}`)));
  }
  await Deno.remove(dir, { recursive: true });
  return { result, ranks, seconds: (performance.now() - start) / 1000 };
}

Deno.test("the launcher starts one worker per device with its rank, world size, device and the rendezvous", async () => {
  const { result, ranks } = await launchScript("ok");
  assert.deepEqual(result, { code: 0 });
  assert.deepEqual(
    ranks.map((
      r,
    ) => [r.rank, r.localRank, r.worldSize, r.device, r.visible, r.job, r.rendezvous.hostname, r.id]),
    [
      [0, 0, 3, "4", "4", "job-1", "127.0.0.1", [42, 42]],
      [1, 1, 3, "5", "5", "job-1", "127.0.0.1", [42, 42]],
      [2, 2, 3, "6", "6", "job-1", "127.0.0.1", [42, 42]],
    ],
  );
});

Deno.test("a worker that dies takes the job down with a message naming it, even a worker that ignores SIGTERM", async () => {
  const { result, ranks, seconds } = await launchScript("die");
  assert.equal(ranks.length, 3, "every worker had started");
  assert.equal(result.code, 3);
  assert.match(result.failure!, /^rank 1 \(pid \d+\) exited with code 3; stopping the other 2 worker\(s\)$/);
  assert.ok(seconds < 20, `the job ended in ${seconds} s, not after the workers' 60 s`);
});

Deno.test("--gpus picks GPUs from CUDA_VISIBLE_DEVICES, else from the detected count", () => {
  assert.deepEqual(selectDevices(2, "3,5,7", () => 0), ["3", "5"]);
  assert.deepEqual(selectDevices("all", "3,5", () => 8), ["3", "5"]);
  assert.deepEqual(selectDevices("all", undefined, () => 4), ["0", "1", "2", "3"]);
  assert.throws(() => selectDevices(3, "1,2", () => 8), /--gpus 3: CUDA_VISIBLE_DEVICES=1,2 has 2 GPU\(s\)/);
  assert.throws(() => selectDevices(1, undefined, () => 0), /--gpus 1: this machine has no GPU/);
});

Deno.test("a worker reads what the launcher set, and a process no launcher started is not a worker", () => {
  const env = workerEnv({
    rank: 3,
    worldSize: 8,
    localRank: 1,
    device: "1",
    rendezvous: { hostname: "10.1.2.3", port: 29500 },
    job: "j",
  });
  assert.deepEqual(workerInfo((name) => env[name]), {
    rank: 3,
    worldSize: 8,
    localRank: 1,
    device: "1",
    rendezvous: { hostname: "10.1.2.3", port: 29500 },
    job: "j",
  });
  assert.equal(workerInfo(() => undefined), null);
  assert.throws(
    () => workerInfo((name) => ({ ...env, MAMBABYTE_RANK: "8" })[name]),
    /malformed worker environment/,
  );
});

/** `deno run -A tasks/train.ts ARGS` in a subprocess. */
async function trainCli(args: string[]): Promise<{ code: number; stderr: string }> {
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../tasks/train.ts", import.meta.url).pathname, ...args],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  return { code, stderr: new TextDecoder().decode(stderr) };
}

Deno.test("train --gpus 1 on the cpu backend (a launched worker, world size 1) equals plain training step for step", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(
    `${dir}/corpus.txt`,
    "we the people, in order to form a more perfect union. ".repeat(50),
  );
  const args = ["--dim", "8", "--depth", "1", "--d-state", "4", "--batch-size", "2", "--seq-len", "16"];
  const common = [
    ...args,
    "--steps",
    "6",
    "--log-every",
    "1",
    "--eval-every",
    "3",
    "--data",
    `${dir}/corpus.txt`,
  ];
  const plain = await trainCli([...common, "--backend", "cpu", "--out", `${dir}/plain`]);
  const launched = await trainCli([...common, "--backend", "cpu", "--gpus", "1", "--out", `${dir}/gpus1`]);
  assert.equal(plain.code, 0, plain.stderr);
  assert.equal(launched.code, 0, launched.stderr);
  const losses = async (run: string) =>
    (await Deno.readTextFile(`${dir}/${run}/metrics.jsonl`)).trim().split("\n").map((line) => {
      const { step, loss, val_bpb } = JSON.parse(line);
      return { step, loss, val_bpb };
    });
  const expected = await losses("plain");
  assert.equal(expected.length, 6);
  assert.deepEqual(await losses("gpus1"), expected);

  const refused = await trainCli([...common, "--backend", "cpu", "--gpus", "2", "--out", `${dir}/two`]);
  assert.equal(refused.code, 2);
  assert.match(refused.stderr.trim(), /^train: error: --gpus 2 needs --backend cuda \(or auto\)/);
  await Deno.remove(dir, { recursive: true });
});
