// inf2_attention.cpp -- kernel top of the inf2 near-storage decode-attention accelerator.
//
// Built three ways from this one file: by vitis_hls / v++ for the SmartSSD FPGA (scripts/csynth.tcl,
// `make csynth|sw_emu|hw_emu|hw`), by g++ into the testbench (`make csim`), and by g++ into
// build/libinf2attn.so (`make lib`), which inf2hw/csd/hls_kernel.py calls. The ABI and the data
// layout are documented in include/inf2_attn/inf2_attention.h.
//
// Structure: a thin top with interface pragmas loops over rows; each row is a DATAFLOW region
// load_row -> compute_row -> store_row connected by streams, so the next K/V block streams in
// from FPGA DRAM while the current one is being multiplied.
#include "inf2_attn/inf2_attention.h"

#include "inf2_attn/attn_compute.h"
#include "inf2_attn/attn_config.h"
#include "inf2_attn/attn_load.h"
#include "inf2_attn/attn_store.h"

namespace {

using Cfg = inf2::AttnConfig;

void attend_row(const half* q, const half* k, const half* v, const half* tail_k, const half* tail_v,
                const float* tail_scores, float* scratch, float* out, float* lse, int r, int ctx_len,
                int row_stride_tokens, int n_tail, int group, int head_dim, int tail_mode) {
#pragma HLS DATAFLOW
  hls::stream<inf2::TokVec<Cfg>> q_strm("q_strm");
  hls::stream<inf2::TokVec<Cfg>> tok_strm("tok_strm");
  hls::stream<float> score_strm("score_strm");
  hls::stream<inf2::OutVec<Cfg>> o_strm("o_strm");
  hls::stream<float> lse_strm("lse_strm");
#pragma HLS STREAM variable = q_strm depth = 8
#pragma HLS STREAM variable = tok_strm depth = 256
#pragma HLS STREAM variable = score_strm depth = 1024
#pragma HLS STREAM variable = o_strm depth = 8
#pragma HLS STREAM variable = lse_strm depth = 8

  inf2::load_row<Cfg>(q, k, v, tail_k, tail_v, tail_scores, r, ctx_len, row_stride_tokens, n_tail, group, head_dim,
                      tail_mode, q_strm, tok_strm, score_strm);
  inf2::compute_row<Cfg>(q_strm, tok_strm, score_strm, scratch, ctx_len, n_tail, group, head_dim, tail_mode, o_strm,
                         lse_strm);
  inf2::store_row<Cfg>(o_strm, lse_strm, out, lse, r, group, head_dim);
}

}  // namespace

extern "C" void inf2_attention(const half* q, const half* k, const half* v, const half* tail_k, const half* tail_v,
                               const float* tail_scores, float* scratch, float* out, float* lse, int n_rows,
                               int ctx_len, int row_stride_tokens, int n_tail, int group, int head_dim,
                               int tail_mode) {
  // K and V get their own 512-bit read ports; q and the tail share one; scratch and the results
  // have their own, so every DATAFLOW process owns the bundles it touches.
#pragma HLS INTERFACE m_axi port = k offset = slave bundle = gmem_k max_read_burst_length = 64 depth = 1048576
#pragma HLS INTERFACE m_axi port = v offset = slave bundle = gmem_v max_read_burst_length = 64 depth = 1048576
#pragma HLS INTERFACE m_axi port = q offset = slave bundle = gmem_in depth = 8192
#pragma HLS INTERFACE m_axi port = tail_k offset = slave bundle = gmem_in depth = 8192
#pragma HLS INTERFACE m_axi port = tail_v offset = slave bundle = gmem_in depth = 8192
#pragma HLS INTERFACE m_axi port = tail_scores offset = slave bundle = gmem_in depth = 8192
#pragma HLS INTERFACE m_axi port = scratch offset = slave bundle = gmem_scr depth = 262144
#pragma HLS INTERFACE m_axi port = out offset = slave bundle = gmem_out depth = 8192
#pragma HLS INTERFACE m_axi port = lse offset = slave bundle = gmem_out depth = 64
#pragma HLS INTERFACE s_axilite port = q
#pragma HLS INTERFACE s_axilite port = k
#pragma HLS INTERFACE s_axilite port = v
#pragma HLS INTERFACE s_axilite port = tail_k
#pragma HLS INTERFACE s_axilite port = tail_v
#pragma HLS INTERFACE s_axilite port = tail_scores
#pragma HLS INTERFACE s_axilite port = scratch
#pragma HLS INTERFACE s_axilite port = out
#pragma HLS INTERFACE s_axilite port = lse
#pragma HLS INTERFACE s_axilite port = n_rows
#pragma HLS INTERFACE s_axilite port = ctx_len
#pragma HLS INTERFACE s_axilite port = row_stride_tokens
#pragma HLS INTERFACE s_axilite port = n_tail
#pragma HLS INTERFACE s_axilite port = group
#pragma HLS INTERFACE s_axilite port = head_dim
#pragma HLS INTERFACE s_axilite port = tail_mode
#pragma HLS INTERFACE s_axilite port = return

rows:
  for (int r = 0; r < n_rows; ++r) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 64
    attend_row(q, k, v, tail_k, tail_v, tail_scores, scratch, out, lse, r, ctx_len, row_stride_tokens, n_tail, group,
               head_dim, tail_mode);
  }
}

#ifndef __SYNTHESIS__
extern "C" long inf2_attention_scratch_floats(int ctx_len, int n_tail, int group, int tail_mode) {
  const long n_blocks = inf2::ctx_blocks(ctx_len, Cfg::kBlockTokens) + (inf2::has_tail_block(tail_mode, n_tail) ? 1 : 0);
  return n_blocks * group * Cfg::kBlockTokens;
}

extern "C" void inf2_attention_config(int out[6]) {
  out[0] = Cfg::kMaxHeadDim;
  out[1] = Cfg::kMaxGroup;
  out[2] = Cfg::kBlockTokens;
  out[3] = Cfg::kMaxTail;
  out[4] = Cfg::kAxiBytes;
  out[5] = Cfg::kAccSlots;
}
#endif

#ifdef INF2_TRIP_COUNTS
// Trip counts per loop label since the last reset (make trips; used by tests/test_hls.py).
extern "C" long inf2_trip_count(const char* label) {
  const auto it = inf2::trip_counts().find(label);
  return it == inf2::trip_counts().end() ? 0 : it->second;
}
extern "C" void inf2_trip_reset() { inf2::trip_counts().clear(); }
#endif
