"""Are cuDNN's run-time compiled kernels shared between threads (#8)? PyTorch keeps its cuDNN
execution plans per thread (forward: the calling thread; backward: autograd's device
thread). If cuDNN reuses what one plan compiled for another plan of the same convolution,
a background thread can compile MobileNetV2's NHWC depthwise convolutions while training
runs on NCHW ones, and the switch costs nothing. Prints one JSON line: seconds of the
depthwise convolutions (forward and both backward products, called directly) in a
background thread first, then the same in the main thread, then through autograd in the
main thread (its backward on the device thread). DTYPE bf16|tf32.
"""
import json
import sys
import threading
import time

import torch
import torch.nn.functional as F
import torchvision

dev = torch.device("cuda:0")
torch.backends.cudnn.allow_tf32 = True
torch.backends.cudnn.benchmark = False
dt = torch.bfloat16 if sys.argv[1] == "bf16" else torch.float32
BATCH, SIZE = 128, 224


def dw_convs():
    m = torchvision.models.mobilenet_v2().eval()
    seen, keys = [], set()

    def hook(mod, inp):
        k = (tuple(inp[0].shape[1:]), mod.stride)
        if mod.groups > 1 and k not in keys:
            keys.add(k)
            seen.append((inp[0].shape[1:], mod))

    hs = [c.register_forward_pre_hook(hook) for c in m.modules() if isinstance(c, torch.nn.Conv2d)]
    with torch.no_grad():
        m(torch.zeros(1, 3, SIZE, SIZE))
    for h in hs:
        h.remove()
    return seen


CONVS = dw_convs()


def tensors(shape, c, grad=False):
    x = torch.randn(BATCH, *shape, device=dev, dtype=dt).contiguous(memory_format=torch.channels_last)
    w = c.weight.detach().to(dev, dt).contiguous(memory_format=torch.channels_last)
    if grad:
        x.requires_grad_()
        w.requires_grad_()
    return x, w


def direct():
    t = time.perf_counter()
    for shape, c in CONVS:
        x, w = tensors(shape, c)
        y = F.conv2d(x, w, None, c.stride, c.padding, c.dilation, c.groups)
        torch.ops.aten.convolution_backward(torch.ones_like(y), x, w, None, c.stride, c.padding, c.dilation, False,
                                            [0, 0], c.groups, [True, True, False])
    torch.cuda.synchronize()
    return round(time.perf_counter() - t, 3)


def autograd():
    t = time.perf_counter()
    for shape, c in CONVS:
        x, w = tensors(shape, c, True)
        y = F.conv2d(x, w, None, c.stride, c.padding, c.dilation, c.groups)
        y.backward(torch.ones_like(y))
    torch.cuda.synchronize()
    return round(time.perf_counter() - t, 3)


torch.zeros(1, device=dev)
res = {}
th = threading.Thread(target=lambda: res.__setitem__("thread_direct_s", direct()))
th.start()
th.join()
res["main_direct_after_thread_s"] = direct()
res["main_direct_again_s"] = direct()
res["main_autograd_s"] = autograd()
res["main_autograd_again_s"] = autograd()
res.update(dtype=sys.argv[1], convs=len(CONVS))
print(json.dumps(res))
