// Fused softmax cross-entropy over logits (rows, vocab), one workgroup per row:
// losses[r] = logsumexp(logits[r]) - logits[r, target[r]] (nats); when has_grad,
// dlogits[r] = grad_scale · (softmax(logits[r]) - onehot(target[r])).

@group(0) @binding(1) var<storage, read_write> losses: array<f32>;
@group(0) @binding(2) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(3) var<storage, read> logits: array<f32>;
@group(0) @binding(4) var<storage, read> targets: array<i32>;

// ints: rows, vocab, has_grad; floats: grad_scale.
@compute @workgroup_size(256)
fn cross_entropy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
  let rows = arg_u(0u);
  let vocab = arg_u(1u);
  let has_grad = arg_u(2u) != 0u;
  let scale = arg_f(3u);
  let r = group_index(wid, ng);
  if (r >= rows) {
    return;
  }
  let o = view_offset(3u) + r * vocab;
  var m = -3.0e38;
  for (var j = lid; j < vocab; j += 256u) {
    m = max(m, logits[o + j]);
  }
  let row_max = workgroup_max(m, lid);
  var sum = 0.0;
  for (var j = lid; j < vocab; j += 256u) {
    sum += exp(logits[o + j] - row_max);
  }
  let log_sum = log(workgroup_sum(sum, lid)) + row_max;
  let tgt = u32(targets[view_offset(4u) + r]);
  if (lid == 0u) {
    losses[view_offset(1u) + r] = log_sum - logits[o + tgt];
  }
  if (has_grad) {
    let od = view_offset(2u) + r * vocab;
    for (var j = lid; j < vocab; j += 256u) {
      dlogits[od + j] = scale * (exp(logits[o + j] - log_sum) - select(0.0, 1.0, j == tgt));
    }
  }
}
