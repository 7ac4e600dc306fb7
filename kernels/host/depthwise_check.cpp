// Runs kernels/depthwise.cu on the CPU (the forward and input-gradient kernels one CUDA
// thread after another; the weight-gradient kernels, which reduce across a block with
// barriers, one OS thread per CUDA thread of a block) and checks every depthwise kernel against a
// plain reference convolution: forward, input gradient, weight gradient, f32 and bf16,
// the 3x3 strip kernels and the one-output-per-thread ones, on geometries chosen for their
// edges (widths not a multiple of the strip, both stride phases, padding 0/1/2).
// Built and run by the `cuda::tests::depthwise_kernels_match_reference_on_the_host` test;
// by hand: c++ -O2 -std=c++20 -pthread kernels/host/depthwise_check.cpp && ./a.out
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

struct dim3 { unsigned x = 1, y = 1, z = 1; };
static thread_local dim3 blockIdx, threadIdx;
static dim3 blockDim, gridDim;
static float red[1 << 16];  // the kernels' `extern __shared__ float red[]` (one block at a time)
static std::barrier<> *block_barrier = nullptr;
#define __device__
#define __global__
#define __forceinline__ inline
#define __restrict__
#define __shared__
#define __launch_bounds__(a, b)
#define __syncthreads() block_barrier->arrive_and_wait()
static inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
#include "../depthwise.cu"

template <typename F> static void run_grid(unsigned gx, unsigned gy, unsigned bx, F f) {
  gridDim = {gx, gy, 1};
  blockDim = {bx, 1, 1};
  std::barrier<> alone(1);  // one thread row: a barrier has nobody to wait for
  block_barrier = &alone;
  for (unsigned by = 0; by < gy; by++)
    for (unsigned b = 0; b < gx; b++)
      for (unsigned t = 0; t < bx; t++) {
        blockIdx = {b, by, 1};
        threadIdx = {t, 0, 1};
        f();
      }
}

// Blocks one after another, the bx x by threads of each at once (OS threads meeting at
// __syncthreads).
template <typename F> static void run_blocks(unsigned gx, unsigned gy, unsigned bx, unsigned by, F f) {
  gridDim = {gx, gy, 1};
  blockDim = {bx, by, 1};
  for (unsigned b = 0; b < gx * gy; b++) {
    std::barrier<> bar(bx * by);
    block_barrier = &bar;
    std::vector<std::thread> ts;
    for (unsigned ty = 0; ty < by; ty++)
      for (unsigned tx = 0; tx < bx; tx++)
        ts.emplace_back([&, tx, ty] {
          blockIdx = {b % gx, b / gx, 1};
          threadIdx = {tx, ty, 1};
          f();
        });
    for (auto &t : ts) t.join();
  }
}

static float round_bf16(float v) { return to_f(from_f<bf16_t>(v)); }

struct Case { int N, H, W, C, K, S, ph, pw; };

static int failures = 0;
static void expect(const char *what, const Case &c, const char *variant, const std::vector<float> &got, const std::vector<float> &want, float tol) {
  float m = 1e-6f, e = 0.f;
  for (size_t i = 0; i < want.size(); i++) m = std::fmax(m, std::fabs(want[i]));
  for (size_t i = 0; i < want.size(); i++) e = std::fmax(e, std::fabs(got[i] - want[i]));
  if (!(e / m <= tol)) {
    failures++;
    std::printf("FAIL %s %s: n%d %dx%d c%d k%d s%d pad %d,%d: max error %g of %g\n", what, variant, c.N, c.H, c.W, c.C, c.K, c.S, c.ph, c.pw, e, m);
  }
}

// fwd/dgrad/wgrad of one dtype and variant against the f32 reference on inputs already
// rounded to that dtype.
template <typename T, int P, int R = 4>
static void check(const Case &c, bool strips, std::mt19937 &rng, bool threaded) {
  Geo g{c.N, c.H, c.W, c.C, (c.H + 2 * c.ph - c.K) / c.S + 1, (c.W + 2 * c.pw - c.K) / c.S + 1, c.K, c.K, c.S, c.S, c.ph, c.pw};
  const int T_ = c.K * c.K;
  const bool bf = sizeof(T) == 2;
  std::normal_distribution<float> nd;
  size_t nx = (size_t)c.N * c.H * c.W * c.C, ny = (size_t)c.N * g.OH * g.OW * c.C;
  std::vector<float> x(nx), w((size_t)T_ * c.C), dy(ny);
  for (auto *v : {&x, &w, &dy})
    for (auto &e : *v) e = bf ? round_bf16(nd(rng)) : nd(rng);
  auto X = [&](int n, int h, int ww, int ch) { return x[((size_t)(n * c.H + h) * c.W + ww) * c.C + ch]; };
  std::vector<float> y_ref(ny, 0.f), dx_ref(nx, 0.f), dw_ref((size_t)T_ * c.C, 0.f);
  for (int n = 0; n < c.N; n++)
    for (int oh = 0; oh < g.OH; oh++)
      for (int ow = 0; ow < g.OW; ow++)
        for (int ch = 0; ch < c.C; ch++) {
          size_t o = ((size_t)(n * g.OH + oh) * g.OW + ow) * c.C + ch;
          for (int kh = 0; kh < c.K; kh++)
            for (int kw = 0; kw < c.K; kw++) {
              int ih = oh * c.S - c.ph + kh, iw = ow * c.S - c.pw + kw;
              if (ih < 0 || ih >= c.H || iw < 0 || iw >= c.W) continue;
              float wt = w[(size_t)(kh * c.K + kw) * c.C + ch];
              y_ref[o] += X(n, ih, iw, ch) * wt;
              dx_ref[((size_t)(n * c.H + ih) * c.W + iw) * c.C + ch] += dy[o] * wt;
              dw_ref[(size_t)(kh * c.K + kw) * c.C + ch] += dy[o] * X(n, ih, iw, ch);
            }
        }
  std::vector<T> xt(nx), wt(w.size()), dyt(ny), yt(ny), dxt(nx);
  for (size_t i = 0; i < nx; i++) xt[i] = from_f<T>(x[i]);
  for (size_t i = 0; i < w.size(); i++) wt[i] = from_f<T>(w[i]);
  for (size_t i = 0; i < ny; i++) dyt[i] = from_f<T>(dy[i]);
  const unsigned cg = c.C / P, bx = 64;
  auto grid = [&](long long t) { return (unsigned)std::min<long long>((t + bx - 1) / bx, 7); };  // few blocks: the grid-stride loops wrap
  const char *variant = strips ? "strip" : "simple";
  const Epi none{nullptr, nullptr, 0.f, 0.f, 0};
  if (strips) {
    // forward and input gradient on strips of R columns (R = 4 or 2, as the host picks per dtype)
    run_grid(grid((long long)c.N * g.OH * ((g.OW + R - 1) / R) * cg), 1, bx, [&] {
      if (c.S == 1) fwd3<T, P, 1, R>(xt.data(), wt.data(), yt.data(), g, none); else fwd3<T, P, 2, R>(xt.data(), wt.data(), yt.data(), g, none);
    });
    run_grid(grid((long long)c.N * c.H * ((c.W + R - 1) / R) * cg), 1, bx, [&] {
      if (c.S == 1) dgrad3<T, P, 1, R>(dyt.data(), wt.data(), dxt.data(), g); else dgrad3<T, P, 2, R>(dyt.data(), wt.data(), dxt.data(), g);
    });
  } else {
    run_grid(grid((long long)c.N * g.OH * g.OW * cg), 1, bx, [&] { fwd<T, P>(xt.data(), wt.data(), yt.data(), g, none); });
    run_grid(grid((long long)c.N * c.H * c.W * cg), 1, bx, [&] { dgrad<T, P>(dyt.data(), wt.data(), dxt.data(), g); });
  }
  // threaded: 4 thread rows per block, so that the kernels' shared-memory reduction across
  // rows runs (OS threads: slow, so only on some geometries); otherwise one row, in turn
  const unsigned chunks = 3, wbx = 8;
  std::vector<float> part((size_t)chunks * T_ * c.C, 0.f);
  auto wg = [&] {
    if (!strips) wgrad<T, P, (P == 1 ? 49 : 9)>(xt.data(), dyt.data(), part.data(), g);
    else if (c.S == 1) wgrad3<T, P, 1, R>(xt.data(), dyt.data(), part.data(), g);
    else wgrad3<T, P, 2, R>(xt.data(), dyt.data(), part.data(), g);
  };
  if (threaded) run_blocks((cg + wbx - 1) / wbx, chunks, wbx, 4, wg);
  else run_grid((cg + wbx - 1) / wbx, chunks, wbx, wg);
  std::vector<float> y(ny), dx(nx), dw((size_t)T_ * c.C, 0.f);
  for (size_t i = 0; i < ny; i++) y[i] = to_f(yt[i]);
  for (size_t i = 0; i < nx; i++) dx[i] = to_f(dxt[i]);
  for (unsigned k = 0; k < chunks; k++)
    for (size_t i = 0; i < dw.size(); i++) dw[i] += part[k * dw.size() + i];
  float tol = bf ? 1e-2f : 1e-5f;
  const char *dt = bf ? "bf16" : "f32";
  char v[32];
  std::snprintf(v, sizeof v, "%s%d %s", variant, strips ? R : 1, dt);
  expect("forward", c, v, y, y_ref, tol);
  expect("input grad", c, v, dx, dx_ref, tol);
  expect("weight grad", c, v, dw, dw_ref, bf ? 1e-5f : 1e-5f);  // f32 accumulation of exact bf16 inputs

  // the inference epilogue: batch norm as scale/shift, then ReLU6 (and a NaN passing through)
  std::vector<float> sc(c.C), sf(c.C), ye_ref(ny);
  for (int ch = 0; ch < c.C; ch++) sc[ch] = 0.5f + 0.1f * ch, sf[ch] = nd(rng);
  for (size_t i = 0; i < ny; i++) {
    float v = std::fmaf(y_ref[i], sc[i % c.C], sf[i % c.C]);
    ye_ref[i] = v < 0.f ? 0.f : (v > 6.f ? 6.f : v);
  }
  if (nx > 0) xt[0] = from_f<T>(NAN);
  const Epi epi{sc.data(), sf.data(), 0.f, 6.f, 1};
  std::vector<T> ye_t(ny);
  if (strips) {
    run_grid(grid((long long)c.N * g.OH * ((g.OW + R - 1) / R) * cg), 1, bx, [&] {
      if (c.S == 1) fwd3<T, P, 1, R>(xt.data(), wt.data(), ye_t.data(), g, epi); else fwd3<T, P, 2, R>(xt.data(), wt.data(), ye_t.data(), g, epi);
    });
  } else {
    run_grid(grid((long long)c.N * g.OH * g.OW * cg), 1, bx, [&] { fwd<T, P>(xt.data(), wt.data(), ye_t.data(), g, epi); });
  }
  // the outputs that read x[0] (n 0, channel 0, the top-left taps) must be NaN
  std::vector<float> ye(ny);
  int nan_seen = 0, nan_want = 0;
  for (size_t i = 0; i < ny; i++) {
    ye[i] = to_f(ye_t[i]);
    const size_t pos = i / c.C;
    const int ow = pos % g.OW, oh = (pos / g.OW) % g.OH, n = pos / ((size_t)g.OW * g.OH);
    const bool reads = n == 0 && i % c.C == 0 && oh * c.S - c.ph <= 0 && oh * c.S - c.ph + c.K > 0 && ow * c.S - c.pw <= 0 && ow * c.S - c.pw + c.K > 0;
    nan_want += reads;
    nan_seen += std::isnan(ye[i]);
    if (reads) ye[i] = ye_ref[i] = 0.f;
  }
  if (nan_seen != nan_want) {
    failures++;
    std::printf("FAIL epilogue %s: %d NaN outputs, %d expected\n", v, nan_seen, nan_want);
  }
  // (the NaN in x also spoils nothing else: the comparison below covers every other output)
  expect("forward + batch norm + ReLU6", c, v, ye, ye_ref, bf ? 1e-2f : 1e-5f);
}

int main() {
  std::mt19937 rng(5);
  int cases = 0;
  for (int S : {1, 2})
    for (int ph : {0, 1, 2})
      for (int H : {1, 2, 5, 8})
        for (int W : {1, 3, 4, 5, 7, 8, 9, 13}) {
          Case c{2, H, W, 8, 3, S, ph, (ph + W) % 3};
          if ((c.H + 2 * c.ph - 3) / S + 1 <= 0 || (c.W + 2 * c.pw - 3) / S + 1 <= 0 || c.H + 2 * c.ph < 3 || c.W + 2 * c.pw < 3) continue;
          const bool th = cases % 25 == 0;
          check<float, 4>(c, true, rng, th);
          check<bf16_t, 8>(c, true, rng, th);
          check<float, 4, 2>(c, true, rng, th);
          check<bf16_t, 8, 2>(c, true, rng, th);
          check<float, 4>(c, false, rng, th);
          check<bf16_t, 8>(c, false, rng, th);
          check<float, 1>(c, false, rng, th);
          cases++;
        }
  for (Case c : {Case{1, 9, 11, 3, 5, 1, 2, 2}, Case{2, 10, 10, 2, 7, 2, 3, 3}, Case{1, 12, 7, 16, 3, 2, 1, 1}}) {
    check<float, 1>(c, false, rng, true);
    check<bf16_t, 1>(c, false, rng, false);
    cases++;
  }
  std::printf("%d geometries, %d failures\n", cases, failures);
  return failures ? 1 : 0;
}
