// The fused selective scan (see Backend.selectiveScan): per batch b and channel e,
//   δ[t] = softplus(delta[t] + dt_bias[e]),  A[n] = -exp(A_log[e, n]),
//   h[t, n] = exp(δ[t]·A[n])·h[t-1, n] + δ[t]·B[t, n]·u[t],   h[-1] = 0,
//   y[t] = (Σ_n h[t, n]·C[t, n] + D[e]·u[t]) · silu(z[t]).
// A pair of lanes owns one channel of one sequence and walks the whole of L, T steps at a time:
// lane g of the pair holds states 8g … 8g + 7 in two vec4 registers (d_state ≤ 16; padding states
// have A = B = C = 0 and stay 0), so no array is ever indexed at run time. A workgroup holds CH
// channels of one sequence, lane g·CH + c for channel c. A chunk's inputs (δ, u, z, dy of each
// channel; the rows of B and C, which all channels share) are staged in workgroup memory; every
// lane loads its share of the next chunk before the current one is scanned, so those loads are in
// flight while it computes. Sums over a channel's states (h·C and the backward's) add the pair's
// halves through workgroup memory. Steps past the end of L get δ = u = dy = 0, which leaves
// states and carries as they are: the inner loops need no bounds, only the writes are masked.
// Forward: scan_forward, one pass, one exp per state and step; y written after each chunk.
// Backward: 1. scan_chunk_starts, the forward walk again, storing the state entering every chunk
//              into hs (B, Q, ED, 16) (Q = ceil(L / T)); (B, L, ED, N) never exists.
//           2. scan_backward walks the chunks from the last to the first: a chunk's states are
//              recomputed from hs into workgroup memory, then walked backwards with the state
//              gradient carried across chunks. At every step the pairs' halves are exchanged:
//              lanes of the first half write du, dδ, dz; lanes of the second sum dB and dC over
//              the workgroup's channels into bc partials (B·L, ceil(ED / CH), 2N). dA_log, dD and
//              ddt_bias are summed over L in registers into param partials (B, N + 2, ED).
//           3. scan_reduce_bc sums the bc partials into dB, dC (overwritten); scan_reduce_params
//              adds Σ over sequences of the param partials into dA_log, dD, ddt_bias.
// hs and both partials live in one scratch buffer `work`: ints 5..8 are Q and the offsets of hs,
// the bc partials and the param partials.
//
// Defines: NS (N ≤ 16), T (chunk length: 8 or 16; the backward's passes share one), CH (channels
// per workgroup: 32; 2·CH ≥ 4T lanes each load one vec4 of a chunk's rows of B and one of C),
// STEP_CHANNELS (channels per workgroup of the decode step).

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
@group(0) @binding(12) var<storage, read> dt_proj: array<f32>; // scan_step only
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
const LANES: u32 = 2u * CH;
/** A lane's row of bc_terms: dB terms (8), dC terms (8) of its states, one word of padding. */
const BC_ROW: u32 = 17u;

// A chunk's tiles: [step][channel] per channel, [step][4 vec4] for the rows of B and C.
var<workgroup> tile_delta: array<f32, T * CH>; // raw δ, before softplus
var<workgroup> tile_u: array<f32, T * CH>;
var<workgroup> tile_z: array<f32, T * CH>;
var<workgroup> tile_dy: array<f32, T * CH>;
var<workgroup> tile_b: array<vec4<f32>, T * 4u>;
var<workgroup> tile_c: array<vec4<f32>, T * 4u>;
var<workgroup> part_c: array<f32, T * LANES>; // forward: [step][lane], each lane's half of h·C
var<workgroup> tile_dt: array<f32, T * LANES>; // backward: [step][lane], softplus(δ + bias)
var<workgroup> hist: array<vec4<f32>, (T + 1u) * 2u * LANES>; // backward: [step][k][lane], the chunk's states
var<workgroup> halves: array<vec4<f32>, LANES>; // backward: each lane's (Σ dh·B, Σ ∂/∂(δA)·A, Σ h·C, -) of a step
var<workgroup> bc_terms: array<f32, LANES * BC_ROW>; // backward: [lane][dB terms, dC terms] of a step

/** Eight states (or per-state values) of one lane: state 8g + 4k + j in component j of sk. */
struct Half {
  s0: vec4<f32>,
  s1: vec4<f32>,
}

struct ScanDims {
  batch: u32,
  len: u32,
  channels: u32,
  bc_stride: u32,
  z_stride: u32,
}

/** Where a lane sits: channel ch of the workgroup (e in the sequence), half g of its states. */
struct Lane {
  ch: u32,
  g: u32,
  e: u32, // clamped to ED - 1: lanes past ED compute on a copy and write nothing
  valid: bool,
}

// ints 0..4: batch, L, ED, bc_stride, z_stride (the step: L = 1).
fn scan_dims() -> ScanDims {
  return ScanDims(arg_u(0u), arg_u(1u), arg_u(2u), arg_u(3u), arg_u(4u));
}

fn lane_of(d: ScanDims, wid: vec3<u32>, lid: u32) -> Lane {
  let ch = lid % CH;
  return Lane(ch, lid / CH, min(wid.x * CH + ch, d.channels - 1u), wid.x * CH + ch < d.channels);
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

fn scaled(v: Half, s: f32) -> Half {
  return Half(v.s0 * s, v.s1 * s);
}

fn dot8(p: Half, q: Half) -> f32 {
  return dot(p.s0, q.s0) + dot(p.s1, q.s1);
}

/** A = -exp(A_log[e, 8g …]), zero for padding states. */
fn load_a(l: Lane) -> Half {
  var a: array<f32, 8>;
  for (var m = 0u; m < 8u; m++) {
    if (8u * l.g + m < NS) {
      a[m] = minus_exp_a_log(l.e, 8u * l.g + m);
    }
  }
  return Half(vec4(a[0], a[1], a[2], a[3]), vec4(a[4], a[5], a[6], a[7]));
}

/** exp(δ·A) = 2^(δ·A·log2 e) per state; a2 = A·log2 e. */
fn decays(dt: f32, a2: Half) -> Half {
  return Half(exp2(dt * a2.s0), exp2(dt * a2.s1));
}

/** This lane's half of step t's row of B (of C). */
fn row_b(t: u32, g: u32) -> Half {
  return Half(tile_b[4u * t + 2u * g], tile_b[4u * t + 2u * g + 1u]);
}

fn row_c(t: u32, g: u32) -> Half {
  return Half(tile_c[4u * t + 2u * g], tile_c[4u * t + 2u * g + 1u]);
}

/** h ← exp(δA) ⊙ h + δ·u·B[t] (a2 = A·log2 e). */
fn advance(h: Half, a2: Half, dt: f32, ut: f32, t: u32, g: u32) -> Half {
  let f = decays(dt, a2);
  let b = scaled(row_b(t, g), dt * ut);
  return Half(f.s0 * h.s0 + b.s0, f.s1 * h.s1 + b.s1);
}

/** Four steps of one channel's inputs (raw δ, u, z), zero past the end of L. */
struct Quad {
  delta: vec4<f32>,
  u: vec4<f32>,
  z: vec4<f32>,
}

/** A lane's loads of a chunk: its T / 8 quads of its channel (steps from g·T/2 on) and, on lanes
 *  below 4T, one vec4 of the rows of B and one of C (states 4k … 4k + 3 of step t, lid = 4t + k). */
struct Chunk {
  q0: Quad,
  q1: Quad,
  b: vec4<f32>,
  c: vec4<f32>,
}

/** Indices of x[row, col] for four rows from `r` on (clamped to the sequence's last row `last`). */
fn gather_index(r: u32, last: u32, stride: u32, col: u32) -> vec4<u32> {
  return min(vec4(r) + vec4(0u, 1u, 2u, 3u), vec4(last)) * stride + vec4(col);
}

/** 1 for the steps t0 … t0 + 3 inside L, 0 past it. */
fn live4(d: ScanDims, t0: u32) -> vec4<f32> {
  return vec4<f32>(vec4(t0) + vec4(0u, 1u, 2u, 3u) < vec4(d.len));
}

/** Steps t0 … t0 + 3 of channel e (loads without branches: every index is in range, the
 *  values past L are masked after). */
fn load_quad(d: ScanDims, b: u32, e: u32, t0: u32, with_z: bool) -> Quad {
  let last = b * d.len + d.len - 1u;
  let r = b * d.len + t0;
  let live = live4(d, t0);
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

/** dy of this lane's T / 8 quads of chunk q (one per column), zero past the end of L. */
fn load_dy(d: ScanDims, b: u32, l: Lane, q: u32) -> mat2x4<f32> {
  var m: mat2x4<f32>;
  let last = b * d.len + d.len - 1u;
  let o12 = view_offset(12u);
  for (var k = 0u; k < T / 8u; k++) {
    let t0 = q * T + l.g * (T / 2u) + 4u * k;
    let i = o12 + gather_index(b * d.len + t0, last, d.channels, l.e);
    m[k] = live4(d, t0) * vec4(dy[i.x], dy[i.y], dy[i.z], dy[i.w]);
  }
  return m;
}

/** Chunk q's loads for lane lid. */
fn load_chunk(d: ScanDims, b: u32, l: Lane, q: u32, lid: u32, with_z: bool) -> Chunk {
  var c: Chunk;
  let t0 = q * T + l.g * (T / 2u);
  c.q0 = load_quad(d, b, l.e, t0, with_z);
  if (T > 8u) {
    c.q1 = load_quad(d, b, l.e, t0 + 4u, with_z);
  }
  if (lid < 4u * T) {
    let t = q * T + lid / 4u;
    let n = vec4(4u * (lid % 4u)) + vec4(0u, 1u, 2u, 3u);
    let keep = vec4<f32>(n < vec4(NS)) * select(0.0, 1.0, t < d.len);
    let i = min(b * d.len + t, b * d.len + d.len - 1u) * d.bc_stride + min(n, vec4(NS - 1u));
    let ob = view_offset(6u);
    let oc = view_offset(7u);
    c.b = keep * vec4(bmat[ob + i.x], bmat[ob + i.y], bmat[ob + i.z], bmat[ob + i.w]);
    c.c = keep * vec4(cmat[oc + i.x], cmat[oc + i.y], cmat[oc + i.z], cmat[oc + i.w]);
  }
  return c;
}

fn stage_quad(x: Quad, t0: u32, ch: u32) {
  let k = t0 * CH + ch;
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
fn stage(c: Chunk, l: Lane, lid: u32) {
  stage_quad(c.q0, l.g * (T / 2u), l.ch);
  if (T > 8u) {
    stage_quad(c.q1, l.g * (T / 2u) + 4u, l.ch);
  }
  if (lid < 4u * T) {
    tile_b[lid] = c.b;
    tile_c[lid] = c.c;
  }
}

/** dy of a chunk (load_dy) into its tile (between barriers). */
fn stage_dy(m: mat2x4<f32>, l: Lane) {
  for (var j = 0u; j < T / 2u; j++) {
    tile_dy[(l.g * (T / 2u) + j) * CH + l.ch] = m[j / 4u][j % 4u];
  }
}

/** Index in `work` of hs[b, q, e, 8g + 4k], the vec4 sk of lane g's half of the state entering chunk q. */
fn hs_index(d: ScanDims, b: u32, q: u32, l: Lane, k: u32) -> u32 {
  return view_offset(11u) + arg_u(6u) + ((b * arg_u(5u) + q) * d.channels + l.e) * 16u + 8u * l.g + 4u * k;
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

/** This lane's half of the state entering chunk q, from hs. */
fn load_start(d: ScanDims, b: u32, q: u32, l: Lane) -> Half {
  return Half(load_vec4(hs_index(d, b, q, l, 0u)), load_vec4(hs_index(d, b, q, l, 1u)));
}

/** The forward walk over L from h = 0: y written chunk by chunk or, with `starts` (the
 *  backward's first pass), only the state entering every chunk stored into hs.
 *  Grid: (ceil(ED / CH), B). */
fn walk_forward(wid: vec3<u32>, lid: u32, starts: bool) {
  let d = scan_dims();
  let b = wid.y;
  let l = lane_of(d, wid, lid);
  let a2 = scaled(load_a(l), LOG2E);
  let bias = dt_bias[view_offset(4u) + l.e];
  let dv = dskip[view_offset(8u) + l.e];
  var h = Half(vec4(0.0), vec4(0.0));
  let chunks = (d.len + T - 1u) / T;
  var next = load_chunk(d, b, l, 0u, lid, !starts);
  for (var q = 0u; q < chunks; q++) {
    if (starts && l.valid) {
      store_vec4(hs_index(d, b, q, l, 0u), h.s0);
      store_vec4(hs_index(d, b, q, l, 1u), h.s1);
    }
    workgroupBarrier(); // the previous chunk's tiles are read no more
    stage(next, l, lid);
    workgroupBarrier();
    if (q + 1u < chunks) {
      next = load_chunk(d, b, l, q + 1u, lid, !starts); // in flight while this chunk is scanned
    }
    for (var t = 0u; t < T; t++) {
      let dt = select(0.0, softplus(tile_delta[t * CH + l.ch] + bias), q * T + t < d.len);
      h = advance(h, a2, dt, tile_u[t * CH + l.ch], t, l.g);
      if (!starts) {
        part_c[t * LANES + lid] = dot8(h, row_c(t, l.g));
      }
    }
    if (!starts) {
      workgroupBarrier();
      // Lane g writes y of the chunk's steps g, g + 2, …: both halves of h·C added.
      for (var t = l.g; t < T; t += 2u) {
        if (l.valid && q * T + t < d.len) {
          let r = b * d.len + q * T + t;
          let hc = part_c[t * LANES + l.ch] + part_c[t * LANES + CH + l.ch];
          y[view_offset(1u) + r * d.channels + l.e] = (hc + dv * tile_u[t * CH + l.ch]) * gate(tile_z[t * CH + l.ch]);
        }
      }
    }
  }
}

@compute @workgroup_size(LANES)
fn scan_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  walk_forward(wid, lid, false);
}

@compute @workgroup_size(LANES)
fn scan_chunk_starts(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  walk_forward(wid, lid, true);
}

fn hist_put(t: u32, lid: u32, h: Half) {
  let i = t * 2u * LANES + lid;
  hist[i] = h.s0;
  hist[i + LANES] = h.s1;
}

fn hist_get(t: u32, lid: u32) -> Half {
  let i = t * 2u * LANES + lid;
  return Half(hist[i], hist[i + LANES]);
}

fn put_terms(i: u32, v: vec4<f32>) {
  bc_terms[i] = v.x;
  bc_terms[i + 1u] = v.y;
  bc_terms[i + 2u] = v.z;
  bc_terms[i + 3u] = v.w;
}

// Grid: (ceil(ED / CH), B). hist (step t + 1: the state after step t, 0: the one entering the
// chunk); `carry` is exp(δ[t+1]·A)·dh[t+1], the state gradient arriving from the right.
@compute @workgroup_size(LANES)
fn scan_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let d = scan_dims();
  let b = wid.y;
  let l = lane_of(d, wid, lid);
  let o_bc = view_offset(11u) + arg_u(7u);
  let o_pp = view_offset(11u) + arg_u(8u);
  let blocks = (d.channels + CH - 1u) / CH;
  let a = load_a(l);
  let a2 = scaled(a, LOG2E);
  let bias = dt_bias[view_offset(4u) + l.e];
  let dv = dskip[view_offset(8u) + l.e];
  var carry = Half(vec4(0.0), vec4(0.0));
  var da = Half(vec4(0.0), vec4(0.0)); // Σ over L of ∂/∂A
  var dd_sum = 0.0; // (lanes of the first half)
  var dbias_sum = 0.0;
  let row = lid * BC_ROW;
  let m = select(0.0, 1.0, l.valid); // lanes past ED add nothing to dB, dC
  let chunks = arg_u(5u);
  var next = load_chunk(d, b, l, chunks - 1u, lid, true);
  var next_dy = load_dy(d, b, l, chunks - 1u);
  var next_h = load_start(d, b, chunks - 1u, l);
  for (var qi = chunks; qi > 0u; qi--) {
    let q = qi - 1u;
    workgroupBarrier(); // the previous chunk's tiles are read no more
    stage(next, l, lid);
    stage_dy(next_dy, l);
    workgroupBarrier();
    // Recompute the chunk's states (this lane's column of hist and tile_dt only).
    var h = next_h;
    if (q > 0u) {
      next = load_chunk(d, b, l, q - 1u, lid, true); // in flight while this chunk is walked
      next_dy = load_dy(d, b, l, q - 1u);
      next_h = load_start(d, b, q - 1u, l);
    }
    hist_put(0u, lid, h);
    for (var t = 0u; t < T; t++) {
      let dt = select(0.0, softplus(tile_delta[t * CH + l.ch] + bias), q * T + t < d.len);
      tile_dt[t * LANES + lid] = dt;
      h = advance(h, a2, dt, tile_u[t * CH + l.ch], t, l.g);
      hist_put(t + 1u, lid, h);
    }
    for (var ti = 0u; ti < T; ti++) {
      let t = T - 1u - ti;
      let x = t * CH + l.ch;
      let dt = tile_dt[t * LANES + lid];
      let ut = tile_u[x];
      let zv = tile_z[x];
      let sg = sigmoid(zv);
      let dpre = tile_dy[x] * zv * sg; // the gradient reaching Σ_n h·C + D·u
      let an = decays(dt, a2);
      let hp = hist_get(t, lid);
      let hn = hist_get(t + 1u, lid);
      let ct = row_c(t, l.g);
      let dh = Half(dpre * ct.s0 + carry.s0, dpre * ct.s1 + carry.s1);
      let dan = Half(dh.s0 * hp.s0 * an.s0, dh.s1 * hp.s1 * an.s1); // ∂/∂(δA) of an·h[t-1]
      da = Half(da.s0 + dan.s0 * dt, da.s1 + dan.s1 * dt);
      carry = Half(an.s0 * dh.s0, an.s1 * dh.s1);
      halves[lid] = vec4(dot8(dh, row_b(t, l.g)), dot8(dan, a), dot8(hn, ct), 0.0);
      let db_t = scaled(dh, dt * ut * m);
      let dc_t = scaled(hn, dpre * m);
      put_terms(row, db_t.s0);
      put_terms(row + 4u, db_t.s1);
      put_terms(row + 8u, dc_t.s0);
      put_terms(row + 12u, dc_t.s1);
      workgroupBarrier();
      let live = q * T + t < d.len;
      let r = b * d.len + q * T + t;
      if (lid < CH) {
        // Σ dh·B, Σ ∂/∂(δA)·A, Σ h·C over the channel's 16 states: both halves added.
        let s = halves[lid] + halves[lid + CH];
        if (l.valid && live) {
          let g = (s.x * ut + s.y) * sigmoid(tile_delta[x] + bias); // softplus' = sigmoid
          du[view_offset(13u) + r * d.channels + l.e] = dpre * dv + s.x * dt;
          ddelta[view_offset(14u) + r * d.channels + l.e] = g;
          dz[view_offset(15u) + r * d.z_stride + l.e] = tile_dy[x] * (s.z + dv * ut) * dsilu_of(zv, sg);
          dbias_sum += g;
          dd_sum += dpre * ut;
        }
      } else if (live) {
        // dB (i < 16) or dC of state i % 16, summed over the channels of the lanes holding it.
        for (var i = lid - CH; i < 32u; i += CH) {
          let n = i % 16u;
          if (n < NS) {
            let first = (n / 8u) * CH * BC_ROW + (i / 16u) * 8u + n % 8u;
            var acc = vec4(0.0); // four running sums, for independent adds
            for (var c = 0u; c < CH; c += 4u) {
              acc += vec4(bc_terms[first + c * BC_ROW], bc_terms[first + (c + 1u) * BC_ROW],
                          bc_terms[first + (c + 2u) * BC_ROW], bc_terms[first + (c + 3u) * BC_ROW]);
            }
            work[o_bc + (r * blocks + wid.x) * 2u * NS + (i / 16u) * NS + n] = acc.x + acc.y + acc.z + acc.w;
          }
        }
      }
      workgroupBarrier(); // halves and bc_terms are read no more
    }
  }
  if (l.valid) {
    let p = o_pp + b * (NS + 2u) * d.channels + l.e;
    let dal = Half(da.s0 * a.s0, da.s1 * a.s1); // A = -exp(A_log): dA_log = dA·A
    var per_state = array(dal.s0.x, dal.s0.y, dal.s0.z, dal.s0.w, dal.s1.x, dal.s1.y, dal.s1.z, dal.s1.w);
    for (var j = 0u; j < 8u; j++) {
      if (8u * l.g + j < NS) {
        work[p + (8u * l.g + j) * d.channels] = per_state[j];
      }
    }
    if (l.g == 0u) {
      work[p + NS * d.channels] = dd_sum;
      work[p + (NS + 1u) * d.channels] = dbias_sum;
    }
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

// The decode step: h (B, ED, N) updated in place. A workgroup takes STEP_CHANNELS channels of one
// sequence, STEP_LANES invocations each (a few channels' worth of invocations could not fill the
// GPU), its lanes splitting dt_proj's row and the states between them: dt_proj is fused in, δ =
// δr · dt_proj[e], δr (B, R) bound as `delta` with rows bc_stride apart, dt_proj (ED, R) at
// binding 12. ints 0..4 as scan_forward's (L = 1), 5: R. Grid: (ceil(ED / STEP_CHANNELS), B).
const STEP_LANES: u32 = 16u;

var<workgroup> step_parts: array<f32, STEP_LANES * STEP_CHANNELS>;

/** Σ of `part` over the invocations of this invocation's channel, in each of them (uniform control flow). */
fn channel_sum(part: f32, lid: u32) -> f32 {
  step_parts[lid] = part;
  workgroupBarrier();
  let first = lid - lid % STEP_LANES;
  var total = 0.0;
  for (var i = 0u; i < STEP_LANES; i++) {
    total += step_parts[first + i];
  }
  workgroupBarrier();
  return total;
}

@compute @workgroup_size(STEP_LANES * STEP_CHANNELS)
fn scan_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let d = scan_dims();
  let rank = arg_u(5u);
  let b = wid.y;
  let lane = lid % STEP_LANES;
  let channel = wid.x * STEP_CHANNELS + lid / STEP_LANES;
  let live = channel < d.channels;
  let e = min(channel, d.channels - 1u); // lanes past ED compute channel ED-1 and store nothing
  let ox = view_offset(3u) + b * d.bc_stride;
  let ow = view_offset(12u) + e * rank;
  var raw = 0.0; // this lane's part of δ before bias and softplus
  for (var k = lane; k < rank; k += STEP_LANES) {
    raw += delta[ox + k] * dt_proj[ow + k];
  }
  let dt = softplus(channel_sum(raw, lid) + dt_bias[view_offset(4u) + e]);
  let ut = u[view_offset(2u) + b * d.channels + e];
  let ob = view_offset(6u) + b * d.bc_stride;
  let oc = view_offset(7u) + b * d.bc_stride;
  let oh = view_offset(10u) + (b * d.channels + e) * NS;
  var s = 0.0;
  for (var n = lane; n < NS; n += STEP_LANES) {
    let h = exp(dt * minus_exp_a_log(e, n)) * h_state[oh + n] + dt * bmat[ob + n] * ut;
    if (live) {
      h_state[oh + n] = h;
    }
    s += h * cmat[oc + n];
  }
  let total = channel_sum(s, lid);
  if (live && lane == 0u) {
    let zv = z[view_offset(9u) + b * d.z_stride + e];
    y[view_offset(1u) + b * d.channels + e] = (total + dskip[view_offset(8u) + e] * ut) * gate(zv);
  }
}
