// Depthwise 2-D convolution (one filter per channel, channel multiplier 1) on NHWC
// (channels-last) tensors: forward, input gradient and weight gradient, in f32 and bf16
// (bf16 storage, f32 arithmetic). The GPU training engine (src/model/torch) runs these
// instead of cuDNN's NHWC depthwise engines, which cuDNN 9 compiles at run time in every
// new process (seconds for MobileNetV2's first step) and does not persist.
//
// Layouts: x [N][H][W][C], y / dy [N][OH][OW][C], kernel w [T][C] (T = KH*KW taps,
// transposed from PyTorch's [C][1][KH][KW] so that a thread's channels are adjacent).
// Dilation 1; padding (ph, pw) on the top/left (the bottom/right follows from OH, OW).
// Suffix `_v`: each thread handles 16 bytes of channels (8 bf16 or 4 f32; C a multiple of
// that, buffers 16-byte aligned); `_s`: one channel per thread, any C.
// Weight gradient: each block reduces its positions in a fixed order and writes its
// partial sums to part[chunk][T][C]; the host sums over chunks (deterministic: no atomics).
// Index arithmetic is 32-bit (the host sends only tensors under 2^31 elements).
// bf16 is handled as its bit pattern (unsigned short), rounded to nearest even as PyTorch
// and cuDNN round, so no CUDA header is needed.

typedef unsigned short bf16_t;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(bf16_t v) { return __uint_as_float(((unsigned)v) << 16); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16_t from_f<bf16_t>(float v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  bf16_t h;  // one instruction from sm_80 on (round to nearest even, NaN stays NaN)
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
  return h;
#endif
  unsigned u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)0x7fc0;  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return (bf16_t)(u >> 16);
}

// P elements of T, loaded and stored as one access of sizeof(T) * P bytes.
template <typename T, int P> struct alignas(sizeof(T) * P) Pack { T v[P]; };

template <typename T, int P>
__device__ __forceinline__ void load(const T *p, float (&out)[P]) {
  Pack<T, P> k = *reinterpret_cast<const Pack<T, P> *>(p);
#pragma unroll
  for (int i = 0; i < P; i++) out[i] = to_f(k.v[i]);
}

template <typename T, int P>
__device__ __forceinline__ void store(T *p, const float (&in)[P]) {
  Pack<T, P> k;
#pragma unroll
  for (int i = 0; i < P; i++) k.v[i] = from_f<T>(in[i]);
  *reinterpret_cast<Pack<T, P> *>(p) = k;
}

struct Geo {
  int N, H, W, C, OH, OW, KH, KW, sh, sw, ph, pw;
};

// The forward kernels' epilogue, for inference: an eval-mode batch norm folded to a
// per-channel scale and shift (f32, [C]; scale null: none) and then, with act 1, a clamp to
// [lo, hi] (ReLU: 0, inf; ReLU6: 0, 6; NaN stays NaN as in PyTorch). Training passes none.
struct Epi {
  const float *scale, *shift;
  float lo, hi;
  int act;
};

template <int P> struct EpiRegs {
  float s[P], b[P];
};

template <typename T, int P>
__device__ __forceinline__ void epi_load(const Epi &e, int c0, EpiRegs<P> &r) {
  if (e.scale) {
#pragma unroll
    for (int p = 0; p < P; p++) r.s[p] = e.scale[c0 + p], r.b[p] = e.shift[c0 + p];
  }
}

template <int P>
__device__ __forceinline__ void epi_apply(const Epi &e, const EpiRegs<P> &r, float (&a)[P]) {
  if (e.scale) {
#pragma unroll
    for (int p = 0; p < P; p++) a[p] = fmaf(a[p], r.s[p], r.b[p]);
  }
  if (e.act) {
#pragma unroll
    for (int p = 0; p < P; p++) a[p] = a[p] < e.lo ? e.lo : (a[p] > e.hi ? e.hi : a[p]);
  }
}

template <typename T, int P>
__device__ void fwd(const T *__restrict__ x, const T *__restrict__ w, T *__restrict__ y, Geo g, Epi e) {
  const unsigned cg = g.C / P;
  const unsigned total = (unsigned)g.N * g.OH * g.OW * cg;
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const int c0 = (int)(i % cg) * P;
    unsigned r = i / cg;
    const int ow = (int)(r % (unsigned)g.OW);
    r /= (unsigned)g.OW;
    const int oh = (int)(r % (unsigned)g.OH);
    const int n = (int)(r / (unsigned)g.OH);
    float acc[P];
#pragma unroll
    for (int p = 0; p < P; p++) acc[p] = 0.f;
    for (int kh = 0; kh < g.KH; kh++) {
      const int ih = oh * g.sh - g.ph + kh;
      if (ih < 0 || ih >= g.H) continue;
      for (int kw = 0; kw < g.KW; kw++) {
        const int iw = ow * g.sw - g.pw + kw;
        if (iw < 0 || iw >= g.W) continue;
        float xv[P], wv[P];
        load<T, P>(x + ((n * g.H + ih) * g.W + iw) * g.C + c0, xv);
        load<T, P>(w + (kh * g.KW + kw) * g.C + c0, wv);
#pragma unroll
        for (int p = 0; p < P; p++) acc[p] = fmaf(xv[p], wv[p], acc[p]);
      }
    }
    EpiRegs<P> er;
    epi_load<T, P>(e, c0, er);
    epi_apply<P>(e, er, acc);
    store<T, P>(y + i * P, acc);
  }
}

template <typename T, int P>
__device__ void dgrad(const T *__restrict__ dy, const T *__restrict__ w, T *__restrict__ dx, Geo g) {
  const unsigned cg = g.C / P;
  const unsigned total = (unsigned)g.N * g.H * g.W * cg;
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const int c0 = (int)(i % cg) * P;
    unsigned r = i / cg;
    const int iw = (int)(r % (unsigned)g.W);
    r /= (unsigned)g.W;
    const int ih = (int)(r % (unsigned)g.H);
    const int n = (int)(r / (unsigned)g.H);
    float acc[P];
#pragma unroll
    for (int p = 0; p < P; p++) acc[p] = 0.f;
    for (int kh = 0; kh < g.KH; kh++) {
      const int th = ih + g.ph - kh;  // = oh * sh
      if (th < 0 || th % g.sh != 0) continue;
      const int oh = th / g.sh;
      if (oh >= g.OH) continue;
      for (int kw = 0; kw < g.KW; kw++) {
        const int tw = iw + g.pw - kw;
        if (tw < 0 || tw % g.sw != 0) continue;
        const int ow = tw / g.sw;
        if (ow >= g.OW) continue;
        float dv[P], wv[P];
        load<T, P>(dy + ((n * g.OH + oh) * g.OW + ow) * g.C + c0, dv);
        load<T, P>(w + (kh * g.KW + kw) * g.C + c0, wv);
#pragma unroll
        for (int p = 0; p < P; p++) acc[p] = fmaf(dv[p], wv[p], acc[p]);
      }
    }
    store<T, P>(dx + i * P, acc);
  }
}

// The weight-gradient kernels' reduction of one tap: sums `acc` over threadIdx.y (a power of
// two) in a fixed order through shared memory `red` and writes the block's P partial sums
// to `out` (thread row 0, where its channels exist). Every thread of the block calls it.
template <int P>
__device__ __forceinline__ void block_sum(const float (&acc)[P], float *red, bool valid, float *out) {
  const int slot = (threadIdx.y * blockDim.x + threadIdx.x) * P;
#pragma unroll
  for (int p = 0; p < P; p++) red[slot + p] = acc[p];
  __syncthreads();
  for (int s = blockDim.y / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.y < s) {
#pragma unroll
      for (int p = 0; p < P; p++) red[slot + p] += red[slot + s * blockDim.x * P + p];
    }
    __syncthreads();
  }
  if (threadIdx.y == 0 && valid) {
#pragma unroll
    for (int p = 0; p < P; p++) out[p] = red[slot + p];
  }
  __syncthreads();
}

// Block (bx, by): threadIdx.x over channel groups, threadIdx.y over output positions (by a
// power of two); grid (ceil(C/P / bx), chunks). Dynamic shared memory: by * bx * P floats.
template <typename T, int P, int MAXT>
__device__ void wgrad(const T *__restrict__ x, const T *__restrict__ dy, float *__restrict__ part, Geo g) {
  extern __shared__ float red[];
  const int cg = g.C / P;
  const int taps = g.KH * g.KW;
  const int gi = blockIdx.x * blockDim.x + threadIdx.x;
  const bool valid = gi < cg;
  const int c0 = gi * P;
  float acc[MAXT][P];
#pragma unroll
  for (int t = 0; t < MAXT; t++)
#pragma unroll
    for (int p = 0; p < P; p++) acc[t][p] = 0.f;
  const unsigned np = (unsigned)g.N * g.OH * g.OW;
  if (valid) {
    for (unsigned j = blockIdx.y * blockDim.y + threadIdx.y; j < np; j += gridDim.y * blockDim.y) {
      const int ow = (int)(j % (unsigned)g.OW);
      const unsigned r = j / (unsigned)g.OW;
      const int oh = (int)(r % (unsigned)g.OH);
      const int n = (int)(r / (unsigned)g.OH);
      float dv[P];
      load<T, P>(dy + j * g.C + c0, dv);
#pragma unroll
      for (int t = 0; t < MAXT; t++) {
        if (t < taps) {
          const int ih = oh * g.sh - g.ph + t / g.KW;
          const int iw = ow * g.sw - g.pw + t % g.KW;
          if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) {
            float xv[P];
            load<T, P>(x + ((n * g.H + ih) * g.W + iw) * g.C + c0, xv);
#pragma unroll
            for (int p = 0; p < P; p++) acc[t][p] = fmaf(dv[p], xv[p], acc[t][p]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int t = 0; t < MAXT; t++)
    if (t < taps) block_sum<P>(acc[t], red, valid, part + (blockIdx.y * taps + t) * g.C + c0);
}

// ---- 3x3 kernels, stride S (1 or 2), equal in both axes: a thread computes a strip of R
// adjacent positions along W for its P channels, loading each input column of the strip
// once and keeping the 3 weights of a row in registers (the simple kernels above load 9 +
// 9 vectors per output; a strip of 4 at stride 1 loads 4.5 + 2.25). Every tap loop is
// unrolled at compile time. Used for the 16-byte variants (MobileNet's depthwise layers).

template <typename T, int P, int S, int R>
__device__ void fwd3(const T *__restrict__ x, const T *__restrict__ w, T *__restrict__ y, Geo g, Epi e) {
  constexpr int K = 3, COLS = (R - 1) * S + K;
  const unsigned cg = g.C / P;
  const unsigned strips = (g.OW + R - 1) / R;
  const unsigned total = (unsigned)g.N * g.OH * strips * cg;
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const int c0 = (int)(i % cg) * P;
    unsigned r = i / cg;
    const int ow0 = (int)(r % strips) * R;
    r /= strips;
    const int oh = (int)(r % (unsigned)g.OH);
    const int n = (int)(r / (unsigned)g.OH);
    const int iw0 = ow0 * S - g.pw;
    float acc[R][P];
#pragma unroll
    for (int q = 0; q < R; q++)
#pragma unroll
      for (int p = 0; p < P; p++) acc[q][p] = 0.f;
#pragma unroll
    for (int kh = 0; kh < K; kh++) {
      const int ih = oh * S - g.ph + kh;
      if (ih < 0 || ih >= g.H) continue;
      float wv[K][P];
#pragma unroll
      for (int kw = 0; kw < K; kw++) load<T, P>(w + (kh * K + kw) * g.C + c0, wv[kw]);
      const T *row = x + (n * g.H + ih) * g.W * g.C + c0;
#pragma unroll
      for (int j = 0; j < COLS; j++) {
        const int iw = iw0 + j;
        if (iw < 0 || iw >= g.W) continue;
        float xv[P];
        load<T, P>(row + iw * g.C, xv);
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
    EpiRegs<P> er;
    epi_load<T, P>(e, c0, er);
#pragma unroll
    for (int q = 0; q < R; q++) {
      epi_apply<P>(e, er, acc[q]);
      if (ow0 + q < g.OW) store<T, P>(out + q * g.C, acc[q]);
    }
  }
}

// Input gradient of fwd3 on a strip of R input columns iw0.. (R a multiple of S). Output
// column ow feeds input column iw through tap kw where ow * S = iw + pw - kw. With base =
// iw0 + pw and lo the first output column of the strip (lo * S >= base - 2), column lo + j
// feeds strip position q through tap kw = q + 2 - D - j * S, D = lo * S - base + 2 in
// [0, S): the same for every strip of a launch (R is a multiple of S), a template parameter.
template <typename T, int P, int S, int R, int D>
__device__ __forceinline__ void dgrad3_strip(const T *__restrict__ dy, const T *__restrict__ w, float (&acc)[R][P], int n,
                                             int ih, int lo, int c0, const Geo &g) {
  constexpr int K = 3, COLS = (R + K - 2) / S + 1;
#pragma unroll
  for (int kh = 0; kh < K; kh++) {
    const int th = ih + g.ph - kh;  // = oh * S
    if (th < 0 || th % S != 0) continue;
    const int oh = th / S;
    if (oh >= g.OH) continue;
    float wv[K][P];
#pragma unroll
    for (int kw = 0; kw < K; kw++) load<T, P>(w + (kh * K + kw) * g.C + c0, wv[kw]);
    const T *row = dy + (n * g.OH + oh) * g.OW * g.C + c0;
#pragma unroll
    for (int j = 0; j < COLS; j++) {
      const int ow = lo + j;
      if (ow < 0 || ow >= g.OW) continue;
      float dv[P];
      load<T, P>(row + ow * g.C, dv);
#pragma unroll
      for (int q = 0; q < R; q++) {
        const int kw = q + K - 1 - D - j * S;
        if (kw >= 0 && kw < K) {
#pragma unroll
          for (int p = 0; p < P; p++) acc[q][p] = fmaf(dv[p], wv[kw][p], acc[q][p]);
        }
      }
    }
  }
}

template <typename T, int P, int S, int R>
__device__ void dgrad3(const T *__restrict__ dy, const T *__restrict__ w, T *__restrict__ dx, Geo g) {
  static_assert(R % S == 0, "strips must start on the same phase");
  const unsigned cg = g.C / P;
  const unsigned strips = (g.W + R - 1) / R;
  const unsigned total = (unsigned)g.N * g.H * strips * cg;
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const int c0 = (int)(i % cg) * P;
    unsigned r = i / cg;
    const int iw0 = (int)(r % strips) * R;
    r /= strips;
    const int ih = (int)(r % (unsigned)g.H);
    const int n = (int)(r / (unsigned)g.H);
    const int base = iw0 + g.pw;
    // lo = ceil((base - 2) / S), computed on non-negative numbers
    const int lo = (base - 2 + 3 * S + S - 1) / S - 3;
    const int d = lo * S - base + 2;
    float acc[R][P];
#pragma unroll
    for (int q = 0; q < R; q++)
#pragma unroll
      for (int p = 0; p < P; p++) acc[q][p] = 0.f;
    if (S == 1 || d == 0)
      dgrad3_strip<T, P, S, R, 0>(dy, w, acc, n, ih, lo, c0, g);
    else
      dgrad3_strip<T, P, S, R, (S > 1 ? 1 : 0)>(dy, w, acc, n, ih, lo, c0, g);
    T *out = dx + ((n * g.H + ih) * g.W + iw0) * g.C + c0;
#pragma unroll
    for (int q = 0; q < R; q++)
      if (iw0 + q < g.W) store<T, P>(out + q * g.C, acc[q]);
  }
}

// Weight gradient of fwd3: threadIdx.y over strips of R output columns, otherwise as wgrad.
template <typename T, int P, int S, int R>
__device__ void wgrad3(const T *__restrict__ x, const T *__restrict__ dy, float *__restrict__ part, Geo g) {
  constexpr int K = 3, TAPS = 9, COLS = (R - 1) * S + K;
  extern __shared__ float red[];
  const int cg = g.C / P;
  const int gi = blockIdx.x * blockDim.x + threadIdx.x;
  const bool valid = gi < cg;
  const int c0 = gi * P;
  float acc[TAPS][P];
#pragma unroll
  for (int t = 0; t < TAPS; t++)
#pragma unroll
    for (int p = 0; p < P; p++) acc[t][p] = 0.f;
  const unsigned strips = (g.OW + R - 1) / R;
  const unsigned ns = (unsigned)g.N * g.OH * strips;
  if (valid) {
    for (unsigned j = blockIdx.y * blockDim.y + threadIdx.y; j < ns; j += gridDim.y * blockDim.y) {
      const int ow0 = (int)(j % strips) * R;
      const unsigned r = j / strips;
      const int oh = (int)(r % (unsigned)g.OH);
      const int n = (int)(r / (unsigned)g.OH);
      float dv[R][P];
      const T *drow = dy + ((n * g.OH + oh) * g.OW + ow0) * g.C + c0;
#pragma unroll
      for (int q = 0; q < R; q++) {
        if (ow0 + q < g.OW) {
          load<T, P>(drow + q * g.C, dv[q]);
        } else {
#pragma unroll
          for (int p = 0; p < P; p++) dv[q][p] = 0.f;
        }
      }
      const int iw0 = ow0 * S - g.pw;
#pragma unroll
      for (int kh = 0; kh < K; kh++) {
        const int ih = oh * S - g.ph + kh;
        if (ih < 0 || ih >= g.H) continue;
        const T *row = x + (n * g.H + ih) * g.W * g.C + c0;
#pragma unroll
        for (int c = 0; c < COLS; c++) {
          const int iw = iw0 + c;
          if (iw < 0 || iw >= g.W) continue;
          float xv[P];
          load<T, P>(row + iw * g.C, xv);
#pragma unroll
          for (int q = 0; q < R; q++) {
            const int kw = c - q * S;
            if (kw >= 0 && kw < K) {
#pragma unroll
              for (int p = 0; p < P; p++) acc[kh * K + kw][p] = fmaf(dv[q][p], xv[p], acc[kh * K + kw][p]);
            }
          }
        }
      }
    }
  }
#pragma unroll
  for (int t = 0; t < TAPS; t++) block_sum<P>(acc[t], red, valid, part + (blockIdx.y * TAPS + t) * g.C + c0);
}

#define GEO int N, int H, int W, int C, int OH, int OW, int KH, int KW, int sh, int sw, int ph, int pw
#define G Geo{N, H, W, C, OH, OW, KH, KW, sh, sw, ph, pw}
#define DW_EPI const float *scale, const float *shift, float lo, float hi, int act
#define DW_E Epi{scale, shift, lo, hi, act}
#define KERNELS(SUF, T, P, MAXT)                                                                                   \
  extern "C" __global__ void dw_fwd_##SUF(const T *x, const T *w, T *y, GEO, DW_EPI) { fwd<T, P>(x, w, y, G, DW_E); }          \
  extern "C" __global__ void dw_dgrad_##SUF(const T *dy, const T *w, T *dx, GEO) { dgrad<T, P>(dy, w, dx, G); } \
  extern "C" __global__ void dw_wgrad_##SUF(const T *x, const T *dy, float *part, GEO) { wgrad<T, P, MAXT>(x, dy, part, G); }

// R: output columns per thread in the forward and input-gradient kernels (the host's
// strip width, src/model/torch/shim.cpp); the weight gradient takes strips of 4.
#define KERNELS3(SUF, T, P, S, R)                                                                                    \
  extern "C" __global__ void __launch_bounds__(256, 4) dw_fwd3s##S##_##SUF(const T *x, const T *w, T *y, GEO, DW_EPI) { \
    fwd3<T, P, S, R>(x, w, y, G, DW_E);                                                                                   \
  }                                                                                                                 \
  extern "C" __global__ void __launch_bounds__(256, 4) dw_dgrad3s##S##_##SUF(const T *dy, const T *w, T *dx, GEO) {  \
    dgrad3<T, P, S, R>(dy, w, dx, G);                                                                               \
  }                                                                                                                 \
  extern "C" __global__ void __launch_bounds__(256, 2) dw_wgrad3s##S##_##SUF(const T *x, const T *dy, float *part, GEO) {\
    wgrad3<T, P, S, 4>(x, dy, part, G);                                                                             \
  }

// Vectorised variants take kernels up to 3x3 (MobileNet's), scalar ones up to 7x7.
KERNELS(f32_v, float, 4, 9)
KERNELS(f32_s, float, 1, 49)
KERNELS(bf16_v, bf16_t, 8, 9)
KERNELS(bf16_s, bf16_t, 1, 49)
// 3x3 strips (vectorised only): 4 columns in f32, 2 in bf16, each thread's registers
// capped for 4 blocks of 256 threads per SM (measured on the H200, bench/gpu/dw_variants.cu).
KERNELS3(f32_v, float, 4, 1, 4)
KERNELS3(f32_v, float, 4, 2, 4)
KERNELS3(bf16_v, bf16_t, 8, 1, 2)
KERNELS3(bf16_v, bf16_t, 8, 2, 2)
