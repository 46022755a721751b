// fill: dst = value;  copy: dst = src. One invocation per element.

@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;

// ints: n; floats: value
@compute @workgroup_size(256)
fn fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = group_index(wid, ng) * 256u + lid;
  if (i < arg_u(0u)) {
    dst[view_offset(1u) + i] = arg_f(1u);
  }
}

// ints: n
@compute @workgroup_size(256)
fn copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = group_index(wid, ng) * 256u + lid;
  if (i < arg_u(0u)) {
    dst[view_offset(1u) + i] = src[view_offset(2u) + i];
  }
}
