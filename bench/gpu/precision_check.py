#!/usr/bin/env python3
"""Top-1 of taoflow model artifacts on the quickstart's test images, in PyTorch on the GPU,
in fp32 (TF32 off), TF32 and bf16 autocast: does a model's accuracy depend on the precision
it is run in? Also lists batch norms whose running variance is tiny (a sign of channels
that only a low-precision forward pass keeps quiet).

  precision_check.py MODEL_DIR... [--data data/fashion-mnist-mini]
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from torch_graph import Graph  # noqa: E402
from onnx_int8 import idx, preprocess  # noqa: E402


def top1(m, x, y, bf16, tf32):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    right = 0
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(x), 200):
            xb = torch.from_numpy(x[i:i + 200]).cuda().to(memory_format=torch.channels_last)
            right += int((m(xb).float().argmax(1).cpu().numpy() == y[i:i + 200]).sum())
    return right / len(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "data", "fashion-mnist-mini"))
    a = ap.parse_args()
    for d in a.models:
        spec = json.load(open(os.path.join(d, "model.json")))["input"]
        x = preprocess(idx(os.path.join(a.data, "t10k-images-idx3-ubyte.gz")), spec)
        y = idx(os.path.join(a.data, "t10k-labels-idx1-ubyte.gz")).astype(np.int64)
        m = Graph(d).eval().cuda().to(memory_format=torch.channels_last)
        r = {k: top1(m, x, y, bf16, tf32) for k, bf16, tf32 in (("fp32", False, False), ("tf32", False, True), ("bf16", True, True))}
        small = [(k, float(v.min())) for k, v in m.params.items() if k.endswith("running_var") and float(v.min()) < 1e-4]
        print(json.dumps({"model": d, "top1": r, "bn_with_running_var_below_1e-4": len(small), "examples": small[:5]}))


if __name__ == "__main__":
    main()
