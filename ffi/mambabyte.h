/*
 * MambaByte CUDA library: the flat C API loaded by lib/backends/cuda.ts with Deno.dlopen.
 *
 * Conventions:
 * - Every function returns 0 on success, nonzero on failure; mb_last_error() then describes it
 *   (the CUDA or cuBLAS message included).
 * - Device memory is addressed by raw device pointers passed as uint64_t; views are pointer
 *   arithmetic on the caller's side. Float data is float32, index data is int32.
 * - Every op is enqueued on the library's one stream; only mb_read, mb_sum_of_squares and
 *   mb_synchronize wait for it.
 * - Op arguments follow lib/backend.ts: outputs, then inputs, then dimensions; backward ops
 *   overwrite activation gradients and accumulate (+=) into parameter gradients.
 */
#ifndef MAMBABYTE_H
#define MAMBABYTE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MB_API __attribute__((visibility("default")))

/* ---- runtime ---- */
MB_API const char* mb_last_error(void);
/* Selects device 0, creates the stream and loads cuBLAS (libcublas.so.13, .so.12, .so, then from
 * /usr/local/cuda/lib64). */
MB_API int mb_init(void);
/* The GPU's name, NUL-terminated, into name[0..capacity). */
MB_API int mb_device_name(char* name, int capacity);
/* free and total device memory in bytes. */
MB_API int mb_mem_info(uint64_t* free_bytes, uint64_t* total_bytes);
/* Zero-filled device memory of `bytes` bytes; *ptr receives its address. */
MB_API int mb_alloc(uint64_t bytes, uint64_t* ptr);
MB_API int mb_free(uint64_t ptr);
/* Refuse allocations that would take the library's device memory over `bytes` (0: no cap). */
MB_API int mb_set_memory_cap(uint64_t bytes);
/* Device memory the library holds now, and the most it has held (its workspace included). */
MB_API int mb_memory_stats(uint64_t* in_use, uint64_t* peak);
MB_API int mb_write(uint64_t dst, const void* src, uint64_t bytes);
MB_API int mb_read(void* dst, uint64_t src, uint64_t bytes);
MB_API int mb_fill(uint64_t dst, int64_t n, float value);
MB_API int mb_copy(uint64_t dst, uint64_t src, int64_t n);
MB_API int mb_synchronize(void);
/* The library's cudaStream_t, as an address: other libraries (NCCL) enqueue work on it. */
MB_API int mb_stream_handle(uint64_t* stream);

/* ---- CUDA graphs ----
 * mb_graph_begin starts recording the library's stream instead of running it; the ops enqueued
 * until mb_graph_end (which must not synchronise or copy from the host) become a graph, run by
 * mb_graph_launch with the device pointers they were given. mb_graph_cancel drops a recording. */
MB_API int mb_graph_begin(void);
MB_API int mb_graph_end(uint64_t* graph_exec);
MB_API int mb_graph_cancel(void);
MB_API int mb_graph_launch(uint64_t graph_exec);
MB_API int mb_graph_free(uint64_t graph_exec);

/* ---- dense ---- */
/* C (M, N) = op(A) · op(B) (row-major), or += when accumulate, on fp32 buffers, through cuBLAS in
 * `precision` MB_MATMUL_FP32 (exact), MB_MATMUL_TF32, MB_MATMUL_BF16 or MB_MATMUL_F16 (inputs rounded
 * to TF32, bf16 or f16 on tensor cores, sums in fp32). With at most 8 rows, no transA and transB
 * (decode's x · Wᵀ), a GEMV kernel of the library in exact FP32 instead, whatever the precision.
 * `half_inputs` (MB_HALF_A | MB_HALF_B, only with MB_MATMUL_BF16 or MB_MATMUL_F16): those operands
 * are stored packed in that precision's 16-bit format (mb_pack_half), leading dimensions in values,
 * and are read as they are. */
enum { MB_MATMUL_FP32 = 0, MB_MATMUL_TF32 = 1, MB_MATMUL_BF16 = 2, MB_MATMUL_F16 = 3 };
enum { MB_HALF_A = 1, MB_HALF_B = 2 };
MB_API int mb_matmul(uint64_t c, uint64_t a, uint64_t b, int m, int n, int k, int trans_a, int trans_b,
                     int accumulate, int lda, int ldb, int ldc, int precision, int half_inputs);
/* Bytes of the library's workspace that mb_matmul needs for these arguments: the 16-bit copies of
 * the operands a bf16 or f16 product makes (host only: no device or mb_init needed);
 * lib/memory_plan.ts plans with the same formula. */
MB_API uint64_t mb_matmul_workspace_bytes(int m, int n, int k, int trans_a, int trans_b, int lda, int ldb,
                                          int ldc, int precision, int half_inputs);
/* dst (n 16-bit values of `format`, value j in bytes 2j, 2j + 1) = src (n floats) rounded to nearest,
 * ties to even (f16 beyond its range: ±infinity); and back. */
enum { MB_HALF_BF16 = 0, MB_HALF_F16 = 1 };
MB_API int mb_pack_half(uint64_t dst, uint64_t src, int64_t n, int format);
MB_API int mb_unpack_half(uint64_t dst, uint64_t src, int64_t n, int format);
MB_API int mb_add_bias(uint64_t out, uint64_t bias, int rows, int cols);
MB_API int mb_add_bias_backward(uint64_t dbias, uint64_t dout, int rows, int cols);

/* ---- int8 weights ---- */
/* C (M, N) = A (M, K) · dequant(W)ᵀ, or += when accumulate, in fp32: W (N, K) int8 per output channel,
 * codes (N, ceil(K/4)) int32 words (code p of row o in byte p % 4 of word o·ceil(K/4) + p/4, rows padded
 * with zero codes), scales (N); dequant(W)[o, p] = scales[o] · code. Rows of A are lda apart, C is packed.
 * At most 8 rows: a GEMV kernel; more: a tiled kernel. No host synchronisation (graph-capturable). */
MB_API int mb_matmul_int8(uint64_t c, uint64_t a, uint64_t codes, uint64_t scales, int m, int n, int k, int lda,
                          int accumulate);
/* Decode (1 <= m <= 8): c (m, n) = rmsnorm(a (m, k), norm) · wᵀ, w (n, k) fp32 or int8 as above.
 * With conv_out (else 0), mb_conv1d_silu_step follows in the same kernel on c's first conv_channels
 * columns (x_stride n; 1 <= conv_channels <= n, 1 <= conv_width <= 8): conv_out (m, conv_channels),
 * conv_state (m, conv_channels, conv_width - 1) updated, conv_weight (conv_channels, conv_width),
 * conv_bias (conv_channels) or 0. */
MB_API int mb_rmsnorm_matmul(uint64_t c, uint64_t a, uint64_t norm, uint64_t w, int m, int n, int k, float eps,
                             uint64_t conv_out, uint64_t conv_state, uint64_t conv_weight, uint64_t conv_bias,
                             int conv_channels, int conv_width);
MB_API int mb_rmsnorm_matmul_int8(uint64_t c, uint64_t a, uint64_t norm, uint64_t codes, uint64_t scales, int m,
                                  int n, int k, float eps, uint64_t conv_out, uint64_t conv_state,
                                  uint64_t conv_weight, uint64_t conv_bias, int conv_channels, int conv_width);

/* ---- embedding ---- */
MB_API int mb_embedding(uint64_t out, uint64_t table, uint64_t tokens, int rows, int dim);
MB_API int mb_embedding_backward(uint64_t dtable, uint64_t dout, uint64_t tokens, int rows, int dim);

/* ---- RMSNorm ---- */
MB_API int mb_rmsnorm(uint64_t out, uint64_t rstd, uint64_t x, uint64_t weight, int rows, int dim, float eps);
MB_API int mb_rmsnorm_backward(uint64_t dx, uint64_t dweight, uint64_t dout, uint64_t x, uint64_t weight,
                               uint64_t rstd, int rows, int dim);

/* ---- causal depthwise conv1d + SiLU (bias may be 0) ---- */
MB_API int mb_conv1d_silu(uint64_t out, uint64_t x, uint64_t weight, uint64_t bias, int batch, int length,
                          int channels, int width, int x_stride);
MB_API int mb_conv1d_silu_backward(uint64_t dx, uint64_t dweight, uint64_t dbias, uint64_t dout, uint64_t x,
                                   uint64_t weight, uint64_t bias, int batch, int length, int channels,
                                   int width, int x_stride);
MB_API int mb_conv1d_silu_step(uint64_t out, uint64_t state, uint64_t x, uint64_t weight, uint64_t bias,
                               int batch, int channels, int width, int x_stride);

/* ---- fused selective scan ---- */
MB_API int mb_selective_scan(uint64_t y, uint64_t u, uint64_t delta, uint64_t dt_bias, uint64_t a_log,
                             uint64_t b, uint64_t c, uint64_t d, uint64_t z, int batch, int length,
                             int channels, int state, int bc_stride, int z_stride);
MB_API int mb_selective_scan_backward(uint64_t du, uint64_t ddelta, uint64_t ddt_bias, uint64_t da_log,
                                      uint64_t db, uint64_t dc, uint64_t dd, uint64_t dz, uint64_t dy,
                                      uint64_t u, uint64_t delta, uint64_t dt_bias, uint64_t a_log,
                                      uint64_t b, uint64_t c, uint64_t d, uint64_t z, int batch, int length,
                                      int channels, int state, int bc_stride, int z_stride);
/* Bytes of the library's workspace that mb_selective_scan_backward needs at these dimensions (host
 * only: no device or mb_init needed); lib/memory_plan.ts plans with the same formula. */
MB_API uint64_t mb_scan_backward_workspace_bytes(int batch, int length, int channels, int state);
/* The decode step with dt_proj fused: δ = dt_in (B, R; rows bc_stride apart) · dt_projᵀ, dt_proj (ED, R). */
MB_API int mb_selective_scan_step(uint64_t y, uint64_t h, uint64_t u, uint64_t dt_in, uint64_t dt_proj,
                                  uint64_t dt_bias, uint64_t a_log, uint64_t b, uint64_t c, uint64_t d,
                                  uint64_t z, int batch, int channels, int state, int rank, int bc_stride,
                                  int z_stride);

/* ---- loss ---- */
/* dlogits may be 0 (no gradient). */
MB_API int mb_cross_entropy(uint64_t losses, uint64_t dlogits, uint64_t logits, uint64_t targets, int rows,
                            int vocab, float grad_scale);

/* ---- optimizer ---- */
/* *result = Σ x² (accumulated in double); waits for the stream. */
MB_API int mb_sum_of_squares(uint64_t x, int64_t n, double* result);
MB_API int mb_adamw(uint64_t param, uint64_t grad, uint64_t m, uint64_t v, int64_t n, float lr, float beta1,
                    float beta2, float eps, float weight_decay, int step, float grad_scale);
/* mb_adamw with 8-bit moments (lib/quant8.ts) over ceil(n / 256) blocks: m_codes (signed) and v_codes
 * hold 256 bytes per block (padding 0), scales (blocks, 2) float32 absmax of m and of v. */
MB_API int mb_adamw_8bit(uint64_t param, uint64_t grad, uint64_t m_codes, uint64_t v_codes, uint64_t scales,
                         int64_t n, float lr, float beta1, float beta2, float eps, float weight_decay, int step,
                         float grad_scale);

/* ---- mixture of experts (lib/backend.ts, MoeOps) ----
 * Every op takes MoeDims as (rows T, experts E, top_k k, capacity C, dim D). choice, slot (T, k) and
 * slot_rows (E·C) are int32. Deterministic: no float atomics. At most 1024 experts. */
/* probs (T, E), choice (T, k) top k (ties: lower expert), gates (T, k) softmax over the chosen logits;
 * dispatch in position order, each expert taking the first C (slot -1 beyond); stats (2) = [aux, dropped]. */
MB_API int mb_moe_route(uint64_t gates, uint64_t choice, uint64_t slot, uint64_t slot_rows, uint64_t probs,
                        uint64_t stats, uint64_t logits, int rows, int experts, int top_k, int capacity, int dim);
/* dlogits (T, E) overwritten: through the gates' softmax, plus aux_scale · ∂aux/∂logits. */
MB_API int mb_moe_route_backward(uint64_t dlogits, uint64_t dgates, uint64_t gates, uint64_t choice,
                                 uint64_t probs, float aux_scale, int rows, int experts, int top_k, int capacity,
                                 int dim);
/* xe (E·C, D) = x[slot_rows] (zero rows for -1). */
MB_API int mb_moe_gather(uint64_t xe, uint64_t x, uint64_t slot_rows, int rows, int experts, int top_k,
                         int capacity, int dim);
/* dx (T, D) += dxe's rows at their positions. slot_rows as mb_moe_route writes it: each expert's rows
 * hold increasing positions, then -1s (each position is found by binary search). */
MB_API int mb_moe_gather_backward(uint64_t dx, uint64_t dxe, uint64_t slot_rows, int rows, int experts, int top_k,
                                  int capacity, int dim);
/* out (T, D) += Σ_j gates[t, j] · ye[slot[t, j]] over the choices not dropped. */
MB_API int mb_moe_scatter(uint64_t out, uint64_t ye, uint64_t gates, uint64_t slot, int rows, int experts,
                          int top_k, int capacity, int dim);
/* dye (E·C, D) overwritten (zero for empty rows), dgates (T, k) overwritten (0 when dropped). */
MB_API int mb_moe_scatter_backward(uint64_t dye, uint64_t dgates, uint64_t dout, uint64_t ye, uint64_t gates,
                                   uint64_t slot, int rows, int experts, int top_k, int capacity, int dim);
/* act = silu(h1) ⊙ h3 over n values, and its backward (dh1, dh3 overwritten). */
MB_API int mb_moe_swiglu(uint64_t act, uint64_t h1, uint64_t h3, int64_t n);
MB_API int mb_moe_swiglu_backward(uint64_t dh1, uint64_t dh3, uint64_t dact, uint64_t h1, uint64_t h3, int64_t n);

/* ---- sampling ---- */
/* Per row b of logits (batch, 256): the next byte as lib/sample.ts's sampleWithUniform picks it with
 * uniforms[b] (top_k 0: all bytes; temperature 0: greedy), into tokens[b] (int32) and history[b] (float). */
MB_API int mb_sample_tokens(uint64_t tokens, uint64_t history, uint64_t logits, uint64_t uniforms, int batch,
                            int top_k, float temperature, float top_p);

#ifdef __cplusplus
}
#endif

#endif
