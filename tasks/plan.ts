/**
 * `deno task plan`: the memory a training run will allocate, by component, in GiB.
 *
 *   deno task plan --dim 1024 --depth 53 --seq-len 8192 --batch-size 1 [--recompute] [--d-state 16]
 *     [--optimizer-bits 8] [--dtype bf16|f16]
 *
 * --dtype bf16 or f16 rounds the matmuls' inputs on cuda's tensor cores and keeps the activations
 * they read in 16 bits (said on the first line); cuda's workspace must also hold the largest
 * matmul's 16-bit operand copies.
 */
import { type OptionSpec, parseOptions, runCli, usage, UsageError } from "../lib/cli_args.ts";
import { MambaConfig } from "../lib/config.ts";
import { memoryPlan } from "../lib/memory_plan.ts";
import { OPTIMIZER_BITS, type OptimizerBits } from "../lib/optim.ts";
import { type Dtype, DTYPES } from "../lib/train.ts";

const int = (help: string, fallback?: number) => ({ kind: "int" as const, help, min: 1, default: fallback });
const SPECS = {
  dim: int("model width D"),
  depth: int("number of blocks"),
  "d-state": int("SSM state size N", 16),
  "expand-factor": int("inner width E·D", 2),
  "d-conv": int("causal conv width K", 4),
  "seq-len": int("bytes per window"),
  "batch-size": int("windows per micro-batch", 1),
  recompute: { kind: "bool" as const, help: "recompute block activations in backward" },
  "optimizer-bits": {
    kind: "int" as const,
    choices: OPTIMIZER_BITS,
    default: 32,
    help: "bits per AdamW moment (8: blockwise-quantized)",
  },
  dtype: {
    kind: "string" as const,
    choices: DTYPES,
    default: "fp32",
    help: "matmul inputs (bf16, f16: rounded on tensor cores, their activations kept in 16 bits)",
  },
} satisfies Record<string, OptionSpec>;

const GiB = 2 ** 30;

async function main(): Promise<number> {
  const { options, help } = parseOptions(Deno.args, SPECS);
  if (help) {
    console.log(usage("deno task plan", SPECS));
    return 0;
  }
  for (const required of ["dim", "depth", "seq-len"] as const) {
    if (options[required] === undefined) throw new UsageError(`--${required} is required (see --help)`);
  }
  const config = new MambaConfig({
    dim: options.dim!,
    depth: options.depth!,
    d_state: options["d-state"],
    expand_factor: options["expand-factor"],
    d_conv: options["d-conv"],
  });
  const recompute = options.recompute ?? false;
  const plan = await memoryPlan(config, {
    batch: options["batch-size"]!,
    length: options["seq-len"]!,
    recompute,
    optimizerBits: options["optimizer-bits"] as OptimizerBits,
    precision: options.dtype as Dtype,
  });
  console.log(
    `MambaByte D=${config.dim} × ${config.depth} (${(plan.parameters / 1e6).toFixed(1)} M parameters), ` +
      `batch ${options["batch-size"]} × ${options["seq-len"]} bytes, ${dtypeText(options.dtype!)}, ${
        options["optimizer-bits"]
      }-bit AdamW moments, recompute ${recompute ? "on" : "off"}`,
  );
  for (const { name, bytes } of plan.components) {
    console.log(`${name.padEnd(24)} ${(bytes / GiB).toFixed(2)} GiB`);
  }
  console.log(`${"total".padEnd(24)} ${(plan.total / GiB).toFixed(2)} GiB`);
  console.log("(not included: cuBLAS's own workspace and the driver's context)");
  return 0;
}

function dtypeText(dtype: string): string {
  return dtype === "fp32"
    ? "fp32"
    : `${dtype} matmul inputs and kept activations, fp32 weights and gradients`;
}

if (import.meta.main) await runCli("plan", main);
