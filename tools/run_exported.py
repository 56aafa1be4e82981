"""Runs an EDVR exported with ``python -m edvr_jax.export ... --format jax``, with jax and numpy
only (no edvr_jax, no Flax):

    python tools/run_exported.py model.jaxexport frames.npy out.npy

frames.npy: float32 [batch, num_frame, H, W, 3] in [0, 1] (H, W multiples of 4, or 16 for HR input).
"""

import sys

import numpy as np
from jax import export


def run(artifact: str, frames: np.ndarray) -> np.ndarray:
    with open(artifact, "rb") as f:
        exported = export.deserialize(bytearray(f.read()))
    return np.asarray(exported.call(np.asarray(frames, np.float32)))


if __name__ == "__main__":
    artifact, src, dst = sys.argv[1:4]
    out = run(artifact, np.load(src))
    np.save(dst, out)
    print(f"{src} {np.load(src).shape} -> {dst} {out.shape}")
