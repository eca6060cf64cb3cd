// attn_store.h -- the store process of one row's dataflow region.
//
// Called by attend_row() in src/inf2_attention.cpp after compute_row (attn_compute.h). Writes
// each query head's fp32 output row and its log-sum-exp back to FPGA DRAM:
//   out [n_rows, group, head_dim] fp32      lse [n_rows, group] fp32 (natural log)
// Cycle terms (inf2sim/accel.py): st_beat moves one 512-bit beat (kAxiBytes / 4 floats) per cycle,
// plus one cycle per head for the lse word.
#ifndef INF2_ATTN_ATTN_STORE_H
#define INF2_ATTN_ATTN_STORE_H

#include "inf2_attn/attn_config.h"

namespace inf2 {

template <class C>
void store_row(hls::stream<OutVec<C>>& o_strm, hls::stream<float>& lse_strm, float* out, float* lse, int r,
               int group, int head_dim) {
  constexpr int W = C::kAxiBytes / 4;  // floats per beat
  const int beats = ceil_div(head_dim, W);
st_head:
  for (int g = 0; g < group; ++g) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 8
    const OutVec<C> o = o_strm.read();
    float* dst = out + ((long)r * group + g) * head_dim;
  st_beat:
    for (int b = 0; b < beats; ++b) {
#pragma HLS PIPELINE II = 1
#pragma HLS LOOP_TRIPCOUNT min = 4 max = 8
      INF2_TRIP(st_beat);
    st_lane:
      for (int w = 0; w < W; ++w) {
#pragma HLS UNROLL
        const int i = b * W + w;
        if (i < head_dim) dst[i] = o[i];
      }
    }
    INF2_TRIP(st_head);  // the lse word
    lse[(long)r * group + g] = lse_strm.read();
  }
}

}  // namespace inf2

#endif  // INF2_ATTN_ATTN_STORE_H
