// libtorch calls that tch 0.22 does not bind: PyTorch's fused optimizers, the CUDA autocast
// dtype, channels-last layout, TF32 switches and `grad = None`. Compiled by build.rs with
// the `torch` feature. Tensors cross as `at::Tensor*` (tch's C_tensor). Every function
// returns nullptr or an error message that the caller frees with tf_free.
#include <torch/torch.h>
#include <ATen/autocast_mode.h>
#include <cstring>
#include <dlfcn.h>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

using at::Tensor;

static char *err(const std::exception &e) {
  std::string s = e.what();
  auto cut = s.find("\nException raised from");
  if (cut != std::string::npos) s = s.substr(0, cut);
  return strdup(s.c_str());
}

static std::vector<Tensor> list(Tensor **ts, size_t n) {
  std::vector<Tensor> v;
  v.reserve(n);
  for (size_t i = 0; i < n; i++) v.push_back(*ts[i]);
  return v;
}

#define GUARD(...)                           \
  try {                                      \
    __VA_ARGS__;                             \
  } catch (const std::exception &e) {        \
    return err(e);                           \
  }                                          \
  return nullptr;

extern "C" {

void tf_free(char *s) { free(s); }

// Adam / AdamW over n parameters in one fused kernel (what torch.optim.Adam(fused=True)
// runs). `steps` are float scalars, one per parameter, incremented here first.
char *tf_fused_adam(Tensor **p, Tensor **g, Tensor **m, Tensor **v, Tensor **steps, size_t n, double lr, double beta1, double beta2,
                    double weight_decay, double eps, int decoupled) {
  GUARD({
    if (n == 0) return nullptr;
    auto P = list(p, n), G = list(g, n), M = list(m, n), V = list(v, n), S = list(steps, n);
    at::_foreach_add_(S, 1);
    std::vector<Tensor> none;
    if (decoupled)
      at::_fused_adamw_(P, G, M, V, none, S, lr, beta1, beta2, weight_decay, eps, false, false);
    else
      at::_fused_adam_(P, G, M, V, none, S, lr, beta1, beta2, weight_decay, eps, false, false);
  })
}

// SGD with momentum (dampening 0) over n parameters in one fused kernel; `bufs` is empty
// (n_bufs 0) without momentum.
char *tf_fused_sgd(Tensor **p, Tensor **g, Tensor **bufs, size_t n, size_t n_bufs, double weight_decay, double momentum, double lr, int nesterov,
                   int first_step) {
  GUARD({
    if (n == 0) return nullptr;
    auto P = list(p, n), G = list(g, n), B = list(bufs, n_bufs);
    at::_fused_sgd_(P, G, B, weight_decay, momentum, lr, 0.0, nesterov != 0, false, first_step != 0);
  })
}

// out = grad += l1 * sign(param), over n parameters (foreach kernels).
char *tf_add_l1(Tensor **p, Tensor **g, size_t n, double l1) {
  GUARD({
    if (n == 0) return nullptr;
    auto P = list(p, n), G = list(g, n);
    auto signs = at::_foreach_sign(P);
    at::_foreach_add_(G, signs, l1);
  })
}

char *tf_grads_to_none(Tensor **p, size_t n) {
  GUARD({
    for (size_t i = 0; i < n; i++) p[i]->mutable_grad().reset();
  })
}

char *tf_pin_memory(Tensor *t, Tensor **out) {
  GUARD({ *out = new Tensor(t->pin_memory()); })
}

char *tf_channels_last(Tensor *t, Tensor **out) {
  GUARD({ *out = new Tensor(t->contiguous(at::MemoryFormat::ChannelsLast)); })
}

// Enter (enabled = 1, bf16 = 1 for bfloat16 else float16) or leave CUDA autocast.
char *tf_autocast(int enabled, int bf16) {
  GUARD({
    if (enabled) {
      at::autocast::set_autocast_dtype(at::kCUDA, bf16 ? at::kBFloat16 : at::kHalf);
      at::autocast::set_autocast_enabled(at::kCUDA, true);
      at::autocast::increment_nesting();
    } else {
      if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
      at::autocast::set_autocast_enabled(at::kCUDA, false);
    }
  })
}

// TF32 for cuBLAS matmuls and cuDNN convolutions; cuDNN's benchmark mode (autotuning).
char *tf_set_math(int tf32_matmul, int tf32_cudnn, int cudnn_benchmark) {
  GUARD({
    at::globalContext().setAllowTF32CuBLAS(tf32_matmul != 0);
    at::globalContext().setAllowTF32CuDNN(tf32_cudnn != 0);
    at::globalContext().setBenchmarkCuDNN(cudnn_benchmark != 0);
  })
}
}

// ---- Depthwise convolution on our own kernels (kernels/depthwise.cu) ----
// cuDNN 9 compiles its NHWC depthwise engines at run time, in every new process and per
// shape (seconds for MobileNetV2's first step; PyTorch keeps the plans per thread, so they
// cannot be built ahead in another thread). Our kernels are compiled once by NVRTC (PTX
// cached in the store) and launched here through the CUDA driver API on the default
// stream, the one libtorch's work runs on.

namespace dw {
typedef int (*LaunchFn)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *, void **, void **);
typedef int (*CtxGetFn)(void **);
typedef int (*CtxSetFn)(void *);
struct Device {
  bool on = false;
  void *ctx = nullptr;
  // 0..11: [dtype f32, bf16][variant vector, scalar][fwd, dgrad, wgrad];
  // 12..23: 3x3 strips [dtype f32, bf16][stride 1, 2][fwd, dgrad, wgrad]
  void *f[24] = {};
  int sms = 0;
};
static Device devices[64];
static LaunchFn launch_fn = nullptr;
static CtxGetFn ctx_get = nullptr;
static CtxSetFn ctx_set = nullptr;
static std::mutex mu;
// TAOFLOW_DW_STRIPS=0 keeps 3x3 convolutions on the one-output-per-thread kernels (for
// benchmarks comparing the two).
static bool strips_on = true;
enum Op { FWD = 0, DGRAD = 1, WGRAD = 2 };
// Output columns per thread in the 3x3 kernels (kernels/depthwise.cu's KERNELS3): forward
// and input gradient 4 (f32) / 2 (bf16), weight gradient 4.
static int strip_cols(at::ScalarType t, Op op) { return op != WGRAD && t == at::kBFloat16 ? 2 : 4; }

struct Geo {
  int N, H, W, C, OH, OW, KH, KW, sh, sw, ph, pw;
};

static bool aligned(const Tensor &t) { return (reinterpret_cast<uintptr_t>(t.data_ptr()) & 15) == 0; }

static void launch(int dev, int kernel, unsigned gx, unsigned gy, unsigned bx, unsigned by, unsigned shmem, void **args) {
  const Device &d = devices[dev];
  void *cur = nullptr;
  ctx_get(&cur);
  if (cur != d.ctx) ctx_set(d.ctx);
  int r = launch_fn(d.f[kernel], gx, gy, 1, bx, by, 1, shmem, nullptr, args, nullptr);
  TORCH_CHECK(r == 0, "taoflow depthwise kernel ", kernel, ": cuLaunchKernel failed with CUDA error ", r);
}

// Kernel index and channels per thread for a dtype, given whether every buffer allows the
// 16-byte variant.
static int kernel(at::ScalarType t, bool vec, Op op) { return ((t == at::kBFloat16 ? 2 : 0) + (vec ? 0 : 1)) * 3 + op; }
static int kernel3(at::ScalarType t, int stride, Op op) { return 12 + ((t == at::kBFloat16 ? 2 : 0) + stride - 1) * 3 + op; }
// The strip kernels apply: 3x3, equal strides of 1 or 2, the 16-byte variant.
static bool strip(const Geo &g, bool vec) { return strips_on && vec && g.KH == 3 && g.KW == 3 && g.sh == g.sw && (g.sh == 1 || g.sh == 2); }
static int pack(at::ScalarType t, bool vec) { return vec ? (t == at::kBFloat16 ? 8 : 4) : 1; }

static void args_geo(std::vector<void *> &a, Geo &g) {
  for (int *p : {&g.N, &g.H, &g.W, &g.C, &g.OH, &g.OW, &g.KH, &g.KW, &g.sh, &g.sw, &g.ph, &g.pw}) a.push_back(p);
}

static unsigned grid_1d(long long threads, int sms) {
  long long blocks = (threads + 255) / 256;
  long long cap = (long long)std::max(sms, 1) * 64;
  return (unsigned)std::max(1LL, std::min(blocks, cap));
}

// The forward kernels' inference epilogue (kernels/depthwise.cu's Epi): scale/shift f32
// [C] on the device or null, act 1 clamps to [lo, hi].
struct Epi {
  const float *scale = nullptr, *shift = nullptr;
  float lo = 0.f, hi = 0.f;
  int act = 0;
};

// x, w, out in the compute dtype; x and out channels-last, w [T][C].
static void elementwise(Op op, const Tensor &in, const Tensor &wt, const Tensor &out, Geo g, Epi e = Epi()) {
  int dev = in.get_device();
  bool vec = aligned(in) && aligned(wt) && aligned(out) && g.C % pack(in.scalar_type(), true) == 0;
  int P = pack(in.scalar_type(), vec);
  long long rows = (long long)g.N * (op == FWD ? g.OH : g.H), cols = op == FWD ? g.OW : g.W;
  bool s3 = strip(g, vec);
  if (s3) cols = (cols + strip_cols(in.scalar_type(), op) - 1) / strip_cols(in.scalar_type(), op);
  long long threads = rows * cols * (g.C / P);
  void *pi = in.data_ptr(), *pw = wt.data_ptr(), *po = out.data_ptr();
  std::vector<void *> a = {&pi, &pw, &po};
  args_geo(a, g);
  if (op == FWD)
    for (void *p : {(void *)&e.scale, (void *)&e.shift, (void *)&e.lo, (void *)&e.hi, (void *)&e.act}) a.push_back(p);
  int k = s3 ? kernel3(in.scalar_type(), g.sh, op) : kernel(in.scalar_type(), vec, op);
  launch(dev, k, grid_1d(threads, devices[dev].sms), 1, 256, 1, 0, a.data());
}

static Tensor wgrad(const Tensor &x, const Tensor &dy, Geo g) {
  int dev = x.get_device();
  int taps = g.KH * g.KW;
  bool vec = aligned(x) && aligned(dy) && g.C % pack(x.scalar_type(), true) == 0 && taps <= 9;
  int P = pack(x.scalar_type(), vec);
  int groups = g.C / P;
  unsigned bx = (unsigned)std::min(groups, 32);
  unsigned by = 1;
  while (bx * by * 2 <= 256) by *= 2;
  unsigned gx = (groups + bx - 1) / bx;
  bool s3 = strip(g, vec);
  // positions (strips of 4 in the 3x3 kernels); at least ~16 positions per thread
  const int sc = s3 ? strip_cols(x.scalar_type(), WGRAD) : 1;
  long long np = (long long)g.N * g.OH * ((g.OW + sc - 1) / sc);
  long long per = 16 / sc;
  long long want = (np + by * per - 1) / (by * per);
  long long cap = std::max(1LL, (long long)devices[dev].sms * 8 / gx);
  unsigned chunks = (unsigned)std::max(1LL, std::min(want, cap));
  Tensor part = at::empty({(long long)chunks, taps, g.C}, x.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous));
  void *px = x.data_ptr(), *pd = dy.data_ptr(), *pp = part.data_ptr();
  std::vector<void *> a = {&px, &pd, &pp};
  args_geo(a, g);
  launch(dev, s3 ? kernel3(x.scalar_type(), g.sh, WGRAD) : kernel(x.scalar_type(), vec, WGRAD), gx, chunks, bx, by, bx * by * P * sizeof(float), a.data());
  return part.sum(0);  // [T, C], f32
}

static Geo geo(const Tensor &x, const Tensor &w, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  Geo g;
  g.N = x.size(0), g.C = x.size(1), g.H = x.size(2), g.W = x.size(3);
  g.KH = w.size(2), g.KW = w.size(3);
  g.sh = sh, g.sw = sw, g.ph = ph, g.pw = pw;
  g.OH = (g.H + 2 * ph - g.KH) / sh + 1;
  g.OW = (g.W + 2 * pw - g.KW) / sw + 1;
  return g;
}

// [C, 1, KH, KW] -> [KH*KW, C], contiguous.
static Tensor taps_major(const Tensor &w) { return w.reshape({w.size(0), -1}).t().contiguous(); }

// The forward convolution (x channels-last and w in the compute dtype), with the
// inference epilogue `e` (none for training).
static Tensor conv_forward(const Tensor &x, const Tensor &w, int64_t sh, int64_t sw, int64_t ph, int64_t pw, Epi e = Epi()) {
  c10::DeviceGuard guard(x.device());
  Geo g = geo(x, w, sh, sw, ph, pw);
  Tensor y = at::empty({g.N, g.C, g.OH, g.OW}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() > 0) elementwise(FWD, x, taps_major(w), y, g, e);
  return y;
}

// The dtype our kernels compute a depthwise convolution of x in (see tf_dw_conv), or none
// where they do not apply.
static std::optional<at::ScalarType> compute_dtype(const Tensor *x, const Tensor *w, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  if (!x->is_cuda() || x->dim() != 4 || w->dim() != 4) return std::nullopt;
  int dev = x->get_device();
  if (dev < 0 || dev >= 64 || !devices[dev].on) return std::nullopt;
  if (w->size(1) != 1 || w->size(0) != x->size(1) || w->size(2) * w->size(3) > 49) return std::nullopt;
  // The kernels index with 32-bit integers.
  int64_t oh = (x->size(2) + 2 * ph - w->size(2)) / sh + 1, ow = (x->size(3) + 2 * pw - w->size(3)) / sw + 1;
  if (x->numel() >= (1LL << 31) || x->size(0) * x->size(1) * oh * ow >= (1LL << 31) || oh <= 0 || ow <= 0) return std::nullopt;
  at::ScalarType t = x->scalar_type();
  if (at::autocast::is_autocast_enabled(at::kCUDA)) {
    if (at::autocast::get_autocast_dtype(at::kCUDA) != at::kBFloat16) return std::nullopt;
    t = at::kBFloat16;
  }
  if (t != at::kFloat && t != at::kBFloat16) return std::nullopt;
  return t;
}

struct Fn : public torch::autograd::Function<Fn> {
  static Tensor forward(torch::autograd::AutogradContext *ctx, Tensor x, Tensor w, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
    Tensor y = conv_forward(x, w, sh, sw, ph, pw);
    ctx->save_for_backward({x, w});
    ctx->saved_data["s"] = std::vector<int64_t>{sh, sw, ph, pw};
    return y;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext *ctx, torch::autograd::tensor_list grads) {
    if (!grads[0].defined()) return {Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
    auto saved = ctx->get_saved_variables();
    Tensor x = saved[0], w = saved[1];
    c10::DeviceGuard guard(x.device());
    auto s = ctx->saved_data["s"].toIntVector();
    Geo g = geo(x, w, s[0], s[1], s[2], s[3]);
    Tensor dy = grads[0].to(x.scalar_type()).contiguous(at::MemoryFormat::ChannelsLast);
    Tensor dx, dw;
    if (ctx->needs_input_grad(0)) {
      dx = at::empty_like(x, x.options().memory_format(at::MemoryFormat::ChannelsLast));
      if (dx.numel() > 0) elementwise(DGRAD, dy, taps_major(w), dx, g);
    }
    if (ctx->needs_input_grad(1)) {
      dw = wgrad(x, dy, g).t().reshape(w.sizes()).to(w.scalar_type());
    }
    return {dx, dw, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};
}  // namespace dw

extern "C" {
// Hand over the 24 kernels (kernels/depthwise.cu, loaded by the caller in `ctx`, the
// device's primary context) for CUDA device `device`.
char *tf_dw_register(int device, void *ctx, void **funcs, int sms) {
  GUARD({
    std::lock_guard<std::mutex> lock(dw::mu);
    TORCH_CHECK(device >= 0 && device < 64, "device index ", device, " out of range");
    if (!dw::launch_fn) {
      void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
      TORCH_CHECK(h, "cannot load libcuda.so.1: ", dlerror());
      dw::launch_fn = (dw::LaunchFn)dlsym(h, "cuLaunchKernel");
      dw::ctx_get = (dw::CtxGetFn)dlsym(h, "cuCtxGetCurrent");
      dw::ctx_set = (dw::CtxSetFn)dlsym(h, "cuCtxSetCurrent");
      TORCH_CHECK(dw::launch_fn && dw::ctx_get && dw::ctx_set, "libcuda.so.1 lacks cuLaunchKernel/cuCtxGetCurrent/cuCtxSetCurrent");
    }
    dw::Device &d = dw::devices[device];
    d.ctx = ctx;
    for (int i = 0; i < 24; i++) d.f[i] = funcs[i];
    const char *e = getenv("TAOFLOW_DW_STRIPS");
    dw::strips_on = !(e && std::string(e) == "0");
    d.sms = sms;
    d.on = true;
  })
}

// Inference only (no autograd): a depthwise convolution followed by an eval-mode batch norm
// folded to scale/shift (f32 [C], on x's device) and, with act 1, a clamp to
// [lo, hi] (ReLU, ReLU6), in one kernel. *out stays null where the kernels do not apply or
// gradients are being recorded: the caller then runs the layers one by one.
char *tf_dw_conv_infer(Tensor *x, Tensor *w, Tensor *scale, Tensor *shift, double lo, double hi, int act, int64_t sh, int64_t sw,
                       int64_t ph, int64_t pw, Tensor **out) {
  GUARD({
    *out = nullptr;
    if (at::GradMode::is_enabled() && (x->requires_grad() || w->requires_grad())) return nullptr;
    std::optional<at::ScalarType> t = dw::compute_dtype(x, w, sh, sw, ph, pw);
    if (!t) return nullptr;
    TORCH_CHECK(scale && shift && scale->scalar_type() == at::kFloat && shift->scalar_type() == at::kFloat && scale->is_contiguous() &&
                    shift->is_contiguous() && scale->numel() == x->size(1) && shift->numel() == x->size(1) &&
                    scale->device() == x->device() && shift->device() == x->device(),
                "batch-norm scale and shift must be contiguous f32 [C] on the input's device");
    dw::Epi e{scale->data_ptr<float>(), shift->data_ptr<float>(), (float)lo, (float)hi, act};
    *out = new Tensor(dw::conv_forward(x->to(*t).contiguous(at::MemoryFormat::ChannelsLast), w->to(*t), sh, sw, ph, pw, e));
  })
}

// A depthwise convolution (w [C, 1, KH, KW], C = x's channels, dilation 1, symmetric
// padding) on our kernels, differentiable. It computes in bf16 under CUDA bf16 autocast
// (as cuDNN's would), otherwise in x's dtype. *out stays null where the kernels do not
// apply (no kernels for the device, another dtype, a kernel over 7x7): the caller then runs
// libtorch's convolution.
char *tf_dw_conv(Tensor *x, Tensor *w, int64_t sh, int64_t sw, int64_t ph, int64_t pw, Tensor **out) {
  GUARD({
    *out = nullptr;
    std::optional<at::ScalarType> t = dw::compute_dtype(x, w, sh, sw, ph, pw);
    if (!t) return nullptr;
    Tensor xc = x->to(*t).contiguous(at::MemoryFormat::ChannelsLast);
    Tensor wc = w->to(*t);
    *out = new Tensor(dw::Fn::apply(xc, wc, sh, sw, ph, pw));
  })
}
}
