/**
 * mod.ts imported by URL, as users import it: the repository served over HTTP on 127.0.0.1, a
 * second Deno process that imports `http://127.0.0.1:PORT/mod.ts` and runs a model on webgpu
 * (its WGSL kernels fetched from the same server) and on cpu. Its logits must be this process's,
 * computed from the local files.
 */
import assert from "node:assert/strict";
import { createBackend, MambaByte, MambaConfig } from "../mod.ts";
import { createWebGpuBackend } from "../lib/backends/webgpu.ts";
import { maxRelativeError } from "./backend_conformance.ts";

const root = new URL("../", import.meta.url);
const CONTENT_TYPES: Record<string, string> = { ts: "application/typescript", wgsl: "text/plain" };

/** Serves the repository's .ts and .wgsl files (read-only) and records every path asked for. */
function serveRepository(requested: string[]): Deno.HttpServer<Deno.NetAddr> {
  return Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (request) => {
    const path = new URL(request.url).pathname;
    requested.push(path);
    const type = CONTENT_TYPES[path.split(".").pop() ?? ""];
    if (!type || path.includes("..")) return new Response("not found", { status: 404 });
    try {
      return new Response(await Deno.readFile(new URL(`.${path}`, root)), {
        headers: { "content-type": type },
      });
    } catch {
      return new Response("not found", { status: 404 });
    }
  });
}

const CONFIG = { dim: 16, depth: 2, d_state: 4 };
const TEXT = "imported by URL";

/** The script the second process runs: logits of a seeded model on `device`, as JSON. */
const script = (origin: string, device: string) => `
import { createBackend, MambaByte, MambaConfig } from "${origin}/mod.ts";
const backend = await createBackend("${device}");
const lm = new MambaByte(new MambaConfig(${JSON.stringify(CONFIG)}), { backend, seed: 5 });
const bytes = new TextEncoder().encode(${JSON.stringify(TEXT)});
const logits = await lm.forward(bytes, [1, bytes.length]);
// On cpu: an op large enough for the worker threads (their module comes from the server too).
const threads = await import("${origin}/lib/backends/cpu.ts");
const cpu = new threads.CpuBackend({ threads: 2 });
const a = cpu.alloc(300 * 300), c = cpu.alloc(300 * 300);
cpu.matmul(c, a, a, 300, 300, 300);
console.log(JSON.stringify({ device: backend.device, logits: Array.from(logits.data), threadedOps: cpu.threadedOps }));
`;

async function localLogits(device: "cpu" | "webgpu"): Promise<Float32Array | Float64Array> {
  const backend = await createBackend(device);
  const lm = new MambaByte(new MambaConfig(CONFIG), { backend, seed: 5 });
  const bytes = new TextEncoder().encode(TEXT);
  const logits = (await lm.forward(bytes, [1, bytes.length])).data;
  backend.dispose();
  return logits;
}

const webgpu = await createWebGpuBackend();
webgpu?.dispose();

for (const device of ["cpu", "webgpu"] as const) {
  Deno.test({
    name: `mod.ts imported from an http URL runs on ${device} and gives the local logits`,
    ignore: device === "webgpu" && webgpu === null,
    async fn() {
      const requested: string[] = [];
      const server = serveRepository(requested);
      const dir = await Deno.makeTempDir();
      try {
        const origin = `http://127.0.0.1:${server.addr.port}`;
        await Deno.writeTextFile(`${dir}/main.ts`, script(origin, device));
        const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
          args: ["run", "--quiet", "-A", "--no-lock", "--no-config", `${dir}/main.ts`],
          cwd: dir,
        }).output();
        assert.equal(code, 0, new TextDecoder().decode(stderr));
        const remote = JSON.parse(new TextDecoder().decode(stdout));
        assert.equal(remote.device, device);
        assert.ok(requested.includes("/mod.ts"), "the module came from the server");
        if (device === "webgpu") {
          assert.ok(requested.includes("/kernels/scan.wgsl"), "the kernels came from the server");
        }
        assert.equal(remote.threadedOps, 1, "the cpu backend's matmul did not run on its worker threads");
        assert.ok(
          requested.includes("/lib/backends/cpu_worker.ts"),
          "the worker module came from the server",
        );
        const error = maxRelativeError(remote.logits, await localLogits(device));
        assert.ok(error <= 1e-6, `logits differ from the local import's: ${error.toExponential(2)}`);
      } finally {
        await server.shutdown();
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}
