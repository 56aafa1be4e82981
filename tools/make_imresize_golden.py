"""Writes tests/data/basicsr_imresize.npz with BasicSR 1.4.2's ``imresize`` (torch) outputs.

    pip download --no-deps --no-build-isolation basicsr==1.4.2 -d /tmp/bsr
    tar xzf /tmp/bsr/basicsr-1.4.2.tar.gz -C /tmp/bsr
    .venv-torch/bin/python -m tools.make_imresize_golden /tmp/bsr/basicsr-1.4.2   # make_basicsr_goldens' venv
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np

spec = importlib.util.spec_from_file_location("matlab_functions",
                                              Path(sys.argv[1]) / "basicsr" / "utils" / "matlab_functions.py")
mf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mf)
rng = np.random.default_rng(0)
arrays = {}
for name, shape, scale in [("down4", (24, 20, 3), 0.25), ("down4_odd", (37, 41, 3), 0.25), ("up2", (7, 9, 3), 2.0)]:
    img = rng.uniform(0, 1, shape)
    arrays[f"{name}/x"] = img
    arrays[f"{name}/y"] = np.asarray(mf.imresize(img, scale))
    arrays[f"{name}/scale"] = np.array(scale)
out = Path(__file__).resolve().parent.parent / "tests" / "data" / "basicsr_imresize.npz"
np.savez_compressed(out, **arrays)
print("wrote", out, {k: v.shape for k, v in arrays.items()})
