#!/usr/bin/env python3
"""torchvision's own models with random weights vs taoflow's layer graph + Burn (NdArray)
forward pass: saves each model's state dict (zip .pt) and a random input, runs
`taoflow forward`, compares logits. Usage: torchvision_parity.py TAOFLOW_BIN OUTDIR"""
import json, os, subprocess, sys, time

import numpy as np
import torch
import torchvision

bin_, out = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
res = []
for arch in ["mobilenet_v2", "resnet18", "resnet34", "resnet50"]:
    m = getattr(torchvision.models, arch)(weights=None).eval()
    # Non-trivial batch-norm statistics, so that running stats are exercised.
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    w = os.path.join(out, f"{arch}.pt")
    torch.save(m.state_dict(), w)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = m(x).numpy()
    xin, yout = os.path.join(out, f"{arch}.in.f32"), os.path.join(out, f"{arch}.out.f32")
    x.numpy().astype("<f4").tofile(xin)
    t0 = time.time()
    p = subprocess.run([bin_, "forward", "--arch", arch, "--weights", w, "--input", xin, "--shape", "2,3,224,224", "--out", yout], capture_output=True, text=True)
    if p.returncode != 0:
        res.append({"arch": arch, "error": p.stderr[-500:]})
        continue
    ours = np.fromfile(yout, dtype="<f4").reshape(ref.shape)
    rel = float(np.abs(ours - ref).max() / (np.abs(ref).max() + 1e-12))
    res.append({"arch": arch, "max_abs_diff": float(np.abs(ours - ref).max()), "max_rel_to_max": rel, "argmax_equal": bool((ours.argmax(1) == ref.argmax(1)).all()), "ok_1e-4": rel < 1e-4, "taoflow_s": round(time.time() - t0, 2)})
print(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__, "results": res}, indent=1))
