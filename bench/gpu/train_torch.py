"""PyTorch peer of examples/train_bench.rs `speed`: torchvision's model, the same batch,
precision and optimizer, synthetic images already on the GPU, channels_last (what a tuned
PyTorch user runs). Prints one JSON line.

usage: train_torch.py ARCH SIZE BATCH fp32|tf32|bf16 [--fused]
"""
import json
import os
import sys
import time

T_MAIN = time.perf_counter()
import torch  # noqa: E402
import torchvision  # noqa: E402

arch, size, batch, precision = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
fused = "--fused" in sys.argv
dev = torch.device("cuda:0")
tf32 = precision != "fp32"
torch.backends.cuda.matmul.allow_tf32 = tf32
torch.backends.cudnn.allow_tf32 = tf32
torch.backends.cudnn.benchmark = False  # as ours: no autotuning pass

t_init = time.perf_counter()
torch.cuda.init()
torch.zeros(1, device=dev)
init_s = time.perf_counter() - t_init

model = getattr(torchvision.models, arch)(num_classes=1000).to(dev).to(memory_format=torch.channels_last)
opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True if fused else None)
x = (torch.arange(batch * 3 * size * size, device=dev, dtype=torch.float32).reshape(batch, 3, size, size) * 0.618).remainder(2.0) - 1.0
x = x.contiguous(memory_format=torch.channels_last)
y = (torch.arange(batch, device=dev) * 37) % 1000
loss_fn = torch.nn.CrossEntropyLoss()
amp = precision == "bf16"


def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        out = model(x)
    loss = loss_fn(out.float(), y)
    loss.backward()
    opt.step()
    return loss.detach()


model.train()
t_first = time.perf_counter()
first_loss = step().item()
torch.cuda.synchronize()
first_step_s = time.perf_counter() - t_first
to_first = time.perf_counter() - T_MAIN
for _ in range(10):
    step()
torch.cuda.synchronize()
steps = 40
t = time.perf_counter()
for _ in range(steps):
    last = step()
torch.cuda.synchronize()
train_ips = steps * batch / (time.perf_counter() - t)
last_loss = last.item()

model.eval()
ib = int(os.environ.get("INFER_BATCH", "256"))  # as train_bench's INFER_BATCH
xi = torch.rand(ib, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
# As a PyTorch user runs inference: one autocast region (whose cast cache then keeps the
# bf16 weights) around the whole loop. Five rounds of 20 batches, median round.
with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
    for _ in range(5):
        model(xi)
    torch.cuda.synchronize()
    rounds = []
    reps = 20
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            model(xi)
        torch.cuda.synchronize()
        rounds.append(reps * ib / (time.perf_counter() - t))
infer_ips = sorted(rounds)[2]
print(json.dumps({"impl": "pytorch-fused" if fused else "pytorch", "arch": arch, "size": size, "batch": batch, "precision": precision,
                  "init_s": init_s, "first_step_s": first_step_s, "process_to_first_step_s": to_first,
                  "train_img_s": train_ips, "infer_img_s": infer_ips, "infer_rounds": rounds, "infer_batch": ib, "first_loss": first_loss, "last_loss": last_loss,
                  "peak_mem_mib": torch.cuda.max_memory_allocated() / 2**20}))
