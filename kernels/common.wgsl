// Prelude prepended to every kernel file (after the `const NAME: u32 = value;` defines).
//
// Binding 0: one 256-byte uniform block of 64 words per dispatch. Words 0..15: the element
// offset of the view bound at binding 1..16 (views are not aligned to 256 bytes, so the kernel
// adds the offset). Words 16..: the dispatch's integer arguments, then its float arguments.

struct Uniforms {
  words: array<vec4<u32>, 16>,
}

@group(0) @binding(0) var<uniform> uniforms: Uniforms;

/** Element offset of the view at binding `b` (1-based). */
fn view_offset(b: u32) -> u32 {
  return word(b - 1u);
}

fn word(i: u32) -> u32 {
  return uniforms.words[i / 4u][i % 4u];
}

/** The i-th integer argument. */
fn arg_u(i: u32) -> u32 {
  return word(16u + i);
}

/** The word at 16 + i read as a float (float arguments follow the integer ones). */
fn arg_f(i: u32) -> f32 {
  return bitcast<f32>(word(16u + i));
}

/** Linear workgroup index over a grid spread across x and y. */
fn group_index(wid: vec3<u32>, groups: vec3<u32>) -> u32 {
  return wid.y * groups.x + wid.x;
}

fn sigmoid(x: f32) -> f32 {
  return 1.0 / (1.0 + exp(-x));
}

/** d silu(x) / dx, given sg = sigmoid(x). */
fn dsilu_of(x: f32, sg: f32) -> f32 {
  return sg * (1.0 + x * (1.0 - sg));
}

/** softplus(x) = log(1 + exp(x)), with log1p's accuracy for small exp(x). */
fn softplus(x: f32) -> f32 {
  if (x > 20.0) {
    return x;
  }
  let e = exp(x);
  if (e < 1e-4) {
    return e * (1.0 - 0.5 * e);
  }
  return log(1.0 + e);
}

var<workgroup> reduce_scratch: array<f32, 256>;

/** Σ of `v` over a workgroup of 256 invocations (call from uniform control flow). */
fn workgroup_sum(v: f32, lid: u32) -> f32 {
  reduce_scratch[lid] = v;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid < s) {
      reduce_scratch[lid] += reduce_scratch[lid + s];
    }
    workgroupBarrier();
  }
  let total = reduce_scratch[0];
  workgroupBarrier();
  return total;
}

/** max of `v` over a workgroup of 256 invocations (call from uniform control flow). */
fn workgroup_max(v: f32, lid: u32) -> f32 {
  reduce_scratch[lid] = v;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid < s) {
      reduce_scratch[lid] = max(reduce_scratch[lid], reduce_scratch[lid + s]);
    }
    workgroupBarrier();
  }
  let total = reduce_scratch[0];
  workgroupBarrier();
  return total;
}
