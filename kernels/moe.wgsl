// The mixture-of-experts ops (lib/backend.ts, MoeOps; the reference is lib/backends/cpu_moe.ts),
// forward and backward side by side: routing (softmax, top-k with the lower expert on ties, gates,
// dispatch in position order within each expert's capacity, the Switch aux loss), gather / scatter
// of dispatched rows and their backwards, SwiGLU.
//
// Glossary: T routed positions, E experts, k choices per position, C rows per expert, D row width.
// Every float sum runs in a fixed order (no float atomics), so results do not change between runs.
// `work` is scratch of the host's: per-expert values between the dispatches of one op.
//
// ints of the routing and gather / scatter kernels: T, E, k, C, D; route_backward_rows adds the
// float prob_scale.

@group(0) @binding(1) var<storage, read_write> gates: array<f32>; // (T, k)
@group(0) @binding(2) var<storage, read_write> choice: array<i32>; // (T, k)
@group(0) @binding(3) var<storage, read_write> slot: array<i32>; // (T, k)
@group(0) @binding(4) var<storage, read_write> slot_rows: array<i32>; // (E·C)
@group(0) @binding(5) var<storage, read_write> probs: array<f32>; // (T, E)
@group(0) @binding(6) var<storage, read_write> stats: array<f32>; // (2) [aux, dropped]
@group(0) @binding(7) var<storage, read> logits: array<f32>; // (T, E)
@group(0) @binding(8) var<storage, read_write> work: array<u32>; // (2E)
@group(0) @binding(9) var<storage, read_write> dlogits: array<f32>; // (T, E)
@group(0) @binding(10) var<storage, read_write> dgates: array<f32>; // (T, k)
// The row-wise output and input of each gather / scatter / SwiGLU kernel (named at the kernel).
@group(0) @binding(11) var<storage, read_write> dst: array<f32>;
@group(0) @binding(12) var<storage, read> src: array<f32>;
@group(0) @binding(13) var<storage, read> grad: array<f32>; // dout (T, D) or dact
@group(0) @binding(14) var<storage, read> h1: array<f32>;
@group(0) @binding(15) var<storage, read> h3: array<f32>;
@group(0) @binding(16) var<storage, read_write> dh3: array<f32>;

var<workgroup> scan_flags: array<u32, 256>;
var<workgroup> choice_count: atomic<u32>;
var<workgroup> found: array<i32, 256>;

// ---- route ----

// One invocation per position t: probs (E) = softmax over every expert; choice (k) = top k, best
// first (strict >: the lower expert wins ties); gates (k) = softmax over the chosen logits.
@compute @workgroup_size(256)
fn route_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
  let T = arg_u(0u);
  let E = arg_u(1u);
  let k = arg_u(2u);
  let t = group_index(wid, ng) * 256u + lid;
  if (t >= T) {
    return;
  }
  let l = view_offset(7u) + t * E;
  let p = view_offset(5u) + t * E;
  let ch = view_offset(2u) + t * k;
  let g = view_offset(1u) + t * k;
  var mx = logits[l];
  for (var e = 1u; e < E; e++) {
    mx = max(mx, logits[l + e]);
  }
  var sum = 0.0;
  for (var e = 0u; e < E; e++) {
    sum += exp(logits[l + e] - mx);
  }
  for (var e = 0u; e < E; e++) {
    probs[p + e] = exp(logits[l + e] - mx) / sum;
  }
  for (var j = 0u; j < k; j++) {
    var best = -1;
    for (var e = 0u; e < E; e++) {
      var taken = false;
      for (var i = 0u; i < j; i++) {
        taken = taken || choice[ch + i] == i32(e);
      }
      if (!taken && (best < 0 || logits[l + e] > logits[l + u32(best)])) {
        best = i32(e);
      }
    }
    choice[ch + j] = best;
  }
  let top = logits[l + u32(choice[ch])];
  var gate_sum = 0.0;
  for (var j = 0u; j < k; j++) {
    gate_sum += exp(logits[l + u32(choice[ch + j])] - top);
  }
  for (var j = 0u; j < k; j++) {
    gates[g + j] = exp(logits[l + u32(choice[ch + j])] - top) / gate_sum;
  }
}

// One workgroup per expert e: its choices, in order i = t·k + j, take rows e·C, e·C + 1, … until C
// are taken (block prefix counts over chunks of 256 choices); later ones get slot -1, unused rows
// slot_rows -1. work[e] = choices of e (before dropping), work[E + e] = mean of probs[:, e] (bits).
@compute @workgroup_size(256)
fn route_dispatch(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let T = arg_u(0u);
  let E = arg_u(1u);
  let k = arg_u(2u);
  let C = arg_u(3u);
  let e = wid.x;
  var prob = 0.0;
  for (var t = lid; t < T; t += 256u) {
    prob += probs[view_offset(5u) + t * E + e];
  }
  let mean_prob = workgroup_sum(prob, lid) / f32(T);
  let n = T * k;
  var taken = 0u;
  for (var base = 0u; base < n; base += 256u) {
    let i = base + lid;
    let mine = i < n && choice[view_offset(2u) + i] == i32(e);
    // inclusive prefix count of `mine` over the chunk (Hillis-Steele)
    scan_flags[lid] = select(0u, 1u, mine);
    workgroupBarrier();
    for (var offset = 1u; offset < 256u; offset <<= 1u) {
      var count = scan_flags[lid];
      if (lid >= offset) {
        count += scan_flags[lid - offset];
      }
      workgroupBarrier();
      scan_flags[lid] = count;
      workgroupBarrier();
    }
    let rank = taken + scan_flags[lid] - 1u;
    if (mine) {
      if (rank < C) {
        slot[view_offset(3u) + i] = i32(e * C + rank);
        slot_rows[view_offset(4u) + e * C + rank] = i32(i / k);
      } else {
        slot[view_offset(3u) + i] = -1;
      }
    }
    taken += scan_flags[255];
    workgroupBarrier(); // scan_flags is rewritten by the next chunk
  }
  for (var r = taken + lid; r < C; r += 256u) {
    slot_rows[view_offset(4u) + e * C + r] = -1;
  }
  if (lid == 0u) {
    work[view_offset(8u) + e] = taken;
    work[view_offset(8u) + E + e] = bitcast<u32>(mean_prob);
  }
}

// One invocation: stats = [aux, dropped], aux = E · Σ_e (picked_e / (T·k)) · P_e (e in order),
// dropped = Σ_e max(0, picked_e - C).
@compute @workgroup_size(1)
fn route_stats() {
  let T = arg_u(0u);
  let E = arg_u(1u);
  let k = arg_u(2u);
  let C = arg_u(3u);
  var aux = 0.0;
  var dropped = 0u;
  for (var e = 0u; e < E; e++) {
    let picked = work[view_offset(8u) + e];
    aux += (f32(picked) / f32(T * k)) * bitcast<f32>(work[view_offset(8u) + E + e]);
    dropped += max(picked, C) - C;
  }
  stats[view_offset(6u)] = f32(E) * aux;
  stats[view_offset(6u) + 1u] = f32(dropped);
}

// ---- route backward ----

// One workgroup per expert e: work[e] = prob_scale · (choices of e), which is ∂(auxScale · aux)/∂probs[t, e]
// for every t. Stored once, so route_backward_rows reads one rounded product (a one-expert router
// then gets exactly the zero gradient it has).
@compute @workgroup_size(256)
fn route_backward_counts(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let T = arg_u(0u);
  let k = arg_u(2u);
  let prob_scale = arg_f(5u);
  let e = wid.x;
  var count = 0u;
  for (var i = lid; i < T * k; i += 256u) {
    count += select(0u, 1u, choice[view_offset(2u) + i] == i32(e));
  }
  atomicAdd(&choice_count, count); // integers: the order does not matter
  workgroupBarrier();
  if (lid == 0u) {
    work[view_offset(8u) + e] = bitcast<u32>(prob_scale * f32(atomicLoad(&choice_count)));
  }
}

// One invocation per position t: dlogits (E) = the softmax backward of the aux term (through probs)
// plus the softmax backward of the gates over the chosen logits (from dgates).
@compute @workgroup_size(256)
fn route_backward_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
  let T = arg_u(0u);
  let E = arg_u(1u);
  let k = arg_u(2u);
  let t = group_index(wid, ng) * 256u + lid;
  if (t >= T) {
    return;
  }
  let p = view_offset(5u) + t * E;
  let dl = view_offset(9u) + t * E;
  let w = view_offset(8u);
  var pa = 0.0;
  for (var e = 0u; e < E; e++) {
    pa += probs[p + e] * bitcast<f32>(work[w + e]);
  }
  for (var e = 0u; e < E; e++) {
    dlogits[dl + e] = probs[p + e] * (bitcast<f32>(work[w + e]) - pa);
  }
  let g = view_offset(1u) + t * k;
  let dg = view_offset(10u) + t * k;
  var gg = 0.0;
  for (var j = 0u; j < k; j++) {
    gg += gates[g + j] * dgates[dg + j];
  }
  for (var j = 0u; j < k; j++) {
    let e = u32(choice[view_offset(2u) + t * k + j]);
    dlogits[dl + e] += gates[g + j] * (dgates[dg + j] - gg);
  }
}

// ---- gather ----

// dst = xe (E·C, D), src = x (T, D): xe = x[slot_rows] (zero rows for -1). One invocation per value.
@compute @workgroup_size(256)
fn gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
  let E = arg_u(1u);
  let C = arg_u(3u);
  let D = arg_u(4u);
  let i = group_index(wid, ng) * 256u + lid;
  if (i >= E * C * D) {
    return;
  }
  let t = slot_rows[view_offset(4u) + i / D];
  var value = 0.0;
  if (t >= 0) {
    value = src[view_offset(12u) + u32(t) * D + i % D];
  }
  dst[view_offset(11u) + i] = value;
}

// The dispatched row of expert e that position t went to, or -1: route fills each expert's rows
// with increasing positions, then -1s, so a binary search finds it.
fn find_row(e: u32, C: u32, t: i32) -> i32 {
  let rows = view_offset(4u) + e * C;
  var lo = 0u;
  var hi = C; // the first r with rows[r] ≥ t, counting -1 as past every position
  while (lo < hi) {
    let mid = (lo + hi) / 2u;
    let v = slot_rows[rows + mid];
    if (v >= 0 && v < t) {
      lo = mid + 1u;
    } else {
      hi = mid;
    }
  }
  if (lo < C && slot_rows[rows + lo] == t) {
    return i32(e * C + lo);
  }
  return -1;
}

// dst = dx (T, D) +=, src = dxe (E·C, D): one workgroup per position t adds its rows in the order of
// the rows (as the reference does), 256 experts' rows looked up at a time.
@compute @workgroup_size(256)
fn gather_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
  let T = arg_u(0u);
  let E = arg_u(1u);
  let C = arg_u(3u);
  let D = arg_u(4u);
  let t = group_index(wid, ng);
  if (t >= T) {
    return;
  }
  for (var first = 0u; first < E; first += 256u) {
    let e = first + lid;
    found[lid] = -1;
    if (e < E) {
      found[lid] = find_row(e, C, i32(t));
    }
    workgroupBarrier();
    let experts = min(256u, E - first);
    for (var d = lid; d < D; d += 256u) {
      var acc = dst[view_offset(11u) + t * D + d];
      for (var j = 0u; j < experts; j++) {
        let s = found[j];
        if (s >= 0) {
          acc += src[view_offset(12u) + u32(s) * D + d];
        }
      }
      dst[view_offset(11u) + t * D + d] = acc;
    }
    workgroupBarrier(); // found is rewritten by the next experts
  }
}

// ---- scatter ----

// dst = out (T, D) +=, src = ye (E·C, D): out += Σ_j gates[t, j] · ye[slot[t, j]], j in order,
// dropped choices skipped. One invocation per value.
@compute @workgroup_size(256)
fn scatter(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let T = arg_u(0u);
  let k = arg_u(2u);
  let D = arg_u(4u);
  let i = group_index(wid, ng) * 256u + lid;
  if (i >= T * D) {
    return;
  }
  let t = i / D;
  var acc = dst[view_offset(11u) + i];
  for (var j = 0u; j < k; j++) {
    let s = slot[view_offset(3u) + t * k + j];
    if (s >= 0) {
      acc += gates[view_offset(1u) + t * k + j] * src[view_offset(12u) + u32(s) * D + i % D];
    }
  }
  dst[view_offset(11u) + i] = acc;
}

// dst = dye (E·C, D), already zero; src = ye; grad = dout (T, D). One workgroup per choice c = (t, j):
// dye[slot] = gate · dout[t] and dgates[c] = dout[t] · ye[slot] (0 when dropped).
@compute @workgroup_size(256)
fn scatter_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
  let T = arg_u(0u);
  let k = arg_u(2u);
  let D = arg_u(4u);
  let c = group_index(wid, ng);
  if (c >= T * k) {
    return;
  }
  let s = slot[view_offset(3u) + c];
  let o = view_offset(13u) + (c / k) * D;
  var dot = 0.0;
  if (s >= 0) {
    let g = gates[view_offset(1u) + c];
    let row = u32(s) * D;
    for (var d = lid; d < D; d += 256u) {
      dst[view_offset(11u) + row + d] = g * grad[o + d];
      dot += grad[o + d] * src[view_offset(12u) + row + d];
    }
  }
  dot = workgroup_sum(dot, lid);
  if (lid == 0u) {
    dgates[view_offset(10u) + c] = dot;
  }
}

// ---- SwiGLU ----

// dst = act: act = silu(h1) ⊙ h3. ints: n. One invocation per value.
@compute @workgroup_size(256)
fn swiglu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
  let i = group_index(wid, ng) * 256u + lid;
  if (i >= arg_u(0u)) {
    return;
  }
  let a = h1[view_offset(14u) + i];
  dst[view_offset(11u) + i] = a * sigmoid(a) * h3[view_offset(15u) + i];
}

// dst = dh1, grad = dact: dh1 = dact · h3 · silu'(h1), dh3 = dact · silu(h1). ints: n.
@compute @workgroup_size(256)
fn swiglu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
  let i = group_index(wid, ng) * 256u + lid;
  if (i >= arg_u(0u)) {
    return;
  }
  let a = h1[view_offset(14u) + i];
  let sg = sigmoid(a);
  let da = grad[view_offset(13u) + i];
  dh3[view_offset(16u) + i] = da * a * sg;
  dst[view_offset(11u) + i] = da * h3[view_offset(15u) + i] * dsilu_of(a, sg);
}
