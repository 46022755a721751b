// Reductions without float atomics, in two levels.
// - Column sums (dbias, dweight of norms and convolutions): column_partials writes one partial
//   sum per block of rows, (blocks, cols); sum_partials adds Σ_blocks into the destination.
// - block_sums: the sum (of squares) of a vector, one partial per workgroup; run again on the
//   partials with a single workgroup for the total (sumOfSquares).

@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;

// ints: rows, cols, rows_per_block. Grid: (ceil(cols / 256), blocks).
// dst (blocks, cols)[block, j] = Σ_{rows of block} src (rows, cols)[r, j].
@compute @workgroup_size(256)
fn column_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let rows = arg_u(0u);
  let cols = arg_u(1u);
  let per_block = arg_u(2u);
  let j = wid.x * 256u + lid;
  if (j >= cols) {
    return;
  }
  let r0 = wid.y * per_block;
  let r1 = min(rows, r0 + per_block);
  var acc = 0.0;
  for (var r = r0; r < r1; r++) {
    acc += src[view_offset(2u) + r * cols + j];
  }
  dst[view_offset(1u) + wid.y * cols + j] = acc;
}

// ints: cols, blocks. dst (cols) += Σ_block src (blocks, cols)[block, :].
@compute @workgroup_size(256)
fn sum_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
  let cols = arg_u(0u);
  let blocks = arg_u(1u);
  let j = group_index(wid, ng) * 256u + lid;
  if (j >= cols) {
    return;
  }
  var acc = 0.0;
  for (var k = 0u; k < blocks; k++) {
    acc += src[view_offset(2u) + k * cols + j];
  }
  dst[view_offset(1u) + j] += acc;
}

// ints: n, square. Grid: G workgroups (x only). dst[g] = Σ of src[i] (or src[i]²) over the
// elements i ≡ g·256 + lid (mod G·256).
@compute @workgroup_size(256)
fn block_sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
  let n = arg_u(0u);
  let square = arg_u(1u) != 0u;
  var acc = 0.0;
  for (var i = wid.x * 256u + lid; i < n; i += ng.x * 256u) {
    let v = src[view_offset(2u) + i];
    acc += select(v, v * v, square);
  }
  let total = workgroup_sum(acc, lid);
  if (lid == 0u) {
    dst[view_offset(1u) + wid.x] = total;
  }
}
