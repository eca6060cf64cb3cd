// attn_compute.h -- the compute process: two-pass softmax attention for one (sequence, KV-head) row.
//
// Called by attend_row() in src/inf2_attention.cpp, between load_row (attn_load.h) and store_row
// (attn_store.h). Consumes, in order: `group` query heads, the pass-1 K blocks (or, for the
// tail block of tail_mode 2, precomputed scores), then the pass-2 V blocks. Produces one fp32
// output row and one log-sum-exp per query head.
//
// Pass 1, per block: K tokens go into the skewed transpose buffer (p1_kwrite); for each head the
// 128-lane MAC array broadcasts q[i] against column i of K^T (p1_qk_dim, head_dim cycles) giving
// 128 scores; padding lanes get kMaskScore; then the block max and the exp-sum under the running
// max update (m, l) online (p1_sm_tok) while the scaled scores spill to `scratch` in FPGA DRAM.
// Pass 2, per block: V tokens go into vbuf (p2_vwrite); for each head and valid token the score
// comes back from scratch, is normalised p = exp(s - m) / l, and the same 128 lanes (now one per
// head dimension) accumulate p * v (p2_pv_tok). The output needs no final division.
// Numerics: fp16 storage, fp32 products, sums, exp and log. fp32 accumulators are split into
// kAccSlots interleaved partial sums so a pipelined loop never waits on its own fadd (II = 1).
//
// scratch layout (per call, reused row after row): [n_blocks, group, kBlockTokens] fp32, where
// n_blocks = ceil(ctx_len / kBlockTokens) + (1 if a tail block).
#ifndef INF2_ATTN_ATTN_COMPUTE_H
#define INF2_ATTN_ATTN_COMPUTE_H

#include <limits>

#include "inf2_attn/attn_config.h"
#include "inf2_attn/skew_transpose.h"

namespace inf2 {

// Pass 1, ctx (or tail_mode 1) block: s[g][t] = q_g . k_t * scale, kMaskScore past n_valid.
template <class C>
void qk_block(const half kt[C::kBlockTokens][C::kMaxHeadDim], const float qf[C::kMaxGroup][C::kMaxHeadDim],
              float s[C::kMaxGroup][C::kBlockTokens], int group, int head_dim, int n_valid, float scale) {
  constexpr int B = C::kBlockTokens;
  constexpr int S = C::kAccSlots;
p1_qk_head:
  for (int g = 0; g < group; ++g) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 8
    float acc[S][B];  // [slot][token] partial dot products
#pragma HLS ARRAY_PARTITION variable = acc type = complete dim = 0
  p1_qk_dim:
    for (int i = 0; i < head_dim; ++i) {
#pragma HLS PIPELINE II = 1
#pragma HLS LOOP_TRIPCOUNT min = 64 max = 128
      INF2_TRIP(p1_qk_dim);
      float col[B];
      skew_read_col<half, B>(kt, i, col);
      const float qi = qf[g][i];
      const int slot = i % S;
    p1_qk_lane:
      for (int t = 0; t < B; ++t) {
#pragma HLS UNROLL
        acc[slot][t] = (i < S ? 0.0f : acc[slot][t]) + qi * col[t];
      }
    }
    INF2_TRIP(p1_qk_mask);
  p1_qk_mask:
    for (int t = 0; t < B; ++t) {
#pragma HLS UNROLL
      float dot = 0.0f;
    p1_qk_reduce:
      for (int j = 0; j < S; ++j) {
#pragma HLS UNROLL
        dot += (j < head_dim) ? acc[j][t] : 0.0f;
      }
      s[g][t] = (t < n_valid) ? dot * scale : kMaskScore;
    }
  }
}

// Pass 1, tail_mode 2 block: the host already computed q . k_tail / sqrt(d) for n_tail tokens.
template <class C>
void tail_score_block(hls::stream<float>& score_strm, float s[C::kMaxGroup][C::kBlockTokens], int group,
                      int n_tail) {
  constexpr int B = C::kBlockTokens;
p1_ts_head:
  for (int g = 0; g < group; ++g) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 8
  p1_ts_tok:
    for (int t = 0; t < B; ++t) {
#pragma HLS PIPELINE II = 1
      INF2_TRIP(p1_ts_tok);
      s[g][t] = (t < n_tail) ? score_strm.read() : kMaskScore;
    }
  }
}

// Pass 1, every block: online max/sum update and score spill. spill: [group, kBlockTokens]
template <class C>
void softmax_update(const float s[C::kMaxGroup][C::kBlockTokens], float m[C::kMaxGroup], float l[C::kMaxGroup],
                    float* spill, int group) {
  constexpr int B = C::kBlockTokens;
  constexpr int S = C::kAccSlots;
p1_sm_head:
  for (int g = 0; g < group; ++g) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 8
    float bmax = kMaskScore;
    INF2_TRIP(p1_sm_max);
  p1_sm_max:
    for (int t = 0; t < B; ++t) {
#pragma HLS UNROLL
      bmax = attn_max(bmax, s[g][t]);
    }
    const float m_new = attn_max(m[g], bmax);
    float part[S];
#pragma HLS ARRAY_PARTITION variable = part type = complete
  p1_sm_zero:
    for (int j = 0; j < S; ++j) {
#pragma HLS UNROLL
      part[j] = 0.0f;
    }
  p1_sm_tok:
    for (int t = 0; t < B; ++t) {
#pragma HLS PIPELINE II = 1
      INF2_TRIP(p1_sm_tok);
      part[t % S] += attn_exp(s[g][t] - m_new);
      spill[g * B + t] = s[g][t];
    }
    float blk_sum = 0.0f;
    INF2_TRIP(p1_sm_reduce);  // with the (m, l) update
  p1_sm_reduce:
    for (int j = 0; j < S; ++j) {
#pragma HLS UNROLL
      blk_sum += part[j];
    }
    // Rescale the running sum to the new max; exp(-inf) = 0 covers the first block.
    l[g] = l[g] * attn_exp(m[g] - m_new) + blk_sum;
    m[g] = m_new;
  }
}

// Pass 2, every block: o_acc[g] += sum_t (exp(s_t - m) / l) * v_t over the n_valid tokens.
template <class C>
void pv_block(const half vbuf[C::kBlockTokens][C::kMaxHeadDim], const float* spill, const float m[C::kMaxGroup],
              const float l[C::kMaxGroup], float o_acc[C::kMaxGroup][C::kAccSlots][C::kMaxHeadDim], int group,
              int n_valid) {
  constexpr int B = C::kBlockTokens;
  constexpr int D = C::kMaxHeadDim;
  constexpr int S = C::kAccSlots;
p2_pv_head:
  for (int g = 0; g < group; ++g) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 8
    INF2_TRIP(p2_pv_head);  // 1 / l
    const float inv_l = 1.0f / l[g];
  p2_pv_tok:
    for (int t = 0; t < n_valid; ++t) {
#pragma HLS PIPELINE II = 1
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 128
      INF2_TRIP(p2_pv_tok);
      const float p = attn_exp(spill[g * B + t] - m[g]) * inv_l;
      const int slot = t % S;
    p2_pv_lane:
      for (int i = 0; i < D; ++i) {
#pragma HLS UNROLL
        o_acc[g][slot][i] += p * to_float(vbuf[t][i]);
      }
    }
  }
}

template <class C>
void compute_row(hls::stream<TokVec<C>>& q_strm, hls::stream<TokVec<C>>& tok_strm, hls::stream<float>& score_strm,
                 float* scratch, int ctx_len, int n_tail, int group, int head_dim, int tail_mode,
                 hls::stream<OutVec<C>>& o_strm, hls::stream<float>& lse_strm) {
  constexpr int B = C::kBlockTokens;
  constexpr int D = C::kMaxHeadDim;
  constexpr int G = C::kMaxGroup;
  constexpr int S = C::kAccSlots;
  static_assert(B == D, "pass 1 (token lanes) and pass 2 (dim lanes) share one square MAC array");

  const float scale = attn_rsqrt(static_cast<float>(head_dim));
  const int n_ctx = ctx_blocks(ctx_len, B);
  const int n_blocks = n_ctx + (has_tail_block(tail_mode, n_tail) ? 1 : 0);

  half kt[B][D];  // skewed K^T buffer: [bank][token]
#pragma HLS ARRAY_PARTITION variable = kt type = complete dim = 1
  half vbuf[B][D];  // [token][dim]
#pragma HLS ARRAY_PARTITION variable = vbuf type = complete dim = 2
  float qf[G][D];  // [head][dim]
  float s[G][B];   // [head][token] scaled scores of the current block
#pragma HLS ARRAY_PARTITION variable = s type = complete dim = 2
  float m[G], l[G];        // running max and sum of exp per head
  float o_acc[G][S][D];    // [head][slot][dim]
#pragma HLS ARRAY_PARTITION variable = o_acc type = complete dim = 3

  skew_clear<half, B>(kt);
cp_q_head:
  for (int g = 0; g < group; ++g) {
#pragma HLS PIPELINE II = 1
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 8
    INF2_TRIP(cp_q_head);
    const TokVec<C> qv = q_strm.read();
  cp_q_lane:
    for (int i = 0; i < D; ++i) {
#pragma HLS UNROLL
      qf[g][i] = to_float(qv[i]);
    }
  }
cp_init:
  for (int x = 0; x < group * S; ++x) {
#pragma HLS PIPELINE II = 1
#pragma HLS LOOP_TRIPCOUNT min = 8 max = 64
    INF2_TRIP(cp_init);
    const int g = x / S, j = x % S;
  cp_init_lane:
    for (int i = 0; i < D; ++i) {
#pragma HLS UNROLL
      o_acc[g][j][i] = 0.0f;
    }
    if (j == 0) {
      m[g] = -std::numeric_limits<float>::infinity();
      l[g] = 0.0f;
    }
  }

p1_block:
  for (int blk = 0; blk < n_blocks; ++blk) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 257
    const bool is_tail = blk == n_ctx;
    const int n_valid = is_tail ? n_tail : ((ctx_len - blk * B) < B ? (ctx_len - blk * B) : B);
    if (is_tail && tail_mode == 2) {
      tail_score_block<C>(score_strm, s, group, n_tail);
    } else {
    p1_kwrite:
      for (int t = 0; t < n_valid; ++t) {
#pragma HLS PIPELINE II = 1
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 128
        INF2_TRIP(p1_kwrite);
        skew_write_row<half, B>(kt, t, tok_strm.read());
      }
      qk_block<C>(kt, qf, s, group, head_dim, n_valid, scale);
    }
    softmax_update<C>(s, m, l, scratch + (long)blk * group * B, group);
  }

p2_block:
  for (int blk = 0; blk < n_blocks; ++blk) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 257
    const bool is_tail = blk == n_ctx;
    const int n_valid = is_tail ? n_tail : ((ctx_len - blk * B) < B ? (ctx_len - blk * B) : B);
  p2_vwrite:
    for (int t = 0; t < n_valid; ++t) {
#pragma HLS PIPELINE II = 1
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 128
      INF2_TRIP(p2_vwrite);
      const TokVec<C> vv = tok_strm.read();
    p2_vwrite_lane:
      for (int i = 0; i < D; ++i) {
#pragma HLS UNROLL
        vbuf[t][i] = vv[i];
      }
    }
    pv_block<C>(vbuf, scratch + (long)blk * group * B, m, l, o_acc, group, n_valid);
  }

cp_out_head:
  for (int g = 0; g < group; ++g) {
#pragma HLS PIPELINE II = 1
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 8
    INF2_TRIP(cp_out_head);
    OutVec<C> o;
  cp_out_lane:
    for (int i = 0; i < D; ++i) {
#pragma HLS UNROLL
      float sum = 0.0f;
    cp_out_slot:
      for (int j = 0; j < S; ++j) {
#pragma HLS UNROLL
        sum += o_acc[g][j][i];
      }
      o[i] = sum;
    }
    o_strm.write(o);
    // Natural-log LSE of the scaled scores; -inf (and a zero row) when the row has no tokens.
    lse_strm.write(m[g] + attn_log(l[g]));
  }
}

}  // namespace inf2

#endif  // INF2_ATTN_ATTN_COMPUTE_H
