/**
 * The CUDA library builds with this machine's nvcc (no GPU needed) and exports every symbol the
 * binding declares. Without nvcc the test is skipped with a message — except under CI (env CI
 * set), where a missing nvcc fails it.
 */
import assert from "node:assert/strict";
import { CUDA_SYMBOLS } from "../lib/backends/cuda_ffi.ts";
import { cudaHalfMatmulWorkspace, cudaScanBackwardWorkspace } from "../lib/memory_plan.ts";
import { buildCudaLibrary } from "../tasks/build_cuda.ts";

async function hasCommand(name: string): Promise<boolean> {
  try {
    return (await new Deno.Command(name, { args: ["--version"], stdout: "null", stderr: "null" }).output())
      .success;
  } catch {
    return false;
  }
}

const nvcc = await hasCommand("nvcc");
const inCI = Deno.env.get("CI") !== undefined;
if (!nvcc && !inCI) console.log("cuda build: nvcc is not on PATH here, skipping (CI requires it)");

Deno.test({
  name: "cuda build: nvcc builds the library and it exports every symbol the binding declares",
  ignore: !nvcc && !inCI,
  fn: async () => {
    assert.ok(nvcc, "nvcc is not on PATH: CI must build the CUDA library");
    const dir = await Deno.makeTempDir({ prefix: "mambabyte-cuda-" });
    try {
      // One architecture keeps the test near 20 s on 2 cores; `deno task build:cuda` builds all three.
      const path = await buildCudaLibrary({ archs: ["90"], output: `${dir}/libmambabyte.so` });
      const nm = await new Deno.Command("nm", { args: ["-D", "--defined-only", path] }).output();
      assert.ok(nm.success, new TextDecoder().decode(nm.stderr));
      const exported = new Set(
        new TextDecoder().decode(nm.stdout).split("\n").map((line) => line.trim().split(/\s+/)[2]).filter(
          Boolean,
        ),
      );
      const missing = Object.keys(CUDA_SYMBOLS).filter((name) => !exported.has(name));
      assert.deepEqual(
        missing,
        [],
        `symbols the binding declares but the library does not export: ${missing}`,
      );
      const extra = [...exported].filter((name) => name.startsWith("mb_") && !(name in CUDA_SYMBOLS));
      assert.deepEqual(extra, [], `exported but not declared in lib/backends/cuda_ffi.ts: ${extra}`);
      checkWorkspaceFormulas(path);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/**
 * The memory plan's formulas for the CUDA workspace give the library's own figures (host
 * functions: no GPU needed): the scan backward at decode, odd and MambaByte-353M-at-8-KiB shapes,
 * and bf16 matmuls with and without 16-bit operands, decode's GEMV among them.
 */
function checkWorkspaceFormulas(path: string): void {
  const lib = Deno.dlopen(path, {
    mb_scan_backward_workspace_bytes: CUDA_SYMBOLS.mb_scan_backward_workspace_bytes,
    mb_matmul_workspace_bytes: CUDA_SYMBOLS.mb_matmul_workspace_bytes,
  });
  try {
    const scans = [[1, 1, 1, 1], [3, 17, 70, 5], [8, 2048, 1024, 16], [2, 8192, 2048, 16], [1, 100, 129, 12]];
    for (const [batch, length, channels, state] of scans) {
      const library = Number(lib.symbols.mb_scan_backward_workspace_bytes(batch, length, channels, state));
      const planned = cudaScanBackwardWorkspace({ batch, length, channels, state });
      assert.equal(
        planned,
        library,
        `scan backward workspace at B=${batch} L=${length} ED=${channels} N=${state}`,
      );
    }
    const BF16 = 2, products = [[1, 4096, 1024], [8, 130, 64], [9, 130, 64], [16384, 2048, 512], [3, 7, 1]];
    for (const [m, n, k] of products) {
      for (const [transA, transB] of [[false, true], [false, false], [true, false]]) {
        for (const [aHalf, bHalf] of [[false, false], [true, false], [false, true], [true, true]]) {
          const [lda, ldb] = [transA ? m : k, transB ? k : n];
          const library = Number(
            lib.symbols.mb_matmul_workspace_bytes(
              m,
              n,
              k,
              +transA,
              +transB,
              lda,
              ldb,
              n,
              BF16,
              +aHalf | (+bHalf << 1),
            ),
          );
          const planned = cudaHalfMatmulWorkspace(m, n, k, { transA, transB, aHalf, bHalf });
          assert.equal(
            planned,
            library,
            `bf16 matmul workspace at ${JSON.stringify({ m, n, k, transA, transB, aHalf, bHalf })}`,
          );
        }
      }
    }
  } finally {
    lib.close();
  }
}
