"""The held-out frames of a footage run as a camera would hand them over: a video file of the LQ,
made from GT as the run's data makes it (downscale, noise, then the run's codec, as a file of
its own), and the GT frames beside it, in the folder layout eval.py scores.

    python -m tools.compressed_clip runs/demo_h264 held_out --name phone
    python -m edvr_jax.restore held_out/LQ/phone.mp4 out.mp4 --checkpoint runs/demo_h264
    python eval.py --checkpoint runs/demo_h264 --dataset held_out          # restores and scores LQ/phone.mp4

Writes ``OUT/LQ/NAME.mp4`` and ``OUT/GT/NAME/00000.png ...`` for the first held-out part of the
run's data (``footage`` or ``demo_video``; the run must make its LQ with a codec). NAME defaults
to the part's name (e.g. ``bigbuckbunny.0040-0078``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image


def held_out_part(run: Path):
    """``(part name, FootageClip, first, stop, LQ options)`` of the run's first held-out part."""
    from edvr_jax import data, weights
    from edvr_jax.data.folders import split_clips
    from edvr_jax.data.footage import make_config

    cfg = weights.read_header(run).train_config
    if not cfg:
        raise SystemExit(f"{run} has no training config (not a train.py run)")
    dc = cfg["data"]
    cls = data.DATASETS.get(dc["name"], (None,))[0]
    if cls is None or not issubclass(cls, data.EdvrFootage):
        raise SystemExit(f"{run} trained on {dc['name']}, not on footage whose LQ is made from GT")
    root = cls.source_root() if cls.MANUAL_DOWNLOAD_INSTRUCTIONS is None else Path(dc["manual_dir"])
    made = make_config(cls, dc["config"] or None, root, cls.options(dc.get("footage")))
    if made.codec is None:
        raise SystemExit(f"{run}'s data has no codec (data.footage.codec is none): nothing to compress")
    clips = data.find_clips(root, made.degradation, made.scale, made.gt_resize, made.clips or None, made.gt_crop)
    name, clip, lo, hi = split_clips(clips, made.test_clips, made.test_part, made.min_frames)["test"][0]
    return name, clip, lo, hi, made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a train.py run on footage with a codec (e.g. runs/demo_h264)")
    parser.add_argument("out", help="folder for LQ/NAME.mp4 and GT/NAME/*.png")
    parser.add_argument("--name", default=None, help="the clip's name (default: the held-out part's)")
    args = parser.parse_args()
    part, clip, lo, hi, made = held_out_part(Path(args.run))
    name = args.name or part
    lq = [clip.made_lq_frame(i, made.degradation, made.noise) for i in range(lo, hi)]
    if lq[0].shape[0] % 2 or lq[0].shape[1] % 2:
        raise SystemExit(f"LQ frames of {lq[0].shape[1]}x{lq[0].shape[0]}: a 4:2:0 video needs even sides")
    stream = made.codec.encode(lq, name)
    out = Path(args.out)
    (out / "LQ").mkdir(parents=True, exist_ok=True)
    (out / "GT" / name).mkdir(parents=True, exist_ok=True)
    (out / "LQ" / f"{name}.mp4").write_bytes(stream.data)
    for k, i in enumerate(range(lo, hi)):
        Image.fromarray(clip.gt_frame(i)).save(out / "GT" / name / f"{k:05d}.png")
    print(f"{out / 'LQ' / f'{name}.mp4'}: frames {lo}-{hi - 1} of {clip.name}, {lq[0].shape[1]}x{lq[0].shape[0]}, "
          f"{made.codec.describe()}, {len(stream.data)} bytes; GT in {out / 'GT' / name}")


if __name__ == "__main__":
    main()
