// fp32 ↔ 16-bit storage, bf16 or f16 (common.wgsl's half_bits, rounding to nearest even): what
// training with 16-bit matmul inputs keeps its activations in; matmul.wgsl reads it as it is.

@group(0) @binding(1) var<storage, read_write> packed_out: array<u32>;
@group(0) @binding(2) var<storage, read> values_in: array<f32>;

// ints: n, format. One word (two values) per invocation: words ceil(n / 2).
@compute @workgroup_size(256)
fn pack_half(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
  let n = arg_u(0u);
  let format = arg_u(1u);
  let w = group_index(wid, ng) * 256u + lid;
  if (2u * w >= n) {
    return;
  }
  let o = view_offset(2u) + 2u * w;
  var hi = 0u;
  if (2u * w + 1u < n) {
    hi = half_bits(values_in[o + 1u], format);
  }
  packed_out[view_offset(1u) + w] = half_bits(values_in[o], format) | (hi << 16u);
}

@group(0) @binding(3) var<storage, read_write> values_out: array<f32>;
@group(0) @binding(4) var<storage, read> packed_in: array<u32>;

// ints: n, format. One value per invocation.
@compute @workgroup_size(256)
fn unpack_half(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
  let n = arg_u(0u);
  let format = arg_u(1u);
  let e = group_index(wid, ng) * 256u + lid;
  if (e >= n) {
    return;
  }
  values_out[view_offset(3u) + e] = half_in_word(packed_in[view_offset(4u) + e / 2u], e, format);
}
