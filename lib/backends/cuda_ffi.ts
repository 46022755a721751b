/**
 * The CUDA library's symbols (ffi/mambabyte.h), declared once, and where the library is found.
 * Device pointers travel as u64; every function returns an i32 status (0 = ok) except
 * mb_last_error, which returns the message of the last failure.
 */

/** A device pointer (u64). */
const PTR = "u64";
const I32 = "i32";
const status = (...parameters: Deno.NativeType[]) => ({ parameters, result: I32 } as const);
/** MoeDims as the MoE ops take them: rows, experts, top_k, capacity, dim. */
const MOE_DIMS: Deno.NativeType[] = [I32, I32, I32, I32, I32];
/** ConvStepOperands as the rmsnorm-fused GEMVs take them: out, state, weight, bias, channels, width. */
const CONV_STEP: Deno.NativeType[] = [PTR, PTR, PTR, PTR, I32, I32];

/** Every exported function of ffi/mambabyte.h with its Deno FFI signature. */
export const CUDA_SYMBOLS = {
  mb_last_error: { parameters: [], result: "pointer" },
  mb_init: status(),
  mb_device_name: status("buffer", I32),
  mb_mem_info: status("buffer", "buffer"),
  mb_alloc: status("u64", "buffer"),
  mb_free: status(PTR),
  mb_set_memory_cap: status("u64"),
  mb_memory_stats: status("buffer", "buffer"),
  mb_write: status(PTR, "buffer", "u64"),
  mb_read: status("buffer", PTR, "u64"),
  mb_fill: status(PTR, "i64", "f32"),
  mb_copy: status(PTR, PTR, "i64"),
  mb_synchronize: status(),
  mb_stream_handle: status("buffer"),
  mb_graph_begin: status(),
  mb_graph_end: status("buffer"),
  mb_graph_cancel: status(),
  mb_graph_launch: status(PTR),
  mb_graph_free: status(PTR),
  mb_matmul: status(PTR, PTR, PTR, I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, I32),
  mb_matmul_workspace_bytes: {
    parameters: [I32, I32, I32, I32, I32, I32, I32, I32, I32, I32],
    result: "u64",
  },
  mb_pack_half: status(PTR, PTR, "i64", "i32"),
  mb_unpack_half: status(PTR, PTR, "i64", "i32"),
  mb_matmul_int8: status(PTR, PTR, PTR, PTR, I32, I32, I32, I32, I32),
  mb_rmsnorm_matmul: status(PTR, PTR, PTR, PTR, I32, I32, I32, "f32", ...CONV_STEP),
  mb_rmsnorm_matmul_int8: status(PTR, PTR, PTR, PTR, PTR, I32, I32, I32, "f32", ...CONV_STEP),
  mb_add_bias: status(PTR, PTR, I32, I32),
  mb_add_bias_backward: status(PTR, PTR, I32, I32),
  mb_embedding: status(PTR, PTR, PTR, I32, I32),
  mb_embedding_backward: status(PTR, PTR, PTR, I32, I32),
  mb_rmsnorm: status(PTR, PTR, PTR, PTR, I32, I32, "f32"),
  mb_rmsnorm_backward: status(PTR, PTR, PTR, PTR, PTR, PTR, I32, I32),
  mb_conv1d_silu: status(PTR, PTR, PTR, PTR, I32, I32, I32, I32, I32),
  mb_conv1d_silu_backward: status(PTR, PTR, PTR, PTR, PTR, PTR, PTR, I32, I32, I32, I32, I32),
  mb_conv1d_silu_step: status(PTR, PTR, PTR, PTR, PTR, I32, I32, I32, I32),
  mb_selective_scan: status(PTR, PTR, PTR, PTR, PTR, PTR, PTR, PTR, PTR, I32, I32, I32, I32, I32, I32),
  mb_scan_backward_workspace_bytes: { parameters: [I32, I32, I32, I32], result: "u64" },
  mb_selective_scan_backward: status(
    ...Array<Deno.NativeType>(17).fill(PTR),
    I32,
    I32,
    I32,
    I32,
    I32,
    I32,
  ),
  mb_selective_scan_step: status(...Array<Deno.NativeType>(11).fill(PTR), I32, I32, I32, I32, I32, I32),
  mb_cross_entropy: status(PTR, PTR, PTR, PTR, I32, I32, "f32"),
  mb_sum_of_squares: status(PTR, "i64", "buffer"),
  mb_adamw: status(PTR, PTR, PTR, PTR, "i64", "f32", "f32", "f32", "f32", "f32", I32, "f32"),
  mb_adamw_8bit: status(PTR, PTR, PTR, PTR, PTR, "i64", "f32", "f32", "f32", "f32", "f32", I32, "f32"),
  mb_sample_tokens: status(PTR, PTR, PTR, PTR, I32, I32, "f32", "f32"),
  mb_moe_route: status(...Array<Deno.NativeType>(7).fill(PTR), ...MOE_DIMS),
  mb_moe_route_backward: status(PTR, PTR, PTR, PTR, PTR, "f32", ...MOE_DIMS),
  mb_moe_gather: status(PTR, PTR, PTR, ...MOE_DIMS),
  mb_moe_gather_backward: status(PTR, PTR, PTR, ...MOE_DIMS),
  mb_moe_scatter: status(PTR, PTR, PTR, PTR, ...MOE_DIMS),
  mb_moe_scatter_backward: status(PTR, PTR, PTR, PTR, PTR, PTR, ...MOE_DIMS),
  mb_moe_swiglu: status(PTR, PTR, PTR, "i64"),
  mb_moe_swiglu_backward: status(PTR, PTR, PTR, PTR, PTR, "i64"),
} as const satisfies Deno.ForeignLibraryInterface;

/** The loaded library. */
export type CudaLibrary = Deno.DynamicLibrary<typeof CUDA_SYMBOLS>["symbols"];

/** Where `deno task build:cuda` writes the library, relative to the repository root. */
export const BUILD_OUTPUT = ".cache/cuda/libmambabyte.so";

/** What to tell a user who asked for cuda without a library. */
export const BUILD_HINT =
  "run `deno task build:cuda` (needs nvcc) or set MAMBABYTE_CUDA_LIB to a built libmambabyte.so";

/** The library's path: $MAMBABYTE_CUDA_LIB, else the build output next to this checkout; null if neither. */
export function cudaLibraryPath(): string | null {
  let fromEnv: string | undefined;
  try {
    fromEnv = Deno.env.get("MAMBABYTE_CUDA_LIB");
  } catch {
    fromEnv = undefined; // no --allow-env: only the build output can be used
  }
  if (fromEnv) return fromEnv;
  const url = new URL(`../../${BUILD_OUTPUT}`, import.meta.url);
  return url.protocol === "file:" ? decodeURIComponent(url.pathname) : null;
}

/** Opens the library at `path` (throws Deno's error when it cannot be loaded). */
export function openCudaLibrary(path: string): CudaLibrary {
  return Deno.dlopen(path, CUDA_SYMBOLS).symbols;
}
