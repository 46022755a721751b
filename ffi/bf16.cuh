// bf16 storage of fp32 values: the packing shared by mb_pack_bf16 and the matmul's operand copies.
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

// out (n bf16) = in (n floats) rounded to nearest, ties to even; enqueued on the library's stream.
// Launch errors are left for MB_LAUNCHED.
void mb_enqueue_pack_bf16(__nv_bfloat16* out, const float* in, int64_t n);
