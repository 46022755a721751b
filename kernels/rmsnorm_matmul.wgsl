// Decode's rmsnorm-fused matmuls (lib/backend.ts: rmsnormMatmul, rmsnormMatmulInt8): C (M, N) =
// rmsnorm(A (M, K), norm) · Wᵀ with W (N, K) fp32 or int8 (matmul_int8.wgsl's codes and scales),
// C packed; the _conv entry points then take the conv step on C's first `channels` columns
// (conv1d.wgsl's conv1d_silu_step, with C as its input). A packed, K % 4 = 0 and A, norm and W's
// views at 16-byte multiples (the host checks; other shapes run the ops one by one).
//
// One workgroup per 4 consecutive rows of W (columns of C), its 64 invocations striding over K a
// vec4 at a time; each sums A's squares on the way, so rstd takes no pass of its own:
// C[r, j] = rstd[r] · Σ_p A[r, p] · norm[p] · W[j, p] (· scales[j] for int8).
//
// ints: m, n, k, channels, width, has_bias (the last three for _conv); floats: eps.
// Grid: ceil(N / 4) workgroups (spread over x and y).

@group(0) @binding(1) var<storage, read_write> c: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> norm: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> w: array<vec4<f32>>; // fp32 entry points
@group(0) @binding(4) var<storage, read> codes: array<u32>; // int8 entry points: (N, K / 4) words
@group(0) @binding(5) var<storage, read> scales: array<f32>; // int8 entry points
@group(0) @binding(6) var<storage, read_write> conv_out: array<f32>; // (M, channels)
@group(0) @binding(7) var<storage, read_write> conv_state: array<f32>; // (M, channels, width - 1)
@group(0) @binding(8) var<storage, read> conv_weight: array<f32>; // (channels, width)
@group(0) @binding(9) var<storage, read> conv_bias: array<f32>; // (channels); the weight when none

var<workgroup> partial_dots: array<vec4<f32>, 64>;
var<workgroup> partial_squares: array<f32, 64>;

/** One row of A against the workgroup's rows of W: Σ A·norm·W per column, and Σ A². */
struct RowSums {
  dots: vec4<f32>,
  squares: f32,
}

/** The workgroup's totals of each invocation's sums, in every invocation (uniform control flow). */
fn workgroup_row_sums(part: RowSums, lid: u32) -> RowSums {
  partial_dots[lid] = part.dots;
  partial_squares[lid] = part.squares;
  workgroupBarrier();
  for (var s = 32u; s > 0u; s >>= 1u) {
    if (lid < s) {
      partial_dots[lid] += partial_dots[lid + s];
      partial_squares[lid] += partial_squares[lid + s];
    }
    workgroupBarrier();
  }
  let total = RowSums(partial_dots[0], partial_squares[0]);
  workgroupBarrier();
  return total;
}

/** rstd · dots: rmsnorm's scale applied to the row's products. */
fn normed(sums: RowSums, k: u32) -> vec4<f32> {
  return sums.dots * inverseSqrt(sums.squares / f32(k) + arg_f(0u));
}

/** The workgroup's first column of C (row of W). */
fn first_column(wid: vec3<u32>, ng: vec3<u32>) -> u32 {
  return group_index(wid, ng) * 4u;
}

/** Offsets, in units of a row's K / 4 (vec4 or words), of rows j0 .. j0+3 of W (past N: row N-1). */
fn w_rows(base: u32, j0: u32, k4: u32) -> vec4<u32> {
  return vec4<u32>(base) + min(vec4<u32>(j0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(arg_u(1u) - 1u)) * k4;
}

/** C[r, j0 .. j0+3] with fp32 W, in every invocation. */
fn fp32_columns(r: u32, j0: u32, lid: u32) -> vec4<f32> {
  let k4 = arg_u(2u) / 4u;
  let rows = w_rows(view_offset(4u) / 4u, j0, k4);
  let a0 = view_offset(2u) / 4u + r * k4;
  let n0 = view_offset(3u) / 4u;
  var part = RowSums(vec4<f32>(0.0), 0.0);
  for (var q = lid; q < k4; q += 64u) {
    let x = a[a0 + q];
    let xn = x * norm[n0 + q];
    part.squares += dot(x, x);
    part.dots += vec4<f32>(dot(xn, w[rows.x + q]), dot(xn, w[rows.y + q]), dot(xn, w[rows.z + q]),
                           dot(xn, w[rows.w + q]));
  }
  return normed(workgroup_row_sums(part, lid), 4u * k4);
}

/** C[r, j0 .. j0+3] with int8 W, in every invocation. */
fn int8_columns(r: u32, j0: u32, lid: u32) -> vec4<f32> {
  let k4 = arg_u(2u) / 4u;
  let rows = w_rows(view_offset(4u), j0, k4);
  let a0 = view_offset(2u) / 4u + r * k4;
  let n0 = view_offset(3u) / 4u;
  var part = RowSums(vec4<f32>(0.0), 0.0);
  for (var q = lid; q < k4; q += 64u) {
    let x = a[a0 + q];
    let xn = x * norm[n0 + q];
    part.squares += dot(x, x);
    part.dots += vec4<f32>(dot(xn, codes4(codes[rows.x + q])), dot(xn, codes4(codes[rows.y + q])),
                           dot(xn, codes4(codes[rows.z + q])), dot(xn, codes4(codes[rows.w + q])));
  }
  return column_scales(j0) * normed(workgroup_row_sums(part, lid), 4u * k4);
}

/** The int8 scales of columns j0 .. j0+3 (past N: column N-1's, never stored). */
fn column_scales(j0: u32) -> vec4<f32> {
  let s0 = view_offset(5u);
  let j = min(vec4<u32>(j0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(arg_u(1u) - 1u));
  return vec4<f32>(scales[s0 + j.x], scales[s0 + j.y], scales[s0 + j.z], scales[s0 + j.w]);
}

/** Invocation g < 4 of the workgroup: C[r, j0 + g] = v[g] when the column is below N. */
fn store_column(r: u32, j0: u32, v: vec4<f32>, g: u32) {
  let n = arg_u(1u);
  if (g < 4u && j0 + g < n) {
    c[view_offset(1u) + r * n + j0 + g] = v[g];
  }
}

/** Invocation g < 4: the conv step of row r at column j0 + g, if below `channels`, taking v[g] as input. */
fn conv_column(r: u32, j0: u32, v: vec4<f32>, g: u32) {
  let channels = arg_u(3u);
  let width = arg_u(4u);
  let j = j0 + g;
  if (g >= 4u || j >= channels) {
    return;
  }
  let i = r * channels + j;
  let ow = view_offset(8u) + j * width;
  let st = view_offset(7u) + i * (width - 1u);
  var s = 0.0;
  if (arg_u(5u) != 0u) {
    s = conv_bias[view_offset(9u) + j];
  }
  for (var t = 0u; t + 1u < width; t++) {
    s += conv_weight[ow + t] * conv_state[st + t];
  }
  s += conv_weight[ow + width - 1u] * v[g];
  conv_out[view_offset(6u) + i] = s * sigmoid(s);
  if (width > 1u) {
    for (var t = 0u; t + 2u < width; t++) {
      conv_state[st + t] = conv_state[st + t + 1u];
    }
    conv_state[st + width - 2u] = v[g];
  }
}

@compute @workgroup_size(64)
fn rmsnorm_gemv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
  let j0 = first_column(wid, ng);
  for (var r = 0u; r < arg_u(0u); r++) {
    store_column(r, j0, fp32_columns(r, j0, lid), lid);
  }
}

@compute @workgroup_size(64)
fn rmsnorm_gemv_conv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
  let j0 = first_column(wid, ng);
  for (var r = 0u; r < arg_u(0u); r++) {
    let v = fp32_columns(r, j0, lid);
    store_column(r, j0, v, lid);
    conv_column(r, j0, v, lid);
  }
}

@compute @workgroup_size(64)
fn rmsnorm_gemv_int8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
  let j0 = first_column(wid, ng);
  for (var r = 0u; r < arg_u(0u); r++) {
    store_column(r, j0, int8_columns(r, j0, lid), lid);
  }
}

@compute @workgroup_size(64)
fn rmsnorm_gemv_int8_conv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
  let j0 = first_column(wid, ng);
  for (var r = 0u; r < arg_u(0u); r++) {
    let v = int8_columns(r, j0, lid);
    store_column(r, j0, v, lid);
    conv_column(r, j0, v, lid);
  }
}
