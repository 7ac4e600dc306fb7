#!/usr/bin/env python3
"""Fetch DeepForest's sample images with their Pascal VOC boxes (PyPI deepforest==2.1.0,
`deepforest/data/`) into OUT/: the three smaller annotated images (OSBS_029, SOAP_061,
2019_YELL_2_541000_4977000_image_crop) and their XML files, side by side, as the `voc`
format of `convert` reads them.

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
NAMES = ["OSBS_029", "SOAP_061", "2019_YELL_2_541000_4977000_image_crop"]
IMAGES = {"OSBS_029": "OSBS_029.tif", "SOAP_061": "SOAP_061.png", "2019_YELL_2_541000_4977000_image_crop": "2019_YELL_2_541000_4977000_image_crop.png"}


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
            for n in NAMES:
                for f in (n + ".xml", IMAGES[n]):
                    with z.open("deepforest/data/" + f) as src, open(os.path.join(part, f), "wb") as dst:
                        shutil.copyfileobj(src, dst)
        shutil.rmtree(out, ignore_errors=True)
        os.rename(part, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
