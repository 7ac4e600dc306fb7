#!/usr/bin/env python3
"""taoflow model artifacts (model.json + weights.safetensors) as PyTorch modules, for GPU
throughput of pruned vs unpruned models and as an independent check of our ONNX export.

  torch_graph.py A_MODEL_DIR B_MODEL_DIR [--onnx A.onnx B.onnx] [--sizes 32,224] [--batch 256]

For each model: PyTorch forward on the CPU vs onnxruntime on our ONNX export (max relative
difference), then inference throughput on the GPU in fp32 (TF32 allowed) and bf16 autocast,
channels_last, at each input size (the graphs are fully convolutional up to a global pool,
so the same weights run at 224x224 too). Prints a table; the ratio B/A is the speed-up.
"""
import argparse
import json
import os
import struct
import time

import numpy as np
import torch
import torch.nn.functional as F

DT = {"F32": np.float32, "F16": np.float16, "BF16": None}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        arr = np.frombuffer(data[a:b], dtype=DT[v["dtype"]]).reshape(v["shape"])
        out[k] = torch.from_numpy(arr.astype(np.float32))
    return out


class Graph(torch.nn.Module):
    def __init__(self, model_dir):
        super().__init__()
        g = json.load(open(os.path.join(model_dir, "model.json")))
        w = read_safetensors(os.path.join(model_dir, "weights.safetensors"))
        self.layers = g["layers"]
        self.outputs = g.get("outputs") or [g["output"]]
        self.params = torch.nn.ParameterDict()
        for k, v in w.items():
            self.params[k.replace(".", "__")] = torch.nn.Parameter(v, requires_grad=False)

    def p(self, name):
        return self.params[name.replace(".", "__")]

    def forward(self, x):
        vals = {"input": x}
        for l in self.layers:
            op, name = l["op"], l["name"]
            a = vals[l["inputs"][0]]
            if op == "conv2d":
                t, le, b, r = l["padding"]
                if t == b and le == r:
                    y = F.conv2d(a, self.p(name + ".weight"), self.params.get((name + ".bias").replace(".", "__")), l["stride"], (t, le), 1, l["groups"])
                else:
                    y = F.conv2d(F.pad(a, (le, r, t, b)), self.p(name + ".weight"), self.params.get((name + ".bias").replace(".", "__")), l["stride"], 0, 1, l["groups"])
            elif op == "batch_norm":
                y = F.batch_norm(a, self.p(name + ".running_mean"), self.p(name + ".running_var"), self.p(name + ".weight"), self.p(name + ".bias"), False, 0.0, l["eps"])
            elif op == "relu":
                y = F.relu(a)
            elif op == "relu6":
                y = F.relu6(a)
            elif op == "max_pool":
                y = F.max_pool2d(a, l["kernel"], l["stride"], l["padding"])
            elif op == "global_avg_pool":
                y = torch.flatten(F.adaptive_avg_pool2d(a, 1), 1)
            elif op == "linear":
                y = F.linear(a, self.p(name + ".weight"), self.params.get((name + ".bias").replace(".", "__")))
            elif op == "dropout":
                y = a
            elif op == "sigmoid":
                y = torch.sigmoid(a)
            elif op == "add":
                y = a
                for i in l["inputs"][1:]:
                    y = y + vals[i]
            else:
                raise ValueError(f"unknown op {op}")
            vals[name] = y
        if len(self.outputs) > 1:
            return [vals[o] for o in self.outputs]
        y = vals[self.outputs[0]]
        return y if y.dim() == 2 else torch.flatten(y, 1)


def bench(m, x, seconds, bf16):
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        for _ in range(5):
            m(x)
        torch.cuda.synchronize()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            m(x)
            n += 1
        torch.cuda.synchronize()
        return n * x.shape[0] / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--onnx", nargs=2, default=None)
    ap.add_argument("--sizes", default="32,224")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    out = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "models": {}}
    for tag, d, onnx in (("A", a.a, a.onnx[0] if a.onnx else None), ("B", a.b, a.onnx[1] if a.onnx else None)):
        m = Graph(d).eval()
        params = sum(v.numel() for k, v in m.params.items() if "running" not in k)
        spec = json.load(open(os.path.join(d, "model.json")))["input"]
        r = {"dir": d, "params": params}
        if onnx:
            import onnxruntime as ort
            x = torch.from_numpy(np.random.default_rng(0).standard_normal((4, spec["channels"], spec["height"], spec["width"]), np.float32))
            with torch.no_grad():
                ref = m(x).numpy()
            got = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
            r["onnx_vs_torch_max_rel"] = float(np.abs(got - ref).max() / np.abs(ref).max())
        if torch.cuda.is_available():
            mg = m.cuda().to(memory_format=torch.channels_last)
            for s in [int(v) for v in a.sizes.split(",")]:
                x = torch.randn(a.batch, spec["channels"], s, s, device="cuda").to(memory_format=torch.channels_last)
                r[f"fp32_{s}"] = bench(mg, x, a.seconds, False)
                r[f"bf16_{s}"] = bench(mg, x, a.seconds, True)
        out["models"][tag] = r
    A, B = out["models"]["A"], out["models"]["B"]
    print(f"{out['gpu']}, torch {out['torch']}, batch {a.batch}")
    print(f"A: {A['dir']} ({A['params']:,} params)   B: {B['dir']} ({B['params']:,} params)")
    for k in ("onnx_vs_torch_max_rel",):
        if k in A:
            print(f"ONNX (onnxruntime CPU) vs PyTorch forward, max rel diff: A {A[k]:.1e}, B {B[k]:.1e}")
    for k in sorted(k for k in A if k.startswith(("fp32_", "bf16_"))):
        print(f"{k:10s} A {A[k]:10.0f} img/s   B {B[k]:10.0f} img/s   B/A {B[k] / A[k]:.2f}")
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
