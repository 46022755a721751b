/**
 * The CPU reference of the mixture-of-experts ops (lib/backend.ts, MoeOps): routing with top-k,
 * capacity and the Switch load-balancing loss, gather / scatter of dispatched rows, SwiGLU.
 * Every other backend's MoE ops are tested against these.
 */
import type { DeviceBuffer, FloatArray, IndexBuffer, MoeDims, MoeOps } from "../backend.ts";

const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));

export class CpuMoeOps implements MoeOps {
  /** `floats` and `indices` give the host arrays behind the CPU backend's buffers. */
  constructor(
    readonly floats: (buffer: DeviceBuffer) => FloatArray,
    readonly indices: (buffer: IndexBuffer) => Int32Array,
  ) {}

  route(
    gatesBuf: DeviceBuffer,
    choiceBuf: IndexBuffer,
    slotBuf: IndexBuffer,
    slotRowsBuf: IndexBuffer,
    probsBuf: DeviceBuffer,
    statsBuf: DeviceBuffer,
    logitsBuf: DeviceBuffer,
    dims: MoeDims,
  ): void {
    const { rows: T, experts: E, topK: k, capacity: C } = dims;
    const gates = this.floats(gatesBuf), probs = this.floats(probsBuf), stats = this.floats(statsBuf);
    const logits = this.floats(logitsBuf);
    const choice = this.indices(choiceBuf),
      slot = this.indices(slotBuf),
      slotRows = this.indices(slotRowsBuf);
    const picked = new Float64Array(E); // choices of each expert, before dropping
    const filled = new Int32Array(E); // rows of each expert taken so far
    const meanProb = new Float64Array(E);
    slotRows.fill(-1);
    let dropped = 0;
    for (let t = 0; t < T; t++) {
      const o = t * E;
      // probs = softmax over every expert (for the aux loss)
      let max = -Infinity;
      for (let e = 0; e < E; e++) max = Math.max(max, logits[o + e]);
      let sum = 0;
      for (let e = 0; e < E; e++) sum += Math.exp(logits[o + e] - max);
      for (let e = 0; e < E; e++) {
        probs[o + e] = Math.exp(logits[o + e] - max) / sum;
        meanProb[e] += probs[o + e] / T;
      }
      // top k, best first; strict > keeps the lower expert on ties
      for (let j = 0; j < k; j++) {
        let best = -1;
        for (let e = 0; e < E; e++) {
          if (isChosen(choice, t * k, j, e)) continue;
          if (best < 0 || logits[o + e] > logits[o + best]) best = e;
        }
        choice[t * k + j] = best;
      }
      // gates = softmax over the chosen logits (the best one is the max)
      const top = logits[o + choice[t * k]];
      let gateSum = 0;
      for (let j = 0; j < k; j++) gateSum += Math.exp(logits[o + choice[t * k + j]] - top);
      for (let j = 0; j < k; j++) {
        const e = choice[t * k + j];
        gates[t * k + j] = Math.exp(logits[o + e] - top) / gateSum;
        picked[e]++;
        if (filled[e] < C) {
          const s = e * C + filled[e]++;
          slot[t * k + j] = s;
          slotRows[s] = t;
        } else {
          slot[t * k + j] = -1;
          dropped++;
        }
      }
    }
    let aux = 0;
    for (let e = 0; e < E; e++) aux += (picked[e] / (T * k)) * meanProb[e];
    stats[0] = E * aux;
    stats[1] = dropped;
  }

  routeBackward(
    dlogitsBuf: DeviceBuffer,
    dgatesBuf: DeviceBuffer,
    gatesBuf: DeviceBuffer,
    choiceBuf: IndexBuffer,
    probsBuf: DeviceBuffer,
    auxScale: number,
    dims: MoeDims,
  ): void {
    const { rows: T, experts: E, topK: k } = dims;
    const dlogits = this.floats(dlogitsBuf), dgates = this.floats(dgatesBuf), gates = this.floats(gatesBuf);
    const probs = this.floats(probsBuf), choice = this.indices(choiceBuf);
    // ∂(auxScale · aux)/∂probs[t, e] = auxScale · E · f_e / T, the same for every t.
    const dprob = new Float64Array(E);
    for (let i = 0; i < T * k; i++) dprob[choice[i]] += (auxScale * E) / (T * k) / T;
    for (let t = 0; t < T; t++) {
      const o = t * E;
      // softmax backward over every expert, for the aux loss
      let pa = 0;
      for (let e = 0; e < E; e++) pa += probs[o + e] * dprob[e];
      for (let e = 0; e < E; e++) dlogits[o + e] = probs[o + e] * (dprob[e] - pa);
      // softmax backward over the chosen logits, for the gates
      let gg = 0;
      for (let j = 0; j < k; j++) gg += gates[t * k + j] * dgates[t * k + j];
      for (let j = 0; j < k; j++) {
        dlogits[o + choice[t * k + j]] += gates[t * k + j] * (dgates[t * k + j] - gg);
      }
    }
  }

  gather(xeBuf: DeviceBuffer, xBuf: DeviceBuffer, slotRowsBuf: IndexBuffer, dims: MoeDims): void {
    const xe = this.floats(xeBuf), x = this.floats(xBuf), slotRows = this.indices(slotRowsBuf);
    const D = dims.dim;
    for (let s = 0; s < dims.experts * dims.capacity; s++) {
      const t = slotRows[s];
      if (t < 0) xe.fill(0, s * D, (s + 1) * D);
      else xe.set(x.subarray(t * D, (t + 1) * D), s * D);
    }
  }

  gatherBackward(dxBuf: DeviceBuffer, dxeBuf: DeviceBuffer, slotRowsBuf: IndexBuffer, dims: MoeDims): void {
    const dx = this.floats(dxBuf), dxe = this.floats(dxeBuf), slotRows = this.indices(slotRowsBuf);
    const D = dims.dim;
    for (let s = 0; s < dims.experts * dims.capacity; s++) {
      const t = slotRows[s];
      if (t < 0) continue;
      for (let d = 0; d < D; d++) dx[t * D + d] += dxe[s * D + d];
    }
  }

  scatter(
    outBuf: DeviceBuffer,
    yeBuf: DeviceBuffer,
    gatesBuf: DeviceBuffer,
    slotBuf: IndexBuffer,
    dims: MoeDims,
  ): void {
    const out = this.floats(outBuf), ye = this.floats(yeBuf), gates = this.floats(gatesBuf);
    const slot = this.indices(slotBuf);
    const { rows: T, topK: k, dim: D } = dims;
    for (let t = 0; t < T; t++) {
      for (let j = 0; j < k; j++) {
        const s = slot[t * k + j], g = gates[t * k + j];
        if (s < 0) continue;
        for (let d = 0; d < D; d++) out[t * D + d] += g * ye[s * D + d];
      }
    }
  }

  scatterBackward(
    dyeBuf: DeviceBuffer,
    dgatesBuf: DeviceBuffer,
    doutBuf: DeviceBuffer,
    yeBuf: DeviceBuffer,
    gatesBuf: DeviceBuffer,
    slotBuf: IndexBuffer,
    dims: MoeDims,
  ): void {
    const dye = this.floats(dyeBuf), dgates = this.floats(dgatesBuf), dout = this.floats(doutBuf);
    const ye = this.floats(yeBuf), gates = this.floats(gatesBuf), slot = this.indices(slotBuf);
    const { rows: T, topK: k, dim: D } = dims;
    dye.fill(0, 0, dims.experts * dims.capacity * D);
    for (let t = 0; t < T; t++) {
      for (let j = 0; j < k; j++) {
        const s = slot[t * k + j], g = gates[t * k + j];
        let dot = 0;
        if (s >= 0) {
          for (let d = 0; d < D; d++) {
            dye[s * D + d] = g * dout[t * D + d];
            dot += dout[t * D + d] * ye[s * D + d];
          }
        }
        dgates[t * k + j] = dot;
      }
    }
  }

  swiglu(actBuf: DeviceBuffer, h1Buf: DeviceBuffer, h3Buf: DeviceBuffer, length: number): void {
    const act = this.floats(actBuf), h1 = this.floats(h1Buf), h3 = this.floats(h3Buf);
    for (let i = 0; i < length; i++) act[i] = h1[i] * sigmoid(h1[i]) * h3[i];
  }

  swigluBackward(
    dh1Buf: DeviceBuffer,
    dh3Buf: DeviceBuffer,
    dactBuf: DeviceBuffer,
    h1Buf: DeviceBuffer,
    h3Buf: DeviceBuffer,
    length: number,
  ): void {
    const dh1 = this.floats(dh1Buf), dh3 = this.floats(dh3Buf), dact = this.floats(dactBuf);
    const h1 = this.floats(h1Buf), h3 = this.floats(h3Buf);
    for (let i = 0; i < length; i++) {
      const sg = sigmoid(h1[i]);
      dh3[i] = dact[i] * h1[i] * sg;
      dh1[i] = dact[i] * h3[i] * sg * (1 + h1[i] * (1 - sg)); // d silu(h) / dh
    }
  }
}

/** Whether expert e is among the first j choices stored from choice[base]. */
function isChosen(choice: Int32Array, base: number, j: number, e: number): boolean {
  for (let i = 0; i < j; i++) if (choice[base + i] === e) return true;
  return false;
}
