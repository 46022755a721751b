// addBias: out (rows, cols) += bias (cols). Its backward, dbias += Σ_rows dout, is a column
// sum: reduce.wgsl's column_partials then sum_partials.

@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;

// ints: rows, cols. One invocation per element.
@compute @workgroup_size(256)
fn add_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
  let rows = arg_u(0u);
  let cols = arg_u(1u);
  let i = group_index(wid, ng) * 256u + lid;
  if (i < rows * cols) {
    out[view_offset(1u) + i] += bias[view_offset(2u) + i % cols];
  }
}
