// RMSNorm: out = x · rstd · weight, rstd (rows) = 1 / sqrt(mean(x²) + eps), one workgroup per row.
// Backward (rstd saved): with g = dout·weight, dx += rstd·(g - x·rstd²·mean(g·x)) (a workgroup
// per row); dweight += Σ_rows dout·x·rstd (dweight_partials, then reduce.wgsl's sum_partials).

@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read> weight: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;
@group(0) @binding(6) var<storage, read> dout: array<f32>;
@group(0) @binding(7) var<storage, read> rstd_in: array<f32>;
@group(0) @binding(8) var<storage, read_write> partials: array<f32>;

// ints: rows, dim; floats: eps. One workgroup per row.
@compute @workgroup_size(256)
fn rmsnorm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let rows = arg_u(0u);
  let dim = arg_u(1u);
  let r = group_index(wid, ng);
  if (r >= rows) {
    return;
  }
  let ox = view_offset(3u) + r * dim;
  var ss = 0.0;
  for (var j = lid; j < dim; j += 256u) {
    ss += x[ox + j] * x[ox + j];
  }
  let s = 1.0 / sqrt(workgroup_sum(ss, lid) / f32(dim) + arg_f(2u));
  if (lid == 0u) {
    rstd[view_offset(2u) + r] = s;
  }
  let oo = view_offset(1u) + r * dim;
  for (var j = lid; j < dim; j += 256u) {
    out[oo + j] = x[ox + j] * s * weight[view_offset(4u) + j];
  }
}

// ints: rows, dim. One workgroup per row.
@compute @workgroup_size(256)
fn rmsnorm_backward_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
  let rows = arg_u(0u);
  let dim = arg_u(1u);
  let r = group_index(wid, ng);
  if (r >= rows) {
    return;
  }
  let ox = view_offset(3u) + r * dim;
  let og = view_offset(6u) + r * dim;
  let ow = view_offset(4u);
  var gx = 0.0;
  for (var j = lid; j < dim; j += 256u) {
    gx += dout[og + j] * weight[ow + j] * x[ox + j];
  }
  let s = rstd_in[view_offset(7u) + r];
  let k = s * s * workgroup_sum(gx, lid) / f32(dim);
  let od = view_offset(5u) + r * dim;
  for (var j = lid; j < dim; j += 256u) {
    dx[od + j] += s * (dout[og + j] * weight[ow + j] - x[ox + j] * k);
  }
}

// ints: rows, dim, rows_per_block. Grid: (ceil(dim / 256), blocks).
// partials (blocks, dim)[block, j] = Σ_{rows of block} dout·x·rstd.
@compute @workgroup_size(256)
fn rmsnorm_dweight_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let rows = arg_u(0u);
  let dim = arg_u(1u);
  let per_block = arg_u(2u);
  let j = wid.x * 256u + lid;
  if (j >= dim) {
    return;
  }
  let r0 = wid.y * per_block;
  let r1 = min(rows, r0 + per_block);
  var acc = 0.0;
  for (var r = r0; r < r1; r++) {
    acc += dout[view_offset(6u) + r * dim + j] * x[view_offset(3u) + r * dim + j] * rstd_in[view_offset(7u) + r];
  }
  partials[view_offset(8u) + wid.y * dim + j] = acc;
}
