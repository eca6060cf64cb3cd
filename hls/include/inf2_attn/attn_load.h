// attn_load.h -- the load process of one row's dataflow region (load -> compute -> store).
//
// Called by attend_row() in src/inf2_attention.cpp once per (sequence, KV-head) row. It reads
// everything the row needs from FPGA DRAM, in exactly the order attn_compute.h consumes it:
//   q (group heads) -> pass-1 K blocks (+ tail K, or tail scores) -> pass-2 V blocks (+ tail V).
// Each K/V block is read once and later serves all `group` query heads (GQA broadcast).
//
// DRAM layout (elements, row-major, no padding between rows except row_stride_tokens):
//   q           [n_rows, group, head_dim]           fp16
//   k, v        [n_rows, row_stride_tokens, head_dim] fp16, tokens 0..ctx_len-1 valid
//   tail_k/v    [n_rows, n_tail, head_dim]          fp16      (tail_k: tail_mode 1 only)
//   tail_scores [n_rows, group, n_tail]             fp32      (tail_mode 2 only, already scaled)
//
// Cycle terms (inf2sim/accel.py): ld_beat is one 512-bit beat per cycle (II=1), so a run of
// n tokens costs n * ceil(head_dim / kAxiHalfs) cycles; ld_tscore is one float per cycle.
#ifndef INF2_ATTN_ATTN_LOAD_H
#define INF2_ATTN_ATTN_LOAD_H

#include "inf2_attn/attn_config.h"

namespace inf2 {

// Stream n_tok contiguous rows of head_dim fp16 values, one TokVec per token, zero-padded to
// kMaxHeadDim. The beat loop is the burst: one kAxiHalfs-wide beat per iteration.
template <class C>
void load_tokens(const half* src, int n_tok, int head_dim, hls::stream<TokVec<C>>& out) {
  constexpr int W = C::kAxiHalfs;
  const int beats_per_tok = ceil_div(head_dim, W);
  const int n_beats = n_tok * beats_per_tok;
  TokVec<C> tok(half(0));
  int t = 0, beat_in_tok = 0;
ld_beat:
  for (int b = 0; b < n_beats; ++b) {
#pragma HLS PIPELINE II = 1
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 512
    INF2_TRIP(ld_beat);
  ld_lane:
    for (int w = 0; w < W; ++w) {
#pragma HLS UNROLL
      const int i = beat_in_tok * W + w;
      if (i < head_dim) tok[i] = src[(long)t * head_dim + i];
    }
    if (++beat_in_tok == beats_per_tok) {
      out.write(tok);
      beat_in_tok = 0;
      ++t;
    }
  }
}

template <class C>
void load_row(const half* q, const half* k, const half* v, const half* tail_k, const half* tail_v,
              const float* tail_scores, int r, int ctx_len, int row_stride_tokens, int n_tail, int group,
              int head_dim, int tail_mode, hls::stream<TokVec<C>>& q_strm, hls::stream<TokVec<C>>& tok_strm,
              hls::stream<float>& score_strm) {
  constexpr int B = C::kBlockTokens;
  const long row_kv = (long)r * row_stride_tokens * head_dim;  // first element of row r in k, v
  const long row_tail = (long)r * n_tail * head_dim;           // first element of row r in tail_k/v
  const int n_ctx_blocks = ctx_blocks(ctx_len, B);
  const bool tail = has_tail_block(tail_mode, n_tail);

  // q: the group heads of this KV row are contiguous: [group, head_dim]
  load_tokens<C>(q + (long)r * group * head_dim, group, head_dim, q_strm);

ld_pass1_block:
  for (int blk = 0; blk < n_ctx_blocks; ++blk) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 256
    const int n_valid = (ctx_len - blk * B) < B ? (ctx_len - blk * B) : B;
    load_tokens<C>(k + row_kv + (long)blk * B * head_dim, n_valid, head_dim, tok_strm);
  }
  if (tail && tail_mode == 1) load_tokens<C>(tail_k + row_tail, n_tail, head_dim, tok_strm);
  if (tail && tail_mode == 2) {
    const float* ts = tail_scores + (long)r * group * n_tail;  // [group, n_tail]
  ld_tscore:
    for (int x = 0; x < group * n_tail; ++x) {
#pragma HLS PIPELINE II = 1
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 1024
      INF2_TRIP(ld_tscore);
      score_strm.write(ts[x]);
    }
  }

ld_pass2_block:
  for (int blk = 0; blk < n_ctx_blocks; ++blk) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 256
    const int n_valid = (ctx_len - blk * B) < B ? (ctx_len - blk * B) : B;
    load_tokens<C>(v + row_kv + (long)blk * B * head_dim, n_valid, head_dim, tok_strm);
  }
  if (tail) load_tokens<C>(tail_v + row_tail, n_tail, head_dim, tok_strm);
}

}  // namespace inf2

#endif  // INF2_ATTN_ATTN_LOAD_H
