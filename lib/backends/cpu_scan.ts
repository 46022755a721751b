/**
 * The linear recurrence at the heart of the selective scan, h[t] = a[t]·h[t-1] + x[t] with
 * h[-1] = 0, computed two ways that must give the same numbers:
 * - sequential: L dependent steps;
 * - parallel: the work-efficient Blelloch / Brent–Kung scan (2·log2(L) levels, O(L) work) over
 *   the associative operator (a1, x1) ∘ (a2, x2) = (a1·a2, a2·x1 + x2), as the seed's pscan.
 */

/**
 * backend.ts's FloatArray, not imported from it: this module runs in the cpu backend's worker
 * threads too, and their module graph stays out of backend.ts (whose imports of the GPU
 * backends do not type-check in a worker).
 */
type FloatArray = Float32Array | Float64Array;

/** Scratch for the parallel scan, grown on demand (the scan runs once per channel and state). */
let workA = new Float64Array(0);
let workX = new Float64Array(0);

/** Overwrites x[0..L) with h[0..L); leaves a unchanged. */
export function scanLinear(a: FloatArray, x: FloatArray, L: number, parallel: boolean): void {
  if (parallel) scanParallel(a, x, L);
  else scanSequential(a, x, L);
}

function scanSequential(a: FloatArray, x: FloatArray, L: number): void {
  for (let t = 1; t < L; t++) x[t] += a[t] * x[t - 1];
}

function scanParallel(a: FloatArray, x: FloatArray, L: number): void {
  let P = 1;
  while (P < L) P *= 2;
  if (workA.length < P) {
    workA = new Float64Array(P);
    workX = new Float64Array(P);
  }
  const A = workA, X = workX;
  for (let t = 0; t < L; t++) {
    A[t] = a[t];
    X[t] = x[t];
  }
  // Padding after the end: identity elements, which cannot affect earlier outputs.
  for (let t = L; t < P; t++) {
    A[t] = 1;
    X[t] = 0;
  }
  // Up-sweep: element i (the last of its block of 2s) absorbs the block before it.
  for (let s = 1; s < P; s *= 2) {
    for (let i = 2 * s - 1; i < P; i += 2 * s) {
      X[i] += A[i] * X[i - s];
      A[i] *= A[i - s];
    }
  }
  // Down-sweep: the middle of each block takes the prefix ending just before it.
  for (let s = P / 4; s >= 1; s /= 2) {
    for (let i = 3 * s - 1; i < P; i += 2 * s) {
      X[i] += A[i] * X[i - s];
      A[i] *= A[i - s];
    }
  }
  for (let t = 0; t < L; t++) x[t] = X[t];
}
