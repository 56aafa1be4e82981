"""The dataset layouts (raw tiles and PNG) and what reads them: tile geometry, the same frames and
the same training batches from both, uint8 batches made float on the device exactly as on the
host, the iterator's position under any worker count, PNG -> tiles conversion without the source
folders, and damaged, truncated or missing shards as one-line errors."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grain.python as grain
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import TINY, TINY_ARG
from PIL import Image

from edvr_jax.data import ClipReader, DatasetError, EdvrReds, TileGrid, WindowSpec, eval_clips, load_builder, train_loader
from edvr_jax.data import convert as convert_cli
from edvr_jax.data import pipeline, shards
from edvr_jax.data.layout import config_name
from edvr_jax.training.step import batch_to_float, to_float

ROOT = Path(__file__).resolve().parent.parent


def _save(path: Path, arr: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def reds_folder(tmp_path_factory):
    """A REDS folder of random frames: GT 40x56 (7x5 tiles of 8 px, the last ones partial), LQ 10x14."""
    root = tmp_path_factory.mktemp("reds_src")
    rng = np.random.default_rng(3)
    for part, clips in (("train", ["000", "001", "011", "015", "020"]), ("val", ["000"])):
        for name in clips:
            for f in range(7):
                gt = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
                _save(root / f"{part}_sharp" / name / f"{f:08d}.png", gt)
                _save(root / f"{part}_sharp_bicubic" / "X4" / name / f"{f:08d}.png", gt[::4, ::4])
    return root


def _build(manual_dir, data_dir, layout: str, tile: int = 8):
    """REDS sr_x4 in ``layout``; tiles of ``tile`` pixels (TFDS config ``sr_x4-tiles8``)."""
    config = {c.name: c for c in EdvrReds.BUILDER_CONFIGS}["sr_x4"]
    if layout == "tiles":
        config = dataclasses.replace(config, name=config_name("sr_x4", "tiles", tile), layout="tiles", tile=tile)
    builder = EdvrReds(config=config, data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


@pytest.fixture(scope="module")
def builds(reds_folder, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    return {"png": _build(reds_folder, data_dir, "png"), "tiles": _build(reds_folder, data_dir, "tiles")}


def test_tile_grid_covers_any_window_exactly():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w, t = (int(v) for v in rng.integers(1, 40, 3))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        grid = TileGrid(h, w, t)
        tiles = grid.split(img)
        assert len(tiles) == len(grid) == -(-h // t) * -(-w // t)
        top, left = int(rng.integers(h)), int(rng.integers(w))
        wh, ww = int(rng.integers(1, h - top + 1)), int(rng.integers(1, w - left + 1))
        out = np.zeros((wh, ww, 3), np.uint8)
        covered = np.zeros((wh, ww), int)
        for i, ty, tx, oy, ox in grid.covering(top, left, wh, ww):
            out[oy, ox] = tiles[i][ty, tx]
            covered[oy, ox] += 1
        np.testing.assert_array_equal(out, img[top:top + wh, left:left + ww])
        assert (covered == 1).all()  # every pixel from exactly one tile
        # only the tiles the window overlaps: rows and columns of tiles it spans
        rows = (top + wh - 1) // t - top // t + 1
        cols = (left + ww - 1) // t - left // t + 1
        assert len(grid.covering(top, left, wh, ww)) == rows * cols


def test_both_layouts_store_the_same_frames(builds, reds_folder):
    png, tiles = ClipReader(builds["png"], "train"), ClipReader(builds["tiles"], "train")
    assert tiles.layout == "tiles" and png.layout == "png" and tiles.dataset == png.name == "edvr_reds/sr_x4"
    # per frame 2x2 LQ tiles (10x14 in 8 px) and 5x7 GT tiles
    assert builds["tiles"].info.splits["train"].num_examples == 14 * (4 + 35)
    for a, b in zip(eval_clips(png), eval_clips(tiles)):
        np.testing.assert_array_equal(a.lq, b.lq)
        np.testing.assert_array_equal(a.gt, b.gt)
    src = np.asarray(Image.open(reds_folder / "val_sharp" / "000" / "00000003.png"))
    np.testing.assert_array_equal(tiles.gt(1, 3), src)  # clip 240 = val 000
    np.testing.assert_array_equal(tiles.lq_crop(1, [3], 1, 5, 6)[0], src[::4, ::4][1:7, 5:11])
    np.testing.assert_array_equal(tiles.gt_crop(1, 3, 4, 20, 24), src[4:28, 20:44])


def _old_batch(reader: ClipReader, spec: WindowSpec, rows, seed: int) -> dict:
    """The training batch as the pipeline made it before the tile layout: whole frames read and
    decoded, then cropped and flipped, stacked and made float32 on the host."""
    out = {"lq": [], "gt": []}
    for c, f, e, k in rows:
        c, center, rng = int(c), int(f), np.random.default_rng([seed, int(e), int(k), 1])
        count = reader.clips[c][2]
        interval = int(rng.choice(spec.interval_list))
        half = spec.num_frame // 2 * interval
        while center - half < 0 or center + half > count - 1:
            center = int(rng.integers(count))
        frames = list(range(center - half, center + half + 1, interval))
        if spec.random_reverse and rng.random() < 0.5:
            frames.reverse()
        lq, gt = reader.lq(c, frames), reader.gt(c, center)
        s, p = reader.scale, spec.gt_size // reader.scale
        h, w = lq.shape[1:3]
        top, left = int(rng.integers(h - p + 1)), int(rng.integers(w - p + 1))
        lq, gt = lq[:, top:top + p, left:left + p], gt[top * s:(top + p) * s, left * s:(left + p) * s]
        if spec.use_hflip and rng.random() < 0.5:
            lq, gt = lq[:, :, ::-1], gt[:, ::-1]
        if spec.use_rot:
            if rng.random() < 0.5:
                lq, gt = lq[:, ::-1], gt[::-1]
            if rng.random() < 0.5:
                lq, gt = lq.transpose(0, 2, 1, 3), gt.transpose(1, 0, 2)
        out["lq"].append(lq)
        out["gt"].append(gt)
    return {k: np.stack(v).astype(np.float32) / np.float32(255.0) for k, v in out.items()}


def test_tiles_and_png_give_todays_batches_bit_for_bit(builds):
    """Same seed: the same uint8 batches from both layouts; made float on the device, they are the
    float32 batches the host used to make, bit for bit."""
    spec = WindowSpec(num_frame=3, gt_size=24, interval_list=(1, 2), random_reverse=True)
    png, tiles = ClipReader(builds["png"], "train"), ClipReader(builds["tiles"], "train")
    loaders = {k: iter(train_loader(r, spec, 4, seed=5)) for k, r in (("png", png), ("tiles", tiles))}
    plan = pipeline._BatchPlan("", pipeline._centers(tiles, spec), 4, 5, None)
    convert = jax.jit(batch_to_float)
    for i in range(5):  # 14 samples: 3 batches an epoch, so two epochs
        a, b = next(loaders["png"]), next(loaders["tiles"])
        assert a["lq"].dtype == np.uint8 and a["lq"].shape == (4, 3, 6, 6, 3) and a["gt"].shape == (4, 24, 24, 3)
        for key in ("lq", "gt"):
            np.testing.assert_array_equal(a[key], b[key])
        on_device = jax.device_get(convert(b))
        old = _old_batch(png, spec, plan[i], seed=5)
        for key in ("lq", "gt"):
            assert on_device[key].dtype == np.float32
            np.testing.assert_array_equal(on_device[key].view(np.uint32), old[key].view(np.uint32))


def test_device_conversion_is_numpys_division_for_every_value():
    u = np.arange(256, dtype=np.uint8)
    host = u.astype(np.float32) / np.float32(255)
    device = np.asarray(jax.jit(to_float)(u))
    np.testing.assert_array_equal(device.view(np.uint32), host.view(np.uint32))
    assert device[255] == 1.0 and device[0] == 0.0
    x = np.linspace(0, 1, 7, dtype=np.float32)
    assert jax.jit(to_float)(x).dtype == np.float32 and np.array_equal(jax.jit(to_float)(x), x)  # floats pass


@pytest.mark.heavy
def test_a_saved_position_restores_under_another_worker_count(builds):
    """The state is the next batch index: saved with 0 workers, restored with 2, and a Grain
    DataLoader's own state (what earlier runs saved) read as the index it stands for."""
    reader = ClipReader(builds["tiles"], "train")
    spec = WindowSpec(num_frame=3, gt_size=24)
    loader = train_loader(reader, spec, 2, seed=9)
    expected = [b["gt"] for _, b in zip(range(9), iter(loader))]
    it = iter(loader)
    for _ in range(4):
        next(it)
    state = it.get_state()
    assert json.loads(state)["next_batch"] == 4
    resumed = iter(train_loader(reader, spec, 2, seed=9, worker_count=2))
    resumed.set_state(state)
    for k in range(4, 7):
        np.testing.assert_array_equal(next(resumed)["gt"], expected[k])
    resumed.close()
    with pytest.raises(ValueError, match="another batch plan"):
        iter(train_loader(reader, spec, 2, seed=10)).set_state(state)
    # Grain's DataLoader over the same plan, as train_loader built it before: its state after k batches
    plan = pipeline._BatchPlan(f"{reader.dataset}/train, {spec}", pipeline._centers(reader, spec), 2, 9, None)
    for workers, k in ((0, 3), (2, 5)):
        old = grain.DataLoader(data_source=plan, sampler=grain.IndexSampler(len(plan), grain.NoSharding(), False, 1, 9),
                               worker_count=workers, operations=[pipeline._LoadBatch(reader, spec, 9)])
        old_it = iter(old)
        for _ in range(k):
            next(old_it)
        grain_state = old_it.get_state()
        del old_it
        assert pipeline.grain_state_position(json.loads(grain_state)) == k
        it = iter(loader)
        it.set_state(grain_state)
        np.testing.assert_array_equal(next(it)["gt"], expected[k])


def test_auto_worker_count_uses_the_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(16)))
    monkeypatch.setattr(jax, "local_device_count", lambda: 2)
    assert pipeline.auto_worker_count() == 8  # 4 per device
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1})
    assert pipeline.auto_worker_count() == 1  # cores less one, at least one
