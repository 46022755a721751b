// The fast matmul, for operands that allow 16-byte loads: C (M, N) = op(A) (M, K) · op(B) (K, N),
// or C += with `accumulate` (same semantics as matmul.wgsl). Requires K and N multiples of 4,
// M too when A is transposed, and every row stride and view offset a multiple of 4 (the host
// checks; other shapes take matmul.wgsl).
//
// Defines: TRANS_A, TRANS_B (0 or 1); INPUTS, A_HALF, B_HALF as in matmul.wgsl (a 16-bit
// precision rounds fp32 operands as they are staged; a 16-bit-stored one is read four values, two
// words, at a time: its view offset counts words, its ld values). A workgroup of 16×16 invocations computes a 128×128 tile
// of C, 8×8 per invocation: rows 4·ty + i and 64 + 4·ty + i, columns 4·tx + j and 64 + 4·tx + j
// (i, j < 4), so that the workgroup-memory reads of a k-step are four vec4 per invocation for
// 64 FMAs. Each k-step of 16 stages op(A) and op(B) as [k][128] tiles of vec4; the next step's
// global loads are issued before the current step's arithmetic (register prefetch).
//
// Split-K: workgroup z covers k in [z·k_split, (z+1)·k_split); with more than one split each
// writes its own (M, N) partial product at c + z·M·N (ldc = N, overwrite), which
// matmul.wgsl's matmul_sum_splits adds up.

const BK: u32 = 16u;
const TILE: u32 = 128u;
const TILE4: u32 = TILE / 4u;

var<workgroup> tile_a: array<vec4<f32>, BK * TILE4>; // [k][m / 4][m % 4]
var<workgroup> tile_b: array<vec4<f32>, BK * TILE4>; // [k][n / 4][n % 4]

@group(0) @binding(1) var<storage, read_write> c: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> b: array<vec4<f32>>;

struct Shape {
  m: u32,
  n: u32,
  k: u32,
  lda: u32,
  ldb: u32,
  ldc: u32,
  k_end: u32,
}

/**
 * One of the two vec4 an invocation stages per operand and k-step, from a matrix stored
 * (rows, ld) at element offset `base`. `k_major`: stored (K, MN), the vec4 runs along MN; else
 * stored (MN, K), the vec4 runs along K. `extent` is M or N; out-of-range values are zero.
 */
fn load_tile(which: u32, k_major: bool, base: u32, ld: u32, mn0: u32, extent: u32, p0: u32, k_end: u32,
             idx: u32) -> vec4<f32> {
  var row: u32;
  var col: u32;
  var ok: bool;
  if (k_major) {
    let kk = idx / TILE4;
    let q = idx % TILE4;
    row = p0 + kk;
    col = mn0 + 4u * q;
    ok = row < k_end && col < extent;
  } else {
    let r = idx / 4u;
    let kq = 4u * (idx % 4u);
    row = mn0 + r;
    col = p0 + kq;
    ok = row < extent && col < k_end;
  }
  if (!ok) {
    return vec4<f32>(0.0);
  }
  let e = row * ld + col; // a multiple of 4
  if ((which == 0u && A_HALF == 1u) || (which == 1u && B_HALF == 1u)) {
    let w = base + e / 2u; // even: two words of one vec4
    var v: vec4<f32>;
    if (which == 0u) {
      v = a[w / 4u];
    } else {
      v = b[w / 4u];
    }
    let words = bitcast<vec2<u32>>(select(v.xy, v.zw, w % 4u == 2u));
    let format = INPUTS - 1u;
    return vec4<f32>(half_in_word(words.x, 0u, format), half_in_word(words.x, 1u, format),
                     half_in_word(words.y, 0u, format), half_in_word(words.y, 1u, format));
  }
  var v: vec4<f32>;
  if (which == 0u) {
    v = a[(base + e) / 4u];
  } else {
    v = b[(base + e) / 4u];
  }
  if (INPUTS == 0u) {
    return v;
  }
  let format = INPUTS - 1u;
  return vec4<f32>(round_to_half(v.x, format), round_to_half(v.y, format), round_to_half(v.z, format),
                   round_to_half(v.w, format));
}

/** Writes a staged vec4 into a [k][128] tile (transposing the K-contiguous layout). */
fn store_tile(which: u32, k_major: bool, idx: u32, v: vec4<f32>) {
  if (k_major) {
    if (which == 0u) {
      tile_a[idx] = v;
    } else {
      tile_b[idx] = v;
    }
    return;
  }
  let r = idx / 4u;
  let kq = 4u * (idx % 4u);
  for (var j = 0u; j < 4u; j++) {
    let slot = (kq + j) * TILE4 + r / 4u;
    if (which == 0u) {
      tile_a[slot][r % 4u] = v[j];
    } else {
      tile_b[slot][r % 4u] = v[j];
    }
  }
}

fn store_c(s: Shape, o: u32, accumulate: bool, row: u32, col: u32, v: vec4<f32>) {
  if (row < s.m && col < s.n) {
    let i = (o + row * s.ldc + col) / 4u;
    if (accumulate) {
      c[i] += v;
    } else {
      c[i] = v;
    }
  }
}

// ints: m, n, k, lda, ldb, ldc, accumulate, k_split. Grid: (ceil(N / 128), ceil(M / 128), splits).
@compute @workgroup_size(256)
fn matmul_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let k_begin = wid.z * arg_u(7u);
  var s = Shape(arg_u(0u), arg_u(1u), arg_u(2u), arg_u(3u), arg_u(4u), arg_u(5u), 0u);
  s.k_end = min(s.k, k_begin + arg_u(7u));
  let row0 = wid.y * TILE;
  let col0 = wid.x * TILE;
  let a_major = TRANS_A == 1u; // A stored (K, M)
  let b_major = TRANS_B == 0u; // B stored (K, N)
  let oa = view_offset(2u);
  let ob = view_offset(3u);
  let tx = lid % 16u;
  let ty = lid / 16u;

  var c00 = vec4<f32>(0.0); var c01 = vec4<f32>(0.0); var c10 = vec4<f32>(0.0); var c11 = vec4<f32>(0.0);
  var c20 = vec4<f32>(0.0); var c21 = vec4<f32>(0.0); var c30 = vec4<f32>(0.0); var c31 = vec4<f32>(0.0);
  var c40 = vec4<f32>(0.0); var c41 = vec4<f32>(0.0); var c50 = vec4<f32>(0.0); var c51 = vec4<f32>(0.0);
  var c60 = vec4<f32>(0.0); var c61 = vec4<f32>(0.0); var c70 = vec4<f32>(0.0); var c71 = vec4<f32>(0.0);

  var pa0 = load_tile(0u, a_major, oa, s.lda, row0, s.m, k_begin, s.k_end, lid);
  var pa1 = load_tile(0u, a_major, oa, s.lda, row0, s.m, k_begin, s.k_end, lid + 256u);
  var pb0 = load_tile(1u, b_major, ob, s.ldb, col0, s.n, k_begin, s.k_end, lid);
  var pb1 = load_tile(1u, b_major, ob, s.ldb, col0, s.n, k_begin, s.k_end, lid + 256u);
  for (var p0 = k_begin; p0 < s.k_end; p0 += BK) {
    store_tile(0u, a_major, lid, pa0);
    store_tile(0u, a_major, lid + 256u, pa1);
    store_tile(1u, b_major, lid, pb0);
    store_tile(1u, b_major, lid + 256u, pb1);
    workgroupBarrier();
    let next = p0 + BK;
    if (next < s.k_end) {
      pa0 = load_tile(0u, a_major, oa, s.lda, row0, s.m, next, s.k_end, lid);
      pa1 = load_tile(0u, a_major, oa, s.lda, row0, s.m, next, s.k_end, lid + 256u);
      pb0 = load_tile(1u, b_major, ob, s.ldb, col0, s.n, next, s.k_end, lid);
      pb1 = load_tile(1u, b_major, ob, s.ldb, col0, s.n, next, s.k_end, lid + 256u);
    }
    for (var kk = 0u; kk < BK; kk++) {
      let a0 = tile_a[kk * TILE4 + ty];
      let a1 = tile_a[kk * TILE4 + 16u + ty];
      let b0 = tile_b[kk * TILE4 + tx];
      let b1 = tile_b[kk * TILE4 + 16u + tx];
      c00 = fma(vec4<f32>(a0.x), b0, c00); c01 = fma(vec4<f32>(a0.x), b1, c01);
      c10 = fma(vec4<f32>(a0.y), b0, c10); c11 = fma(vec4<f32>(a0.y), b1, c11);
      c20 = fma(vec4<f32>(a0.z), b0, c20); c21 = fma(vec4<f32>(a0.z), b1, c21);
      c30 = fma(vec4<f32>(a0.w), b0, c30); c31 = fma(vec4<f32>(a0.w), b1, c31);
      c40 = fma(vec4<f32>(a1.x), b0, c40); c41 = fma(vec4<f32>(a1.x), b1, c41);
      c50 = fma(vec4<f32>(a1.y), b0, c50); c51 = fma(vec4<f32>(a1.y), b1, c51);
      c60 = fma(vec4<f32>(a1.z), b0, c60); c61 = fma(vec4<f32>(a1.z), b1, c61);
      c70 = fma(vec4<f32>(a1.w), b0, c70); c71 = fma(vec4<f32>(a1.w), b1, c71);
    }
    workgroupBarrier();
  }

  let accumulate = arg_u(6u) != 0u;
  let oc = view_offset(1u) + wid.z * s.m * s.n; // split z writes its own partial (ldc = N)
  let r0 = row0 + 4u * ty;
  let r1 = r0 + 64u;
  let j0 = col0 + 4u * tx;
  let j1 = j0 + 64u;
  store_c(s, oc, accumulate, r0, j0, c00); store_c(s, oc, accumulate, r0, j1, c01);
  store_c(s, oc, accumulate, r0 + 1u, j0, c10); store_c(s, oc, accumulate, r0 + 1u, j1, c11);
  store_c(s, oc, accumulate, r0 + 2u, j0, c20); store_c(s, oc, accumulate, r0 + 2u, j1, c21);
  store_c(s, oc, accumulate, r0 + 3u, j0, c30); store_c(s, oc, accumulate, r0 + 3u, j1, c31);
  store_c(s, oc, accumulate, r1, j0, c40); store_c(s, oc, accumulate, r1, j1, c41);
  store_c(s, oc, accumulate, r1 + 1u, j0, c50); store_c(s, oc, accumulate, r1 + 1u, j1, c51);
  store_c(s, oc, accumulate, r1 + 2u, j0, c60); store_c(s, oc, accumulate, r1 + 2u, j1, c61);
  store_c(s, oc, accumulate, r1 + 3u, j0, c70); store_c(s, oc, accumulate, r1 + 3u, j1, c71);
}

var<workgroup> gemv_partial: array<vec4<f32>, 64>;

// The decode-time product (M ≤ 8 rows, A untransposed, B transposed, as a Linear layer's
// weight): one workgroup per 4 consecutive columns of C, its 64 invocations striding over K
// with 16-byte loads, then a tree sum in workgroup memory. Same operand conditions as above.
// ints: m, n, k, lda, ldb, ldc, accumulate. Grid: N / 4 workgroups (spread over x and y).
@compute @workgroup_size(64)
fn gemv_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
  let m = arg_u(0u);
  let n = arg_u(1u);
  let k4 = arg_u(2u) / 4u;
  let lda = arg_u(3u);
  let ldb = arg_u(4u);
  let ldc = arg_u(5u);
  let accumulate = arg_u(6u) != 0u;
  let j0 = group_index(wid, ng) * 4u;
  let live = j0 < n;
  let jb = min(j0, n - 4u); // rows of B read by a workgroup past N (it writes nothing)
  let b0 = (view_offset(3u) + jb * ldb) / 4u;
  let b1 = b0 + ldb / 4u;
  let b2 = b1 + ldb / 4u;
  let b3 = b2 + ldb / 4u;
  for (var r = 0u; r < m; r++) {
    let a0 = (view_offset(2u) + r * lda) / 4u;
    var acc = vec4<f32>(0.0);
    for (var q = lid; q < k4; q += 64u) {
      let x = a[a0 + q];
      acc += vec4<f32>(dot(x, b[b0 + q]), dot(x, b[b1 + q]), dot(x, b[b2 + q]), dot(x, b[b3 + q]));
    }
    gemv_partial[lid] = acc;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
      if (lid < s) {
        gemv_partial[lid] += gemv_partial[lid + s];
      }
      workgroupBarrier();
    }
    if (lid == 0u && live) {
      let i = (view_offset(1u) + r * ldc + j0) / 4u;
      if (accumulate) {
        c[i] += gemv_partial[0];
      } else {
        c[i] = gemv_partial[0];
      }
    }
    workgroupBarrier();
  }
}
