"""Where the first training step's seconds go (#8): PyTorch's torchvision model, the same
first step as bench/gpu/train_torch.py (Adam, autocast for bf16, cuDNN benchmark off), under
torch.profiler; prints one JSON line: first/second step seconds, steady img/s over 20 steps
and the ten ATen ops with the most CPU time in the first step (where cuDNN's heuristics and
any run-time kernel compilation show up).

--prewarm-thread: one step in another thread first; the profiled step then shows whether
what the first step built (cuDNN plans, compiled kernels) serves the whole process.

usage: first_step_probe.py ARCH SIZE BATCH fp32|tf32|bf16 [--nchw] [--prewarm-thread]
"""
import json
import sys
import time

T_MAIN = time.perf_counter()
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

arch, size, batch, precision = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
fmt = torch.contiguous_format if "--nchw" in sys.argv else torch.channels_last
dev = torch.device("cuda:0")
tf32 = precision != "fp32"
torch.backends.cuda.matmul.allow_tf32 = tf32
torch.backends.cudnn.allow_tf32 = tf32
torch.backends.cudnn.benchmark = False
torch.zeros(1, device=dev)
model = getattr(torchvision.models, arch)(num_classes=1000).to(dev).to(memory_format=fmt)
opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
x = torch.rand(batch, 3, size, size, device=dev).contiguous(memory_format=fmt)
y = (torch.arange(batch, device=dev) * 37) % 1000
amp = precision == "bf16"


def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        out = model(x)
    loss = torch.nn.functional.cross_entropy(out.float(), y)
    loss.backward()
    opt.step()
    return loss


prewarm_s = None
if "--prewarm-thread" in sys.argv:
    import threading
    t = time.perf_counter()
    th = threading.Thread(target=lambda: step().item())
    th.start()
    th.join()
    prewarm_s = time.perf_counter() - t
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    t = time.perf_counter()
    step().item()
    first = time.perf_counter() - t
t = time.perf_counter()
step().item()
second = time.perf_counter() - t
for _ in range(5):
    step()
torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(20):
    step()
torch.cuda.synchronize()
ips = 20 * batch / (time.perf_counter() - t)
ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
print(json.dumps({"arch": arch, "precision": precision, "layout": "nchw" if fmt is torch.contiguous_format else "nhwc",
                  "prewarm_thread_s": prewarm_s, "first_step_s": first, "second_step_s": second, "train_img_s": ips, "process_s": time.perf_counter() - T_MAIN,
                  "cudnn": torch.backends.cudnn.version(), "torch": torch.__version__,
                  "top_ops_first_step": [[e.key, e.count, round(e.self_cpu_time_total / 1e6, 3)] for e in ops]}))
