// skew_transpose.h -- the on-chip K transpose buffer (HILOS's 128x128 in-place transpose).
//
// Used by attn_compute.h in pass 1: K arrives row-wise, one token (head_dim values) per cycle,
// and the QK MAC array wants one *column* per cycle -- dimension i of all N tokens of the block --
// so that it broadcasts q[i] to N token lanes. K is therefore stored once, row-wise, in FPGA DRAM
// and transposed on chip.
//
// Storage is diagonally skewed: element (token t, dim i) lives in bank (t + i) mod N at address t.
// A row write (fixed t, all i) and a column read (fixed i, all t) then touch every bank exactly
// once, so both run at full width from a single N x N buffer -- no second, transposed copy. The
// caller declares the buffer `T mem[N][N]` ([bank][address]) and partitions dim 1 completely;
// the (t + i) mod N indexing is a barrel rotation of the N lanes.
#ifndef INF2_ATTN_SKEW_TRANSPOSE_H
#define INF2_ATTN_SKEW_TRANSPOSE_H

#include "inf2_attn/attn_config.h"

namespace inf2 {

// Zero the buffer once per kernel call so lanes of never-written tokens hold finite values.
template <typename T, int N>
void skew_clear(T mem[N][N]) {
skew_clear_addr:
  for (int a = 0; a < N; ++a) {
#pragma HLS PIPELINE II = 1
    INF2_TRIP(skew_clear_addr);
  skew_clear_bank:
    for (int b = 0; b < N; ++b) {
#pragma HLS UNROLL
      mem[b][a] = T(0);
    }
  }
}

// Store token t's row (elements 0..N-1). One call per cycle in hardware.
template <typename T, int N, class Vec>
void skew_write_row(T mem[N][N], int t, const Vec& row) {
#pragma HLS INLINE
  static_assert((N & (N - 1)) == 0, "skew transpose size must be a power of two");
skew_write_lane:
  for (int i = 0; i < N; ++i) {
#pragma HLS UNROLL
    mem[(t + i) & (N - 1)][t] = row[i];
  }
}

// Dimension i of all N tokens, widened to float: col[N]. One call per cycle in hardware.
template <typename T, int N>
void skew_read_col(const T mem[N][N], int i, float col[N]) {
#pragma HLS INLINE
skew_read_lane:
  for (int t = 0; t < N; ++t) {
#pragma HLS UNROLL
    col[t] = static_cast<float>(mem[(t + i) & (N - 1)][t]);
  }
}

}  // namespace inf2

#endif  // INF2_ATTN_SKEW_TRANSPOSE_H
