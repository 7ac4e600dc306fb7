#!/usr/bin/env python3
"""Two ONNX models side by side in onnxruntime (FP32 vs INT8 QDQ, or unpruned vs pruned):
throughput per execution provider, and top-1 on the quickstart's Fashion-MNIST test images
(the same images `quantize` and `evaluate` report on).

  python3 bench/onnx_int8.py A.onnx B.onnx [--labels fp32,int8] [--data data/fashion-mnist-mini]
         [--batch 64] [--seconds 5] [--threads 0] [--providers CPUExecutionProvider,...]

Preprocessing follows the model's `taoflow.input` metadata (size, mean/std); images are
resized with PIL's bilinear filter, which differs from taoflow's resizer by at most a grey
level, so accuracies can differ from the `quantize` report in the last digit.
"""
import argparse
import gzip
import json
import os
import struct
import sys
import time

import numpy as np
import onnxruntime as ort


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2049:
        return np.frombuffer(data, np.uint8, offset=8)
    rows, cols = struct.unpack(">II", data[8:16])
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows, cols)


def preprocess(images, spec):
    from PIL import Image

    w, h, c = spec["width"], spec["height"], spec["channels"]
    out = np.empty((len(images), c, h, w), np.float32)
    mean = np.array(spec["mean"], np.float32).reshape(c, 1, 1)
    std = np.array(spec["std"], np.float32).reshape(c, 1, 1)
    for i, im in enumerate(images):
        r = np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR), np.float32) / 255.0
        out[i] = (np.broadcast_to(r, (c, h, w)) - mean) / std
    return out


def session(path, provider, threads):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(path, so, providers=[provider])


def throughput(sess, x, seconds):
    name = sess.get_inputs()[0].name
    for _ in range(3):
        sess.run(None, {name: x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, {name: x})
        n += 1
    return n * len(x) / (time.perf_counter() - t0)


def top1(sess, x, y, batch):
    name = sess.get_inputs()[0].name
    right = 0
    for i in range(0, len(x), batch):
        right += int((sess.run(None, {name: x[i:i + batch]})[0].argmax(1) == y[i:i + batch]).sum())
    return right / len(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("fp32")
    ap.add_argument("int8")
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "data", "fashion-mnist-mini"))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--providers", default="")
    ap.add_argument("--json", default="")
    ap.add_argument("--labels", default="fp32,int8")
    a = ap.parse_args()
    meta = ort.InferenceSession(a.fp32, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    spec = json.loads(meta["taoflow.input"])
    have = ort.get_available_providers()
    providers = [p for p in (a.providers.split(",") if a.providers else have) if p in have and p != "AzureExecutionProvider"]
    x_all = y_all = None
    if os.path.isdir(a.data):
        x_all = preprocess(idx(os.path.join(a.data, "t10k-images-idx3-ubyte.gz")), spec)
        y_all = idx(os.path.join(a.data, "t10k-labels-idx1-ubyte.gz")).astype(np.int64)
    rng = np.random.default_rng(0)
    xb = x_all[:a.batch] if x_all is not None and len(x_all) >= a.batch else rng.standard_normal((a.batch, spec["channels"], spec["height"], spec["width"]), np.float32)
    rows = []
    for p in providers:
        row = {"provider": p, "batch": a.batch}
        for tag, path in (("a", a.fp32), ("b", a.int8)):
            try:
                s = session(path, p, a.threads)
                row[f"{tag}_img_s"] = throughput(s, xb, a.seconds)
                if x_all is not None:
                    row[f"{tag}_top1"] = top1(s, x_all, y_all, a.batch)
            except Exception as e:  # a provider may refuse a model; say so and go on
                row[f"{tag}_error"] = str(e).splitlines()[0][:200]
        if "a_img_s" in row and "b_img_s" in row:
            row["speedup"] = row["b_img_s"] / row["a_img_s"]
        rows.append(row)
    print(f"onnxruntime {ort.__version__}; providers available: {', '.join(have)}; input {spec['channels']}x{spec['height']}x{spec['width']}, batch {a.batch}")
    la, lb = a.labels.split(",")
    print(f"A = {la}: {a.fp32}\nB = {lb}: {a.int8}")
    print(f"{'provider':28s} {la + ' img/s':>13s} {lb + ' img/s':>13s} {'B/A':>6s} {la + ' top1':>11s} {lb + ' top1':>11s}")
    for r in rows:
        f = lambda k, fmt: format(r[k], fmt) if k in r else "-"
        print(f"{r['provider']:28s} {f('a_img_s', '13.0f')} {f('b_img_s', '13.0f')} {f('speedup', '6.2f')} {f('a_top1', '11.4f')} {f('b_top1', '11.4f')}")
        for k in ("a_error", "b_error"):
            if k in r:
                print(f"  {k}: {r[k]}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"onnxruntime": ort.__version__, "providers": have, "a": a.fp32, "b": a.int8, "labels": [la, lb], "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
