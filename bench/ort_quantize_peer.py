#!/usr/bin/env python3
"""The peer for `quantize`: onnxruntime's own static quantizer (QDQ, per-channel int8
weights, uint8 activations) on the same FP32 export and the same kind of calibration data
(256 Fashion-MNIST training images), so that our INT8 model can be compared with it in
`bench/onnx_int8.py`. Needs `pip install onnx onnxruntime`.

  python3 bench/ort_quantize_peer.py FP32.onnx OUT.onnx [--method entropy|minmax|percentile]
"""
import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

sys.path.insert(0, os.path.dirname(__file__))
from onnx_int8 import idx, preprocess  # noqa: E402


class Reader(CalibrationDataReader):
    def __init__(self, x, batch):
        self.batches = iter([x[i:i + batch] for i in range(0, len(x), batch)])

    def get_next(self):
        b = next(self.batches, None)
        return None if b is None else {"input": b}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("fp32")
    ap.add_argument("out")
    ap.add_argument("--method", default="entropy")
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "data", "fashion-mnist-mini"))
    a = ap.parse_args()
    spec = json.loads(ort.InferenceSession(a.fp32, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map["taoflow.input"])
    imgs = idx(os.path.join(a.data, "train-images-idx3-ubyte.gz"))
    rng = np.random.default_rng(17)
    x = preprocess(imgs[rng.permutation(len(imgs))[:256]], spec)
    method = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[a.method]
    quantize_static(a.fp32, a.out, Reader(x, 32), quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
