// Causal depthwise conv1d + SiLU over (B, L, C), width K, x with row stride x_stride:
// s[b, t, c] = bias[c] + Σ_k w[c, k] · x[b, t - K + 1 + k, c] (x = 0 before t = 0); out = silu(s).
// Backward: g = dout · silu'(s) (conv1d_silu_grad, into a (B·L, C) scratch), then
// dx[t] = Σ_k g[t + K - 1 - k] · w[c, k] (overwritten), and dweight, dbias += column sums of
// g · x and g (conv1d_weight_partials, then reduce.wgsl's sum_partials).
// Decode step: the same over [state, x], then the (B, C, K-1) state shifts left and takes x.

@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> weight: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> g: array<f32>;
@group(0) @binding(6) var<storage, read> dout: array<f32>;
@group(0) @binding(7) var<storage, read_write> dx: array<f32>;
@group(0) @binding(8) var<storage, read> g_in: array<f32>;
@group(0) @binding(9) var<storage, read_write> partials: array<f32>;
@group(0) @binding(10) var<storage, read_write> state: array<f32>;

struct ConvDims {
  batch: u32,
  len: u32,
  channels: u32,
  width: u32,
  x_stride: u32,
  has_bias: bool,
}

// ints 0..5: batch, L, C, K, x_stride, has_bias (every entry but the step).
fn conv_dims() -> ConvDims {
  return ConvDims(arg_u(0u), arg_u(1u), arg_u(2u), arg_u(3u), arg_u(4u), arg_u(5u) != 0u);
}

/** The pre-activation s at row r = b·L + t, channel c. */
fn pre_activation(d: ConvDims, r: u32, c: u32) -> f32 {
  let t = r % d.len;
  var s = 0.0;
  if (d.has_bias) {
    s = bias[view_offset(4u) + c];
  }
  for (var k = 0u; k < d.width; k++) {
    if (t + k + 1u >= d.width) {
      let rs = r + k + 1u - d.width;
      s += weight[view_offset(3u) + c * d.width + k] * x[view_offset(2u) + rs * d.x_stride + c];
    }
  }
  return s;
}

// One invocation per output element of (B, L, C).
@compute @workgroup_size(256)
fn conv1d_silu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
  let d = conv_dims();
  let i = group_index(wid, ng) * 256u + lid;
  if (i >= d.batch * d.len * d.channels) {
    return;
  }
  let s = pre_activation(d, i / d.channels, i % d.channels);
  out[view_offset(1u) + i] = s * sigmoid(s);
}

// g (B, L, C) = dout · d silu(s) / ds. One invocation per element.
@compute @workgroup_size(256)
fn conv1d_silu_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
  let d = conv_dims();
  let i = group_index(wid, ng) * 256u + lid;
  if (i >= d.batch * d.len * d.channels) {
    return;
  }
  let s = pre_activation(d, i / d.channels, i % d.channels);
  let sg = sigmoid(s);
  g[view_offset(5u) + i] = dout[view_offset(6u) + i] * dsilu_of(s, sg);
}

// dx (B, L, C), row stride x_stride, overwritten. One invocation per element.
@compute @workgroup_size(256)
fn conv1d_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
  let d = conv_dims();
  let i = group_index(wid, ng) * 256u + lid;
  if (i >= d.batch * d.len * d.channels) {
    return;
  }
  let r = i / d.channels;
  let c = i % d.channels;
  let t = r % d.len;
  var acc = 0.0;
  for (var k = 0u; k < d.width; k++) {
    let shift = d.width - 1u - k; // the output step t + shift reads x[t] through w[c, k]
    if (t + shift < d.len) {
      acc += g_in[view_offset(8u) + (r + shift) * d.channels + c] * weight[view_offset(3u) + c * d.width + k];
    }
  }
  dx[view_offset(7u) + r * d.x_stride + c] = acc;
}

// ints 6..7: rows_per_block, blocks. Grid: (ceil(C / 256), blocks).
// partials[block, c·K + k] = Σ_{rows of block} g · x[t - K + 1 + k];
// partials[blocks·C·K + block·C + c] = Σ_{rows of block} g.
@compute @workgroup_size(256)
fn conv1d_weight_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let d = conv_dims();
  let per_block = arg_u(6u);
  let blocks = arg_u(7u);
  let c = wid.x * 256u + lid;
  if (c >= d.channels) {
    return;
  }
  let r0 = wid.y * per_block;
  let r1 = min(d.batch * d.len, r0 + per_block);
  let o = view_offset(9u);
  for (var k = 0u; k < d.width; k++) {
    var acc = 0.0;
    for (var r = r0; r < r1; r++) {
      if (r % d.len + k + 1u >= d.width) {
        let rs = r + k + 1u - d.width;
        acc += g_in[view_offset(8u) + r * d.channels + c] * x[view_offset(2u) + rs * d.x_stride + c];
      }
    }
    partials[o + wid.y * d.channels * d.width + c * d.width + k] = acc;
  }
  var acc_bias = 0.0;
  for (var r = r0; r < r1; r++) {
    acc_bias += g_in[view_offset(8u) + r * d.channels + c];
  }
  partials[o + blocks * d.channels * d.width + wid.y * d.channels + c] = acc_bias;
}

// ints: batch, C, K, x_stride, has_bias. One invocation per (b, c); state (B, C, K-1).
@compute @workgroup_size(256)
fn conv1d_silu_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
  let batch = arg_u(0u);
  let channels = arg_u(1u);
  let width = arg_u(2u);
  let x_stride = arg_u(3u);
  let i = group_index(wid, ng) * 256u + lid;
  if (i >= batch * channels) {
    return;
  }
  let b = i / channels;
  let c = i % channels;
  let ow = view_offset(3u) + c * width;
  let st = view_offset(10u) + i * (width - 1u);
  let xv = x[view_offset(2u) + b * x_stride + c];
  var s = 0.0;
  if (arg_u(4u) != 0u) {
    s = bias[view_offset(4u) + c];
  }
  for (var k = 0u; k + 1u < width; k++) {
    s += weight[ow + k] * state[st + k];
  }
  s += weight[ow + width - 1u] * xv;
  out[view_offset(1u) + i] = s * sigmoid(s);
  if (width > 1u) {
    for (var k = 0u; k + 2u < width; k++) {
      state[st + k] = state[st + k + 1u];
    }
    state[st + width - 2u] = xv;
  }
}
