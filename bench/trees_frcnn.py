#!/usr/bin/env python3
"""The PyTorch peer of pipelines/detect-trees.toml (issue #20): torchvision's Faster R-CNN on
the ImageNet MobileNetV2 backbone (the same .pth the pipeline fine-tunes), trained on the same
tiles (the `augment` stage's dataset artifact) for the same epochs, scored on the same
validation tiles (the `convert` stage's `val` split) with pycocotools: AP and AP50.

  trees_frcnn.py TRAIN_DATASET VAL_DATASET MOBILENET_V2.pth EPOCHS [--device cuda]

Datasets are taoflow dataset artifacts (tar shards of <key>.png + <key>.json).
"""
import argparse
import io
import json
import os
import tarfile
import time

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.rpn import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign


def load(ds, split):
    man = json.load(open(os.path.join(ds, "dataset.json")))
    out = []
    for shard in man["splits"][split]["shards"]:
        t = tarfile.open(os.path.join(ds, shard))
        files = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}
        for name, data in files.items():
            if not name.endswith(".json"):
                continue
            key = name[:-5]
            img = next(v for k, v in files.items() if k.startswith(key + ".") and not k.endswith(".json"))
            im = np.asarray(Image.open(io.BytesIO(img)).convert("RGB"), dtype=np.float32) / 255.0
            lab = json.loads(data)
            boxes = [b["bbox"] for b in lab["boxes"]]
            out.append((key, torch.from_numpy(im).permute(2, 0, 1).contiguous(), torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)))
    return out


def model(pth):
    mb = torchvision.models.mobilenet_v2()
    mb.load_state_dict(torch.load(pth, map_location="cpu"))
    backbone = mb.features
    backbone.out_channels = 1280
    anchors = AnchorGenerator(sizes=((16, 32, 64, 128),), aspect_ratios=((0.5, 1.0, 2.0),))
    roi = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    return FasterRCNN(backbone, num_classes=2, rpn_anchor_generator=anchors, box_roi_pool=roi, min_size=416, max_size=416, box_detections_per_img=300)


def coco_eval(val, preds, out):
    gt = {"info": {}, "images": [], "annotations": [], "categories": [{"id": 1, "name": "tree"}]}
    dets = []
    aid = 1
    for i, (key, im, boxes) in enumerate(val):
        gt["images"].append({"id": i + 1, "file_name": key, "width": im.shape[2], "height": im.shape[1]})
        for b in boxes.tolist():
            gt["annotations"].append({"id": aid, "image_id": i + 1, "category_id": 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1]), "iscrowd": 0})
            aid += 1
        for b, s in zip(preds[i]["boxes"].tolist(), preds[i]["scores"].tolist()):
            dets.append({"image_id": i + 1, "category_id": 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s})
    if out:
        os.makedirs(out, exist_ok=True)
        json.dump(gt, open(os.path.join(out, "gt.json"), "w"))
        json.dump(dets, open(os.path.join(out, "dets.json"), "w"))
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:  # the GPU machine's venv: `taoflow eval-detections` scores the files
        return None, None
    c = COCO()
    c.dataset = gt
    c.createIndex()
    if not dets:
        return 0.0, 0.0
    e = COCOeval(c, c.loadRes(dets), "bbox")
    e.evaluate()
    e.accumulate()
    e.summarize()
    return float(e.stats[0]), float(e.stats[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("train")
    ap.add_argument("val")
    ap.add_argument("pth")
    ap.add_argument("epochs", type=int)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="", help="write gt.json and dets.json (COCO) here")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    train, val = load(a.train, "train"), load(a.val, "val")
    m = model(a.pth).to(dev)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    steps = a.epochs * max(1, len(train) // a.batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t0 = time.perf_counter()
    m.train()
    for ep in range(a.epochs):
        perm = torch.randperm(len(train)).tolist()
        for s in range(0, len(perm) - a.batch + 1, a.batch):
            items = [train[i] for i in perm[s:s + a.batch]]
            ims = [it[1].to(dev) for it in items]
            tg = [{"boxes": it[2].to(dev), "labels": torch.ones(len(it[2]), dtype=torch.int64, device=dev)} for it in items]
            loss = sum(m(ims, tg).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    secs = time.perf_counter() - t0
    m.eval()
    with torch.no_grad():
        preds = [{k: v.cpu() for k, v in m([it[1].to(dev)])[0].items()} for it in val]
    ap_, ap50 = coco_eval(val, preds, a.out)
    print(json.dumps({"peer": "torchvision fasterrcnn mobilenet_v2", "torch": torch.__version__, "train_images": len(train), "val_images": len(val), "epochs": a.epochs, "seconds": secs, "AP": ap_, "AP50": ap50, "seed": a.seed}))


if __name__ == "__main__":
    main()
