"""Fetches BasicSR 1.4.2's sdist from PyPI and keeps the parts the GPU benchmark loads.

    python benchmarks/get_basicsr.py [--sdist basicsr-1.4.2.tar.gz] [DEST]   # DEST: benchmarks/.basicsr (git-ignored)

Only ``basicsr/archs/{arch_util,edvr_arch}.py`` and ``basicsr/ops/dcn/`` are kept
(BasicSR's package ``__init__`` pulls in OpenCV, LMDB, ...; benchmarks/gpu.py
stubs its registry and logger). Run it where PyPI is reachable, before carrying
the folder to a machine without network. ``pip download`` prepares the sdist's
metadata, which imports torch: run it with a Python that has torch, or pass an
sdist fetched elsewhere (``pip download --no-deps basicsr==1.4.2 -d DIR``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

KEEP = ("basicsr/archs/arch_util.py", "basicsr/archs/edvr_arch.py", "basicsr/ops/dcn/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", nargs="?", default=str(Path(__file__).resolve().parent / ".basicsr"))
    parser.add_argument("--sdist", help="an already downloaded basicsr-1.4.2.tar.gz")
    args = parser.parse_args()
    dest = Path(args.dest)
    with tempfile.TemporaryDirectory() as tmp:
        if args.sdist:
            sdist = Path(args.sdist)
        else:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "basicsr==1.4.2", "-d", tmp],
                           check=True)
            [sdist] = Path(tmp).glob("basicsr-1.4.2.tar.gz")
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                rel = member.name.split("/", 1)[-1]
                if member.isfile() and any(rel == k or (k.endswith("/") and rel.startswith(k)) for k in KEEP):
                    target = dest / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out)
    print(f"BasicSR 1.4.2 archs/ and ops/dcn/ in {dest}")


if __name__ == "__main__":
    main()
