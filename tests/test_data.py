"""Dataset builders (fake folder trees), the demo set, MATLAB bicubic, and the input pipeline."""

import dataclasses
from pathlib import Path

import grain.python as grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from edvr_jax.data import (ClipReader, DatasetError, EdvrReds, EdvrVid4, EdvrVimeo90k, WindowSpec, eval_clips,
                           train_loader)
from edvr_jax.data.bicubic import downsample_uint8, imresize, resize_uint8
from edvr_jax.data.demo import DemoConfig, photo, render_clip
from edvr_jax.data.layout import config_name
from edvr_jax.temporal import window_table

import tensorflow_datasets as tfds


def _save(path: Path, arr: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _coded_pair(frame: int, clip: int, h: int = 8, w: int = 12, scale: int = 4):
    """LQ pixel = (y, x, 10 * clip + frame); GT pixel (Y, X) = LQ pixel (Y // s, X // s), so any
    crop, flip or window can be checked exactly."""
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    lq = np.stack([y, x, np.full_like(y, 10 * clip + frame)], -1).astype(np.uint8)
    return lq, np.repeat(np.repeat(lq, scale, 0), scale, 1)


def _build(cls, manual_dir, data_dir, config=None, tile=None):
    if tile:  # the tile layout of a config of the class with smaller tiles, so that tiny frames span several
        config = dataclasses.replace({c.name: c for c in cls.BUILDER_CONFIGS}[config], layout="tiles", tile=tile,
                                     name=config_name(config, "tiles", tile))
    builder = cls(config=config, data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


# --- MATLAB bicubic ---------------------------------------------------------------------------

def test_imresize_matches_basicsr(goldens):
    with np.load(Path(__file__).parent / "data" / "basicsr_imresize.npz") as f:
        for name in ("down4", "down4_odd", "up2"):
            np.testing.assert_allclose(imresize(f[f"{name}/x"], float(f[f"{name}/scale"])), f[f"{name}/y"],
                                       atol=1e-6, err_msg=name)


def test_imresize_constant_and_size_check():
    np.testing.assert_allclose(imresize(np.full((8, 12, 3), 0.3), 0.25), np.full((2, 3, 3), 0.3))
    with pytest.raises(ValueError, match="10x12 is not divisible by 4"):
        downsample_uint8(np.zeros((10, 12, 3), np.uint8))


@pytest.mark.parametrize("scale", [0.5, 0.37, 2.0])
def test_resize_uint8_is_imresize_rounded(scale):
    """The float32 matrix form (footage's gt_resize) against the float64 gather form: the same
    MATLAB bicubic, rounded pixels within one grey level and almost all equal."""
    img = np.random.default_rng(5).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    out = resize_uint8(img, scale)
    ref = np.clip(np.round(imresize(img.astype(np.float64), scale)), 0, 255)
    assert out.shape == ref.shape == (int(np.ceil(37 * scale)), int(np.ceil(53 * scale)), 3)
    diff = np.abs(out.astype(np.int64) - ref)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99


# --- REDS / Vimeo / Vid4 from fake trees -------------------------------------------------------

@pytest.fixture(scope="module")
def fake_reds(tmp_path_factory):
    root = tmp_path_factory.mktemp("reds")
    for part, clips in (("train", ["000", "001", "011", "015", "020"]), ("val", ["000"])):
        for c, name in enumerate(clips):
            for f in range(6):
                lq, gt = _coded_pair(f, c + (10 if part == "val" else 0))
                _save(root / f"{part}_sharp" / name / f"{f:08d}.png", gt)
                _save(root / f"{part}_sharp_bicubic" / "X4" / name / f"{f:08d}.png", lq)
                _save(root / f"{part}_blur" / name / f"{f:08d}.png", gt // 2)
    return root


def test_reds_splits_and_records(fake_reds, tmp_path):
    builder = _build(EdvrReds, fake_reds, tmp_path, "sr_x4")
    reds4 = ClipReader(builder, "reds4")
    train = ClipReader(builder, "train")
    assert [c[0] for c in reds4.clips] == ["000", "011", "015", "020"]
    assert [c[0] for c in train.clips] == ["001", "240"]  # val 000 becomes 240, as in BasicSR
    assert builder.info.splits["train"].num_examples == 12
    clip = next(eval_clips(train, ["240"]))
    assert clip.lq.shape == (6, 8, 12, 3) and clip.gt.shape == (6, 32, 48, 3)
    for f in range(6):
        lq, gt = _coded_pair(f, 10)
        np.testing.assert_array_equal(clip.lq[f], lq)
        np.testing.assert_array_equal(clip.gt[f], gt)
    deblur = _build(EdvrReds, fake_reds, tmp_path / "deblur", "deblur")
    assert deblur.info.metadata["scale"] == 1
    lq = ClipReader(deblur, "train").lq(0, [2])[0]
    np.testing.assert_array_equal(lq, _coded_pair(2, 1)[1] // 2)


def test_reds_missing_folder_names_it(fake_reds, tmp_path):
    with pytest.raises(DatasetError, match="train_blur_comp"):
        _build(EdvrReds, fake_reds, tmp_path, "deblurcomp")


def test_vimeo_makes_bicubic_lr_or_uses_the_lr_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "vimeo"
    gts = {}
    for seq in ("00001/0001", "00001/0002", "00002/0001"):
        for i in range(1, 8):
            gts[seq, i] = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
            _save(root / "sequences" / seq / f"im{i}.png", gts[seq, i])
    (root / "sep_trainlist.txt").write_text("00001/0001\n00002/0001\n")
    (root / "sep_testlist.txt").write_text("00001/0002\n")
    builder = _build(EdvrVimeo90k, root, tmp_path / "d1")
    test = ClipReader(builder, "test")
    assert [c[0] for c in test.clips] == ["00001/0002"] and test.clips[0][2] == 7
    np.testing.assert_array_equal(test.lq(0, [3])[0], downsample_uint8(gts["00001/0002", 4]))
    assert len(ClipReader(builder, "train").clips) == 2
    # With BasicSR's LR folder present, its frames are stored as they are.
    for (seq, i) in gts:
        _save(root / "vimeo_septuplet_matlabLRx4" / "sequences" / seq / f"im{i}.png", np.full((4, 6, 3), i, np.uint8))
    builder = _build(EdvrVimeo90k, root, tmp_path / "d2")
    assert ClipReader(builder, "test").lq(0, [4])[0].max() == 5


def test_vid4_and_its_errors(tmp_path):
    root = tmp_path / "vid4"
    for c, name in enumerate(("calendar", "city", "foliage", "walk")):
        for f in range(3):
            lq, gt = _coded_pair(f, c)
            _save(root / "GT" / name / f"{f:08d}.png", gt)
            _save(root / "BIx4" / name / f"{f:08d}.png", lq)
    builder = _build(EdvrVid4, root, tmp_path / "d")
    reader = ClipReader(builder, "test")
    assert [c[0] for c in reader.clips] == ["calendar", "city", "foliage", "walk"]
    np.testing.assert_array_equal(reader.gt(3, 2), _coded_pair(2, 3)[1])

    # A missing LQ frame, a corrupt PNG, an LQ/GT size mismatch and a grey frame each name the file.
    (root / "BIx4" / "walk" / "00000001.png").unlink()
    with pytest.raises(DatasetError, match="missing frame: .*BIx4/walk/00000001.png"):
        _build(EdvrVid4, root, tmp_path / "e0")
    _save(root / "BIx4" / "walk" / "00000001.png", _coded_pair(1, 3)[0])
    (root / "GT" / "city" / "00000002.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DatasetError, match="cannot decode .*GT/city/00000002.png"):
        _build(EdvrVid4, root, tmp_path / "e1")
    _save(root / "GT" / "city" / "00000002.png", np.zeros((30, 48, 3), np.uint8))
    with pytest.raises(DatasetError, match="city frame 2 GT .* is 30x48 but .* is 8x12; expected GT = 4 x LQ"):
        _build(EdvrVid4, root, tmp_path / "e2")
    _save(root / "GT" / "city" / "00000002.png", np.zeros((32, 48), np.uint8))
    with pytest.raises(DatasetError, match="00000002.png is a 'L' image; expected 8-bit RGB"):
        _build(EdvrVid4, root, tmp_path / "e3")


def test_empty_manual_dir_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="manual dir .*empty.* missing or empty"):
        _build(EdvrVid4, tmp_path / "empty", tmp_path / "d")


def test_a_builder_leaves_no_temporary_folder(tmp_path, monkeypatch):
    """TFDS looks for a new dataset's info on its bucket through an empty temporary folder that it
    never removes; ours are built here only and skip the look-up."""
    import tempfile

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    builder = EdvrVid4(data_dir=str(tmp_path / "data"))
    assert not builder.info.splits  # not built: the look-up would have run
    assert list(temp.iterdir()) == []


# --- the demo set ------------------------------------------------------------------------------

def test_demo_lq_is_the_matlab_bicubic_of_gt(demo_builder):
    reader = ClipReader(demo_builder, "test")
    assert len(reader.clips) == 4 and all(c[2] == 10 for c in reader.clips)
    assert demo_builder.info.metadata["layout"] == "tiles" and reader.lq_size(0) == (32, 48)
    # 120 frames of one LQ tile (32x48) and one GT tile (128x192), 256-pixel tiles
    assert demo_builder.info.splits["train"].num_examples == 120 * 2
    clip = next(eval_clips(reader))
    assert clip.gt.shape == (10, 128, 192, 3) and clip.lq.shape == (10, 32, 48, 3)
    for f in (0, 9):
        np.testing.assert_array_equal(downsample_uint8(clip.gt[f]), clip.lq[f])
    assert clip.gt.std() > 20  # real photographic content, not flat


def test_demo_clips_move_by_sub_pixel_shifts():
    from skimage.registration import phase_cross_correlation

    rng = np.random.default_rng([5, 0])
    gts, lqs = render_clip(rng, [photo("coffee.png")], DemoConfig(name="t", scale=4))
    gts2, _ = render_clip(np.random.default_rng([5, 0]), [photo("coffee.png")], DemoConfig(name="t", scale=4))
    np.testing.assert_array_equal(np.stack(gts), np.stack(gts2))  # deterministic from the seed
    shifts = np.array([phase_cross_correlation(lqs[i].mean(-1), lqs[i + 1].mean(-1), upsample_factor=20)[0]
                       for i in range(len(lqs) - 1)])
    frac = np.abs(shifts - np.round(shifts))
    assert np.abs(shifts).max() > 0.2 and frac.max() > 0.1, shifts  # the LQ frames see the scene at sub-pixel offsets


# --- the training pipeline ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def coded_reader(fake_reds, tmp_path_factory):
    """The coded REDS in the tile layout, 8-pixel tiles: LQ 8x12 in 2 tiles, GT 32x48 in 24."""
    return ClipReader(_build(EdvrReds, fake_reds, tmp_path_factory.mktemp("coded"), "sr_x4", tile=8), "reds4")


def _decode(lq, gt):
    """From one coded sample: the window's frame indices, its clip, and whether GT is aligned."""
    lq, gt = lq.astype(int), gt.astype(int)
    frames = [int(v) % 10 for v in lq[:, 0, 0, 2]]
    assert all((lq[t, ..., 2] == lq[t, 0, 0, 2]).all() for t in range(len(lq)))
    mid = lq[len(lq) // 2]
    aligned = np.array_equal(gt[::4, ::4], mid) and np.array_equal(gt[3::4, 3::4], mid)
    return frames, aligned


def test_training_windows_are_aligned_and_follow_the_interval(coded_reader):
    spec = WindowSpec(num_frame=3, gt_size=16, interval_list=(1, 2), random_reverse=True)
    it = iter(train_loader(coded_reader, spec, global_batch_size=4, seed=0))
    seen_reverse = seen_interval2 = flipped = False
    for _ in range(12):
        batch = next(it)
        assert batch["lq"].shape == (4, 3, 4, 4, 3) and batch["gt"].shape == (4, 16, 16, 3)
        assert batch["lq"].dtype == np.uint8 and batch["gt"].dtype == np.uint8
        for lq, gt in zip(batch["lq"], batch["gt"]):
            frames, aligned = _decode(lq, gt)
            assert aligned
            step = frames[1] - frames[0]
            assert step in (1, 2, -1, -2) and frames[2] - frames[1] == step
            assert 0 <= min(frames) and max(frames) <= 5
            seen_reverse |= step < 0
            seen_interval2 |= abs(step) == 2
            ys = lq[1, :, 0, 0].astype(int)
            flipped |= bool(ys[0] > ys[-1])
    assert seen_reverse and seen_interval2 and flipped


def test_same_seed_same_batches_any_worker_count(coded_reader):
    """Also: worker processes start outside absl.app (a notebook), with absl's flags unparsed."""
    from absl import flags

    assert not flags.FLAGS.is_parsed()
    spec = WindowSpec(num_frame=3, gt_size=16)

    def take(seed, workers, n=6):
        loader = train_loader(coded_reader, spec, 4, seed=seed, worker_count=workers)
        it = iter(loader)
        out = [next(it) for _ in range(n)]
        del it
        return out

    a, b, c = take(1, 0), take(1, 2), take(2, 0)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["lq"], y["lq"])
        np.testing.assert_array_equal(x["gt"], y["gt"])
    assert not all(np.array_equal(x["gt"], z["gt"]) for x, z in zip(a, c))


def test_each_process_reads_its_share_of_the_global_batch(coded_reader, monkeypatch):
    import jax

    spec = WindowSpec(num_frame=3, gt_size=16)
    whole = next(iter(train_loader(coded_reader, spec, 8, seed=4)))
    parts = []
    for p in range(2):
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        monkeypatch.setattr(jax, "process_index", lambda p=p: p)
        parts.append(next(iter(train_loader(coded_reader, spec, 8, seed=4))))
    assert parts[0]["gt"].shape[0] == 4
    np.testing.assert_array_equal(np.concatenate([q["gt"] for q in parts]), whole["gt"])
    np.testing.assert_array_equal(np.concatenate([q["lq"] for q in parts]), whole["lq"])


def test_iterator_state_restores_mid_epoch_with_orbax(coded_reader, tmp_path):
    spec = WindowSpec(num_frame=3, gt_size=16)
    loader = train_loader(coded_reader, spec, 4, seed=7)
    reference = iter(loader)
    expected = [next(reference)["gt"] for _ in range(8)]  # epoch = 24 samples / 4 = 6 batches; crosses it

    it = iter(loader)
    for _ in range(3):
        next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as mngr:
        mngr.save(3, args=ocp.args.Composite(data=grain.PyGrainCheckpointSave(it)))
        mngr.wait_until_finished()
    resumed = iter(train_loader(coded_reader, spec, 4, seed=7))
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as mngr:
        mngr.restore(3, args=ocp.args.Composite(data=grain.PyGrainCheckpointRestore(resumed)))
    for k in range(3, 8):
        np.testing.assert_array_equal(next(resumed)["gt"], expected[k])


def test_clip_shorter_than_the_window_is_an_error(coded_reader):
    with pytest.raises(DatasetError, match="clip 000 has 6 frames, fewer than the 7"):
        train_loader(coded_reader, WindowSpec(num_frame=7, gt_size=16), 4, seed=0)
    with pytest.raises(DatasetError, match="clip 000 has 6 frames, fewer than the 9 .* interval 2"):
        train_loader(coded_reader, WindowSpec(num_frame=5, gt_size=16, interval_list=(1, 2)), 4, seed=0)


def test_window_spec_checks_itself_and_its_patch(coded_reader):
    with pytest.raises(ValueError, match=r"num_frame=4: must be odd .*; centers='middle': must be 'all' or 'fitting'"):
        WindowSpec(num_frame=4, centers="middle")
    with pytest.raises(ValueError, match=r"interval_list=\(\): must be a non-empty tuple of positive integers"):
        WindowSpec(interval_list=())
    spec = WindowSpec(num_frame=3, gt_size=24)
    assert spec.lq_patch(4) == 6 and spec.lq_patch(1, 8) == 24
    with pytest.raises(ValueError, match=r"gt_size=24: must be a positive multiple of 16 \(the LQ patch, gt_size / 4, "
                                         r"must be a multiple of 4\)"):
        spec.lq_patch(4, 4)
    with pytest.raises(ValueError, match=r"gt_size=18: must be a positive multiple of 4 \(x4 data\)"):
        train_loader(coded_reader, WindowSpec(num_frame=3, gt_size=18), 4, seed=0)


def test_test_windows_use_the_padding_modes(coded_reader):
    """The windows the restorer cuts from whole test clips (window_table over eval_clips)."""
    clips = {c.name: c for c in eval_clips(coded_reader)}
    assert sum(len(c.lq) for c in clips.values()) == 24 and list(clips)[0] == "000"

    def frames_of(clip, f, padding):
        rows = window_table(len(clip.lq), 5, padding)[f]
        return [int(v) % 10 for v in clip.lq[rows][:, 0, 0, 2]]

    assert frames_of(clips["000"], 0, "reflection_circle") == [4, 3, 0, 1, 2]
    assert frames_of(clips["020"], 5, "reflection_circle") == [3, 4, 5, 2, 1]
    assert frames_of(clips["000"], 1, "replicate") == [0, 0, 1, 2, 3]
    np.testing.assert_array_equal(clips["000"].gt[1][::4, ::4], clips["000"].lq[1])
