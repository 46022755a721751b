/**
 * `deno task plot RUN_DIR… [--out FILE] [--train]`: validation (and, with --train, training)
 * bits per byte of several runs against step, in one SVG — to compare runs. Compare runs with
 * the same bytes per step (batch size × sequence length × grad-accum × GPUs).
 */
import { parseArgs } from "node:util";
import { writeFileAtomic } from "../lib/checkpoint.ts";
import { runCli, UsageError } from "../lib/cli_args.ts";
import { linePlotSvg, type Series } from "../lib/plot.ts";
import { type MetricRecord, RUN_FILES } from "../lib/train.ts";

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { out: { type: "string", default: "runs.svg" }, train: { type: "boolean", default: false } },
  });
  if (positionals.length === 0) throw new UsageError("give one or more run directories to compare");
  const series: Series[] = [];
  for (const dir of positionals) {
    const name = dir.replace(/\/+$/, "").split("/").pop()!;
    const records: MetricRecord[] = (await Deno.readTextFile(`${dir}/${RUN_FILES.metrics}`)).trim().split(
      "\n",
    )
      .map((line) => JSON.parse(line));
    series.push({
      name: `${name} validation`,
      points: records.filter((r) => r.val_bpb !== undefined).map((r) => [r.step, r.val_bpb!] as const),
    });
    if (values.train) {
      series.push({
        name: `${name} train`,
        points: records.map((r) => [r.step, r.bpb] as const),
      });
    }
  }
  const svg = linePlotSvg(series, { title: "bits per byte", xLabel: "step", yLabel: "bits per byte" });
  await writeFileAtomic(values.out!, new TextEncoder().encode(svg));
  console.log(`wrote ${values.out}`);
  return 0;
}

if (import.meta.main) await runCli("plot", main);
