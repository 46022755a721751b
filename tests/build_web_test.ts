/**
 * `deno task build:web`: the browser bundle is written, holds every WGSL kernel inline (no
 * kernels/ fetch left) and works: imported as a module, its WebGPU backend compiles the inlined
 * kernels and computes (on any adapter, lavapipe included). Skipped only when esbuild cannot be
 * installed from npm.
 */
import assert from "node:assert/strict";
import { KERNEL_FILES } from "../lib/backends/webgpu_kernel_source.ts";

const ESBUILD = "npm:esbuild@0.25";
let esbuildMissing = "";
try {
  await import(ESBUILD);
} catch (error) {
  esbuildMissing = String(error);
  console.log(`build:web test skipped: esbuild cannot be installed (${esbuildMissing})`);
}

Deno.test(
  { name: "build:web bundles mod.ts with the WGSL kernels inlined", ignore: esbuildMissing !== "" },
  async () => {
    const dir = await Deno.makeTempDir();
    try {
      const outfile = `${dir}/mambabyte.js`;
      const task = new URL("../tasks/build_web.ts", import.meta.url).pathname;
      const { code, stderr } = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", task, "--out", outfile],
        stdout: "null",
      }).output();
      assert.equal(code, 0, new TextDecoder().decode(stderr));
      const bundle = await Deno.readTextFile(outfile);
      for (const name of KERNEL_FILES) {
        const source = await Deno.readTextFile(new URL(`../kernels/${name}.wgsl`, import.meta.url));
        const functions = [...source.matchAll(/\bfn (\w+)\(/g)].map((m) => m[0]);
        assert.ok(functions.length > 0, `kernels/${name}.wgsl declares no function`);
        for (const fn of functions) {
          assert.ok(bundle.includes(fn), `${fn} of kernels/${name}.wgsl is not inlined`);
        }
      }
      assert.ok(!bundle.includes("../../kernels/"), "the bundle still fetches kernels/ at run time");
      assert.ok(!bundle.includes("node:worker_threads"), "the bundle starts the cpu backend's Deno workers");

      const mod = await import(`file://${outfile}`);
      assert.equal(typeof mod.MambaByte, "function");
      const backend = await mod.createWebGpuBackend();
      if (backend) {
        const x = backend.alloc(3);
        backend.write(x, [1, 2, 3]);
        assert.equal(await backend.sumOfSquares(x), 14);
        backend.dispose();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
