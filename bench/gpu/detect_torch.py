#!/usr/bin/env python3
"""The PyTorch peer of examples/detect_bench.rs: DetectNet_v2 as a user would write it in
PyTorch — torchvision's ResNet-18/34 in TAO's stride-16 layout (no max pool; stages 1-3
stride 2, stage 4 stride 1) with 1x1 `output_cov` (sigmoid) and `output_bbox` heads — and
TAO's cost (weighted coverage BCE + coverage-weighted box L1) on target tensors already on
the GPU. channels_last, cudnn.benchmark, TF32 or bf16 autocast, SGD with momentum (foreach).

  detect_torch.py BACKBONE WIDTH HEIGHT BATCH PRECISION STEPS
"""
import json
import sys
import time

import torch
import torch.nn as nn
import torchvision


def detectnet(backbone, classes):
    m = getattr(torchvision.models, backbone)(weights=None)
    m.maxpool = nn.Identity()
    b0 = m.layer1[0]
    b0.conv1.stride = (2, 2)
    b0.downsample = nn.Sequential(nn.Conv2d(64, 64, 1, 2, bias=False), nn.BatchNorm2d(64))
    b4 = m.layer4[0]
    b4.conv1.stride = (1, 1)
    b4.downsample[0].stride = (1, 1)
    body = nn.Sequential(m.conv1, m.bn1, m.relu, m.layer1, m.layer2, m.layer3, m.layer4)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = body
            self.output_cov = nn.Conv2d(512, classes, 1)
            self.output_bbox = nn.Conv2d(512, 4 * classes, 1)

        def forward(self, x):
            f = self.body(x)
            return torch.sigmoid(self.output_cov(f)), self.output_bbox(f)

    return Net()


def cost(cov, bbox, ct, cw, bt, bw):
    cov, bbox = cov.float(), bbox.float()
    bce = -(ct * torch.log(cov + 1e-5) + (1 - ct) * torch.log(1 - cov + 1e-5))
    return (bce * cw).sum() + ((bbox - bt).abs() * bw).sum()


def main():
    backbone, w, h, batch, prec, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
    t0 = time.perf_counter()
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = prec != "fp32"
    torch.backends.cudnn.allow_tf32 = prec != "fp32"
    dev = torch.device("cuda")
    net = detectnet(backbone, 3).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
    gh, gw = (h + 15) // 16, (w + 15) // 16
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.rand(batch, 3, h, w, generator=g).to(dev).to(memory_format=torch.channels_last)
    ct = (torch.rand(batch, 3, gh, gw, generator=g) > 0.9).float().to(dev)
    cw = torch.full((batch, 3, gh, gw), 1.0 / (batch * gh * gw)).to(dev)
    bt = torch.rand(batch, 12, gh, gw, generator=g).to(dev)
    bw = (ct.repeat_interleave(4, 1) * 0.1 / (batch * gh * gw)).to(dev)
    bf16 = prec == "bf16"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            cov, bbox = net(x)
        loss = cost(cov, bbox, ct, cw, bt, bw)
        loss.backward()
        opt.step()
        return loss

    net.train()
    step()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    train = steps * batch / (time.perf_counter() - t)
    net.eval()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        for _ in range(5):
            net(x)
        torch.cuda.synchronize()
        n = max(steps * 2, 20)
        t = time.perf_counter()
        for _ in range(n):
            net(x)
        torch.cuda.synchronize()
        infer = n * batch / (time.perf_counter() - t)
    params = sum(p.numel() for p in net.parameters())
    print(json.dumps({"engine": "pytorch", "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "backbone": backbone, "width": w, "height": h, "batch": batch, "precision": prec, "params": params, "first_step_s": first, "train_img_s": train, "infer_img_s": infer, "last_loss": float(loss)}))


if __name__ == "__main__":
    main()
