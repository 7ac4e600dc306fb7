#!/usr/bin/env python3
"""The peer of `cargo bench --bench loader`: what a PyTorch DataLoader's workers do per
sample with PIL and numpy (decode, convert to RGB, bilinear resize, normalise to float32
CHW), on the same shards, with one worker process per core.
Usage: python3 bench/loader_peer.py   (after `cargo bench --bench loader` made the data)"""
import io, json, multiprocessing as mp, os, sys, tarfile, time

import numpy as np
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "work", "loader")
MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)


def load(name):
    out = []
    m = json.load(open(os.path.join(ROOT, name, "dataset.json")))
    for sh in m["splits"]["train"]["shards"]:
        with tarfile.open(os.path.join(ROOT, name, sh)) as t:
            for member in t:
                if member.name.endswith((".png", ".jpg")):
                    out.append(t.extractfile(member).read())
    return out


SIZE = None


def work(b):
    img = Image.open(io.BytesIO(b)).convert("RGB").resize(SIZE, Image.BILINEAR)
    a = np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0
    return ((a - MEAN) / STD).shape


def init(size):
    global SIZE
    SIZE = size


def main():
    cores = os.cpu_count()
    for name, size, case in [("fmnist-28", (64, 64), "28x28 grey PNG -> 64x64x3"), ("kitti-1242", (1248, 384), "1242x375 JPEG -> 1248x384x3")]:
        data = load(name)
        with mp.Pool(cores, initializer=init, initargs=(size,)) as pool:
            pool.map(work, data[:200], chunksize=16)
            best = 1e9
            for _ in range(3):
                t0 = time.perf_counter()
                pool.map(work, data, chunksize=64)
                best = min(best, time.perf_counter() - t0)
        print(json.dumps({"case": case, "peer": f"PIL {Image.__version__} + numpy, {cores} processes", "images": len(data), "seconds": round(best, 3), "images_per_s": round(len(data) / best)}))


if __name__ == "__main__":
    main()
