// Sampling of the next byte on the device (lib/sample.ts's sampleWithUniform, step by step):
// one block per row of logits (B, 256), one thread per byte.
//   1. rank of byte j = #{i : logit_i > logit_j, or equal with i < j} (0: most likely);
//   2. weights in rank order, w_r = exp((logit_r - logit_0) / temperature) for r < kept;
//   3. inclusive prefix sums P_r (Hillis-Steele in shared memory);
//   4. count = min(kept, 1 + #{r < kept : P_r < top_p · P_(kept-1)});
//   5. pick = min(count - 1, #{r < count : P_r <= u · P_(count-1)}): the first rank whose prefix
//      sum exceeds the threshold. Temperature 0 picks rank 0.
// The picked byte goes to tokens[b] (the next step's input) and, as a float, to history[b].
#include "common.cuh"

namespace {

constexpr int kVocab = 256;

__global__ void sample_tokens_kernel(int* tokens, float* history, const float* logits, const float* uniforms,
                                     int kept, float temperature, float top_p) {
  __shared__ float row[kVocab];     // logits by byte
  __shared__ float prefix[kVocab];  // weights, then their prefix sums, by rank
  __shared__ float top;             // the logit of rank 0
  const int b = blockIdx.x, j = threadIdx.x;
  const float v = logits[(int64_t)b * kVocab + j];
  row[j] = v;
  __syncthreads();
  int rank = 0;
  for (int i = 0; i < kVocab; i++) rank += (row[i] > v || (row[i] == v && i < j)) ? 1 : 0;
  if (temperature == 0.0f) {
    if (rank == 0) {
      tokens[b] = j;
      history[b] = (float)j;
    }
    return;
  }
  if (rank == 0) top = v;
  __syncthreads();
  prefix[rank] = rank < kept ? expf((v - top) / temperature) : 0.0f;
  __syncthreads();
  for (int offset = 1; offset < kVocab; offset <<= 1) {
    float sum = prefix[j] + (j >= offset ? prefix[j - offset] : 0.0f);
    __syncthreads();
    prefix[j] = sum;
    __syncthreads();
  }
  const int count = 1 + __syncthreads_count(j + 1 < kept && prefix[j] < top_p * prefix[kept - 1]);
  const float threshold = uniforms[b] * prefix[count - 1];
  const int pick = __syncthreads_count(j + 1 < count && prefix[j] <= threshold);
  if (rank == pick) {
    tokens[b] = j;
    history[b] = (float)j;
  }
}

}  // namespace

int mb_sample_tokens(uint64_t tokens, uint64_t history, uint64_t logits, uint64_t uniforms, int batch, int top_k,
                     float temperature, float top_p) {
  if (batch <= 0) return 0;
  const int kept = top_k > 0 && top_k < kVocab ? top_k : kVocab;
  sample_tokens_kernel<<<batch, kVocab, 0, mb_stream()>>>(mb_ptr<int>(tokens), mb_ptr<float>(history),
                                                          mb_ptr<float>(logits), mb_ptr<float>(uniforms), kept,
                                                          temperature, top_p);
  MB_LAUNCHED("sample_tokens");
  return 0;
}
