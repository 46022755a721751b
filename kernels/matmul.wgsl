// Tiled matmul: C (M, N) = op(A) (M, K) · op(B) (K, N), or C += with `accumulate`.
// op(A)[i, p] = transA ? A[p·lda + i] : A[i·lda + p];  op(B)[p, j] = transB ? B[j·ldb + p] : B[p·ldb + j].
//
// Defines: TM, TN (outputs per invocation along M and N; TN a multiple of 4), BK (tile depth);
// INPUTS: 0 reads A and B as they are, 1 + a format of common.wgsl (HALF_BF16, HALF_F16) rounds
// them to it (a 16-bit matmul precision; products and sums stay f32); A_HALF, B_HALF (with
// INPUTS > 0): 1 when that operand is stored in 16 bits of the format (half.wgsl), indices in
// values, view offsets in words.
// A workgroup of 16×16 invocations computes a (16·TM, 16·TN) tile of C; each k-step stages a
// (BK, BM) slice of op(A) and a (BK, BN) slice of op(B) in workgroup memory, loaded so that
// consecutive invocations read consecutive addresses whatever the transposition. Invocation
// (x, y) owns rows y + 16·r and the 4-column groups 4·x + 64·s: B is read from workgroup memory
// and accumulated as vec4.
//
// Split-K: workgroup z covers k in [z·k_split, (z+1)·k_split); with more than one split each
// writes its own (M, N) partial product at c + z·M·N (ldc = N, overwrite) and matmul_sum_splits
// adds the partials into C.

const BM: u32 = 16u * TM;
const BN: u32 = 16u * TN;
const TN4: u32 = TN / 4u;

var<workgroup> tile_a: array<f32, BK * BM>; // [p][i]
var<workgroup> tile_b: array<vec4<f32>, BK * BN / 4u>; // [p][j / 4][j % 4]

@group(0) @binding(1) var<storage, read_write> c: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<u32>; // f32 bits, or two 16-bit values per word
@group(0) @binding(3) var<storage, read> b: array<u32>;

/** An f32 input as the matmul's precision takes it. */
fn matmul_input(x: f32) -> f32 {
  if (INPUTS == 0u) {
    return x;
  }
  return round_to_half(x, INPUTS - 1u);
}

/** Element e of A's view, whose offset is `o` words. */
fn load_a(o: u32, e: u32) -> f32 {
  if (A_HALF == 1u) {
    return half_in_word(a[o + e / 2u], e, INPUTS - 1u);
  }
  return matmul_input(bitcast<f32>(a[o + e]));
}

fn load_b(o: u32, e: u32) -> f32 {
  if (B_HALF == 1u) {
    return half_in_word(b[o + e / 2u], e, INPUTS - 1u);
  }
  return matmul_input(bitcast<f32>(b[o + e]));
}

// ints: m, n, k, lda, ldb, ldc, transA, transB, accumulate, k_split.
// Grid: (ceil(N / BN), ceil(M / BM), splits).
@compute @workgroup_size(16, 16)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
  let M = arg_u(0u);
  let N = arg_u(1u);
  let K = arg_u(2u);
  let lda = arg_u(3u);
  let ldb = arg_u(4u);
  let ldc = arg_u(5u);
  let trans_a = arg_u(6u) != 0u;
  let trans_b = arg_u(7u) != 0u;
  let accumulate = arg_u(8u) != 0u;
  let oc = view_offset(1u);
  let oa = view_offset(2u);
  let ob = view_offset(3u);
  let k_split = arg_u(9u);
  let row0 = wid.y * BM;
  let col0 = wid.x * BN;
  let k_begin = wid.z * k_split;
  let k_end = min(K, k_begin + k_split);

  var acc: array<vec4<f32>, TM * TN4>;
  var bc: array<vec4<f32>, TN4>;
  for (var p0 = k_begin; p0 < k_end; p0 += BK) {
    for (var q = lid; q < BM * BK; q += 256u) {
      var i = q / BK;
      var p = q % BK;
      if (trans_a) {
        i = q % BM;
        p = q / BM;
      }
      let gi = row0 + i;
      let gp = p0 + p;
      var v = 0.0;
      if (gi < M && gp < k_end) {
        v = load_a(oa, select(gi * lda + gp, gp * lda + gi, trans_a));
      }
      tile_a[p * BM + i] = v;
    }
    for (var q = lid; q < BN * BK; q += 256u) {
      var j = q % BN;
      var p = q / BN;
      if (trans_b) {
        j = q / BK;
        p = q % BK;
      }
      let gj = col0 + j;
      let gp = p0 + p;
      var v = 0.0;
      if (gj < N && gp < k_end) {
        v = load_b(ob, select(gp * ldb + gj, gj * ldb + gp, trans_b));
      }
      tile_b[(p * BN + j) / 4u][j % 4u] = v;
    }
    workgroupBarrier();
    for (var p = 0u; p < BK; p++) {
      for (var s = 0u; s < TN4; s++) {
        bc[s] = tile_b[p * BN / 4u + lid3.x + 16u * s];
      }
      for (var r = 0u; r < TM; r++) {
        let ar = vec4<f32>(tile_a[p * BM + lid3.y + 16u * r]);
        for (var s = 0u; s < TN4; s++) {
          acc[r * TN4 + s] = fma(ar, bc[s], acc[r * TN4 + s]);
        }
      }
    }
    workgroupBarrier();
  }

  let split_offset = wid.z * M * N; // 0 without split-K
  for (var r = 0u; r < TM; r++) {
    let i = row0 + lid3.y + 16u * r;
    for (var s = 0u; s < TN4; s++) {
      for (var q = 0u; q < 4u; q++) {
        let j = col0 + 4u * (lid3.x + 16u * s) + q;
        if (i < M && j < N) {
          let idx = oc + split_offset + i * ldc + j;
          if (accumulate) {
            c[idx] += acc[r * TN4 + s][q];
          } else {
            c[idx] = acc[r * TN4 + s][q];
          }
        }
      }
    }
  }
}

@group(0) @binding(4) var<storage, read> splits: array<f32>;

// ints: m, n, splits, ldc, accumulate. C[i, j] (+)= Σ_z splits[z·M·N + i·N + j].
@compute @workgroup_size(256)
fn matmul_sum_splits(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
  let M = arg_u(0u);
  let N = arg_u(1u);
  let count = arg_u(2u);
  let idx = group_index(wid, ng) * 256u + lid;
  if (idx >= M * N) {
    return;
  }
  var acc = 0.0;
  for (var z = 0u; z < count; z++) {
    acc += splits[view_offset(4u) + z * M * N + idx];
  }
  let o = view_offset(1u) + (idx / N) * arg_u(3u) + idx % N;
  if (arg_u(4u) != 0u) {
    c[o] += acc;
  } else {
    c[o] = acc;
  }
}
