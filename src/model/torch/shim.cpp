// libtorch calls that tch 0.22 does not bind: PyTorch's fused optimizers, the CUDA autocast
// dtype, channels-last layout, TF32 switches and `grad = None`. Compiled by build.rs with
// the `torch` feature. Tensors cross as `at::Tensor*` (tch's C_tensor). Every function
// returns nullptr or an error message that the caller frees with tf_free.
#include <torch/torch.h>
#include <ATen/autocast_mode.h>
#include <cstring>
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
