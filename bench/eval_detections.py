#!/usr/bin/env python3
"""`taoflow eval-detections` against pycocotools on a COCO-val-sized synthetic set, in one run.

    python3 bench/eval_detections.py [--images 5000] [--classes 80] [--seed 0] [--taoflow target/release/taoflow]

Writes the fixture to a temporary folder, times pycocotools (load ground truth, loadRes,
evaluate, accumulate, summarize: what a user runs) and the taoflow binary (the same, from
the same files), checks the twelve numbers agree to 1e-6, and prints one JSON line.
"""
import argparse, contextlib, io, json, os, random, subprocess, sys, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--images", type=int, default=5000)
ap.add_argument("--classes", type=int, default=80)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--taoflow", default="target/release/taoflow")
a = ap.parse_args()

rng = random.Random(a.seed)
images, anns, dets = [], [], []
for i in range(1, a.images + 1):
    images.append({"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480})
    for _ in range(rng.randint(0, 14)):  # ~7 objects an image, as COCO val
        c = rng.randint(1, a.classes)
        s = rng.choice([12, 24, 48, 96, 200]) * rng.uniform(0.7, 1.4)
        w, h = s * rng.uniform(0.5, 1.5), s * rng.uniform(0.5, 1.5)
        b = [rng.uniform(0, 640 - w), rng.uniform(0, 480 - h), w, h]
        anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": b, "area": w * h, "iscrowd": int(rng.random() < 0.01)})
        for _ in range(rng.randint(0, 3)):  # hits and near misses
            j = lambda v: v * rng.uniform(-0.25, 0.25)
            dets.append({"image_id": i, "category_id": c if rng.random() < 0.9 else rng.randint(1, a.classes), "bbox": [b[0] + j(w), b[1] + j(h), w + j(w), h + j(h)], "score": round(rng.random(), 3)})
    for _ in range(rng.randint(0, 20)):  # background
        s = rng.uniform(8, 150)
        dets.append({"image_id": i, "category_id": rng.randint(1, a.classes), "bbox": [rng.uniform(0, 600), rng.uniform(0, 440), s, s * rng.uniform(0.5, 2)], "score": round(rng.random() * 0.6, 3)})

tmp = tempfile.mkdtemp()
gt, dt = os.path.join(tmp, "gt.json"), os.path.join(tmp, "dt.json")
json.dump({"info": {}, "images": images, "annotations": anns, "categories": [{"id": k, "name": f"c{k}"} for k in range(1, a.classes + 1)]}, open(gt, "w"))
json.dump(dets, open(dt, "w"))

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
t0 = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    g = COCO(gt); d = g.loadRes(dt)
    e = COCOeval(g, d, "bbox"); e.evaluate(); e.accumulate(); e.summarize()
t_py = time.perf_counter() - t0

t0 = time.perf_counter()
out = subprocess.run([a.taoflow, "eval-detections", gt, dt, "--json"], check=True, capture_output=True)
t_tf = time.perf_counter() - t0
ours = json.loads(out.stdout)["coco"]
names = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large"]
diff = max(abs(ours[n] - float(e.stats[i])) for i, n in enumerate(names))
print(json.dumps({"images": a.images, "classes": a.classes, "ground_truth": len(anns), "detections": len(dets),
                  "pycocotools_s": round(t_py, 2), "taoflow_s": round(t_tf, 2), "speedup": round(t_py / t_tf, 2),
                  "AP": round(ours["AP"], 4), "max_abs_diff": diff, "threads": os.cpu_count()}))
if diff > 1e-6:
    sys.exit("the twelve numbers differ from pycocotools by more than 1e-6")
