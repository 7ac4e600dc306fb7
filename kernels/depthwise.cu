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

template <typename T, int P>
__device__ void fwd(const T *__restrict__ x, const T *__restrict__ w, T *__restrict__ y, Geo g) {
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
  const int slot = (threadIdx.y * blockDim.x + threadIdx.x) * P;
#pragma unroll
  for (int t = 0; t < MAXT; t++) {
    if (t < taps) {
#pragma unroll
      for (int p = 0; p < P; p++) red[slot + p] = acc[t][p];
      __syncthreads();
      for (int s = blockDim.y / 2; s > 0; s >>= 1) {
        if (threadIdx.y < s) {
#pragma unroll
          for (int p = 0; p < P; p++) red[slot + p] += red[slot + s * blockDim.x * P + p];
        }
        __syncthreads();
      }
      if (threadIdx.y == 0 && valid) {
        float *o = part + (blockIdx.y * taps + t) * g.C + c0;
#pragma unroll
        for (int p = 0; p < P; p++) o[p] = red[slot + p];
      }
      __syncthreads();
    }
  }
}

#define GEO int N, int H, int W, int C, int OH, int OW, int KH, int KW, int sh, int sw, int ph, int pw
#define G Geo{N, H, W, C, OH, OW, KH, KW, sh, sw, ph, pw}
#define KERNELS(SUF, T, P, MAXT)                                                                                   \
  extern "C" __global__ void dw_fwd_##SUF(const T *x, const T *w, T *y, GEO) { fwd<T, P>(x, w, y, G); }          \
  extern "C" __global__ void dw_dgrad_##SUF(const T *dy, const T *w, T *dx, GEO) { dgrad<T, P>(dy, w, dx, G); } \
  extern "C" __global__ void dw_wgrad_##SUF(const T *x, const T *dy, float *part, GEO) { wgrad<T, P, MAXT>(x, dy, part, G); }

// Vectorised variants take kernels up to 3x3 (MobileNet's), scalar ones up to 7x7.
KERNELS(f32_v, float, 4, 9)
KERNELS(f32_s, float, 1, 49)
KERNELS(bf16_v, bf16_t, 8, 9)
KERNELS(bf16_s, bf16_t, 1, 49)
