"""Restore a video or a folder of frames with a trained or converted EDVR.

    python -m edvr_jax.restore INPUT OUTPUT --checkpoint CKPT [--tile 128] [--batch_size 4]

INPUT: a folder of frames or a video file, of any length: frames are decoded, restored and
written one at a time. OUTPUT: a folder (PNG frames, named as the input frames) or a video
file (.mp4, .mkv, ...), written to OUTPUT.partial and renamed when complete. CKPT: a
train.py workdir, an ``edvr_jax.convert``/``export`` directory, or a BasicSR
.pth/.safetensors file.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

from edvr_jax.cli import exit_on_user_error, quiet_dependencies, underscore_flags
from edvr_jax.inference import TILE_OVERLAP, Restorer, load
from edvr_jax.media import ClipFile, InputError, Writer, open_clip
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
    clip = open_clip(args.input)
    restorer = load(args.checkpoint, padding=args.padding, batch_size=args.batch_size, tile=args.tile,
                    tile_overlap=args.tile_overlap)
    restore_clip(restorer, clip, args.output, fps=args.fps, overwrite=args.overwrite)


def restore_clip(restorer: Restorer, clip: ClipFile, output: str | os.PathLike, fps: float | None = None,
                 overwrite: bool = False) -> int:
    """Restores ``clip`` into ``output`` (a folder of PNGs or a video), decoding, restoring and
    writing a frame at a time (``Restorer.stream``), so memory does not depend on the clip's
    length; prints a summary line and returns the number of frames."""
    from tqdm import tqdm

    frames = iter(clip)
    head = list(itertools.islice(frames, restorer.num_frame))
    if len(head) < restorer.num_frame:
        raise InputError(f"{clip.path} has {len(head)} frames, fewer than the model's "
                         f"{restorer.num_frame}-frame window")
    writer = Writer(output, fps=fps or clip.fps, overwrite=overwrite)
    ok, count = False, 0
    start = time.perf_counter()
    try:
        with tqdm(total=clip.count, unit="frame", desc="restoring") as bar:
            for count, out in enumerate(restorer.stream(itertools.chain(head, frames)), 1):
                writer.write(out, clip.name(count - 1))
                bar.update(1)
        writer.close(ok=True)
        ok = True
    finally:
        if not ok:
            writer.close(ok=False)
            if writer.written:
                print(f"error: restoration stopped; the {writer.written} frames written so far are in "
                      f"{writer.partial}", file=sys.stderr)
    rate = count / (time.perf_counter() - start)
    print(f"restored {count} frames {clip.size[1]}x{clip.size[0]} -> x{restorer.scale} into "
          f"{output} ({rate:.2f} frames/s)")
    return count


if __name__ == "__main__":
    sys.exit(main())
