// hls_stream.h -- our g++ stand-in for Vitis HLS's <hls_stream.h> (written for inf2, not a Xilinx file).
//
// Included by inf2_attn/attn_types.h for g++ builds. C simulation runs the processes of a
// DATAFLOW region one after another, so a stream here is an unbounded FIFO (std::deque); the
// DEPTH template argument only documents the hardware FIFO depth. Reading an empty stream is a
// kernel bug (the RTL would hang), so it aborts with the stream's name instead of returning junk.
#ifndef INF2_HLS_SHIM_HLS_STREAM_H
#define INF2_HLS_SHIM_HLS_STREAM_H

#if defined(__SYNTHESIS__) || defined(__VITIS_HLS__)
#include <hls_stream.h>
#else
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <string>
#include <utility>

namespace hls {

template <typename T, int DEPTH = 2>
class stream {
 public:
  stream() : name_("unnamed") {}
  explicit stream(const char* name) : name_(name) {}
  stream(const stream&) = delete;
  stream& operator=(const stream&) = delete;

  void write(const T& x) { fifo_.push_back(x); }
  T read() {
    if (fifo_.empty()) {
      std::fprintf(stderr, "hls::stream '%s' read while empty (would deadlock in hardware)\n", name_.c_str());
      std::abort();
    }
    T x = std::move(fifo_.front());
    fifo_.pop_front();
    return x;
  }
  void read(T& x) { x = read(); }
  bool read_nb(T& x) {
    if (fifo_.empty()) return false;
    x = read();
    return true;
  }
  bool write_nb(const T& x) {
    write(x);
    return true;
  }
  void operator<<(const T& x) { write(x); }
  void operator>>(T& x) { x = read(); }
  bool empty() const { return fifo_.empty(); }
  bool full() const { return false; }
  std::size_t size() const { return fifo_.size(); }

 private:
  std::deque<T> fifo_;
  std::string name_;
};

}  // namespace hls
#endif

#endif  // INF2_HLS_SHIM_HLS_STREAM_H
