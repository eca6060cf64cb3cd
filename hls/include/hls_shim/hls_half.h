// hls_half.h -- our g++ stand-in for Vitis HLS's <hls_half.h> (written for inf2, not a Xilinx file).
//
// Included by inf2_attn/attn_types.h when building with g++ (csim, libinf2attn.so). Under
// __SYNTHESIS__ (or the Vitis HLS front end) the real Xilinx header is used instead.
// `half` is IEEE-754 binary16: GCC's _Float16 (x86-64 g++ >= 12). Arithmetic on it is
// not used by the kernel: every value is widened to float before a multiply or an add.
#ifndef INF2_HLS_SHIM_HLS_HALF_H
#define INF2_HLS_SHIM_HLS_HALF_H

#if defined(__SYNTHESIS__) || defined(__VITIS_HLS__)
#include <hls_half.h>
#else
typedef _Float16 half;
static_assert(sizeof(half) == 2, "half must be a 16-bit IEEE binary16 type");
#endif

#endif  // INF2_HLS_SHIM_HLS_HALF_H
