"""Restore a video or a folder of frames with a trained or converted EDVR.

    python -m edvr_jax.restore INPUT OUTPUT --checkpoint CKPT [--tile 128] [--batch_size 4]

INPUT: a folder of frames or a video file. OUTPUT: a folder (PNG frames, named as the
input frames) or a video file (.mp4, .mkv, ...). CKPT: a train.py workdir, an
``edvr_jax.convert``/``export`` directory, or a BasicSR .pth/.safetensors file.
"""

from __future__ import annotations

import argparse
import sys
import time

from edvr_jax.cli import exit_on_user_error, quiet_dependencies, underscore_flags
from edvr_jax.media import InputError, Writer, read_clip, to_uint8
from edvr_jax.inference import TILE_OVERLAP, load
from edvr_jax.temporal import PADDING_MODES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--padding", choices=PADDING_MODES, help="temporal padding (default: per task, as BasicSR)")
    parser.add_argument("--tile", type=int, help="LQ tile side for large frames (e.g. 128); default: whole frames")
    parser.add_argument("--tile_overlap", type=int, default=TILE_OVERLAP,
                        help=f"LQ pixels shared by neighbouring tiles (default {TILE_OVERLAP})")
    parser.add_argument("--batch_size", type=int, default=1, help="windows (or tiles) per model call")
    parser.add_argument("--fps", type=float, help="output video frame rate (default: the input's, or 25)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="keep the dependencies' log lines")
    args = parser.parse_args(underscore_flags(argv))
    quiet_dependencies(args.verbose)
    return exit_on_user_error(lambda: restore(args))


def restore(args) -> None:
    from tqdm import tqdm

    frames, names, fps = read_clip(args.input)
    restorer = load(args.checkpoint, padding=args.padding, batch_size=args.batch_size, tile=args.tile,
                    tile_overlap=args.tile_overlap)
    if len(frames) < restorer.num_frame:
        raise InputError(f"{args.input} has {len(frames)} frames, fewer than the model's "
                         f"{restorer.num_frame}-frame window")
    writer = Writer(args.output, fps=args.fps or fps, overwrite=args.overwrite)
    ok = False
    start = time.perf_counter()
    try:
        with tqdm(total=len(frames), unit="frame", desc="restoring") as bar:
            for i, out in restorer.frames(frames):
                writer.write(to_uint8(out), names[i])
                bar.update(1)
        writer.close(ok=True)
        ok = True
    finally:
        if not ok:
            writer.close(ok=False)
            print(f"error: restoration stopped; the frames written so far are in {writer.partial}", file=sys.stderr)
    rate = len(frames) / (time.perf_counter() - start)
    print(f"restored {len(frames)} frames {frames.shape[2]}x{frames.shape[1]} -> x{restorer.scale} into "
          f"{args.output} ({rate:.2f} frames/s)")


if __name__ == "__main__":
    sys.exit(main())
