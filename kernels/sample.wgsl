// Sampling of the next byte on the device, one workgroup per row of logits (B, 256), one
// invocation per byte: lib/sample.ts's sampleWithUniform, step by step.
//   1. rank of byte j = #{i : logit_i > logit_j, or equal with i < j} (0: most likely);
//   2. weights in rank order, w_r = exp((logit_r - logit_0) / temperature) for r < kept;
//   3. inclusive prefix sums P_r (Hillis-Steele over workgroup memory);
//   4. count = min(kept, 1 + #{r < kept : P_r < top_p · P_(kept-1)});
//   5. pick = min(count - 1, #{r < count : P_r <= u · P_(count-1)}): the first rank whose
//      prefix sum exceeds the threshold. Temperature 0 picks rank 0.
// The picked byte goes to tokens[b] (the next step's input) and, as a float, to history[b].

@group(0) @binding(1) var<storage, read_write> tokens: array<i32>;
@group(0) @binding(2) var<storage, read_write> history: array<f32>;
@group(0) @binding(3) var<storage, read> logits: array<f32>;
@group(0) @binding(4) var<storage, read> draws: array<f32>;

var<workgroup> row: array<f32, 256>; // logits of the row, by byte
var<workgroup> prefix: array<f32, 256>; // weights, then their prefix sums, by rank
var<workgroup> counted: array<atomic<u32>, 2>; // [count - 1, pick]

// ints: rows, kept (top-k, 256 for all); floats: temperature, top_p.
@compute @workgroup_size(256)
fn sample_tokens(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
                 @builtin(local_invocation_index) j: u32) {
  let rows = arg_u(0u);
  let kept = arg_u(1u);
  let temperature = arg_f(2u);
  let top_p = arg_f(3u);
  let b = group_index(wid, ng);
  if (b >= rows) {
    return;
  }
  let v = logits[view_offset(3u) + b * 256u + j];
  row[j] = v;
  workgroupBarrier();
  var rank = 0u;
  for (var i = 0u; i < 256u; i++) {
    let other = row[i];
    if (other > v || (other == v && i < j)) {
      rank++;
    }
  }
  if (temperature == 0.0) {
    if (rank == 0u) {
      write_pick(b, j);
    }
    return;
  }
  let top = workgroup_max(v, j); // the logit of rank 0
  prefix[rank] = select(0.0, exp((v - top) / temperature), rank < kept);
  workgroupBarrier();
  for (var offset = 1u; offset < 256u; offset <<= 1u) {
    var sum = prefix[j];
    if (j >= offset) {
      sum += prefix[j - offset];
    }
    workgroupBarrier();
    prefix[j] = sum;
    workgroupBarrier();
  }
  if (j + 1u < kept && prefix[j] < top_p * prefix[kept - 1u]) {
    atomicAdd(&counted[0], 1u);
  }
  workgroupBarrier();
  let count = atomicLoad(&counted[0]) + 1u;
  let threshold = draws[view_offset(4u) + b] * prefix[count - 1u];
  if (j + 1u < count && prefix[j] <= threshold) {
    atomicAdd(&counted[1], 1u);
  }
  workgroupBarrier();
  let pick = atomicLoad(&counted[1]);
  if (rank == pick) {
    write_pick(b, j);
  }
}

fn write_pick(b: u32, byte: u32) {
  tokens[view_offset(1u) + b] = i32(byte);
  history[view_offset(2u) + b] = f32(byte);
}
