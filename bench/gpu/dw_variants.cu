// Throw-away measurement for #8 (built with nvcc on the GPU machine by dw_variants.sh):
// forward-kernel variants for 3x3 depthwise convolutions, timed with CUDA events on
// MobileNetV2's depthwise shapes at batch 128, NHWC, f32 and bf16. Each variant's output
// is compared with kernels/depthwise.cu's fwd3 (R=4), the one in use.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <cuda_runtime.h>
#include "../../kernels/depthwise.cu"

// Generalised strip: RH output rows x R output columns per thread.
template <typename T, int P, int S, int R, int RH>
__device__ void fwd3x(const T *__restrict__ x, const T *__restrict__ w, T *__restrict__ y, Geo g) {
  constexpr int K = 3, COLS = (R - 1) * S + K, ROWS = (RH - 1) * S + K;
  const unsigned cg = g.C / P;
  const unsigned strips = (g.OW + R - 1) / R, bands = (g.OH + RH - 1) / RH;
  const unsigned total = (unsigned)g.N * bands * strips * cg;
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const int c0 = (int)(i % cg) * P;
    unsigned r = i / cg;
    const int ow0 = (int)(r % strips) * R;
    r /= strips;
    const int oh0 = (int)(r % bands) * RH;
    const int n = (int)(r / bands);
    const int iw0 = ow0 * S - g.pw;
    float acc[RH][R][P];
#pragma unroll
    for (int a = 0; a < RH; a++)
#pragma unroll
      for (int q = 0; q < R; q++)
#pragma unroll
        for (int p = 0; p < P; p++) acc[a][q][p] = 0.f;
#pragma unroll
    for (int rr = 0; rr < ROWS; rr++) {
      const int ih = oh0 * S - g.ph + rr;
      if (ih < 0 || ih >= g.H) continue;
      const T *row = x + (n * g.H + ih) * g.W * g.C + c0;
      float xs[COLS][P];
#pragma unroll
      for (int j = 0; j < COLS; j++) {
        const int iw = iw0 + j;
        if (iw >= 0 && iw < g.W) load<T, P>(row + iw * g.C, xs[j]);
        else {
#pragma unroll
          for (int p = 0; p < P; p++) xs[j][p] = 0.f;
        }
      }
#pragma unroll
      for (int a = 0; a < RH; a++) {
        const int kh = rr - a * S;
        if (kh < 0 || kh >= K) continue;
#pragma unroll
        for (int kw = 0; kw < K; kw++) {
          float wv[P];
          load<T, P>(w + (kh * K + kw) * g.C + c0, wv);
#pragma unroll
          for (int q = 0; q < R; q++)
#pragma unroll
            for (int p = 0; p < P; p++) acc[a][q][p] = fmaf(xs[q * S + kw][p], wv[p], acc[a][q][p]);
        }
      }
    }
#pragma unroll
    for (int a = 0; a < RH; a++) {
      if (oh0 + a >= g.OH) continue;
      T *out = y + ((n * g.OH + oh0 + a) * g.OW + ow0) * g.C + c0;
#pragma unroll
      for (int q = 0; q < R; q++)
        if (ow0 + q < g.OW) store<T, P>(out + q * g.C, acc[a][q]);
    }
  }
}

// Shared-memory tile: a block computes TH output rows x the full output width for one
// channel chunk of CV vectors; it stages the input rows it needs in shared memory
// (coalesced, each element from global memory once), then each thread computes strips of
// R columns from there.
template <typename T, int P, int S, int R, int TH, int CV>
__device__ void fwd3s(const T *__restrict__ x, const T *__restrict__ w, T *__restrict__ y, Geo g) {
  constexpr int K = 3, ROWS = (TH - 1) * S + K;
  extern __shared__ __align__(16) unsigned char smem[];
  Pack<T, P> *tile = reinterpret_cast<Pack<T, P> *>(smem);  // [ROWS][W + 2 pw][CV]
  const int cg = g.C / P;
  const int chunks = (cg + CV - 1) / CV;
  const int bands = (g.OH + TH - 1) / TH;
  const int WP = g.W + 2 * g.pw;
  int b = blockIdx.x;
  const int ch = b % chunks;
  b /= chunks;
  const int oh0 = (b % bands) * TH;
  const int n = b / bands;
  const int v0 = ch * CV;
  const int cv = min(CV, cg - v0);
  const int ih0 = oh0 * S - g.ph;
  // stage
  const int items = ROWS * WP * CV;
  for (int t = threadIdx.x; t < items; t += blockDim.x) {
    const int v = t % CV;
    const int col = (t / CV) % WP;
    const int rr = t / (CV * WP);
    const int ih = ih0 + rr, iw = col - g.pw;
    Pack<T, P> val;
    if (v < cv && ih >= 0 && ih < g.H && iw >= 0 && iw < g.W)
      val = *reinterpret_cast<const Pack<T, P> *>(x + ((n * g.H + ih) * g.W + iw) * g.C + (v0 + v) * P);
    else {
#pragma unroll
      for (int p = 0; p < P; p++) val.v[p] = from_f<T>(0.f);
    }
    tile[t] = val;
  }
  __syncthreads();
  const int strips = (g.OW + R - 1) / R;
  const int work = TH * strips * CV;
  for (int t = threadIdx.x; t < work; t += blockDim.x) {
    const int v = t % CV;
    const int s = (t / CV) % strips;
    const int a = t / (CV * strips);
    const int oh = oh0 + a;
    if (v >= cv || oh >= g.OH) continue;
    const int c0 = (v0 + v) * P;
    const int ow0 = s * R;
    float acc[R][P];
#pragma unroll
    for (int q = 0; q < R; q++)
#pragma unroll
      for (int p = 0; p < P; p++) acc[q][p] = 0.f;
#pragma unroll
    for (int kh = 0; kh < K; kh++) {
      const int rr = a * S + kh;
      float wv[K][P];
#pragma unroll
      for (int kw = 0; kw < K; kw++) load<T, P>(w + (kh * K + kw) * g.C + c0, wv[kw]);
#pragma unroll
      for (int j = 0; j < (R - 1) * S + K; j++) {
        const int col = ow0 * S + j;
        if (col >= WP) continue;
        float xv[P];
        const Pack<T, P> k = tile[(rr * WP + col) * CV + v];
#pragma unroll
        for (int p = 0; p < P; p++) xv[p] = to_f(k.v[p]);
#pragma unroll
        for (int q = 0; q < R; q++) {
          const int kw = j - q * S;
          if (kw >= 0 && kw < K) {
#pragma unroll
            for (int p = 0; p < P; p++) acc[q][p] = fmaf(xv[p], wv[kw][p], acc[q][p]);
          }
        }
      }
    }
    T *out = y + ((n * g.OH + oh) * g.OW + ow0) * g.C + c0;
#pragma unroll
    for (int q = 0; q < R; q++)
      if (ow0 + q < g.OW) store<T, P>(out + q * g.C, acc[q]);
  }
}

template <typename T, int P, int S, int R, int RH>
__global__ void kx(const T *x, const T *w, T *y, Geo g) { fwd3x<T, P, S, R, RH>(x, w, y, g); }
template <typename T, int P, int S, int R, int RH>
__global__ void __launch_bounds__(256, 4) kx4(const T *x, const T *w, T *y, Geo g) { fwd3x<T, P, S, R, RH>(x, w, y, g); }
template <typename T, int P, int S, int R, int TH, int CV>
__global__ void ks(const T *x, const T *w, T *y, Geo g) { fwd3s<T, P, S, R, TH, CV>(x, w, y, g); }

// Host-side conversions (the kernels' to_f / from_f are device functions).
static float h_to_f(float v) { return v; }
static float h_to_f(bf16_t v) { unsigned u = ((unsigned)v) << 16; float f; memcpy(&f, &u, 4); return f; }
template <typename T> static T h_from_f(float v);
template <> float h_from_f<float>(float v) { return v; }
template <> bf16_t h_from_f<bf16_t>(float v) { unsigned u; memcpy(&u, &v, 4); u += 0x7fffu + ((u >> 16) & 1u); return (bf16_t)(u >> 16); }

struct Shape { int C, side, S; };
static const Shape shapes[] = {{32, 112, 1}, {96, 112, 2}, {144, 56, 1}, {144, 56, 2}, {192, 28, 1}, {192, 28, 2}, {384, 14, 1}, {576, 14, 1}, {576, 14, 2}, {960, 7, 1}};
static const int counts[] = {1, 1, 1, 1, 2, 1, 4, 2, 1, 3};  // layers of each shape in MobileNetV2
static int sms;

#define CK(e) do { cudaError_t r = (e); if (r != cudaSuccess) { fprintf(stderr, "CUDA error %s at %d\n", cudaGetErrorString(r), __LINE__); exit(1); } } while (0)

template <typename T, int P, int S>
static void run_shape(const Shape &sh, int count, const char *dt, double *total) {
  Geo g{128, sh.side, sh.side, sh.C, (sh.side + 2 - 3) / S + 1, (sh.side + 2 - 3) / S + 1, 3, 3, S, S, 1, 1};
  size_t nx = (size_t)g.N * g.H * g.W * g.C, ny = (size_t)g.N * g.OH * g.OW * g.C;
  T *x, *w, *y, *yref;
  fprintf(stderr, "shape %d %d\n", sh.C, sh.side);
  CK(cudaMalloc(&x, nx * sizeof(T))); CK(cudaMalloc(&w, 9 * g.C * sizeof(T)));
  CK(cudaMalloc(&y, ny * sizeof(T))); CK(cudaMalloc(&yref, ny * sizeof(T)));
  std::vector<T> hx(nx), hw(9 * g.C);
  unsigned s = 1;
  for (auto &v : hx) { s = s * 1664525u + 1013904223u; v = h_from_f<T>(((s >> 9) & 1023) / 512.f - 1.f); }
  for (auto &v : hw) { s = s * 1664525u + 1013904223u; v = h_from_f<T>(((s >> 9) & 1023) / 512.f - 1.f); }
  CK(cudaMemcpy(x, hx.data(), nx * sizeof(T), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(w, hw.data(), 9 * g.C * sizeof(T), cudaMemcpyHostToDevice));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0); cudaEventCreate(&e1);
  auto time = [&](const char *name, int vi, auto launch) {
    fprintf(stderr, "%s %d %s\n", dt, sh.C, name);
    CK(cudaMemset(y, 0, ny * sizeof(T)));
    launch(); CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
    for (int i = 0; i < 5; i++) launch();
    cudaEventRecord(e0);
    for (int i = 0; i < 50; i++) launch();
    cudaEventRecord(e1); CK(cudaEventSynchronize(e1));
    float ms; cudaEventElapsedTime(&ms, e0, e1); ms /= 50;
    std::vector<T> a(ny), b(ny);
    CK(cudaMemcpy(a.data(), y, ny * sizeof(T), cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(b.data(), yref, ny * sizeof(T), cudaMemcpyDeviceToHost));
    double err = 0;
    for (size_t i = 0; i < ny; i++) err = fmax(err, fabs(h_to_f(a[i]) - h_to_f(b[i])));
    printf("{\"dtype\":\"%s\",\"channels\":%d,\"side\":%d,\"stride\":%d,\"variant\":\"%s\",\"ms\":%.5f,\"max_diff\":%g}\n", dt, sh.C, sh.side, S, name, ms, err);
    total[vi] += ms * count;
  };
  auto grid = [&](long long threads) { return (unsigned)std::max(1LL, std::min((threads + 255) / 256, (long long)sms * 64)); };
  auto gridn = [&](long long threads) { return (unsigned)((threads + 255) / 256); };
  const long long cg = g.C / P;
  // reference: the kernel in use
  {
    long long th = (long long)g.N * g.OH * ((g.OW + 3) / 4) * cg;
    kx<T, P, S, 4, 1><<<grid(th), 256>>>(x, w, yref, g);
    CK(cudaDeviceSynchronize());
  }
  auto th = [&](int R, int RH) { return (long long)g.N * ((g.OH + RH - 1) / RH) * ((g.OW + R - 1) / R) * cg; };
  time("simple", 0, [&] { kx<T, P, S, 1, 1><<<grid(th(1, 1)), 256>>>(x, w, y, g); });
  time("r4", 1, [&] { kx<T, P, S, 4, 1><<<grid(th(4, 1)), 256>>>(x, w, y, g); });
  time("r4_nocap", 2, [&] { kx<T, P, S, 4, 1><<<gridn(th(4, 1)), 256>>>(x, w, y, g); });
  time("r2", 3, [&] { kx<T, P, S, 2, 1><<<grid(th(2, 1)), 256>>>(x, w, y, g); });
  time("r8", 4, [&] { kx<T, P, S, 8, 1><<<grid(th(8, 1)), 256>>>(x, w, y, g); });
  time("r2h2", 5, [&] { kx<T, P, S, 2, 2><<<grid(th(2, 2)), 256>>>(x, w, y, g); });
  time("r4h2", 6, [&] { kx<T, P, S, 4, 2><<<grid(th(4, 2)), 256>>>(x, w, y, g); });
  time("r4_lb4", 7, [&] { kx4<T, P, S, 4, 1><<<grid(th(4, 1)), 256>>>(x, w, y, g); });
  time("r2_lb4", 8, [&] { kx4<T, P, S, 2, 1><<<grid(th(2, 1)), 256>>>(x, w, y, g); });
  // bf16 with 4 channels (8 bytes) per thread
  if (sizeof(T) == 2) {
    auto th4 = [&](int R) { return (long long)g.N * g.OH * ((g.OW + R - 1) / R) * (g.C / 4); };
    time("p4_r2", 13, [&] { kx<T, 4, S, 2, 1><<<grid(th4(2)), 256>>>(x, w, y, g); });
    time("p4_r4", 14, [&] { kx<T, 4, S, 4, 1><<<grid(th4(4)), 256>>>(x, w, y, g); });
    time("p4_r2_lb4", 15, [&] { kx4<T, 4, S, 2, 1><<<grid(th4(2)), 256>>>(x, w, y, g); });
    time("p4_r4_lb4", 16, [&] { kx4<T, 4, S, 4, 1><<<grid(th4(4)), 256>>>(x, w, y, g); });
    time("p4_r4_nocap", 17, [&] { kx<T, 4, S, 4, 1><<<gridn(th4(4)), 256>>>(x, w, y, g); });
  }
  // shared-memory tiles: TH rows, CV vectors per block
  auto smem_launch = [&](auto kern, int TH, int CV, int R) {
    const int cgi = g.C / P, chunks = (cgi + CV - 1) / CV, bands = (g.OH + TH - 1) / TH;
    const size_t bytes = (size_t)((TH - 1) * S + 3) * (g.W + 2) * CV * sizeof(T) * P;
    if (bytes > 200 * 1024) return;
    CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    kern<<<g.N * bands * chunks, 256, bytes>>>(x, w, y, g);
  };
  time("smem_t2_c4", 9, [&] { smem_launch(ks<T, P, S, 4, 2, 4>, 2, 4, 4); });
  time("smem_t4_c4", 10, [&] { smem_launch(ks<T, P, S, 4, 4, 4>, 4, 4, 4); });
  time("smem_t4_c8", 11, [&] { smem_launch(ks<T, P, S, 4, 4, 8>, 4, 8, 4); });
  time("smem_t8_c4_r2", 12, [&] { smem_launch(ks<T, P, S, 2, 8, 4>, 8, 4, 2); });
  cudaFree(x); cudaFree(w); cudaFree(y); cudaFree(yref);
}

int main() {
  setvbuf(stdout, nullptr, _IONBF, 0);
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  fprintf(stderr, "%d SMs\n", sms);
  const char *names[] = {"simple", "r4", "r4_nocap", "r2", "r8", "r2h2", "r4h2", "r4_lb4", "r2_lb4", "smem_t2_c4", "smem_t4_c4", "smem_t4_c8", "smem_t8_c4_r2", "p4_r2", "p4_r4", "p4_r2_lb4", "p4_r4_lb4", "p4_r4_nocap"};
  for (int bf = 0; bf < 2; bf++) {
    double total[18] = {};
    for (int i = 0; i < 10; i++) {
      const Shape &s = shapes[i];
      if (bf) { if (s.S == 1) run_shape<bf16_t, 8, 1>(s, counts[i], "bf16", total); else run_shape<bf16_t, 8, 2>(s, counts[i], "bf16", total); }
      else { if (s.S == 1) run_shape<float, 4, 1>(s, counts[i], "f32", total); else run_shape<float, 4, 2>(s, counts[i], "f32", total); }
    }
    for (int v = 0; v < (bf ? 18 : 13); v++) printf("# %s %-14s MobileNetV2 depthwise forward total %.4f ms\n", bf ? "bf16" : "f32", names[v], total[v]);
  }
}
