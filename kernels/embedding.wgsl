// embedding: out (rows, dim) = table[tokens[r]] with table (256, dim).
// embedding_backward: dtable[v] += Σ_{r: tokens[r] = v} dout[r], one invocation per (v, column)
// walking only the rows of token v — `by_token` (counting-sorted on the host when the tokens are
// written) holds 257 starts, then the row indices grouped by token. No float atomics.

@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read> tokens: array<i32>;
@group(0) @binding(4) var<storage, read_write> dtable: array<f32>;
@group(0) @binding(5) var<storage, read> dout: array<f32>;
@group(0) @binding(6) var<storage, read> by_token: array<i32>;

// ints: rows, dim. One invocation per output element.
@compute @workgroup_size(256)
fn embedding(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
  let rows = arg_u(0u);
  let dim = arg_u(1u);
  let i = group_index(wid, ng) * 256u + lid;
  if (i >= rows * dim) {
    return;
  }
  let r = i / dim;
  let token = u32(tokens[view_offset(3u) + r]);
  out[view_offset(1u) + i] = table[view_offset(2u) + token * dim + i % dim];
}

// ints: dim. Grid: ceil(256·dim / 256) workgroups, one invocation per (v, j).
@compute @workgroup_size(256)
fn embedding_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
  let dim = arg_u(0u);
  let i = group_index(wid, ng) * 256u + lid;
  if (i >= 256u * dim) {
    return;
  }
  let v = i / dim;
  let j = i % dim;
  let o = view_offset(6u);
  let start = u32(by_token[o + v]);
  let end = u32(by_token[o + v + 1u]);
  var acc = 0.0;
  for (var k = start; k < end; k++) {
    let r = u32(by_token[o + 257u + k]);
    acc += dout[view_offset(5u) + r * dim + j];
  }
  dtable[view_offset(4u) + i] += acc;
}
