"""Which convolutions make MobileNetV2's first bf16 training step slow, and what avoids it
(#8). Two modes, each run in a fresh process:

  first_step_variants.py convs LAYOUT DTYPE
      every distinct convolution of torchvision's MobileNetV2 (batch 128, 224x224) once,
      alone: seconds of its first forward and first backward (input and weight gradients),
      summed per kind (stem, depthwise, pointwise). LAYOUT nhwc|nchw, DTYPE bf16|tf32.
  first_step_variants.py step VARIANT
      the whole first training step (Adam fused, bf16 autocast, channels_last), then the
      steady img/s over 20 steps. VARIANT: base; dw-f32 (depthwise convolutions outside
      autocast, in f32 with TF32 allowed); dw-nchw (depthwise convolutions in bf16 on an
      NCHW copy of their input); tf32, tf32-dw-nchw: the same without autocast (TF32).

One JSON line per run on stdout.
"""
import json
import sys
import time

T0 = time.perf_counter()
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402

dev = torch.device("cuda:0")
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
torch.backends.cudnn.benchmark = False
BATCH, SIZE = 128, 224


def sync():
    torch.cuda.synchronize()


def conv_shapes():
    """(in shape, conv) for every Conv2d of MobileNetV2, from a CPU pass at batch 1."""
    m = torchvision.models.mobilenet_v2(num_classes=1000).eval()
    seen = []
    hooks = [c.register_forward_pre_hook(lambda mod, inp: seen.append((tuple(inp[0].shape[1:]), mod)))
             for c in m.modules() if isinstance(c, torch.nn.Conv2d)]
    with torch.no_grad():
        m(torch.zeros(1, 3, SIZE, SIZE))
    for h in hooks:
        h.remove()
    return seen


def kind(c):
    if c.groups > 1:
        return "depthwise"
    if c.kernel_size == (1, 1):
        return "pointwise"
    return "stem"


def convs(layout, dtype):
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    torch.zeros(1, device=dev)
    sync()
    init_s = time.perf_counter() - T0
    done, per_kind, rows = set(), {}, []
    for shape, c in conv_shapes():
        key = (shape, c.out_channels, c.kernel_size, c.stride, c.groups)
        if key in done:
            continue
        done.add(key)
        x = torch.randn(BATCH, *shape, device=dev, dtype=dt).contiguous(memory_format=fmt).requires_grad_()
        w = c.weight.detach().to(dev, dt).contiguous(memory_format=fmt).requires_grad_()
        sync()
        t = time.perf_counter()
        y = F.conv2d(x, w, None, c.stride, c.padding, c.dilation, c.groups)
        sync()
        fw = time.perf_counter() - t
        g = torch.ones_like(y)
        sync()
        t = time.perf_counter()
        y.backward(g)
        sync()
        bw = time.perf_counter() - t
        k = kind(c)
        a = per_kind.setdefault(k, {"n": 0, "fwd_s": 0.0, "bwd_s": 0.0})
        a["n"] += 1
        a["fwd_s"] += fw
        a["bwd_s"] += bw
        rows.append([k, list(shape), c.out_channels, c.stride[0], round(fw, 3), round(bw, 3)])
    for a in per_kind.values():
        a["fwd_s"], a["bwd_s"] = round(a["fwd_s"], 3), round(a["bwd_s"], 3)
    slow = sorted(rows, key=lambda r: -(r[4] + r[5]))[:6]
    print(json.dumps({"mode": "convs", "layout": layout, "dtype": dtype, "init_s": round(init_s, 2),
                      "per_kind": per_kind, "slowest": slow, "process_s": round(time.perf_counter() - T0, 2)}))


class DwF32(torch.nn.Module):
    """A depthwise convolution outside autocast, in f32 (TF32 allowed)."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x):
        with torch.autocast("cuda", enabled=False):
            return self.c(x.float())


class DwNchw(torch.nn.Module):
    """A depthwise convolution on an NCHW copy of its input. The kernel [C, 1, 3, 3] is
    viewed with NCHW strides: a channels_last copy counts as contiguous too (its one
    channel makes the layouts ambiguous), keeps channels_last strides, and cuDNN would
    then pick NHWC again."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x):
        w = self.c.weight
        w = w.reshape(w.shape[0], -1).view(w.shape)
        y = F.conv2d(x.contiguous(), w, None, self.c.stride, self.c.padding, self.c.dilation, self.c.groups)
        return y.contiguous(memory_format=torch.channels_last)


def wrap(m, cls):
    for name, child in list(m.named_children()):
        if isinstance(child, torch.nn.Conv2d) and child.groups > 1:
            setattr(m, name, cls(child))
        else:
            wrap(child, cls)


def step_variant(variant):
    torch.zeros(1, device=dev)
    m = torchvision.models.mobilenet_v2(num_classes=1000)
    if variant == "dw-f32":
        wrap(m, DwF32)
    elif variant.endswith("dw-nchw"):
        wrap(m, DwNchw)
    amp = not variant.startswith("tf32")
    m = m.to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, fused=True)
    x = torch.rand(BATCH, 3, SIZE, SIZE, device=dev).contiguous(memory_format=torch.channels_last)
    y = (torch.arange(BATCH, device=dev) * 37) % 1000
    sync()
    init_s = time.perf_counter() - T0

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = m(x)
        loss = F.cross_entropy(out.float(), y)
        loss.backward()
        opt.step()
        return loss

    t = time.perf_counter()
    first_loss = step().item()
    first = time.perf_counter() - t
    t = time.perf_counter()
    step().item()
    second = time.perf_counter() - t
    for _ in range(5):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(20):
        step()
    sync()
    ips = 20 * BATCH / (time.perf_counter() - t)
    print(json.dumps({"mode": "step", "variant": variant, "init_s": round(init_s, 2), "first_step_s": round(first, 2),
                      "second_step_s": round(second, 3), "train_img_s": round(ips), "first_loss": first_loss,
                      "peak_mib": torch.cuda.max_memory_allocated() // 2**20,
                      "process_s": round(time.perf_counter() - T0, 2)}))


if __name__ == "__main__":
    if sys.argv[1] == "convs":
        convs(sys.argv[2], sys.argv[3])
    else:
        step_variant(sys.argv[2])
