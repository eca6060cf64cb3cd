// tb_attention.cpp -- C-simulation testbench of the inf2 decode-attention kernel.
//
// Run by `make -C hls csim` as `build/tb_attention build/golden` after scripts/gen_golden.py has
// written the golden cases (format: see that script's docstring). For each case it loads the
// binaries, calls inf2_attention() exactly as the host would, and compares with the torch fp32
// reference:
//   out: max |out - ref| <= kOutTol * max(max |ref|, 1e-3)     (relative to the case's output scale)
//   lse: max |lse - ref| <= kLseTol * max(1, |ref|)            (-inf must match -inf exactly)
// The tolerances are fp16-level (2e-3): the kernel's inputs are fp16 but all arithmetic is fp32,
// so the measured errors, which are printed, are expected near 1e-6.
// Prints one line per case and a final PASS/FAIL; exits 1 on any failure or unreadable file.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "inf2_attn/inf2_attention.h"

namespace {

constexpr double kOutTol = 2e-3;
constexpr double kLseTol = 2e-3;

struct Case {
  std::string name;
  int n_rows, ctx_len, row_stride_tokens, n_tail, group, head_dim, tail_mode;
};

template <typename T>
bool read_file(const std::string& path, std::vector<T>& buf, size_t count) {
  buf.assign(count, T(0));
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    std::fprintf(stderr, "tb: cannot open %s\n", path.c_str());
    return false;
  }
  f.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(count * sizeof(T)));
  if (static_cast<size_t>(f.gcount()) != count * sizeof(T)) {
    std::fprintf(stderr, "tb: %s holds %lld bytes, expected %zu\n", path.c_str(), (long long)f.gcount(),
                 count * sizeof(T));
    return false;
  }
  return true;
}

bool run_case(const std::string& dir, const Case& c) {
  const std::string d = dir + "/" + c.name + "/";
  const size_t nq = (size_t)c.n_rows * c.group * c.head_dim;
  const size_t nkv = (size_t)c.n_rows * c.row_stride_tokens * c.head_dim;
  const size_t ntail = (size_t)c.n_rows * c.n_tail * c.head_dim;
  const size_t nlse = (size_t)c.n_rows * c.group;
  std::vector<half> q, k, v, tail_k, tail_v;
  std::vector<float> tail_scores, ref_out, ref_lse;
  bool ok = read_file(d + "q.f16", q, nq) && read_file(d + "k.f16", k, nkv) && read_file(d + "v.f16", v, nkv) &&
            read_file(d + "out.f32", ref_out, nq) && read_file(d + "lse.f32", ref_lse, nlse);
  if (ok && c.tail_mode == 1) ok = read_file(d + "tail_k.f16", tail_k, ntail);
  if (ok && c.tail_mode != 0) ok = read_file(d + "tail_v.f16", tail_v, ntail);
  if (ok && c.tail_mode == 2) ok = read_file(d + "tail_scores.f32", tail_scores, (size_t)c.n_rows * c.group * c.n_tail);
  if (!ok) return false;

  std::vector<float> scratch((size_t)inf2_attention_scratch_floats(c.ctx_len, c.n_tail, c.group, c.tail_mode) + 1);
  std::vector<float> out(nq, NAN), lse(nlse, NAN);
  inf2_attention(q.data(), k.data(), v.data(), tail_k.empty() ? nullptr : tail_k.data(),
                 tail_v.empty() ? nullptr : tail_v.data(), tail_scores.empty() ? nullptr : tail_scores.data(),
                 scratch.data(), out.data(), lse.data(), c.n_rows, c.ctx_len, c.row_stride_tokens, c.n_tail,
                 c.group, c.head_dim, c.tail_mode);

  double scale = 1e-3, err_out = 0.0, err_lse = 0.0;
  for (float x : ref_out) scale = std::fmax(scale, std::fabs(x));
  for (size_t i = 0; i < nq; ++i) {
    const double e = std::fabs((double)out[i] - ref_out[i]);
    err_out = std::isnan(e) ? INFINITY : std::fmax(err_out, e);
  }
  bool lse_ok = true;
  for (size_t i = 0; i < nlse; ++i) {
    if (std::isinf(ref_lse[i]) || std::isinf(lse[i])) {
      lse_ok = lse_ok && (lse[i] == ref_lse[i]);
      continue;
    }
    const double e = std::fabs((double)lse[i] - ref_lse[i]);
    err_lse = std::isnan(e) ? INFINITY : std::fmax(err_lse, e / std::fmax(1.0, std::fabs(ref_lse[i])));
  }
  const bool pass = err_out <= kOutTol * scale && err_lse <= kLseTol && lse_ok;
  std::printf("%-26s rows=%d ctx=%-5d tail=%d/%-2d group=%d d=%-3d  out_err=%.2e (tol %.2e)  lse_err=%.2e  %s\n",
              c.name.c_str(), c.n_rows, c.ctx_len, c.tail_mode, c.n_tail, c.group, c.head_dim, err_out,
              kOutTol * scale, err_lse, pass ? "ok" : "MISMATCH");
  return pass;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : "build/golden";
  std::ifstream manifest(dir + "/manifest.txt");
  if (!manifest) {
    std::fprintf(stderr, "tb: no %s/manifest.txt (run scripts/gen_golden.py)\nFAIL\n", dir.c_str());
    return 1;
  }
  int n_cases = 0, n_failed = 0;
  std::string line;
  while (std::getline(manifest, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ls(line);
    Case c;
    if (!(ls >> c.name >> c.n_rows >> c.ctx_len >> c.row_stride_tokens >> c.n_tail >> c.group >> c.head_dim >>
          c.tail_mode)) {
      std::fprintf(stderr, "tb: bad manifest line: %s\n", line.c_str());
      return 1;
    }
    ++n_cases;
    if (!run_case(dir, c)) ++n_failed;
  }
  if (n_cases == 0 || n_failed) {
    std::printf("FAIL (%d of %d cases)\n", n_failed, n_cases);
    return 1;
  }
  std::printf("PASS (%d cases)\n", n_cases);
  return 0;
}
