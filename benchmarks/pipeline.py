"""The training input pipeline alone: clips per second of ``train_loader`` on the demo set and on a
REDS-sized folder (720x1280 GT, 180x320 LQ PNGs made from scikit-image's photos), built in a temporary
folder; 5-frame windows, BasicSR's crop / flip / rotation, batch 8, worker start-up excluded.

    python -m benchmarks.run pipeline [--quick]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import Results


def _fake_reds(root: Path, clips: int, frames: int) -> None:
    """A REDS-shaped folder (720x1280 GT, 180x320 bicubic LQ) from scikit-image's photos."""
    from PIL import Image

    from edvr_jax.data.bicubic import downsample_uint8
    from edvr_jax.data.demo import TRAIN_PHOTOS, photo

    for c in ["000", "011", "015", "020"] + [f"{i:03d}" for i in range(1, clips + 1)]:
        base = Image.fromarray(photo(TRAIN_PHOTOS[int(c) % len(TRAIN_PHOTOS)]).astype(np.uint8)).resize((1320, 736))
        for f in range(frames):
            gt = np.asarray(base)[f:f + 720, 2 * f:2 * f + 1280]
            for part, img in (("train_sharp", gt), ("train_sharp_bicubic/X4", downsample_uint8(gt))):
                (root / part / c).mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / part / c / f"{f:08d}.png")
    for part in ("val_sharp/000", "val_sharp_bicubic/X4/000"):
        (root / part).mkdir(parents=True, exist_ok=True)
        for f in range(frames):
            src = root / part.replace("val", "train").replace("/000", "/001") / f"{f:08d}.png"
            (root / part / src.name).write_bytes(src.read_bytes())


def bench_pipeline(results: Results, quick: bool) -> None:
    import tensorflow_datasets as tfds

    from edvr_jax.data import ClipReader, EdvrReds, WindowSpec, load_builder, train_loader

    tmp = Path(tempfile.mkdtemp(prefix="edvr_pipeline_"))
    start = time.perf_counter()
    demo = load_builder("demo", data_dir=str(tmp / "tfds"))
    print(f"demo dataset built in {time.perf_counter() - start:.1f} s")
    _fake_reds(tmp / "reds", clips=2, frames=8 if quick else 12)
    reds = EdvrReds(config="sr_x4", data_dir=str(tmp / "tfds"))
    reds.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp / "reds")))
    cases = [("demo", ClipReader(demo, "train"), WindowSpec(num_frame=5, gt_size=64)),
             ("reds-size 720p", ClipReader(reds, "train"), WindowSpec(num_frame=5, gt_size=256))]
    print(f"{'dataset':16} {'workers':>7} {'batch':>5} {'clips/s':>8}")
    for name, reader, spec in cases:
        for workers in (0, 2):
            batch = 8
            it = iter(train_loader(reader, spec, batch, seed=0, worker_count=workers))
            next(it)  # start-up (worker processes) excluded
            n = 3 if quick else 10
            t0 = time.perf_counter()
            for _ in range(n):
                next(it)
            rate = n * batch / (time.perf_counter() - t0)
            del it
            print(f"{name:16} {workers:7d} {batch:5d} {rate:8.1f}")
            results.add("pipeline", dataset=name, workers=workers, batch=batch, num_frame=spec.num_frame,
                        gt_size=spec.gt_size, clips_per_s=rate)
