// Tiled matmul: C (M, N) = op(A) (M, K) · op(B) (K, N), or C += with `accumulate`.
// op(A)[i, p] = transA ? A[p·lda + i] : A[i·lda + p];  op(B)[p, j] = transB ? B[j·ldb + p] : B[p·ldb + j].
//
// Defines: TM, TN (outputs per invocation along M and N), BK (depth of a tile).
// A workgroup of 16×16 invocations computes a (16·TM, 16·TN) tile of C; each k-step stages a
// (BK, BM) slice of op(A) and a (BK, BN) slice of op(B) in workgroup memory, loaded so that
// consecutive invocations read consecutive addresses whatever the transposition.

const BM: u32 = 16u * TM;
const BN: u32 = 16u * TN;

var<workgroup> tile_a: array<f32, BK * BM>; // [p][i]
var<workgroup> tile_b: array<f32, BK * BN>; // [p][j]

@group(0) @binding(1) var<storage, read_write> c: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;

// ints: m, n, k, lda, ldb, ldc, transA, transB, accumulate. Grid: (ceil(N / BN), ceil(M / BM)).
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
  let row0 = wid.y * BM;
  let col0 = wid.x * BN;

  var acc: array<f32, TM * TN>;
  var ar: array<f32, TM>;
  var bc: array<f32, TN>;
  for (var p0 = 0u; p0 < K; p0 += BK) {
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
      if (gi < M && gp < K) {
        v = a[oa + select(gi * lda + gp, gp * lda + gi, trans_a)];
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
      if (gj < N && gp < K) {
        v = b[ob + select(gp * ldb + gj, gj * ldb + gp, trans_b)];
      }
      tile_b[p * BN + j] = v;
    }
    workgroupBarrier();
    for (var p = 0u; p < BK; p++) {
      for (var r = 0u; r < TM; r++) {
        ar[r] = tile_a[p * BM + lid3.y + 16u * r];
      }
      for (var s = 0u; s < TN; s++) {
        bc[s] = tile_b[p * BN + lid3.x + 16u * s];
      }
      for (var r = 0u; r < TM; r++) {
        for (var s = 0u; s < TN; s++) {
          acc[r * TN + s] = fma(ar[r], bc[s], acc[r * TN + s]);
        }
      }
    }
    workgroupBarrier();
  }

  for (var r = 0u; r < TM; r++) {
    let i = row0 + lid3.y + 16u * r;
    for (var s = 0u; s < TN; s++) {
      let j = col0 + lid3.x + 16u * s;
      if (i < M && j < N) {
        let idx = oc + i * ldc + j;
        if (accumulate) {
          c[idx] += acc[r * TN + s];
        } else {
          c[idx] = acc[r * TN + s];
        }
      }
    }
  }
}
