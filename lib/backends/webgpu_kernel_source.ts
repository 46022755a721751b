/**
 * Where the WGSL kernels come from: kernels/*.wgsl next to lib/, fetched relative to this
 * module's URL, so it works when mod.ts is imported from a file (file:) or from a server
 * (https:). `deno task build:web` swaps this module for one with the sources inlined.
 */

/** Every kernel file (without ".wgsl"). "common" is the prelude prepended to all others. */
export const KERNEL_FILES = [
  "common",
  "copy",
  "matmul",
  "matmul_vec4",
  "matmul_int8",
  "half",
  "bias",
  "embedding",
  "rmsnorm",
  "rmsnorm_matmul",
  "conv1d",
  "scan",
  "cross_entropy",
  "reduce",
  "adamw",
  "sample",
  "moe",
] as const;

export type KernelFile = typeof KERNEL_FILES[number];

/** The source text of every kernel file, by name. */
export async function loadKernelSources(): Promise<Map<KernelFile, string>> {
  const entries = await Promise.all(KERNEL_FILES.map(async (name) => {
    const url = new URL(`../../kernels/${name}.wgsl`, import.meta.url);
    const response = await fetch(url);
    if (!response.ok) throw new Error(`cannot load the WGSL kernel ${url}: HTTP ${response.status}`);
    return [name, await response.text()] as const;
  }));
  return new Map(entries);
}
