"""PyTorch's CPU speed for bench/cpu.sh (issue #29): the same networks (torchvision's
MobileNetV2 / ResNet-18 with 10 classes), sizes, batches, threads and optimizer as
examples/cpu_bench.rs, on synthetic images. Prints one JSON object per line.

    python bench/cpu_peer.py ARCH SIZE [SECONDS]
"""
import json
import sys
import time

import torch
import torchvision

arch, size = sys.argv[1], int(sys.argv[2])
secs = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
threads = int(__import__("os").environ.get("RAYON_NUM_THREADS") or __import__("os").cpu_count())
torch.set_num_threads(threads)
torch.set_num_interop_threads(1)
make = {"mobilenet_v2": torchvision.models.mobilenet_v2, "resnet18": torchvision.models.resnet18}[arch]
model = make(num_classes=10)


def rate(per_call, f):
    f()
    t0, n = time.perf_counter(), 0
    while n == 0 or time.perf_counter() - t0 < secs:
        f()
        n += per_call
    return n / (time.perf_counter() - t0)


def emit(mode, batch, ips):
    print(json.dumps({"who": "pytorch", "engine": f"pytorch {torch.__version__}", "arch": arch, "size": size, "mode": mode, "batch": batch, "img_s": round(ips, 1), "threads": threads}), flush=True)


model.eval()
for batch in (1, 64):
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        emit("infer", batch, rate(batch, lambda: model(x)))

model.train()
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
x, y = torch.randn(32, 3, size, size), torch.arange(32) % 10
loss_fn = torch.nn.CrossEntropyLoss()


def step():
    opt.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    opt.step()


emit("train", 32, rate(32, step))
