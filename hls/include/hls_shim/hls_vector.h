// hls_vector.h -- our g++ stand-in for Vitis HLS's <hls_vector.h> (written for inf2, not a Xilinx file).
//
// Included by inf2_attn/attn_types.h for g++ builds. Only what the kernel uses: a fixed-size
// value type with element access and a fill constructor. In hardware hls::vector<T, N> is one
// wide word (N*sizeof(T) bytes) that moves through a stream in one beat.
#ifndef INF2_HLS_SHIM_HLS_VECTOR_H
#define INF2_HLS_SHIM_HLS_VECTOR_H

#if defined(__SYNTHESIS__) || defined(__VITIS_HLS__)
#include <hls_vector.h>
#else
#include <cstddef>

namespace hls {

template <typename T, std::size_t N>
class vector {
 public:
  vector() = default;
  explicit vector(const T& fill) {
    for (std::size_t i = 0; i < N; ++i) data_[i] = fill;
  }
  T& operator[](std::size_t i) { return data_[i]; }
  const T& operator[](std::size_t i) const { return data_[i]; }
  static constexpr std::size_t size() { return N; }

 private:
  T data_[N];
};

}  // namespace hls
#endif

#endif  // INF2_HLS_SHIM_HLS_VECTOR_H
