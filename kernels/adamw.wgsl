// AdamW over flat param / grad / m / v views of equal length (decoupled weight decay):
// g' = gradScale·g; m = β1·m + (1-β1)·g'; v = β2·v + (1-β2)·g'²;
// p = p·(1 - lr·wd) - lr·(m / c1) / (sqrt(v / c2) + eps), with c1 = 1 - β1^step, c2 = 1 - β2^step.

@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;

// ints: n; floats: lr, beta1, beta2, eps, decay (1 - lr·wd), c1, c2, grad_scale.
@compute @workgroup_size(256)
fn adamw(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
  let i = group_index(wid, ng) * 256u + lid;
  if (i >= arg_u(0u)) {
    return;
  }
  let lr = arg_f(1u);
  let beta1 = arg_f(2u);
  let beta2 = arg_f(3u);
  let eps = arg_f(4u);
  let decay = arg_f(5u);
  let c1 = arg_f(6u);
  let c2 = arg_f(7u);
  let g = grad[view_offset(2u) + i] * arg_f(8u);
  let im = view_offset(3u) + i;
  let iv = view_offset(4u) + i;
  let ip = view_offset(1u) + i;
  let mi = beta1 * m[im] + (1.0 - beta1) * g;
  let vi = beta2 * v[iv] + (1.0 - beta2) * g * g;
  m[im] = mi;
  v[iv] = vi;
  param[ip] = param[ip] * decay - (lr * (mi / c1)) / (sqrt(vi / c2) + eps);
}

// adamw with 8-bit moments (the code: lib/quant8.ts): one workgroup per block of 256 elements.
// Dequantize m, v; update them and the parameter exactly as `adamw` does; then the block's new
// absmax of |m| and of v (a fixed-order tree reduction) and the new codes. Codes are packed
// four to a u32, little-endian: code j of the block is byte j & 3 of word j >> 2.

@group(0) @binding(5) var<storage, read_write> m_codes: array<u32>; // (blocks · 64) signed bytes
@group(0) @binding(6) var<storage, read_write> v_codes: array<u32>; // (blocks · 64) unsigned bytes
@group(0) @binding(7) var<storage, read_write> scales: array<f32>; // (blocks, 2): absmax m, absmax v

var<workgroup> new_codes: array<u32, 256>; // m code | v code << 8, per element of the block

// ints: n; floats: lr, beta1, beta2, eps, decay (1 - lr·wd), c1, c2, grad_scale.
@compute @workgroup_size(256)
fn adamw_8bit(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
  let n = arg_u(0u);
  let block = group_index(wid, ng);
  if (block * 256u >= n) {
    return; // the grid's spare workgroups (uniform: the whole workgroup returns)
  }
  let i = block * 256u + lid; // element of the run
  let live = i < n;
  let shift = 8u * (lid & 3u);
  let word = block * 64u + (lid >> 2u);
  let s = view_offset(7u) + 2u * block;
  let scale_m = scales[s];
  let scale_v = scales[s + 1u];
  let cm = f32(bitcast<i32>(((m_codes[view_offset(5u) + word] >> shift) & 255u) << 24u) >> 24u) / 127.0;
  let cv = f32((v_codes[view_offset(6u) + word] >> shift) & 255u) / 255.0;
  var mi = 0.0;
  var vi = 0.0;
  if (live) {
    let beta1 = arg_f(2u);
    let beta2 = arg_f(3u);
    let g = grad[view_offset(2u) + i] * arg_f(8u);
    mi = beta1 * (scale_m * cm * abs(cm)) + (1.0 - beta1) * g;
    vi = beta2 * (scale_v * (cv * cv) * (cv * cv)) + (1.0 - beta2) * g * g;
    let ip = view_offset(1u) + i;
    param[ip] = param[ip] * arg_f(5u) - (arg_f(1u) * (mi / arg_f(6u))) / (sqrt(vi / arg_f(7u)) + arg_f(4u));
  }
  let abs_m = workgroup_max(abs(mi), lid); // every invocation has read the old scales by now
  let abs_v = workgroup_max(vi, lid);
  if (lid == 0u) {
    scales[s] = abs_m;
    scales[s + 1u] = abs_v;
  }
  var code_m = 0u;
  var code_v = 0u;
  if (live && abs_m > 0.0) {
    let c = min(127.0, floor(127.0 * sqrt(abs(mi) / abs_m) + 0.5));
    code_m = bitcast<u32>(i32(select(c, -c, mi < 0.0))) & 255u;
  }
  if (live && abs_v > 0.0) {
    code_v = u32(min(255.0, floor(255.0 * sqrt(sqrt(vi / abs_v)) + 0.5)));
  }
  new_codes[lid] = code_m | (code_v << 8u);
  workgroupBarrier();
  if (lid < 64u) {
    var words_m = 0u;
    var words_v = 0u;
    for (var k = 0u; k < 4u; k++) {
      let c = new_codes[4u * lid + k];
      words_m |= (c & 255u) << (8u * k);
      words_v |= (c >> 8u) << (8u * k);
    }
    m_codes[view_offset(5u) + block * 64u + lid] = words_m;
    v_codes[view_offset(6u) + block * 64u + lid] = words_v;
  }
}
