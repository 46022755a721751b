// The fused selective scan (see Backend.selectiveScan): per batch b and channel e,
//   δ[t] = softplus(delta[t] + dt_bias[e]),  A[n] = -exp(A_log[e, n]),
//   h[t, n] = exp(δ[t]·A[n])·h[t-1, n] + δ[t]·B[t, n]·u[t],   h[-1] = 0,
//   y[t] = (Σ_n h[t, n]·C[t, n] + D[e]·u[t]) · silu(z[t]).
// One invocation owns one channel of one sequence and walks the whole of L, T steps at a time.
// Its states are four vec4 registers (d_state ≤ 16; padding states have A = B = C = 0 and stay 0),
// so no array is ever indexed at run time. A workgroup holds CH channels of one sequence; a
// chunk's inputs (δ, u, z, dy of each channel; the rows of B and C, which all channels share) are
// staged in workgroup memory; every lane loads the next chunk's share before it scans the current
// one, so those loads are in flight while it computes. Steps past the end of L get δ = u = dy = 0,
// which leaves states and carries as they are: the inner loops need no bounds, only the writes
// are masked.
// Forward: scan_forward, one pass, one exp per state and step.
// Backward: 1. scan_chunk_starts, the forward walk again, storing the state entering every chunk
//              into hs (B, Q, ED, 16) (Q = ceil(L / T)); (B, L, ED, N) never exists.
//           2. scan_backward walks the chunks from the last to the first: a chunk's states are
//              recomputed from hs into workgroup memory, then walked backwards with the state
//              gradient carried across chunks, writing du, dδ, dz per step. dB and dC of each step
//              are summed over the workgroup's channels in workgroup memory into bc partials
//              (B·L, ceil(ED / CH), 2N); dA_log, dD and ddt_bias are summed over L in registers
//              into param partials (B, N + 2, ED).
//           3. scan_reduce_bc sums the bc partials into dB, dC (overwritten); scan_reduce_params
//              adds Σ over sequences of the param partials into dA_log, dD, ddt_bias.
// hs and both partials live in one scratch buffer `work`: ints 5..8 are Q and the offsets of hs,
// the bc partials and the param partials.
//
// Defines: NS (N ≤ 16), T (chunk length: 8 or 16; the backward's passes share one), CH = 4T (channels
// per workgroup: each lane loads one vec4 of a chunk's rows of B and one of C).

@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> u: array<f32>;
@group(0) @binding(3) var<storage, read> delta: array<f32>;
@group(0) @binding(4) var<storage, read> dt_bias: array<f32>;
@group(0) @binding(5) var<storage, read> a_log: array<f32>;
@group(0) @binding(6) var<storage, read> bmat: array<f32>;
@group(0) @binding(7) var<storage, read> cmat: array<f32>;
@group(0) @binding(8) var<storage, read> dskip: array<f32>;
@group(0) @binding(9) var<storage, read> z: array<f32>;
@group(0) @binding(10) var<storage, read_write> h_state: array<f32>;
@group(0) @binding(11) var<storage, read_write> work: array<f32>;
@group(0) @binding(12) var<storage, read> dy: array<f32>;
@group(0) @binding(13) var<storage, read_write> du: array<f32>;
@group(0) @binding(14) var<storage, read_write> ddelta: array<f32>;
@group(0) @binding(15) var<storage, read_write> dz: array<f32>;
// scan_reduce_bc writes dB, dC through bindings 13, 14; scan_reduce_params writes dA_log, dD,
// ddt_bias through bindings 13, 14, 15.
@group(0) @binding(13) var<storage, read_write> db: array<f32>;
@group(0) @binding(14) var<storage, read_write> dc: array<f32>;
@group(0) @binding(13) var<storage, read_write> da_log: array<f32>;
@group(0) @binding(14) var<storage, read_write> dd: array<f32>;
@group(0) @binding(15) var<storage, read_write> ddt_bias: array<f32>;

const LOG2E: f32 = 1.4426950408889634;
/** A lane's row of bc_terms: dB terms (16), dC terms (16), one word of padding (no bank conflicts). */
const BC_ROW: u32 = 33u;

// A chunk's tiles: [step][lane] per channel, [step][4 vec4] for the rows of B and C.
var<workgroup> tile_delta: array<f32, T * CH>; // raw δ, before softplus
var<workgroup> tile_u: array<f32, T * CH>;
var<workgroup> tile_z: array<f32, T * CH>;
var<workgroup> tile_dy: array<f32, T * CH>;
var<workgroup> tile_dt: array<f32, T * CH>; // backward: softplus(δ + bias)
var<workgroup> tile_b: array<vec4<f32>, T * 4u>;
var<workgroup> tile_c: array<vec4<f32>, T * 4u>;
var<workgroup> hist: array<vec4<f32>, (T + 1u) * 4u * CH>; // backward: [step][k][lane], the chunk's states
var<workgroup> bc_terms: array<f32, CH * BC_ROW>; // backward: [lane][dB terms, dC terms] of one step

/** Sixteen states (or per-state values) of one channel: n = 4k + j in component j of sk. */
struct States {
  s0: vec4<f32>,
  s1: vec4<f32>,
  s2: vec4<f32>,
  s3: vec4<f32>,
}

struct ScanDims {
  batch: u32,
  len: u32,
  channels: u32,
  bc_stride: u32,
  z_stride: u32,
}

// ints 0..4: batch, L, ED, bc_stride, z_stride (the step: L = 1).
fn scan_dims() -> ScanDims {
  return ScanDims(arg_u(0u), arg_u(1u), arg_u(2u), arg_u(3u), arg_u(4u));
}

fn delta_t(r: u32, e: u32, channels: u32) -> f32 {
  return softplus(delta[view_offset(3u) + r * channels + e] + dt_bias[view_offset(4u) + e]);
}

fn minus_exp_a_log(e: u32, n: u32) -> f32 {
  return -exp(a_log[view_offset(5u) + e * NS + n]);
}

fn gate(zv: f32) -> f32 {
  return zv * sigmoid(zv);
}

fn scaled(v: States, s: f32) -> States {
  return States(v.s0 * s, v.s1 * s, v.s2 * s, v.s3 * s);
}

fn dot16(p: States, q: States) -> f32 {
  return dot(p.s0, q.s0) + dot(p.s1, q.s1) + dot(p.s2, q.s2) + dot(p.s3, q.s3);
}

/** A = -exp(A_log[e, :]), zero for padding states. */
fn load_a(e: u32) -> States {
  var a: array<f32, 16>;
  for (var n = 0u; n < NS; n++) {
    a[n] = minus_exp_a_log(e, n);
  }
  return States(vec4(a[0], a[1], a[2], a[3]), vec4(a[4], a[5], a[6], a[7]), vec4(a[8], a[9], a[10], a[11]),
                vec4(a[12], a[13], a[14], a[15]));
}

/** exp(δ·A) = 2^(δ·A·log2 e) per state; a2 = A·log2 e. */
fn decays(dt: f32, a2: States) -> States {
  return States(exp2(dt * a2.s0), exp2(dt * a2.s1), exp2(dt * a2.s2), exp2(dt * a2.s3));
}

fn row_b(t: u32) -> States {
  return States(tile_b[4u * t], tile_b[4u * t + 1u], tile_b[4u * t + 2u], tile_b[4u * t + 3u]);
}

fn row_c(t: u32) -> States {
  return States(tile_c[4u * t], tile_c[4u * t + 1u], tile_c[4u * t + 2u], tile_c[4u * t + 3u]);
}

/** h ← exp(δA) ⊙ h + δ·u·B[t] (a2 = A·log2 e). */
fn advance(h: States, a2: States, dt: f32, ut: f32, t: u32) -> States {
  let g = decays(dt, a2);
  let b = scaled(row_b(t), dt * ut);
  return States(g.s0 * h.s0 + b.s0, g.s1 * h.s1 + b.s1, g.s2 * h.s2 + b.s2, g.s3 * h.s3 + b.s3);
}

/** Four steps of one channel's inputs (raw δ, u, z), zero past the end of L. */
struct Quad {
  delta: vec4<f32>,
  u: vec4<f32>,
  z: vec4<f32>,
}

/** A lane's share of a chunk's rows of B and C: states 4k … 4k + 3 of step t, lid = 4t + k. */
struct Rows {
  b: vec4<f32>,
  c: vec4<f32>,
}

/** A chunk's loads of one lane: T / 4 quads (T = 8 or 16) and its share of the rows. */
struct Chunk {
  q0: Quad,
  q1: Quad,
  q2: Quad,
  q3: Quad,
  rows: Rows,
}

/** Indices of x[row, col] for four rows from `r` on (clamped to the sequence's last row `last`). */
fn gather_index(r: u32, last: u32, stride: u32, col: u32) -> vec4<u32> {
  return min(vec4(r) + vec4(0u, 1u, 2u, 3u), vec4(last)) * stride + vec4(col);
}

/** Steps t0 … t0 + 3 of channel e (loads without branches: every index is in range, the
 *  values past L are masked after). */
fn load_quad(d: ScanDims, b: u32, e: u32, t0: u32, with_z: bool) -> Quad {
  let last = b * d.len + d.len - 1u;
  let r = b * d.len + t0;
  let live = vec4<f32>(vec4(t0) + vec4(0u, 1u, 2u, 3u) < vec4(d.len));
  let i = gather_index(r, last, d.channels, e);
  let o3 = view_offset(3u);
  let o2 = view_offset(2u);
  var x: Quad;
  x.delta = live * vec4(delta[o3 + i.x], delta[o3 + i.y], delta[o3 + i.z], delta[o3 + i.w]);
  x.u = live * vec4(u[o2 + i.x], u[o2 + i.y], u[o2 + i.z], u[o2 + i.w]);
  if (with_z) {
    let iz = view_offset(9u) + gather_index(r, last, d.z_stride, e);
    x.z = live * vec4(z[iz.x], z[iz.y], z[iz.z], z[iz.w]);
  }
  return x;
}

/** dy of the T steps of chunk q of channel e, four per column, zero past the end of L. */
fn load_dy(d: ScanDims, b: u32, e: u32, q: u32) -> mat4x4<f32> {
  var m: mat4x4<f32>;
  let last = b * d.len + d.len - 1u;
  let o12 = view_offset(12u);
  for (var k = 0u; k < T / 4u; k++) {
    let t0 = q * T + 4u * k;
    let live = vec4<f32>(vec4(t0) + vec4(0u, 1u, 2u, 3u) < vec4(d.len));
    let i = o12 + gather_index(b * d.len + t0, last, d.channels, e);
    m[k] = live * vec4(dy[i.x], dy[i.y], dy[i.z], dy[i.w]);
  }
  return m;
}

/** Chunk q's loads for channel e of sequence b, lane lid (CH = 4T lanes share the rows). */
fn load_chunk(d: ScanDims, b: u32, e: u32, q: u32, lid: u32, with_z: bool) -> Chunk {
  var c: Chunk;
  c.q0 = load_quad(d, b, e, q * T, with_z);
  c.q1 = load_quad(d, b, e, q * T + 4u, with_z);
  if (T > 8u) {
    c.q2 = load_quad(d, b, e, q * T + 8u, with_z);
    c.q3 = load_quad(d, b, e, q * T + 12u, with_z);
  }
  let t = q * T + lid / 4u;
  let n = vec4(4u * (lid % 4u)) + vec4(0u, 1u, 2u, 3u);
  let keep = vec4<f32>(n < vec4(NS)) * select(0.0, 1.0, t < d.len);
  let i = min(b * d.len + t, b * d.len + d.len - 1u) * d.bc_stride + min(n, vec4(NS - 1u));
  let ob = view_offset(6u);
  let oc = view_offset(7u);
  c.rows.b = keep * vec4(bmat[ob + i.x], bmat[ob + i.y], bmat[ob + i.z], bmat[ob + i.w]);
  c.rows.c = keep * vec4(cmat[oc + i.x], cmat[oc + i.y], cmat[oc + i.z], cmat[oc + i.w]);
  return c;
}

fn stage_quad(x: Quad, t0: u32, lid: u32) {
  let k = t0 * CH + lid;
  tile_delta[k] = x.delta.x;
  tile_delta[k + CH] = x.delta.y;
  tile_delta[k + 2u * CH] = x.delta.z;
  tile_delta[k + 3u * CH] = x.delta.w;
  tile_u[k] = x.u.x;
  tile_u[k + CH] = x.u.y;
  tile_u[k + 2u * CH] = x.u.z;
  tile_u[k + 3u * CH] = x.u.w;
  tile_z[k] = x.z.x;
  tile_z[k + CH] = x.z.y;
  tile_z[k + 2u * CH] = x.z.z;
  tile_z[k + 3u * CH] = x.z.w;
}

/** A chunk's loads into the tiles (between barriers). */
fn stage(c: Chunk, lid: u32) {
  stage_quad(c.q0, 0u, lid);
  stage_quad(c.q1, 4u, lid);
  if (T > 8u) {
    stage_quad(c.q2, 8u, lid);
    stage_quad(c.q3, 12u, lid);
  }
  tile_b[lid] = c.rows.b;
  tile_c[lid] = c.rows.c;
}

/** dy of a chunk (load_dy) into its tile (between barriers). */
fn stage_dy(m: mat4x4<f32>, lid: u32) {
  for (var t = 0u; t < T; t++) {
    tile_dy[t * CH + lid] = m[t / 4u][t % 4u];
  }
}

/** Index in `work` of hs[b, q, e, 4k], the vec4 sk of the state entering chunk q. */
fn hs_index(d: ScanDims, b: u32, q: u32, e: u32, k: u32) -> u32 {
  return view_offset(11u) + arg_u(6u) + ((b * arg_u(5u) + q) * d.channels + e) * 16u + 4u * k;
}

fn store_vec4(i: u32, v: vec4<f32>) {
  work[i] = v.x;
  work[i + 1u] = v.y;
  work[i + 2u] = v.z;
  work[i + 3u] = v.w;
}

fn load_vec4(i: u32) -> vec4<f32> {
  return vec4(work[i], work[i + 1u], work[i + 2u], work[i + 3u]);
}

/** The state entering chunk q of channel e, from hs. */
fn load_start(d: ScanDims, b: u32, q: u32, e: u32) -> States {
  return States(load_vec4(hs_index(d, b, q, e, 0u)), load_vec4(hs_index(d, b, q, e, 1u)),
                load_vec4(hs_index(d, b, q, e, 2u)), load_vec4(hs_index(d, b, q, e, 3u)));
}

/** The forward walk over L from h = 0: y written step by step or, with `starts` (the backward's
 *  first pass), only the state entering every chunk stored into hs. Grid: (ceil(ED / CH), B). */
fn walk_forward(wid: vec3<u32>, lid: u32, starts: bool) {
  let d = scan_dims();
  let b = wid.y;
  let valid = wid.x * CH + lid < d.channels;
  let e = min(wid.x * CH + lid, d.channels - 1u); // lanes past ED compute on a copy and write nothing
  let a2 = scaled(load_a(e), LOG2E);
  let bias = dt_bias[view_offset(4u) + e];
  let dv = dskip[view_offset(8u) + e];
  var h = States(vec4(0.0), vec4(0.0), vec4(0.0), vec4(0.0));
  let chunks = (d.len + T - 1u) / T;
  var next = load_chunk(d, b, e, 0u, lid, !starts);
  for (var q = 0u; q < chunks; q++) {
    if (starts && valid) {
      store_vec4(hs_index(d, b, q, e, 0u), h.s0);
      store_vec4(hs_index(d, b, q, e, 1u), h.s1);
      store_vec4(hs_index(d, b, q, e, 2u), h.s2);
      store_vec4(hs_index(d, b, q, e, 3u), h.s3);
    }
    workgroupBarrier(); // the previous chunk's tiles are read no more
    stage(next, lid);
    workgroupBarrier();
    if (q + 1u < chunks) {
      next = load_chunk(d, b, e, q + 1u, lid, !starts); // in flight while this chunk is scanned
    }
    for (var t = 0u; t < T; t++) {
      let live = q * T + t < d.len;
      let dt = select(0.0, softplus(tile_delta[t * CH + lid] + bias), live);
      let ut = tile_u[t * CH + lid];
      h = advance(h, a2, dt, ut, t);
      if (!starts && valid && live) {
        let r = b * d.len + q * T + t;
        y[view_offset(1u) + r * d.channels + e] = (dot16(h, row_c(t)) + dv * ut) * gate(tile_z[t * CH + lid]);
      }
    }
  }
}

@compute @workgroup_size(CH)
fn scan_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  walk_forward(wid, lid, false);
}

@compute @workgroup_size(CH)
fn scan_chunk_starts(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  walk_forward(wid, lid, true);
}

fn hist_put(t: u32, lid: u32, h: States) {
  let i = t * 4u * CH + lid;
  hist[i] = h.s0;
  hist[i + CH] = h.s1;
  hist[i + 2u * CH] = h.s2;
  hist[i + 3u * CH] = h.s3;
}

fn hist_get(t: u32, lid: u32) -> States {
  let i = t * 4u * CH + lid;
  return States(hist[i], hist[i + CH], hist[i + 2u * CH], hist[i + 3u * CH]);
}

fn put_terms(i: u32, v: vec4<f32>) {
  bc_terms[i] = v.x;
  bc_terms[i + 1u] = v.y;
  bc_terms[i + 2u] = v.z;
  bc_terms[i + 3u] = v.w;
}

// Grid: (ceil(ED / CH), B). hist (step t + 1: the state after step t, 0: the one entering the
// chunk); `carry` is exp(δ[t+1]·A)·dh[t+1], the state gradient arriving from the right.
@compute @workgroup_size(CH)
fn scan_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let d = scan_dims();
  let b = wid.y;
  let valid = wid.x * CH + lid < d.channels;
  let e = min(wid.x * CH + lid, d.channels - 1u);
  let o_bc = view_offset(11u) + arg_u(7u);
  let o_pp = view_offset(11u) + arg_u(8u);
  let blocks = (d.channels + CH - 1u) / CH;
  let a = load_a(e);
  let a2 = scaled(a, LOG2E);
  let bias = dt_bias[view_offset(4u) + e];
  let dv = dskip[view_offset(8u) + e];
  let zero = vec4(0.0);
  var carry = States(zero, zero, zero, zero);
  var da = States(zero, zero, zero, zero); // Σ over L of ∂/∂A
  var dd_sum = 0.0;
  var dbias_sum = 0.0;
  let row = lid * BC_ROW;
  let chunks = arg_u(5u);
  var next = load_chunk(d, b, e, chunks - 1u, lid, true);
  var next_dy = load_dy(d, b, e, chunks - 1u);
  var next_h = load_start(d, b, chunks - 1u, e);
  for (var qi = chunks; qi > 0u; qi--) {
    let q = qi - 1u;
    workgroupBarrier(); // the previous chunk's tiles are read no more
    stage(next, lid);
    stage_dy(next_dy, lid);
    workgroupBarrier();
    // Recompute the chunk's states (this lane's column of hist and tile_dt only).
    var h = next_h;
    if (q > 0u) {
      next = load_chunk(d, b, e, q - 1u, lid, true); // in flight while this chunk is walked
      next_dy = load_dy(d, b, e, q - 1u);
      next_h = load_start(d, b, q - 1u, e);
    }
    hist_put(0u, lid, h);
    for (var t = 0u; t < T; t++) {
      let dt = select(0.0, softplus(tile_delta[t * CH + lid] + bias), q * T + t < d.len);
      tile_dt[t * CH + lid] = dt;
      h = advance(h, a2, dt, tile_u[t * CH + lid], t);
      hist_put(t + 1u, lid, h);
    }
    for (var ti = 0u; ti < T; ti++) {
      let t = T - 1u - ti;
      let live = q * T + t < d.len;
      let x = t * CH + lid;
      let dt = tile_dt[x];
      let ut = tile_u[x];
      let zv = tile_z[x];
      let sg = sigmoid(zv);
      let dpre = tile_dy[x] * zv * sg; // the gradient reaching Σ_n h·C + D·u
      let an = decays(dt, a2);
      let hp = hist_get(t, lid);
      let hn = hist_get(t + 1u, lid);
      let bt = row_b(t);
      let ct = row_c(t);
      let dh = States(dpre * ct.s0 + carry.s0, dpre * ct.s1 + carry.s1, dpre * ct.s2 + carry.s2,
                      dpre * ct.s3 + carry.s3);
      // ∂/∂(δA) of an·h[t-1]
      let dan = States(dh.s0 * hp.s0 * an.s0, dh.s1 * hp.s1 * an.s1, dh.s2 * hp.s2 * an.s2, dh.s3 * hp.s3 * an.s3);
      let dh_b = dot16(dh, bt); // Σ_n dh·B
      let da_a = dot16(dan, a); // Σ_n ∂/∂(δA)·A
      da = States(da.s0 + dan.s0 * dt, da.s1 + dan.s1 * dt, da.s2 + dan.s2 * dt, da.s3 + dan.s3 * dt);
      carry = States(an.s0 * dh.s0, an.s1 * dh.s1, an.s2 * dh.s2, an.s3 * dh.s3);
      let m = select(0.0, 1.0, valid); // lanes past ED add nothing to dB, dC
      let db_t = scaled(dh, dt * ut * m);
      let dc_t = scaled(hn, dpre * m);
      put_terms(row, db_t.s0);
      put_terms(row + 4u, db_t.s1);
      put_terms(row + 8u, db_t.s2);
      put_terms(row + 12u, db_t.s3);
      put_terms(row + 16u, dc_t.s0);
      put_terms(row + 20u, dc_t.s1);
      put_terms(row + 24u, dc_t.s2);
      put_terms(row + 28u, dc_t.s3);
      let r = b * d.len + q * T + t;
      if (valid && live) {
        let g = (dh_b * ut + da_a) * sigmoid(tile_delta[x] + bias); // softplus' = sigmoid
        du[view_offset(13u) + r * d.channels + e] = dpre * dv + dh_b * dt;
        ddelta[view_offset(14u) + r * d.channels + e] = g;
        let part = dot16(hn, ct); // Σ_n h·C
        dz[view_offset(15u) + r * d.z_stride + e] = tile_dy[x] * (part + dv * ut) * sg * (1.0 + zv * (1.0 - sg));
        dbias_sum += g;
        dd_sum += dpre * ut;
      }
      workgroupBarrier();
      if (live) {
        for (var i = lid; i < 32u; i += CH) {
          if (i % 16u < NS) {
            var acc = vec4(0.0); // four running sums, for independent adds
            for (var l = 0u; l < CH; l += 4u) {
              acc += vec4(bc_terms[l * BC_ROW + i], bc_terms[(l + 1u) * BC_ROW + i],
                          bc_terms[(l + 2u) * BC_ROW + i], bc_terms[(l + 3u) * BC_ROW + i]);
            }
            work[o_bc + (r * blocks + wid.x) * 2u * NS + (i / 16u) * NS + i % 16u] = acc.x + acc.y + acc.z + acc.w;
          }
        }
      }
      workgroupBarrier(); // bc_terms is read no more
    }
  }
  if (valid) {
    let p = o_pp + b * (NS + 2u) * d.channels + e;
    let dal = States(da.s0 * a.s0, da.s1 * a.s1, da.s2 * a.s2, da.s3 * a.s3); // A = -exp(A_log): dA_log = dA·A
    var per_state: array<f32, 16> = array(dal.s0.x, dal.s0.y, dal.s0.z, dal.s0.w, dal.s1.x, dal.s1.y, dal.s1.z,
      dal.s1.w, dal.s2.x, dal.s2.y, dal.s2.z, dal.s2.w, dal.s3.x, dal.s3.y, dal.s3.z, dal.s3.w);
    for (var n = 0u; n < NS; n++) {
      work[p + n * d.channels] = per_state[n];
    }
    work[p + NS * d.channels] = dd_sum;
    work[p + (NS + 1u) * d.channels] = dbias_sum;
  }
}

// ints: batch, L, ED, bc_stride, z_stride, Q, hs offset, bc partials offset.
// One invocation per (row, i < 2N): dB (i < N) or dC (i ≥ N) = Σ over channel blocks.
@compute @workgroup_size(256)
fn scan_reduce_bc(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
  let d = scan_dims();
  let idx = group_index(wid, ng) * 256u + lid;
  if (idx >= d.batch * d.len * 2u * NS) {
    return;
  }
  let r = idx / (2u * NS);
  let i = idx % (2u * NS);
  let blocks = (d.channels + CH - 1u) / CH;
  let o = view_offset(11u) + arg_u(7u) + r * blocks * 2u * NS + i;
  var acc = 0.0;
  for (var k = 0u; k < blocks; k++) {
    acc += work[o + k * 2u * NS];
  }
  if (i < NS) {
    db[view_offset(13u) + r * d.bc_stride + i] = acc;
  } else {
    dc[view_offset(14u) + r * d.bc_stride + i - NS] = acc;
  }
}

// ints: batch, L, ED, bc_stride, z_stride, Q, hs offset, bc partials offset, param partials
// offset. One invocation per channel e: dA_log[e, :], dD[e], ddt_bias[e] += Σ over sequences.
@compute @workgroup_size(64)
fn scan_reduce_params(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let d = scan_dims();
  let e = wid.x * 64u + lid;
  if (e >= d.channels) {
    return;
  }
  let o = view_offset(11u) + arg_u(8u);
  for (var k = 0u; k < NS + 2u; k++) {
    var acc = 0.0;
    for (var b = 0u; b < d.batch; b++) {
      acc += work[o + (b * (NS + 2u) + k) * d.channels + e];
    }
    if (k < NS) {
      da_log[view_offset(13u) + e * NS + k] += acc;
    } else if (k == NS) {
      dd[view_offset(14u) + e] += acc;
    } else {
      ddt_bias[view_offset(15u) + e] += acc;
    }
  }
}

// The decode step: h (B, ED, N) updated in place. One invocation per (b, e).
@compute @workgroup_size(64)
fn scan_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let d = scan_dims();
  let b = wid.y;
  let e = wid.x * 64u + lid;
  if (e >= d.channels) {
    return;
  }
  let r = b;
  let dt = delta_t(r, e, d.channels);
  let ut = u[view_offset(2u) + r * d.channels + e];
  let ob = view_offset(6u) + r * d.bc_stride;
  let oc = view_offset(7u) + r * d.bc_stride;
  let oh = view_offset(10u) + (b * d.channels + e) * NS;
  var s = 0.0;
  for (var n = 0u; n < NS; n++) {
    let h = exp(dt * minus_exp_a_log(e, n)) * h_state[oh + n] + dt * bmat[ob + n] * ut;
    h_state[oh + n] = h;
    s += h * cmat[oc + n];
  }
  let zv = z[view_offset(9u) + r * d.z_stride + e];
  y[view_offset(1u) + r * d.channels + e] = (s + dskip[view_offset(8u) + e] * ut) * gate(zv);
}
