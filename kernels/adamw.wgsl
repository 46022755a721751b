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
