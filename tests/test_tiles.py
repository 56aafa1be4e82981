"""The dataset layouts (raw tiles and PNG) and what reads them: tile geometry, the same frames and
the same training batches from both, uint8 batches made float on the device exactly as on the
host, the iterator's position under any worker count, PNG -> tiles conversion without the source
folders, and damaged, truncated or missing shards as one-line errors."""

import dataclasses
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grain.python as grain
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import TINY, TINY_ARG
from PIL import Image

from edvr_jax.data import (ClipReader, DatasetError, EdvrReds, TileGrid, WindowSpec, eval_clips, load_builder,
                           train_loader)
from edvr_jax.data import convert as convert_cli
from edvr_jax.data import handoff, pipeline, shards
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
    lq, gt = tiles.crops(1, [3, 4], 1, 5, 6, gt_frame=3)
    np.testing.assert_array_equal(lq[0], src[::4, ::4][1:7, 5:11])
    np.testing.assert_array_equal(lq[1], tiles.lq(1, [4])[0][1:7, 5:11])
    np.testing.assert_array_equal(gt, src[4:28, 20:44])
    np.testing.assert_array_equal(png.windows(1, [(3, True, 5, 7, 3, 30)])[0], src[5:8, 7:37])


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


def test_batch_rings_hand_over_copies_and_reuse_a_slot_only_once_given_back():
    """The training process's and a worker's side of one ring, in one process: the batch taken is a
    copy of the slot; the worker waits for a slot to come back before it writes it again; closing
    removes the segments and the FIFOs."""
    rings = handoff.Rings(2, 3, {"lq": (2, 3, 4, 4, 3), "gt": (2, 16, 16, 3)})
    worker = handoff.WorkerRing(rings.spec, 1)
    batches = []
    for m in range(3):  # the whole ring, without waiting
        slot, out = worker.next_slot()
        assert slot == m
        for key, a in out.items():
            a[...] = np.random.default_rng([m, len(key)]).integers(0, 256, a.shape, np.uint8)
        batches.append({k: v.copy() for k, v in out.items()})
    waited = []
    thread = threading.Thread(target=lambda: waited.append(worker.next_slot()[0]))
    thread.start()
    thread.join(0.5)
    assert thread.is_alive() and not waited  # slot 0 is still the training process's
    got = rings.take({"worker": 1, "slot": 0})
    thread.join(5)
    assert waited == [0]
    for key in ("lq", "gt"):
        np.testing.assert_array_equal(got[key], batches[0][key])
        assert not np.shares_memory(got[key], worker._views[0][key])
    worker._views[0]["gt"][...] = 7  # the worker writes slot 0 again: the batch taken stays as it was
    np.testing.assert_array_equal(got["gt"], batches[0]["gt"])
    np.testing.assert_array_equal(rings.take({"worker": 1, "slot": 1})["lq"], batches[1]["lq"])
    names = [Path("/dev/shm") / n.lstrip("/") for ring in rings.spec.segments for n in ring]
    assert all(p.exists() for p in names) and len(names) == 6
    rings.wake_workers()
    rings.close()
    assert not any(p.exists() for p in names) and not any(map(os.path.exists, rings.spec.fifos))


def test_workers_hand_batches_over_through_their_rings_and_leave_nothing(builds):
    """With 2 workers the batches arrive through the rings (the same as in-process, bit for bit) and
    closing the loader removes the rings' shared memory."""
    spec = WindowSpec(num_frame=3, gt_size=24)
    reader = ClipReader(builds["tiles"], "train")
    inproc = iter(train_loader(reader, spec, 2, seed=3))
    it = iter(train_loader(reader, spec, 2, seed=3, worker_count=2, worker_buffer_size=1))
    for _ in range(9):  # more batches than a worker's 4 slots: each slot is reused
        a, b = next(inproc), next(it)
        for key in ("lq", "gt"):
            np.testing.assert_array_equal(a[key], b[key])
    names = [Path("/dev/shm") / n.lstrip("/") for ring in it._rings.spec.segments for n in ring]
    assert len(names) == 2 * 4 and all(p.exists() for p in names)
    it.close()
    assert not any(p.exists() for p in names)


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


# --- conversion -----------------------------------------------------------------------------------

def test_a_png_build_converts_to_tiles_without_its_source(reds_folder, tmp_path, capsys):
    data_dir = tmp_path / "tfds"
    moved = tmp_path / "gone"
    shutil.copytree(reds_folder, moved)
    png = _build(moved, data_dir, "png")
    shutil.rmtree(moved)  # the source folders are gone: only the PNG build is left
    with pytest.raises(DatasetError, match=r"sr_x4-tiles is not built .* Its PNG build edvr_reds/sr_x4 is there: "
                                           r"convert it once with `python -m edvr_jax.data.convert --data_dir "):
        load_builder("reds", "sr_x4", data_dir=str(data_dir))
    assert convert_cli.main(["--data_dir", str(data_dir), "--dataset", "reds"]) == 0
    assert "sr_x4-tiles/1.0.0" in capsys.readouterr().out
    tiles = load_builder("reds", "sr_x4", data_dir=str(data_dir))  # the default layout, now found
    assert tiles.info.metadata["converted_from"] == "sr_x4" and tiles.info.metadata["layout"] == "tiles"
    for split in ("train", "reds4"):
        for a, b in zip(eval_clips(ClipReader(png, split)), eval_clips(ClipReader(tiles, split))):
            assert a.name == b.name
            np.testing.assert_array_equal(a.lq, b.lq)
            np.testing.assert_array_equal(a.gt, b.gt)
    assert convert_cli.main(["--data_dir", str(data_dir), "--dataset", "reds", "--verify"]) == 0
    assert capsys.readouterr().out.count("all shards match") == 2


# --- damaged datasets ------------------------------------------------------------------------------

def _copy_build(builder, tmp_path) -> tuple[Path, Path]:
    """A copy of a build (under tmp_path's data dir, same relative path) and its first train shard."""
    src = Path(builder.data_dir)
    dst = tmp_path / "tfds" / src.relative_to(src.parents[2])
    shutil.copytree(src, dst)
    return dst, sorted(dst.glob("*-train.array_record-*"))[0]


def test_truncated_missing_or_resized_shards_are_named_when_opened(builds, tmp_path):
    build_dir, shard = _copy_build(builds["tiles"], tmp_path)
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(DatasetError) as e:
        ClipReader(tfds.builder_from_directory(str(build_dir)), "train")
    message = str(e.value)
    assert "\n" not in message and f"shard {shard} is {size // 2} bytes, but the build wrote {size}" in message
    assert f"rebuild it: rm -r {build_dir}" in message
    shard.unlink()
    with pytest.raises(DatasetError, match=f"shard {shard} is missing"):
        ClipReader(tfds.builder_from_directory(str(build_dir)), "train")
    # a build made before sizes were recorded: the record count read from the file tells
    shutil.copy(Path(builds["tiles"].data_dir) / shard.name, shard)
    with open(shard, "r+b") as f:
        f.truncate(size // 2)
    info = json.loads((build_dir / "metadata.json").read_text())
    del info["shards"]
    (build_dir / "metadata.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=f"shard {shard} holds 0 records, but the build wrote 546"):
        ClipReader(tfds.builder_from_directory(str(build_dir)), "train")


def _flip_middle(shard: Path):
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.seek(size // 2 + 1000)
        data = f.read(8)
        f.seek(size // 2 + 1000)
        f.write(bytes(b ^ 0xFF for b in data))


@pytest.mark.heavy
def test_bit_rot_in_a_shard_is_one_line_naming_the_record_also_from_workers(builds, tmp_path):
    build_dir, shard = _copy_build(builds["tiles"], tmp_path)
    _flip_middle(shard)
    builder = tfds.builder_from_directory(str(build_dir))
    reader = ClipReader(builder, "train")  # sizes still match: opening is fine
    pattern = (rf"dataset edvr_reds/sr_x4-tiles8: record (\d+) \(record \1 of shard {shard}\) cannot be read: "
               r"Corrupted Riegeli/records file: .*hash mismatch.*; rebuild it: rm -r ")
    with pytest.raises(DatasetError, match=pattern) as e:
        for clip in eval_clips(reader):  # clips are read a frame at a time
            list(clip.pairs())
    assert "\n" not in str(e.value)
    record = int(e.value.args[0].split("record ")[1].split(" ")[0])
    records = shards.open_split(builder, "train")
    assert len(records.read([0, 545])) == 2  # the records around it read
    with pytest.raises(DatasetError, match=f"record {record} "):  # the named one does not
        records.read([record])
    spec = WindowSpec(num_frame=3, gt_size=24)
    for workers in (0, 2):  # every sample of an epoch is read: some touch the damaged tile
        it = iter(train_loader(reader, spec, 2, seed=0, worker_count=workers, num_epochs=2))
        with pytest.raises(DatasetError, match=pattern) as e:
            for _ in range(14):
                next(it)
        assert "\n" not in str(e.value), str(e.value)  # what train.py prints: the message alone
        del it
    assert shards.verify(builder) == [f"{shard}: SHA-256 differs from the build's"]
    assert convert_cli.main(["--data_dir", str(tmp_path / "tfds"), "--dataset", "reds", "--config", "sr_x4-tiles8",
                             "--verify"]) == 2


def test_train_py_stops_in_one_line_on_a_truncated_shard(demo_builder, tmp_path):
    """Status 2, one line naming the file, before any model is built: under 10 s of CPU time (the
    interpreter, JAX and TFDS imports included; wall time on a loaded machine is longer)."""
    build_dir, shard = _copy_build(demo_builder, tmp_path)
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 3)
    cmd = [sys.executable, str(ROOT / "train.py"), f"--config={ROOT / 'configs' / 'edvr.py'}:{TINY_ARG}",
           f"--workdir={tmp_path / 'run'}", f"--config.data.data_dir={tmp_path / 'tfds'}",
           *(f"--config.{k}={v}" for k, v in TINY.items()), "--noprogress"]
    start, cpu = time.perf_counter(), _children_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    took, cpu = time.perf_counter() - start, _children_cpu() - cpu
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: dataset edvr_demo/sr_x4-tiles: shard {shard} is "), lines
    assert cpu < 10, f"{cpu:.1f} s of CPU time"
    print(f"train.py: error after {took:.1f} s, {cpu:.1f} s of CPU time")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_a_killed_build_is_never_taken_for_a_finished_one(reds_folder, tmp_path):
    data_dir, written = tmp_path / "tfds", tmp_path / "a shard is written"
    # The build stops after its first shard (a marker file, then a long sleep) and is killed there:
    # polling for the shard instead could miss a build that finishes in between.
    script = "\n".join([
        "import time", "from edvr_jax.data import load_builder, shards",
        "write = shards.RecordingWriter.write",
        "def first_shard_then_wait(self, path, examples):",
        "    write(self, path, examples)",
        f"    open({str(written)!r}, 'w').close()",
        "    time.sleep(600)",
        "shards.RecordingWriter.write = first_shard_then_wait",
        f"load_builder('reds', data_dir={str(data_dir)!r}, manual_dir={str(reds_folder)!r})"])
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "JAX_PLATFORMS": "cpu"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    folder = data_dir / "edvr_reds" / "sr_x4-tiles"
    deadline = time.time() + 120
    while not written.exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:] if proc.poll() else "timeout"
        time.sleep(0.01)
    assert any(folder.glob("incomplete.*/*.array_record*"))  # killed with a shard on disk
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (folder / "1.0.0" / "dataset_info.json").exists()
    with pytest.raises(DatasetError, match="sr_x4-tiles is not built"):  # not mistaken for a build
        load_builder("reds", data_dir=str(data_dir))
    builder = load_builder("reds", data_dir=str(data_dir), manual_dir=str(reds_folder))  # builds again
    assert [c[0] for c in ClipReader(builder, "train").clips] == ["001", "240"]
