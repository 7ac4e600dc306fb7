#!/usr/bin/env python3
"""Print pipelines/detect-trees.toml rewritten for a benchmark run (run from the repository
root): its `fetch` and `weights` stages left out and their outputs read from pipelines/work
(fetched here and carried to the GPU machine, which has no network), and
  --name N         the pipeline's name (outputs in pipelines/outputs/N)
  --seed S         the pipeline's seed
  --scratch        no pretrained backbone
  --epochs E       train's epochs
  --drop STAGE...  more stages left out (train reads `convert` when `augment` goes)
Used by bench/gpu/trees.sh, bench/gpu/trees_chain.sh and bench/trees_speed.sh."""
import argparse, re

ap = argparse.ArgumentParser()
ap.add_argument("--name", required=True)
ap.add_argument("--seed", type=int)
ap.add_argument("--scratch", action="store_true")
ap.add_argument("--epochs", type=int)
ap.add_argument("--drop", nargs="*", default=[])
a = ap.parse_args()

t = open("pipelines/detect-trees.toml").read()
for stage in ["fetch", "weights"] + a.drop:
    # [stages.X] and its sub-tables [stages.X.*], each up to the next table header
    t = re.sub(rf"\n\[stages\.{stage}(\.[^\]]*)?\]\n(?:(?!\n\[).)*", "\n", t, flags=re.S)
t = t.replace('source = "fetch.images"', 'source = "work/deepforest"')
t = t.replace('pretrained = "weights"', "" if a.scratch else 'pretrained = "work/weights/mobilenet_v2-b0353104.pth"')
t = t.replace('name = "detect-trees"', f'name = "{a.name}"')
if a.seed is not None:
    t = re.sub(r"^seed = \d+$", f"seed = {a.seed}", t, count=1, flags=re.M)
if "augment" in a.drop:
    t = t.replace('dataset = "augment"\narch', 'dataset = "convert"\narch')
if a.epochs is not None:
    t = re.sub(r"(\n\[stages\.train\]\n(?:(?!\n\[).)*?\nepochs = )\d+", rf"\g<1>{a.epochs}", t, count=1, flags=re.S)
print(t)
