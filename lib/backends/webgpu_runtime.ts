/**
 * The machinery under the WebGPU backend: buffers and views, the pipeline cache, and a lazy
 * recorder that puts every dispatch of a step into ONE compute pass and submits only when the
 * host needs a result (`read`) or writes memory, and after a number of dispatches that grows from
 * FIRST_SUBMIT_SLOTS to the uniform ring's size (so that the device starts early on long work).
 *
 * Kernel conventions (kernels/common.wgsl): binding 0 is a 256-byte uniform block of 64 words;
 * words 0..15 hold the element offset of the view bound at binding 1..16, then come the integer
 * arguments, then the float arguments. Views are bound as whole buffers (or as a 256-byte
 * aligned window when a buffer exceeds maxStorageBufferBindingSize) and the kernel adds the
 * element offset, so views need no binding-offset alignment.
 */
import type { DeviceBuffer, IndexBuffer } from "../backend.ts";
import type { KernelFile } from "./webgpu_kernel_source.ts";
import { type KernelTime, KernelTimer } from "./webgpu_kernel_timer.ts";

/** A float or int32 view: `length` elements of `root` from element `offset`. */
export class GpuView implements DeviceBuffer, IndexBuffer {
  constructor(readonly root: GPUBuffer, readonly offset: number, readonly length: number) {}
}

/** Words of the uniform block reserved for binding offsets (bindings 1..16). */
const OFFSET_WORDS = 16;
/** Bytes of one dispatch's uniform block (and the stride of the ring: every alignment divides it). */
const UNIFORM_BYTES = 256;
/** Dispatches recorded before a forced submit, at most. */
const RING_SLOTS = 1024;
/**
 * Dispatches recorded before the first forced submit after any other (a read, a write): the
 * device, likely idle then, starts on them while the host records more; each forced submit
 * doubles the count, up to RING_SLOTS.
 */
const FIRST_SUBMIT_SLOTS = 64;
/** Bind groups kept for reuse before the cache is cleared (a step's dispatches reuse theirs). */
const MAX_BIND_GROUPS = 8192;
/** Workgroups per grid dimension that every adapter supports. */
const MAX_GROUPS_PER_DIM = 65535;

/** One dispatch: which kernel, what it reads and writes, its arguments and its grid. */
export interface Dispatch {
  file: KernelFile;
  entry: string;
  /** Compile-time constants prepended as `const NAME: u32 = value;`. */
  defines?: Record<string, number>;
  /** View bound at binding i + 1 (undefined: a binding this entry point does not use). */
  bindings: (GpuView | undefined)[];
  ints?: number[];
  floats?: number[];
  /** Workgroups wanted; a count is spread over x and y when over 65535 (kernels read `group_index`). */
  groups: number | [number, number] | [number, number, number];
  /** What the kernel timer calls this dispatch (default "file:entry"), and its floating-point operations. */
  timing?: { name: string; flops: number };
}

/** Where a view is bound: a range of its buffer, the view's element offset in it, the range's bind-group key. */
interface BoundWindow {
  offset: number;
  size: number;
  skip: number;
  key: string;
}

/** Storage binding numbers of a kernel file by access mode (entry points may reuse numbers). */
interface StorageModes {
  read: Set<number>;
  readWrite: Set<number>;
}

function storageModes(source: string): StorageModes {
  const modes: StorageModes = { read: new Set(), readWrite: new Set() };
  for (const m of source.matchAll(/@binding\((\d+)\)\s*var<storage,\s*(read_write|read)>/g)) {
    (m[2] === "read" ? modes.read : modes.readWrite).add(Number(m[1]));
  }
  return modes;
}

export class GpuRuntime {
  readonly #pipelines = new Map<
    string,
    { pipeline: GPUComputePipeline; layout: GPUBindGroupLayout; id: number }
  >();
  /**
   * Bind groups by pipeline and bound ranges. The uniform block is bound with a dynamic offset
   * (the dispatch's ring slot), so a step that binds the same buffers again hits this cache
   * wherever its dispatches fall in the ring.
   */
  readonly #bindGroups = new Map<string, GPUBindGroup>();
  readonly #bufferIds = new WeakMap<GPUBuffer, number>();
  readonly #windows = new WeakMap<GpuView, BoundWindow>();
  readonly #modes = new Map<KernelFile, StorageModes>();
  readonly #uniforms: GPUBuffer;
  readonly #staging = new ArrayBuffer(UNIFORM_BYTES * RING_SLOTS);
  /** #staging as words and as floats (a dispatch's block starts at slot · UNIFORM_BYTES / 4). */
  readonly #words = new Uint32Array(this.#staging);
  readonly #floats = new Float32Array(this.#staging);
  /** The uniform block's dynamic offset, passed to setBindGroup. */
  readonly #dynamicOffset = new Uint32Array(1);
  #slots = 0;
  /** Dispatches that force the next submit (FIRST_SUBMIT_SLOTS, doubling up to RING_SLOTS). */
  #submitAt = FIRST_SUBMIT_SLOTS;
  #nextBufferId = 0;
  #encoder: GPUCommandEncoder | null = null;
  #pass: GPUComputePassEncoder | null = null;
  #doomed: GPUBuffer[] = [];
  #errors: Promise<string | null>[] = [];
  /** On between startTiming and stopTiming: every dispatch in a pass of its own, stamped. */
  #timer: KernelTimer | null = null;

  /** The device's maxStorageBufferBindingSize (read once: the limits getter is not free). */
  readonly maxBinding: number;

  constructor(readonly device: GPUDevice, readonly sources: Map<KernelFile, string>) {
    this.maxBinding = device.limits.maxStorageBufferBindingSize;
    this.#uniforms = device.createBuffer({
      size: UNIFORM_BYTES * RING_SLOTS,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    for (const [file, source] of sources) this.#modes.set(file, storageModes(source));
  }

  /** The source a pipeline compiles: defines, then the common prelude, then the kernel file. */
  #source(file: KernelFile, defines: Record<string, number>, widen: boolean): string {
    const header = Object.entries(defines).map(([k, v]) => `const ${k}: u32 = ${v}u;\n`).join("");
    let body = this.sources.get(file)!;
    // WebGPU forbids read-only and writable bindings of one buffer in a dispatch: aliasing
    // dispatches use a variant whose read-only bindings are declared read_write.
    if (widen) body = body.replaceAll("var<storage, read>", "var<storage, read_write>");
    return header + this.sources.get("common")! + body;
  }

  /** Compiles a kernel (async, for startup): throws with file, line, column and message. */
  async check(file: KernelFile, defines: Record<string, number>): Promise<void> {
    const module = this.device.createShaderModule({
      label: `kernels/${file}.wgsl`,
      code: this.#source(file, defines, false),
    });
    const info = await module.getCompilationInfo();
    const errors = info.messages.filter((m) => m.type === "error");
    if (errors.length) throw new Error(this.#describe(file, defines, errors));
  }

  /** "file.wgsl:line:col: message" for compilation messages, lines mapped back to the files. */
  #describe(file: KernelFile, defines: Record<string, number>, messages: readonly GPUCompilationMessage[]) {
    const headerLines = Object.keys(defines).length;
    const commonLines = this.sources.get("common")!.split("\n").length - 1;
    return messages.map((m) => {
      let line = m.lineNum - headerLines, name: string = file;
      if (line <= 0) name = "<defines>";
      else if (line <= commonLines) name = "common";
      else line -= commonLines;
      return `WGSL error in kernels/${name}.wgsl:${line}:${m.linePos}: ${m.message}`;
    }).join("\n");
  }

  /** The pipeline of a dispatch, by `key`: its file, entry, defines, widening and bound bindings. */
  #pipeline(
    key: string,
    file: KernelFile,
    entry: string,
    defines: Record<string, number>,
    widen: boolean,
    bound: number[],
  ) {
    let cached = this.#pipelines.get(key);
    if (!cached) {
      this.device.pushErrorScope("validation");
      const module = this.device.createShaderModule({
        label: `kernels/${file}.wgsl`,
        code: this.#source(file, defines, widen),
      });
      const layout = this.#layout(file, widen, bound);
      const pipeline = this.device.createComputePipeline({
        layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout] }),
        compute: { module, entryPoint: entry },
      });
      this.#errors.push(
        this.device.popErrorScope().then(async (error) => {
          if (!error) return null;
          const info = await module.getCompilationInfo();
          const errors = info.messages.filter((m) => m.type === "error");
          return errors.length
            ? this.#describe(file, defines, errors)
            : `${file}.wgsl (${entry}): ${error.message}`;
        }),
      );
      cached = { pipeline, layout, id: this.#pipelines.size };
      this.#pipelines.set(key, cached);
    }
    return cached;
  }

  /**
   * The bind group layout of a dispatch: the uniform block with a dynamic offset, then the bound
   * storage bindings with the access their file declares (all writable in the widened variant).
   */
  #layout(file: KernelFile, widen: boolean, bound: number[]): GPUBindGroupLayout {
    const modes = this.#modes.get(file)!;
    const storage = bound.map((binding): GPUBindGroupLayoutEntry => {
      if (!modes.read.has(binding) && !modes.readWrite.has(binding)) {
        throw new Error(`kernels/${file}.wgsl declares no storage binding ${binding}`);
      }
      const type = widen || modes.readWrite.has(binding) ? "storage" : "read-only-storage";
      return { binding, visibility: GPUShaderStage.COMPUTE, buffer: { type } };
    });
    return this.device.createBindGroupLayout({
      entries: [
        {
          binding: 0,
          visibility: GPUShaderStage.COMPUTE,
          buffer: { type: "uniform", hasDynamicOffset: true },
        },
        ...storage,
      ],
    });
  }

  /** A small number naming a buffer in bind-group keys. */
  #bufferId(buffer: GPUBuffer): number {
    let id = this.#bufferIds.get(buffer);
    if (id === undefined) {
      id = this.#nextBufferId++;
      this.#bufferIds.set(buffer, id);
    }
    return id;
  }

  /**
   * Records one dispatch into the open compute pass. Decode records about a hundred per byte, so
   * the host's work here is kept small: both cache keys are built in one pass over the bindings,
   * the uniform words and the dynamic offset are written through arrays made once.
   */
  dispatch(d: Dispatch): void {
    const [gx, gy, gz = 1] = typeof d.groups === "number" ? this.#grid(d.groups) : d.groups;
    if (gx === 0 || gy === 0 || gz === 0) return;
    if (this.#slots === this.#submitAt) {
      const next = Math.min(2 * this.#submitAt, RING_SLOTS);
      this.flush();
      this.#submitAt = next;
    }
    const modes = this.#modes.get(d.file)!;
    const widen = aliases(d.bindings, modes);
    const ints = d.ints ?? [], fl = d.floats ?? [];
    if (d.bindings.length > OFFSET_WORDS || OFFSET_WORDS + ints.length + fl.length > UNIFORM_BYTES / 4) {
      throw new Error(`${d.file}.wgsl (${d.entry}): too many bindings or arguments`);
    }
    const slot = this.#slots, base = slot * (UNIFORM_BYTES / 4);
    const bound: number[] = [];
    let pipelineKey = `${d.file}:${d.entry}:${widen}:`, groupKey = "";
    for (let i = 0; i < d.bindings.length; i++) {
      const view = d.bindings[i];
      if (!view) continue;
      const place = this.#window(view);
      this.#words[base + i] = place.skip;
      bound.push(i + 1);
      pipelineKey += `${i + 1},`;
      groupKey += `:${i}:${place.key}`;
    }
    const defines = d.defines ?? {};
    for (const name in defines) pipelineKey += `:${name}=${defines[name]}`;
    const { pipeline, layout, id } = this.#pipeline(pipelineKey, d.file, d.entry, defines, widen, bound);
    this.#slots++;
    for (let i = 0; i < ints.length; i++) this.#words[base + OFFSET_WORDS + i] = ints[i];
    for (let i = 0; i < fl.length; i++) this.#floats[base + OFFSET_WORDS + ints.length + i] = fl[i];

    groupKey = `${id}${groupKey}`;
    let bindGroup = this.#bindGroups.get(groupKey);
    if (!bindGroup) {
      const entries: GPUBindGroupEntry[] = [
        { binding: 0, resource: { buffer: this.#uniforms, offset: 0, size: UNIFORM_BYTES } },
      ];
      for (const binding of bound) {
        const view = d.bindings[binding - 1]!, { offset, size } = this.#window(view);
        entries.push({ binding, resource: { buffer: view.root, offset, size } });
      }
      bindGroup = this.device.createBindGroup({ layout, entries });
      if (this.#bindGroups.size >= MAX_BIND_GROUPS) this.#bindGroups.clear();
      this.#bindGroups.set(groupKey, bindGroup);
    }
    this.#encoder ??= this.device.createCommandEncoder();
    if (this.#timer) {
      this.#pass?.end();
      const { name, flops } = d.timing ?? { name: `${d.file}:${d.entry}`, flops: 0 };
      this.#pass = this.#encoder.beginComputePass(this.#timer.pass(name, flops));
    }
    this.#pass ??= this.#encoder.beginComputePass();
    this.#pass.setPipeline(pipeline);
    this.#dynamicOffset[0] = slot * UNIFORM_BYTES;
    this.#pass.setBindGroup(0, bindGroup, this.#dynamicOffset, 0, 1);
    this.#pass.dispatchWorkgroups(gx, gy, gz);
  }

  /** The grid for `n` workgroups: x ≤ 65535, y as needed (kernels recombine with group_index). */
  #grid(n: number): [number, number] {
    if (n <= MAX_GROUPS_PER_DIM) return [n, 1];
    const gy = Math.ceil(n / MAX_GROUPS_PER_DIM);
    return [Math.ceil(n / gy), gy];
  }

  /** Whether a view can be bound: its buffer whole, or a window of it within maxStorageBufferBindingSize. */
  bindable(view: GpuView): boolean {
    return this.#range(view) !== null;
  }

  /**
   * The binding range for a view, the element offset of the view inside it, and its part of
   * bind-group keys; kept per view (views do not change, and most are bound at every step).
   */
  #window(view: GpuView): BoundWindow {
    let place = this.#windows.get(view);
    if (!place) {
      const range = this.#range(view);
      if (!range) {
        throw new Error(
          `a view of ${view.length} floats exceeds maxStorageBufferBindingSize (${this.maxBinding} bytes) of this adapter`,
        );
      }
      place = { ...range, key: `${this.#bufferId(view.root)}:${range.offset}:${range.size}` };
      this.#windows.set(view, place);
    }
    return place;
  }

  /** #window's range, or null when the view does not fit in one binding. */
  #range(view: GpuView): { offset: number; size: number; skip: number } | null {
    const max = this.maxBinding;
    if (view.root.size <= max) return { offset: 0, size: view.root.size, skip: view.offset };
    const align = this.device.limits.minStorageBufferOffsetAlignment;
    const start = view.offset * 4, end = (view.offset + view.length) * 4;
    const offset = Math.floor(start / align) * align;
    if (end - offset > max) return null;
    return { offset, size: Math.max(4, end - offset), skip: (start - offset) / 4 };
  }

  /** The command encoder with the compute pass closed, for copies. */
  encoder(): GPUCommandEncoder {
    this.#pass?.end();
    this.#pass = null;
    this.#encoder ??= this.device.createCommandEncoder();
    return this.#encoder;
  }

  /** Submits what was recorded (uniforms first). */
  flush(): void {
    this.#submitAt = FIRST_SUBMIT_SLOTS;
    if (!this.#encoder) return;
    this.#pass?.end();
    const stamped = this.#timer?.resolve(this.#encoder);
    this.device.queue.writeBuffer(this.#uniforms, 0, this.#staging, 0, this.#slots * UNIFORM_BYTES);
    this.device.pushErrorScope("validation");
    this.device.queue.submit([this.#encoder.finish()]);
    this.#errors.push(this.device.popErrorScope().then((e) => e && e.message));
    stamped?.();
    this.#encoder = null;
    this.#pass = null;
    this.#slots = 0;
    for (const buffer of this.#doomed) buffer.destroy();
    this.#doomed = [];
  }

  /** Starts timing every kernel on the device (see KernelTimer); throws without timestamp-query. */
  startTiming(): void {
    this.flush();
    this.#timer ??= new KernelTimer(this.device, RING_SLOTS);
  }

  /** Stops timing: each kernel's GPU time since startTiming, the longest first. */
  async stopTiming(): Promise<KernelTime[]> {
    const timer = this.#timer;
    if (!timer) throw new Error("stopTiming without startTiming");
    this.flush();
    this.#timer = null;
    try {
      return await timer.times();
    } finally {
      timer.dispose();
    }
  }

  /** Destroys a buffer once the commands recorded so far no longer need it. */
  release(buffer: GPUBuffer): void {
    this.#bindGroups.clear(); // none may keep a destroyed buffer alive
    if (this.#encoder) this.#doomed.push(buffer);
    else buffer.destroy();
  }

  /** Throws the first validation or compilation error reported since the last check. */
  async throwErrors(): Promise<void> {
    const pending = this.#errors;
    this.#errors = [];
    const messages = (await Promise.all(pending)).filter((m) => m !== null);
    if (messages.length) throw new Error(`WebGPU error: ${messages.join("\n")}`);
  }

  dispose(): void {
    this.flush();
    this.#timer?.dispose();
    this.#uniforms.destroy();
    this.#pipelines.clear();
    this.#bindGroups.clear();
  }
}

/**
 * Whether a writable binding may share its buffer with a read-only one (conservative when
 * entry points of a file declare one binding number with different access modes).
 */
function aliases(bindings: (GpuView | undefined)[], modes: StorageModes): boolean {
  for (let i = 0; i < bindings.length; i++) {
    if (!bindings[i] || !modes.readWrite.has(i + 1)) continue;
    for (let j = 0; j < bindings.length; j++) {
      if (j !== i && bindings[j]?.root === bindings[i]!.root && modes.read.has(j + 1)) return true;
    }
  }
  return false;
}
