#!/usr/bin/env python3
"""onnxruntime CPU throughput of ONNX detectors (BENCHMARKS.md, DetectNet_v2): batch 8, 2 threads,
5 s per model; input size from the model.  detect_ort_speed.py A.onnx [B.onnx ...]"""
import sys, time, json
import numpy as np, onnxruntime as ort
res = {}
for path in sys.argv[1:]:
    so = ort.SessionOptions(); so.intra_op_num_threads = 2
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    x = np.random.rand(8, *[d for d in i.shape[1:]]).astype(np.float32)
    for _ in range(3): s.run(None, {i.name: x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 5:
        s.run(None, {i.name: x}); n += 8
    res[path] = n / (time.perf_counter() - t0)
    print(path, round(res[path], 1), "img/s")
