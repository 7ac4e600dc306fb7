#!/usr/bin/env python3
"""Peer for `taoflow bench-augment`: torchvision.transforms.v2 on the GPU, RandomAffine +
ColorJitter on a uint8 batch (B x 3 x H x W), (a) one parameter set for the whole batch,
(b) per-image parameters (a loop over images, how torchvision draws per-image randomness).
Prints JSON."""
import json, sys, time

import torch
import torchvision
from torchvision.transforms import v2

B, H, W = (int(a) for a in (sys.argv[1:4] if len(sys.argv) > 3 else (256, 384, 1248)))
dev = "cuda"
x = torch.randint(0, 256, (B, 3, H, W), dtype=torch.uint8, device=dev)
t = v2.Compose([
    v2.RandomAffine(degrees=10, translate=(20 / W, 10 / H), scale=(0.9, 1.1), shear=(-5.7, 5.7)),
    v2.RandomHorizontalFlip(0.5),
    v2.ColorJitter(brightness=0.08, contrast=0.2, saturation=0.3, hue=20 / 360),
])


def timed(fn, reps):
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2] * 1e3


batch_ms = timed(lambda: t(x), 10)
per_image_ms = timed(lambda: torch.stack([t(x[i]) for i in range(B)]), 3)
print(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__, "device": torch.cuda.get_device_name(0),
                  "batch": B, "height": H, "width": W,
                  "torchvision_one_param_set_ms_per_batch": round(batch_ms, 2),
                  "torchvision_per_image_ms_per_batch": round(per_image_ms, 2)}))
