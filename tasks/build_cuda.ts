/**
 * `deno task build:cuda`: compiles ffi/*.cu with nvcc into .cache/cuda/libmambabyte.so (code for
 * sm_80, sm_86, sm_90 and compute_90 PTX), linking only the static CUDA runtime and libdl —
 * cuBLAS is loaded at run time, so the build needs no cuBLAS. Prints where it wrote the library.
 *
 *   deno task build:cuda [--arch 90] [--out path]
 */
import { BUILD_OUTPUT } from "../lib/backends/cuda_ffi.ts";

/** GPU architectures built by default: A100, RTX 30xx, H100/H200. */
export const DEFAULT_ARCHS = ["80", "86", "90"];

const ROOT = decodeURIComponent(new URL("..", import.meta.url).pathname);

export interface BuildOptions {
  /** Compute capabilities such as "90"; PTX is added for the newest. */
  archs?: string[];
  /** Output path (default: the repository's .cache/cuda/libmambabyte.so). */
  output?: string;
}

/** The nvcc arguments of a build. */
export function nvccArgs(sources: string[], output: string, archs: string[]): string[] {
  const newest = archs.reduce((a, b) => (Number(b) > Number(a) ? b : a));
  const gencode = archs.flatMap((arch) => [
    "-gencode",
    arch === newest
      ? `arch=compute_${arch},code=[sm_${arch},compute_${arch}]`
      : `arch=compute_${arch},code=sm_${arch}`,
  ]);
  return [
    "-O3",
    "-std=c++17",
    "-shared",
    "-Xcompiler",
    "-fPIC,-fvisibility=hidden",
    "--threads",
    "0",
    ...gencode,
    "-cudart",
    "static",
    "-o",
    output,
    ...sources,
    "-ldl",
  ];
}

/** Builds the library and returns its path; throws an Error with nvcc's output on failure. */
export async function buildCudaLibrary(options: BuildOptions = {}): Promise<string> {
  const archs = options.archs ?? DEFAULT_ARCHS;
  const output = options.output ?? `${ROOT}${BUILD_OUTPUT}`;
  const sources: string[] = [];
  for await (const entry of Deno.readDir(`${ROOT}ffi`)) {
    if (entry.isFile && entry.name.endsWith(".cu")) sources.push(`${ROOT}ffi/${entry.name}`);
  }
  sources.sort();
  await Deno.mkdir(output.slice(0, output.lastIndexOf("/")) || ".", { recursive: true });
  const temporary = `${output}.tmp`;
  let result: Deno.CommandOutput;
  try {
    result = await new Deno.Command("nvcc", { args: nvccArgs(sources, temporary, archs) }).output();
  } catch (cause) {
    throw new Error("nvcc was not found: install the CUDA toolkit (nvcc on PATH) to build the cuda backend", {
      cause,
    });
  }
  if (!result.success) {
    const log = new TextDecoder().decode(result.stderr) + new TextDecoder().decode(result.stdout);
    throw new Error(`nvcc failed (exit ${result.code}):\n${log}`);
  }
  await Deno.rename(temporary, output); // atomic: a running process never sees half a library
  return output;
}

if (import.meta.main) {
  const args = Deno.args;
  const archs = args.flatMap((a, i) => (a === "--arch" ? [args[i + 1]] : []));
  const out = args.flatMap((a, i) => (a === "--out" ? [args[i + 1]] : []))[0];
  const started = performance.now();
  const path = await buildCudaLibrary({ archs: archs.length ? archs : undefined, output: out });
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  console.log(`built ${path} in ${seconds} s`);
}
