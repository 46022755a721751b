// The fused selective scan (see Backend.selectiveScan): per batch b and channel e,
//   δ[t] = softplus(delta[t] + dt_bias[e]),  A[n] = -exp(A_log[e, n]),
//   h[t, n] = exp(δ[t]·A[n])·h[t-1, n] + δ[t]·B[t, n]·u[t],   h[-1] = 0,
//   y[t] = (Σ_n h[t, n]·C[t, n] + D[e]·u[t]) · silu(z[t]).
// Lanes own channels of one sequence and walk the whole of L, T steps at a time, a workgroup CH
// channels (d_state ≤ 16; padding states have A = B = C = 0 and stay 0). In the forward's passes
// a pair of lanes holds a channel, lane g·CH + c states 8g … 8g + 7 of channel c in two vec4
// registers, so no array is ever indexed at run time; the backward gives a channel four lanes
// (see scan_backward). A chunk's inputs (δ, u, z, dy of each channel; the rows of B and C, which
// all channels share) are staged in workgroup memory; every lane loads its share of the next
// chunk before the current one is scanned, so those loads are in flight while it computes. Steps
// past the end of L get δ = u = dy = 0, which leaves states and carries as they are: the inner
// loops need no bounds, only the writes are masked.
// Forward: scan_forward, one pass, one exp per state and step; y written after each chunk, the
//          pair's halves of h·C added through workgroup memory.
// Backward: 1. scan_chunk_starts, the forward walk again, storing the state entering every chunk
//              into hs (B, Q, ED, 16) (Q = ceil(L / T)); (B, L, ED, N) never exists.
//           2. scan_backward walks the chunks from the last to the first: a chunk's states are
//              recomputed from hs into workgroup memory, then walked backwards with the state
//              gradient carried across chunks; du, dδ, dz are written and dB, dC summed over the
//              workgroup's channels into bc partials (B·L, ceil(ED / CH), 2N) after each chunk.
//              dA_log, dD and ddt_bias are summed over L in registers into param partials
//              (B, N + 2, ED).
//           3. scan_reduce_bc sums the bc partials into dB, dC (overwritten); scan_reduce_params
//              adds Σ over sequences of the param partials into dA_log, dD, ddt_bias.
// hs and both partials live in one scratch buffer `work`: ints 5..8 are Q and the offsets of hs,
// the bc partials and the param partials.
//
// Defines: NS (N ≤ 16), T (chunk length: 16 forward; 8 for the backward's passes, which share
// one), CH (channels per workgroup: the forward's 2·CH ≥ 4T lanes, the backward's 4·CH ≥ 8T, each
// load one vec4 of a chunk's rows of B or C), STEP_CHANNELS (channels per workgroup of the decode
// step).

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

// A chunk's tiles: [step][channel] per channel (the forward's), [step][4 vec4] for the rows of B
// and C (both walks').
var<workgroup> tile_delta: array<f32, T * CH>; // raw δ, before softplus
var<workgroup> tile_u: array<f32, T * CH>;
var<workgroup> tile_z: array<f32, T * CH>;
var<workgroup> tile_b: array<vec4<f32>, T * 4u>;
var<workgroup> tile_c: array<vec4<f32>, T * 4u>;
var<workgroup> part_c: array<f32, T * LANES>; // forward: [step][lane], each lane's half of h·C

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

/** Where lane g·CH + ch sits: channel ch of the workgroup (e in the sequence), the channel's g-th
 *  lane (states 8g … in the forward's passes, 4g … in scan_backward). */
struct Lane {
  ch: u32,
  g: u32,
  e: u32, // clamped to ED - 1: lanes past ED compute on a copy (scan_backward's load zeros) and write nothing
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

/** A[e, n0 …  n0 + 3] = -exp(A_log), zero for padding states. */
fn minus_exp_a4(e: u32, n0: u32) -> vec4<f32> {
  var a = vec4(0.0);
  for (var j = 0u; j < 4u; j++) {
    if (n0 + j < NS) {
      a[j] = minus_exp_a_log(e, n0 + j);
    }
  }
  return a;
}

/** A of lane g's half of the states, 8g …. */
fn load_a(l: Lane) -> Half {
  return Half(minus_exp_a4(l.e, 8u * l.g), minus_exp_a4(l.e, 8u * l.g + 4u));
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

/** Indices in B (in C) of states 4k … 4k + 3 of step t of sequence b (clamped into range) and
 *  which of them to keep: 0 past the end of L and for padding states. */
fn row_index(d: ScanDims, b: u32, t: u32, k: u32) -> vec4<u32> {
  let n = vec4(4u * k) + vec4(0u, 1u, 2u, 3u);
  return min(b * d.len + t, b * d.len + d.len - 1u) * d.bc_stride + min(n, vec4(NS - 1u));
}

fn row_keep(d: ScanDims, t: u32, k: u32) -> vec4<f32> {
  let n = vec4(4u * k) + vec4(0u, 1u, 2u, 3u);
  return vec4<f32>(n < vec4(NS)) * select(0.0, 1.0, t < d.len);
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
    let i = row_index(d, b, q * T + lid / 4u, lid % 4u);
    let keep = row_keep(d, q * T + lid / 4u, lid % 4u);
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

/** Index in `work` of hs[b, q, e, n], state n of channel e entering chunk q. */
fn hs_index(d: ScanDims, b: u32, q: u32, e: u32, n: u32) -> u32 {
  return view_offset(11u) + arg_u(6u) + ((b * arg_u(5u) + q) * d.channels + e) * 16u + n;
}

fn store_vec4(i: u32, v: vec4<f32>) {
  work[i] = v.x;
  work[i + 1u] = v.y;
  work[i + 2u] = v.z;
  work[i + 3u] = v.w;
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
      store_vec4(hs_index(d, b, q, l.e, 8u * l.g), h.s0);
      store_vec4(hs_index(d, b, q, l.e, 8u * l.g + 4u), h.s1);
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

// ---- the backward's walk: four lanes per channel ----
// A workgroup holds CH channels of one sequence, four lanes each: lane g·CH + c holds states
// 4g … 4g + 3 of channel c in one vec4 (the forward's passes give a channel two lanes of eight
// states; the backward does about three times their work per state and step, so it takes more
// lanes). A chunk, from the last to the first:
//   1. staging: each lane loads the (step, channel) elements g + 4k (k < T / 4) of its own
//      channel, and lanes below 8T one vec4 of the chunk's rows of B or C, one chunk ahead;
//   2. the walk, with no barrier: each lane recomputes its states from hs into `states`, then
//      walks them backwards with the state gradient `carry`, leaving dh of every step in `states`
//      and its part of Σ ∂/∂(δA)·A in `dda`;
//   3. after one barrier, the combine: per (step, channel), the four lanes' parts give du, dδ,
//      dz (written coalesced); per (step, group of four states), Σ over the workgroup's channels
//      gives its dB and dC partials.

const QLANES: u32 = 4u * CH;
/** (step, channel) elements of a chunk each lane loads and combines. */
const PER_LANE: u32 = T / 4u;
/** A row of `states`: four groups of CH channels, one per state group, each padded by a vec4. */
const ROW: u32 = 4u * (CH + 1u);
/** Where dh starts in `states`: after the T + 1 rows of states and 4 more slots, so that the dB
 *  and dC sums of one step, read side by side, fall in different banks. */
const DH_BASE: u32 = (T + 1u) * ROW + 4u;

// [row][slot], slot = g·(CH + 1) + c. Rows 0 … T: the state entering step t (row t + 1: after
// step t); from DH_BASE, row t: dh of step t.
var<workgroup> states: array<vec4<f32>, DH_BASE + T * ROW>;
var<workgroup> dda: array<f32, T * QLANES>; // [step][lane]: Σ over the lane's states of ∂/∂(δA)·A
var<workgroup> tile_dt: array<f32, T * CH>; // [step][channel]: δ = softplus(δ + bias), 0 past L and ED
// [step][channel]: δ·u, the weight of dh in dB; from T·CH on, dpre = dy·silu(z), the gradient
// reaching Σ_n h·C + D·u and the weight of h in dC. At the end it holds each lane's two sums of
// ddt_bias and dD (2·T·CH ≥ 2·4·CH words for T ≥ 4).
var<workgroup> weights: array<f32, 2u * T * CH>;

/** A lane's loads of a chunk: raw δ, u, z, dy of its elements (zero past L and ED) and, on lanes
 *  below 8T, one vec4 of the rows of B (lanes below 4T) or C. */
struct BackwardLoads {
  delta: array<f32, PER_LANE>,
  u: array<f32, PER_LANE>,
  z: array<f32, PER_LANE>,
  dy: array<f32, PER_LANE>,
  rows: vec4<f32>,
}

fn load_backward(d: ScanDims, b: u32, l: Lane, q: u32, lid: u32) -> BackwardLoads {
  var x: BackwardLoads;
  let last = b * d.len + d.len - 1u;
  for (var k = 0u; k < PER_LANE; k++) {
    let t = q * T + l.g + 4u * k;
    let keep = select(0.0, 1.0, l.valid && t < d.len);
    let r = min(b * d.len + t, last);
    let i = r * d.channels + l.e;
    x.delta[k] = keep * delta[view_offset(3u) + i];
    x.u[k] = keep * u[view_offset(2u) + i];
    x.z[k] = keep * z[view_offset(9u) + r * d.z_stride + l.e];
    x.dy[k] = keep * dy[view_offset(12u) + i];
  }
  let j = lid % (4u * T);
  let i = row_index(d, b, q * T + j / 4u, j % 4u);
  let keep = row_keep(d, q * T + j / 4u, j % 4u);
  if (lid < 4u * T) {
    let o = view_offset(6u);
    x.rows = keep * vec4(bmat[o + i.x], bmat[o + i.y], bmat[o + i.z], bmat[o + i.w]);
  } else if (lid < 8u * T) {
    let o = view_offset(7u);
    x.rows = keep * vec4(cmat[o + i.x], cmat[o + i.y], cmat[o + i.z], cmat[o + i.w]);
  }
  return x;
}

/** A chunk's loads into the tiles (between barriers). */
fn stage_backward(d: ScanDims, x: BackwardLoads, l: Lane, q: u32, lid: u32, bias: f32) {
  for (var k = 0u; k < PER_LANE; k++) {
    let t = l.g + 4u * k;
    let i = t * CH + l.ch;
    let dt = select(0.0, softplus(x.delta[k] + bias), l.valid && q * T + t < d.len);
    tile_dt[i] = dt;
    weights[i] = dt * x.u[k];
    weights[T * CH + i] = x.dy[k] * gate(x.z[k]);
  }
  if (lid < 4u * T) {
    tile_b[lid] = x.rows;
  } else if (lid < 8u * T) {
    tile_c[lid - 4u * T] = x.rows;
  }
}

/** This lane's states entering chunk q, from hs. */
fn load_start(d: ScanDims, b: u32, q: u32, l: Lane) -> vec4<f32> {
  let i = hs_index(d, b, q, l.e, 4u * l.g);
  return vec4(work[i], work[i + 1u], work[i + 2u], work[i + 3u]);
}

/** Per (step, channel) of the chunk this lane loaded: the four lanes' parts summed into du, dδ,
 *  dz. Returns this lane's (Σ ddt_bias, Σ dD) over those elements. */
fn combine_channels(d: ScanDims, b: u32, l: Lane, q: u32, x: BackwardLoads, bias: f32, dv: f32) -> vec2<f32> {
  var sums = vec2(0.0);
  for (var k = 0u; k < PER_LANE; k++) {
    let t = l.g + 4u * k;
    if (l.valid && q * T + t < d.len) {
      var s_b = 0.0; // Σ_n dh·B
      var s_a = 0.0; // Σ_n ∂/∂(δA)·A
      var s_c = 0.0; // Σ_n h·C
      for (var g = 0u; g < 4u; g++) {
        let slot = g * (CH + 1u) + l.ch;
        s_b += dot(states[DH_BASE + t * ROW + slot], tile_b[4u * t + g]);
        s_c += dot(states[(t + 1u) * ROW + slot], tile_c[4u * t + g]);
        s_a += dda[t * QLANES + g * CH + l.ch];
      }
      let i = t * CH + l.ch;
      let dpre = weights[T * CH + i];
      let ut = x.u[k];
      let zv = x.z[k];
      let r = b * d.len + q * T + t;
      let g = (s_b * ut + s_a) * sigmoid(x.delta[k] + bias); // softplus' = sigmoid
      du[view_offset(13u) + r * d.channels + l.e] = dpre * dv + s_b * tile_dt[i];
      ddelta[view_offset(14u) + r * d.channels + l.e] = g;
      dz[view_offset(15u) + r * d.z_stride + l.e] = x.dy[k] * (s_c + dv * ut) * dsilu_of(zv, sigmoid(zv));
      sums += vec2(g, dpre * ut);
    }
  }
  return sums;
}

/** On lanes below 8T: dB (kind 0) or dC (kind 1) of states 4g … 4g + 3 at one step of the chunk,
 *  summed over the workgroup's channels, into the bc partials. */
fn combine_states(d: ScanDims, b: u32, wid: vec3<u32>, q: u32, lid: u32) {
  let g = lid % 4u;
  let kind = (lid / 4u) % 2u;
  let t = lid / 8u;
  if (lid >= 8u * T || q * T + t >= d.len) {
    return;
  }
  let base = select(DH_BASE + t * ROW, (t + 1u) * ROW, kind == 1u) + g * (CH + 1u);
  let w = kind * T * CH + t * CH;
  var acc0 = vec4(0.0); // two running sums, for independent adds
  var acc1 = vec4(0.0);
  for (var c = 0u; c < CH; c += 2u) {
    acc0 += weights[w + c] * states[base + c];
    acc1 += weights[w + c + 1u] * states[base + c + 1u];
  }
  let acc = acc0 + acc1;
  let blocks = (d.channels + CH - 1u) / CH;
  let o = view_offset(11u) + arg_u(7u) + ((b * d.len + q * T + t) * blocks + wid.x) * 2u * NS + kind * NS + 4u * g;
  for (var j = 0u; j < 4u; j++) {
    if (4u * g + j < NS) {
      work[o + j] = acc[j];
    }
  }
}

// Grid: (ceil(ED / CH), B); workgroups of 4·CH lanes. `carry` is exp(δ[t+1]·A)·dh[t+1], the
// state gradient arriving from the right.
@compute @workgroup_size(QLANES)
fn scan_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let d = scan_dims();
  let b = wid.y;
  let l = lane_of(d, wid, lid);
  let a = minus_exp_a4(l.e, 4u * l.g);
  let a2 = a * LOG2E;
  let bias = dt_bias[view_offset(4u) + l.e];
  let dv = dskip[view_offset(8u) + l.e];
  let slot = l.g * (CH + 1u) + l.ch;
  var carry = vec4(0.0);
  var da = vec4(0.0); // Σ over L of ∂/∂A
  var sums = vec2(0.0); // Σ of ddt_bias and dD over this lane's elements
  let chunks = arg_u(5u);
  var next = load_backward(d, b, l, chunks - 1u, lid);
  var next_h = load_start(d, b, chunks - 1u, l);
  for (var qi = chunks; qi > 0u; qi--) {
    let q = qi - 1u;
    let cur = next;
    workgroupBarrier(); // the previous chunk's tiles are read no more
    stage_backward(d, cur, l, q, lid, bias);
    workgroupBarrier();
    var h = next_h;
    if (q > 0u) {
      next = load_backward(d, b, l, q - 1u, lid); // in flight while this chunk is walked
      next_h = load_start(d, b, q - 1u, l);
    }
    states[slot] = h;
    for (var t = 0u; t < T; t++) {
      let i = t * CH + l.ch;
      h = exp2(tile_dt[i] * a2) * h + weights[i] * tile_b[4u * t + l.g];
      states[(t + 1u) * ROW + slot] = h;
    }
    for (var ti = 0u; ti < T; ti++) {
      let t = T - 1u - ti;
      let i = t * CH + l.ch;
      let dt = tile_dt[i];
      let an = exp2(dt * a2);
      let dh = weights[T * CH + i] * tile_c[4u * t + l.g] + carry;
      let dan = dh * states[t * ROW + slot] * an; // ∂/∂(δA) of an·h[t-1]
      da += dan * dt;
      carry = an * dh;
      states[DH_BASE + t * ROW + slot] = dh;
      dda[t * QLANES + lid] = dot(dan, a);
    }
    workgroupBarrier();
    sums += combine_channels(d, b, l, q, cur, bias, dv);
    combine_states(d, b, wid, q, lid);
  }
  let p = view_offset(11u) + arg_u(8u) + b * (NS + 2u) * d.channels + l.e;
  if (l.valid) {
    let dal = da * a; // A = -exp(A_log): dA_log = dA·A
    for (var j = 0u; j < 4u; j++) {
      if (4u * l.g + j < NS) {
        work[p + (4u * l.g + j) * d.channels] = dal[j];
      }
    }
  }
  workgroupBarrier(); // the last combine's reads of `weights` are done
  weights[lid] = sums.x;
  weights[QLANES + lid] = sums.y;
  workgroupBarrier();
  if (lid < CH && l.valid) {
    var total = vec2(0.0);
    for (var g = 0u; g < 4u; g++) {
      total += vec2(weights[g * CH + lid], weights[QLANES + g * CH + lid]);
    }
    work[p + NS * d.channels] = total.y;
    work[p + (NS + 1u) * d.channels] = total.x;
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
