// inf2_attention.h -- the C ABI of the inf2 near-storage decode-attention kernel.
//
// Included by the kernel top (src/inf2_attention.cpp), the testbench (tb/tb_attention.cpp); the
// same symbols are what inf2hw/csd/hls_kernel.py binds with ctypes from build/libinf2attn.so.
//
// One call computes decode attention for n_rows (sequence, KV-head) rows. Row r serves the `group`
// query heads that share KV head r (GQA); each K/V block is read once for all of them.
//
// Layout in device memory (row-major, little-endian):
//   q            [n_rows, group, head_dim]              fp16
//   k, v         [n_rows, row_stride_tokens, head_dim]  fp16   tokens [0, ctx_len) are valid;
//                                                              row_stride_tokens >= ctx_len is the
//                                                              host's capacity per row
//   tail_k       [n_rows, n_tail, head_dim]             fp16   tail_mode 1 (v1 write-back)
//   tail_v       [n_rows, n_tail, head_dim]             fp16   tail_mode 1 and 2
//   tail_scores  [n_rows, group, n_tail]                fp32   tail_mode 2 (v2): q.k/sqrt(head_dim)
//   scratch      [n_blocks, group, 128]                 fp32   n_blocks = ceil(ctx_len/128) + (tail?1:0);
//                                                              reused by every row (see
//                                                              inf2_attention_scratch_floats)
//   out          [n_rows, group, head_dim]              fp32   softmax(q K^T / sqrt(d)) V, normalised
//   lse          [n_rows, group]                        fp32   natural-log log-sum-exp of the scaled
//                                                              scores (-inf for a row with no tokens)
// Pointers the tail_mode does not use may be null (in a Vitis build: any dummy buffer).
// Preconditions (the host checks them; the hardware does not): 1 <= head_dim <= 128,
// 1 <= group <= 8, 0 <= n_tail <= 128, 0 <= ctx_len <= row_stride_tokens, tail_mode in {0,1,2}.
// Partial results over disjoint token sets merge exactly: lse = logsumexp_i(lse_i),
// out = sum_i exp(lse_i - lse) * out_i.
#ifndef INF2_ATTN_INF2_ATTENTION_H
#define INF2_ATTN_INF2_ATTENTION_H

#include "hls_shim/hls_half.h"

extern "C" {

void inf2_attention(const half* q, const half* k, const half* v, const half* tail_k, const half* tail_v,
                    const float* tail_scores, float* scratch, float* out, float* lse, int n_rows, int ctx_len,
                    int row_stride_tokens, int n_tail, int group, int head_dim, int tail_mode);

#ifndef __SYNTHESIS__
// Host helpers (not part of the hardware kernel).
// Floats the scratch buffer must hold for one call.
long inf2_attention_scratch_floats(int ctx_len, int n_tail, int group, int tail_mode);
// Compile-time config: writes {kMaxHeadDim, kMaxGroup, kBlockTokens, kMaxTail, kAxiBytes, kAccSlots}.
void inf2_attention_config(int out[6]);
#endif
}

#endif  // INF2_ATTN_INF2_ATTENTION_H
