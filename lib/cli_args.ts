/**
 * Command-line options shared by the CLIs (tasks/train.ts, tasks/eval.ts, generate.ts):
 * `--key=value` and `--key value`, parsed with node:util's parseArgs, every value checked
 * against a typed spec. Bad usage throws a UsageError whose message says what is valid;
 * `runCli` turns errors into one line on stderr and an exit code.
 */
import { parseArgs } from "node:util";

/** One option: its kind, default, help text and allowed range. */
export type OptionSpec =
  | {
    kind: "int" | "number";
    default?: number;
    help: string;
    min?: number;
    gt?: number;
    max?: number;
    /** The only values allowed. */
    choices?: readonly number[];
  }
  | { kind: "string"; default?: string; help: string; choices?: readonly string[] }
  | { kind: "bool"; default?: boolean; help: string };

type ValueOf<S extends OptionSpec> = S extends { kind: "int" | "number" } ? number
  : S extends { kind: "bool" } ? boolean
  : string;

/** Parsed options: values with a default are always present. */
export type Options<T extends Record<string, OptionSpec>> = {
  [K in keyof T]: T[K] extends { default: unknown } ? ValueOf<T[K]> : ValueOf<T[K]> | undefined;
};

/** Wrong usage: unknown option, bad value, missing argument. CLIs exit with code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/**
 * Parses `args` against `specs`. `--help` sets the returned `help` flag instead of failing.
 * Booleans accept `--flag`, `--flag=true|false` and `--no-flag`.
 */
export function parseOptions<T extends Record<string, OptionSpec>>(
  args: string[],
  specs: T,
): { options: Options<T>; help: boolean } {
  const names = Object.keys(specs);
  const valid = () => names.map((n) => `--${n}`).join(" ");
  let parsed;
  try {
    parsed = parseArgs({
      args: normalizeBooleans(args, specs),
      options: {
        help: { type: "boolean" },
        ...Object.fromEntries(names.map((n) => [n, { type: "string" as const }])),
      },
      strict: true,
      allowPositionals: false,
    });
  } catch (error) {
    const message = (error as Error).message.split("\n")[0].replace(/\. To specify.*$/, "");
    throw new UsageError(`${message}; valid options: ${valid()}`);
  }
  const values = parsed.values as Record<string, string | boolean | undefined>;
  const options: Record<string, unknown> = {};
  for (const name of names) {
    const raw = values[name];
    const spec = specs[name];
    options[name] = raw === undefined ? spec.default : convert(name, String(raw), spec);
  }
  return { options: options as Options<T>, help: values.help === true };
}

/** The usage text: one line per option with its default. */
export function usage(command: string, specs: Record<string, OptionSpec>): string {
  const lines = [`usage: ${command} [options]`, ""];
  for (const [name, spec] of Object.entries(specs)) {
    const value = spec.kind === "bool"
      ? ""
      : spec.choices
      ? `=${spec.choices.join("|")}`
      : `=${spec.kind === "string" ? "TEXT" : "N"}`;
    const def = spec.default === undefined ? "" : ` (default ${spec.default})`;
    lines.push(`  --${name}${value}`.padEnd(34) + ` ${spec.help}${def}`);
  }
  return lines.join("\n");
}

/**
 * Runs a CLI's main function: a UsageError prints one line and exits 2, any other Error prints
 * one line (with its cause) and exits 1. The exit code of `main` is used otherwise.
 */
export async function runCli(command: string, main: () => Promise<number>): Promise<never> {
  let code: number;
  try {
    code = await main();
  } catch (error) {
    code = error instanceof UsageError ? 2 : 1;
    console.error(`${command}: error: ${describeError(error)}`);
  }
  Deno.exit(code);
}

/** An error's message followed by its causes' messages, on one line. */
export function describeError(error: unknown): string {
  const parts: string[] = [];
  for (let e = error; e !== undefined && parts.length < 4; e = (e as Error).cause) {
    parts.push(e instanceof Error ? e.message : String(e));
    if (!(e instanceof Error)) break;
  }
  return parts.join(": ").replace(/\s*\n\s*/g, " ");
}

function convert(name: string, raw: string, spec: OptionSpec): unknown {
  switch (spec.kind) {
    case "int":
    case "number": {
      const value = raw.trim() === "" ? NaN : Number(raw);
      const isInt = spec.kind === "int";
      const range = [
        spec.min !== undefined ? `>= ${spec.min}` : "",
        spec.gt !== undefined ? `> ${spec.gt}` : "",
        spec.max !== undefined ? `<= ${spec.max}` : "",
      ].filter(Boolean).join(" and ");
      const ok = Number.isFinite(value) && (!isInt || Number.isInteger(value)) &&
        (spec.min === undefined || value >= spec.min) && (spec.gt === undefined || value > spec.gt) &&
        (spec.max === undefined || value <= spec.max);
      if (!ok) {
        const what = isInt ? "an integer" : "a number";
        throw new UsageError(`--${name} must be ${what}${range ? ` ${range}` : ""}, got "${raw}"`);
      }
      if (spec.choices && !spec.choices.includes(value)) {
        throw new UsageError(`--${name} must be one of ${spec.choices.join(", ")}, got "${raw}"`);
      }
      return value;
    }
    case "string":
      if (spec.choices && !spec.choices.includes(raw)) {
        throw new UsageError(`--${name} must be one of ${spec.choices.join(", ")}, got "${raw}"`);
      }
      return raw;
    case "bool":
      if (raw !== "true" && raw !== "false") {
        throw new UsageError(`--${name} must be true or false, got "${raw}"`);
      }
      return raw === "true";
    default:
      return spec satisfies never;
  }
}

/** `--flag` → `--flag=true` and `--no-flag` → `--flag=false` for boolean options. */
function normalizeBooleans(args: string[], specs: Record<string, OptionSpec>): string[] {
  const isBool = (name: string) => specs[name]?.kind === "bool";
  return args.map((arg, i) => {
    if (!arg.startsWith("--") || arg.includes("=")) return arg;
    const name = arg.slice(2);
    if (isBool(name)) return /^(true|false)$/.test(args[i + 1] ?? "") ? arg : `--${name}=true`;
    if (name.startsWith("no-") && isBool(name.slice(3))) return `--${name.slice(3)}=false`;
    return arg;
  });
}

const SIZE_UNITS: Record<string, number> = {
  "": 1,
  B: 1,
  KiB: 2 ** 10,
  MiB: 2 ** 20,
  GiB: 2 ** 30,
  TiB: 2 ** 40,
};

/** "24GiB", "512MiB", "1.5GiB" or a number of bytes → bytes; a UsageError otherwise. */
export function parseSize(text: string, option: string): number {
  const match = /^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB)?$/.exec(text.trim());
  if (!match) {
    throw new UsageError(
      `${option} must be a size such as 24GiB, 512MiB or a number of bytes, got "${text}"`,
    );
  }
  return Math.floor(Number(match[1]) * SIZE_UNITS[match[2] ?? ""]);
}
