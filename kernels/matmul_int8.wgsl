// int8 weight-only matmul: C (M, N) = A (M, K) · dequant(W)ᵀ, or C += with `accumulate`, fp32
// accumulation. W (N, K) is a Linear weight quantized per output channel (lib/quantize.ts):
// codes (N, KW) u32 words, KW = ceil(K / 4), code p of row o in byte p % 4 of word o·KW + p / 4
// (little-endian, zero-padded rows), unpacked by common.wgsl's codes4; dequant(W)[o, p] =
// scales[o] · code.
// A's rows are lda apart (a strided view such as x_proj's δr columns); C is packed (ldc = N).
// Each output is scales[o] · Σ_p A[i, p] · code[o, p]: the scale is applied once, at the end.
//
// Defines: ROWS (gemv_int8 only: M, 1 to 8, a constant so that the per-row sums stay in registers).

@group(0) @binding(1) var<storage, read_write> c: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> codes: array<u32>;
@group(0) @binding(4) var<storage, read> scales: array<f32>;

/** Columns of C (rows of W) per gemv_int8 workgroup. */
const GEMV_COLS: u32 = 4u;

/** A[row, p .. p+3] (A's offset `base`, row stride lda) with zeros from K on. */
fn a_word(base: u32, p: u32, k: u32) -> vec4<f32> {
  // select() keeps the in-range values only; an out-of-range read never reaches the sum
  return vec4<f32>(
    select(0.0, a[base + p], p < k),
    select(0.0, a[base + p + 1u], p + 1u < k),
    select(0.0, a[base + p + 2u], p + 2u < k),
    select(0.0, a[base + p + 3u], p + 3u < k),
  );
}

/** out = scale · sum (+ out): the one write of an element of C. */
fn store_c(i: u32, sum: f32, scale: f32, accumulate: bool) {
  if (accumulate) {
    c[i] += scale * sum;
  } else {
    c[i] = scale * sum;
  }
}

var<workgroup> gemv_partial: array<vec4<f32>, 64>;

// Decode (M = ROWS ≤ 8): one workgroup per GEMV_COLS consecutive rows of W, its 64 invocations
// striding over the KW words of those rows (one u32 of each row and four floats of A per step, for
// all M rows of A at once, so every word of W is read once), then a tree sum per row of C.
// ints: m (= ROWS), n, k, lda, accumulate. Grid: ceil(N / 4) workgroups (spread over x and y).
@compute @workgroup_size(64)
fn gemv_int8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
  let n = arg_u(1u);
  let k = arg_u(2u);
  let lda = arg_u(3u);
  let kw = (k + 3u) / 4u;
  let j0 = group_index(wid, ng) * GEMV_COLS;
  let rows = gemv_rows(j0, n, kw);
  var acc: array<vec4<f32>, ROWS>; // [row of C][column j0 + g]
  for (var q = lid; q < kw; q += 64u) {
    let w = gemv_words(rows, q);
    for (var r = 0u; r < ROWS; r++) {
      let x = a_word(view_offset(2u) + r * lda, 4u * q, k);
      acc[r] += vec4<f32>(dot(x, w[0]), dot(x, w[1]), dot(x, w[2]), dot(x, w[3]));
    }
  }
  for (var r = 0u; r < ROWS; r++) {
    gemv_store(acc[r], r, j0, n, lid);
  }
}

@group(0) @binding(2) var<storage, read> a4: array<vec4<f32>>; // gemv_int8_vec4 only

// gemv_int8 for K % 4 = 0 and A's rows at 16-byte multiples: A read as one vec4 per word, so that
// a step's loads of A are contiguous across the workgroup (four scalar loads 16 bytes apart touch
// the same cache lines four times). Same ints and grid.
@compute @workgroup_size(64)
fn gemv_int8_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
  let n = arg_u(1u);
  let kw = arg_u(2u) / 4u;
  let lda4 = arg_u(3u) / 4u;
  let j0 = group_index(wid, ng) * GEMV_COLS;
  let rows = gemv_rows(j0, n, kw);
  let a0 = view_offset(2u) / 4u;
  var acc: array<vec4<f32>, ROWS>; // [row of C][column j0 + g]
  for (var q = lid; q < kw; q += 64u) {
    let w = gemv_words(rows, q);
    for (var r = 0u; r < ROWS; r++) {
      let x = a4[a0 + r * lda4 + q];
      acc[r] += vec4<f32>(dot(x, w[0]), dot(x, w[1]), dot(x, w[2]), dot(x, w[3]));
    }
  }
  for (var r = 0u; r < ROWS; r++) {
    gemv_store(acc[r], r, j0, n, lid);
  }
}

/** Word offset of each of a GEMV workgroup's rows of W (past N: row N-1, never written). */
fn gemv_rows(j0: u32, n: u32, kw: u32) -> array<u32, GEMV_COLS> {
  var rows: array<u32, GEMV_COLS>;
  for (var g = 0u; g < GEMV_COLS; g++) {
    rows[g] = view_offset(3u) + min(j0 + g, n - 1u) * kw;
  }
  return rows;
}

/** Word q of each of the rows, as the four codes' floats. */
fn gemv_words(rows: array<u32, GEMV_COLS>, q: u32) -> array<vec4<f32>, GEMV_COLS> {
  return array<vec4<f32>, GEMV_COLS>(codes4(codes[rows[0] + q]), codes4(codes[rows[1] + q]),
                                     codes4(codes[rows[2] + q]), codes4(codes[rows[3] + q]));
}

/** Row r of C at columns j0 .. j0 + 3: the workgroup's tree sum of `part`, scaled (uniform control flow). */
fn gemv_store(part: vec4<f32>, r: u32, j0: u32, n: u32, lid: u32) {
  gemv_partial[lid] = part;
  workgroupBarrier();
  for (var s = 32u; s > 0u; s >>= 1u) {
    if (lid < s) {
      gemv_partial[lid] += gemv_partial[lid + s];
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    for (var g = 0u; g < GEMV_COLS; g++) {
      let j = j0 + g;
      if (j < n) {
        store_c(view_offset(1u) + r * n + j, gemv_partial[0][g], scales[view_offset(4u) + j], arg_u(4u) != 0u);
      }
    }
  }
  workgroupBarrier();
}

/** Tile of C per matmul_int8 workgroup (TILE × TILE), and its depth along K (a multiple of 4). */
const TILE: u32 = 64u;
const DEPTH: u32 = 16u;

var<workgroup> tile_a: array<f32, DEPTH * TILE>; // [p][i]: A[row0 + i, p0 + p]
var<workgroup> tile_w: array<f32, DEPTH * TILE>; // [p][j]: code[col0 + j, p0 + p]

// Any M (the prompt, evaluation): 16×16 invocations per 64×64 tile of C, 4×4 outputs each (rows
// ty + 16·r, columns tx + 16·s); each k-step stages a (DEPTH, 64) slice of A and the codes of
// 64 rows of W (DEPTH / 4 words each, one word per invocation, unpacked to floats) in
// workgroup memory.
// ints: m, n, k, lda, accumulate. Grid: (ceil(N / 64), ceil(M / 64)).
@compute @workgroup_size(16, 16)
fn matmul_int8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
  let m = arg_u(0u);
  let n = arg_u(1u);
  let k = arg_u(2u);
  let lda = arg_u(3u);
  let accumulate = arg_u(4u) != 0u;
  let kw = (k + 3u) / 4u;
  let row0 = wid.y * TILE;
  let col0 = wid.x * TILE;
  var acc: array<f32, 16>; // [r · 4 + s]
  for (var p0 = 0u; p0 < k; p0 += DEPTH) {
    for (var q = lid; q < TILE * DEPTH; q += 256u) {
      let i = q / DEPTH;
      let p = q % DEPTH;
      var v = 0.0;
      if (row0 + i < m && p0 + p < k) {
        v = a[view_offset(2u) + (row0 + i) * lda + p0 + p];
      }
      tile_a[p * TILE + i] = v;
    }
    {
      let j = lid / (DEPTH / 4u); // 256 invocations: 64 rows × 4 words
      let word = p0 / 4u + lid % (DEPTH / 4u);
      var w = vec4<f32>(0.0);
      if (col0 + j < n && word < kw) {
        w = codes4(codes[view_offset(3u) + (col0 + j) * kw + word]);
      }
      let p = 4u * (lid % (DEPTH / 4u));
      for (var e = 0u; e < 4u; e++) {
        tile_w[(p + e) * TILE + j] = w[e];
      }
    }
    workgroupBarrier();
    for (var p = 0u; p < DEPTH; p++) {
      for (var r = 0u; r < 4u; r++) {
        let x = tile_a[p * TILE + lid3.y + 16u * r];
        for (var s = 0u; s < 4u; s++) {
          acc[r * 4u + s] = fma(x, tile_w[p * TILE + lid3.x + 16u * s], acc[r * 4u + s]);
        }
      }
    }
    workgroupBarrier();
  }
  for (var r = 0u; r < 4u; r++) {
    let i = row0 + lid3.y + 16u * r;
    for (var s = 0u; s < 4u; s++) {
      let j = col0 + lid3.x + 16u * s;
      if (i < m && j < n) {
        store_c(view_offset(1u) + i * n + j, acc[r * 4u + s], scales[view_offset(4u) + j], accumulate);
      }
    }
  }
}
