// attn_config.h -- compile-time configuration and value types of the inf2 decode-attention kernel.
//
// Included by every inf2_attn building block, by the kernel top (src/inf2_attention.cpp) and by
// the testbench. The numbers here are the kernel's *shape* (buffer sizes, lane counts, port width),
// not measured hardware numbers; inf2sim/accel.py mirrors them (KernelShape) and its cycle
// model follows the loop labels named in each block. Units: tokens, elements, bytes, cycles.
#ifndef INF2_ATTN_ATTN_CONFIG_H
#define INF2_ATTN_ATTN_CONFIG_H

#include "hls_shim/hls_half.h"
#include "hls_shim/hls_stream.h"
#include "hls_shim/hls_vector.h"

#if defined(__SYNTHESIS__) || defined(__VITIS_HLS__)
#include <hls_math.h>
#else
#include <cmath>
#endif

// Loop trip counting for tests/test_hls.py, which checks inf2sim/accel.py against the C++ loops:
// built only with -DINF2_TRIP_COUNTS (make trips); otherwise INF2_TRIP(label) is nothing.
#ifdef INF2_TRIP_COUNTS
#include <map>
#include <string>
namespace inf2 {
inline std::map<std::string, long>& trip_counts() {
  static std::map<std::string, long> counts;
  return counts;
}
}  // namespace inf2
#define INF2_TRIP(label) (++::inf2::trip_counts()[#label])
#else
#define INF2_TRIP(label) ((void)0)
#endif

namespace inf2 {

// The HILOS design point (REFERENCE.md, "HILOS accelerator"): 128-token KV blocks, one lane per
// token of a block in pass 1 and one lane per head dimension in pass 2, so the MAC array is
// kBlockTokens == kMaxHeadDim == 128 lanes wide and the K transpose buffer is square.
struct AttnConfig {
  static constexpr int kMaxHeadDim = 128;   // largest head_dim the buffers hold
  static constexpr int kMaxGroup = 8;       // largest GQA group (query heads per KV head)
  static constexpr int kBlockTokens = 128;  // tokens per streamed K/V block
  static constexpr int kMaxTail = 128;      // the write-back tail is processed as one extra block
  static constexpr int kAxiBytes = 64;      // m_axi data width (512 bit) of the KV ports
  static constexpr int kAxiHalfs = kAxiBytes / 2;
  static constexpr int kAccSlots = 8;       // interleaved fp32 partial sums (hide the fadd latency)
  static constexpr int kTokFifoDepth = 2 * kBlockTokens;  // loader may run one block ahead
};

// Score given to padding positions of the last block (and tail-block slots past n_tail).
// After scaling, real scores are O(10); exp(-1e4 - max) underflows to exactly 0 in fp32.
constexpr float kMaskScore = -1.0e4f;

// One K or V token row (or one query head) as it moves through a stream: head_dim fp16
// values, zero-padded to kMaxHeadDim. [kMaxHeadDim] half
template <class C>
using TokVec = hls::vector<half, C::kMaxHeadDim>;

// One query head's output row. [kMaxHeadDim] float
template <class C>
using OutVec = hls::vector<float, C::kMaxHeadDim>;

inline float to_float(half x) { return static_cast<float>(x); }

inline float attn_exp(float x) {
#if defined(__SYNTHESIS__) || defined(__VITIS_HLS__)
  return hls::exp(x);
#else
  return std::exp(x);
#endif
}

inline float attn_log(float x) {
#if defined(__SYNTHESIS__) || defined(__VITIS_HLS__)
  return hls::log(x);
#else
  return std::log(x);
#endif
}

inline float attn_rsqrt(float x) {
#if defined(__SYNTHESIS__) || defined(__VITIS_HLS__)
  return hls::rsqrt(x);
#else
  return 1.0f / std::sqrt(x);
#endif
}

inline float attn_max(float a, float b) { return a > b ? a : b; }

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Blocks one row walks through: the stored context in kBlockTokens chunks, plus one block for
// the write-back tail when tail_mode != 0 and n_tail > 0.
inline int ctx_blocks(int ctx_len, int block_tokens) { return ceil_div(ctx_len, block_tokens); }
inline bool has_tail_block(int tail_mode, int n_tail) { return tail_mode != 0 && n_tail > 0; }

}  // namespace inf2

#endif  // INF2_ATTN_ATTN_CONFIG_H
