#!/usr/bin/env python3
"""Fetch DeepForest's sample images with their Pascal VOC boxes (PyPI deepforest==2.1.0,
`deepforest/data/`) into OUT/: the four annotated images (OSBS_029, SOAP_061 and two crops
of NEON's YELL site, 951 tree boxes) and their XML files, side by side, as the `voc` format
of `convert` reads them, plus the split lists `train.txt` (the larger YELL crop, OSBS_029,
SOAP_061: 672 boxes) and `val.txt` (the other YELL crop, 1249x1035, 279 boxes).

The three smaller images alone tile into 14 tiles at 416 px, too few to train or to
validate on (every detector, torchvision's Faster R-CNN too, scored AP50 ~0.01 on them).

  fetch_deepforest.py OUT
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

VERSION = "2.1.0"
IMAGES = {
    "OSBS_029": "OSBS_029.tif",
    "SOAP_061": "SOAP_061.png",
    "2019_YELL_2_528000_4978000_image_crop2": "2019_YELL_2_528000_4978000_image_crop2.png",
    "2019_YELL_2_541000_4977000_image_crop": "2019_YELL_2_541000_4977000_image_crop.png",
}
SPLITS = {"train": ["2019_YELL_2_528000_4978000_image_crop2", "OSBS_029", "SOAP_061"], "val": ["2019_YELL_2_541000_4977000_image_crop"]}


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        wheel = os.environ.get("TAOFLOW_DEEPFOREST_WHEEL")
        if not wheel:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", f"deepforest=={VERSION}", "-d", tmp], check=True)
            wheel = glob.glob(os.path.join(tmp, "deepforest-*.whl"))[0]
        part = out + ".part"
        shutil.rmtree(part, ignore_errors=True)
        os.makedirs(part)
        with zipfile.ZipFile(wheel) as z:
            for n, image in IMAGES.items():
                for f in (n + ".xml", image):
                    with z.open("deepforest/data/" + f) as src, open(os.path.join(part, f), "wb") as dst:
                        shutil.copyfileobj(src, dst)
        for split, names in SPLITS.items():
            with open(os.path.join(part, split + ".txt"), "w") as f:
                f.write("".join(IMAGES[n] + "\n" for n in names))
        shutil.rmtree(out, ignore_errors=True)
        os.rename(part, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
