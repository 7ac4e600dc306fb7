#!/usr/bin/env python3
"""Run an ONNX model in onnxruntime on a raw float32 input (taoflow's parity tests).

  ort_run.py MODEL.onnx INPUT.f32 N,C,H,W OUTPUT.f32 [OPTIMIZED.onnx]

Writes every output, flattened and concatenated in the model's output order, as raw
little-endian float32. With OPTIMIZED.onnx, onnxruntime also
saves the graph it actually runs (after its QDQ fusions), so a test can check that a QDQ
model runs on INT8 kernels (QLinearConv, QLinearMatMul, ...).
"""
import sys

import numpy as np
import onnxruntime as ort


def main() -> int:
    if len(sys.argv) not in (5, 6):
        print(__doc__, file=sys.stderr)
        return 2
    model, inp, shape, out = sys.argv[1:5]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    if len(sys.argv) == 6:
        so.optimized_model_filepath = sys.argv[5]
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    x = np.fromfile(inp, dtype="<f4").reshape([int(v) for v in shape.split(",")])
    ys = sess.run(None, {sess.get_inputs()[0].name: x})
    np.concatenate([np.asarray(y, dtype="<f4").ravel() for y in ys]).tofile(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
