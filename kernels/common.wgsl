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

/**
 * The four int8 codes of a word (lib/quantize.ts: byte 0 first), as floats: each byte shifted to
 * the top, then an arithmetic shift right sign-extends it (core WGSL, no language extension).
 */
fn codes4(word: u32) -> vec4<f32> {
  let w = vec4<i32>(bitcast<i32>(word)) << vec4<u32>(24u, 16u, 8u, 0u);
  return vec4<f32>(w >> vec4<u32>(24u));
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

// 16-bit floats (lib/half.ts on the host): a format code, HALF_BF16 or HALF_F16; two values per
// 32-bit word of storage, value j in the low (j even) or the high half of word j / 2.
const HALF_BF16: u32 = 0u;
const HALF_F16: u32 = 1u;

/**
 * The 16 bits of x in `format`, rounded to nearest, ties to even, in integer arithmetic (WGSL
 * leaves the rounding of f32 → f16 to the implementation); NaN stays NaN, f16 beyond 65504 (from
 * the tie at 65520 on) becomes ±infinity.
 */
fn half_bits(x: f32, format: u32) -> u32 {
  let bits = bitcast<u32>(x);
  let magnitude = bits & 0x7fffffffu;
  if (format == HALF_BF16) {
    if (magnitude > 0x7f800000u) {
      return (bits >> 16u) | 0x40u; // NaN, quiet
    }
    return (bits + 0x7fffu + ((bits >> 16u) & 1u)) >> 16u;
  }
  let sign = (bits >> 16u) & 0x8000u;
  if (magnitude > 0x7f800000u) {
    return sign | 0x7e00u; // NaN
  }
  if (magnitude >= 0x477ff000u) {
    return sign | 0x7c00u; // 65520 and beyond: infinity
  }
  if (magnitude >= 0x38800000u) {
    // normal (2^-14 and up): the exponent rebased from 127 to 15, 13 mantissa bits rounded off
    let rebased = magnitude - 0x38000000u;
    return sign | ((rebased + 0xfffu + ((rebased >> 13u) & 1u)) >> 13u);
  }
  // subnormal: a whole number of 2^-24 (exact in f32), round() going to even on ties
  return sign | u32(round(bitcast<f32>(magnitude) * 16777216.0));
}

/** The value that 16 bits `h` of `format` stand for (exactly). */
fn half_value(h: u32, format: u32) -> f32 {
  if (format == HALF_BF16) {
    return bitcast<f32>(h << 16u);
  }
  let sign = (h & 0x8000u) << 16u;
  let exponent = (h >> 10u) & 0x1fu;
  let mantissa = h & 0x3ffu;
  if (exponent == 0u) {
    return bitcast<f32>(sign | bitcast<u32>(ldexp(f32(mantissa), -24))); // subnormal
  }
  if (exponent == 31u) {
    return bitcast<f32>(sign | 0x7f800000u | (mantissa << 13u)); // infinity, NaN
  }
  return bitcast<f32>(sign | ((exponent + 112u) << 23u) | (mantissa << 13u));
}

/** x rounded to `format` (to nearest, ties to even), as an f32. */
fn round_to_half(x: f32, format: u32) -> f32 {
  return half_value(half_bits(x, format), format);
}

/** Value e of 16-bit storage whose word e / 2 is `word`. */
fn half_in_word(word: u32, e: u32, format: u32) -> f32 {
  return half_value((word >> (16u * (e % 2u))) & 0xffffu, format);
}
