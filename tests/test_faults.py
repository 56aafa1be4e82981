"""Faults and bad input: a busy workdir, damaged checkpoints, a full disk, bad weights, bad
configs, bad restore inputs and outputs, concurrent dataset builds. Each fails early, names
what is wrong, and loses nothing."""

import errno
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import load_config, tiny_config
from golden_weights import synthetic_state_dict, synthetic_variables
from PIL import Image

from edvr_jax import EDVR, checkpointing, convert, load, training, weights
from edvr_jax import restore as restore_cli
from edvr_jax.convert import ConversionError
from edvr_jax.convert.__main__ import main as convert_cli
from edvr_jax.media import InputError, read_clip, read_rgb

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(num_feat=8, deformable_groups=2, num_extract_block=1, num_reconstruct_block=1)


# --- the workdir ---------------------------------------------------------------------------------

def test_a_second_run_on_a_busy_workdir_is_refused_naming_the_holder(data_dir, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    with checkpointing.workdir_lock(workdir):
        with pytest.raises(checkpointing.WorkdirLockedError,
                           match=rf"in use by another training process \(host {socket.gethostname()}, pid {os.getpid()}"):
            training.train(tiny_config(data_dir), workdir)
    with checkpointing.workdir_lock(workdir):  # released when its holder let go
        pass


def test_a_rejected_start_leaves_the_workdir_free(data_dir, tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(training.ConfigError, match=r"model.num_frame=4: must be odd"):
        training.train(tiny_config(data_dir, **{"model.num_frame": 4}), workdir)
    assert not workdir.exists()
    # A header from a run that never saved a checkpoint does not own the workdir.
    workdir.mkdir()
    weights.write_header(workdir, EDVR(**SMALL, num_frame=3), train_config=tiny_config(data_dir, **{"model.num_frame": 3}))
    checkpointing.check_config(workdir, tiny_config(data_dir))


def _copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    (to / checkpointing.LOCK_FILE).unlink(missing_ok=True)
    return to


def _damage_array_files(step_dir: Path) -> None:
    """Truncates every array data file of a step to a third (a disk that lost the ends of its writes)."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for victim in files:
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])


def test_a_damaged_newest_checkpoint_is_named_and_training_falls_back(reference_run, data_dir, tmp_path, caplog):
    workdir = _copy_run(reference_run, tmp_path / "run")
    _damage_array_files(workdir / "checkpoints" / "12")
    with pytest.raises(ConversionError, match=r"checkpoint step 12 .*checkpoints/12/state.* cannot be read"):
        load(workdir)
    # Resuming: step 12 fails to restore, step 8 is used with a warning, and the run ends where
    # the uninterrupted one did.
    cfg = tiny_config(data_dir, total_steps=13)
    with caplog.at_level(logging.WARNING, logger="edvr_jax"):
        training.train(cfg, workdir)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "checkpoint step 12" in text and "resumed from step 8" in text
    assert weights.run_steps(workdir)[-1] == 13
    # Step 12, trained again from step 8, is the uninterrupted run's, bit for bit.
    jax.tree.map(np.testing.assert_array_equal, weights.read_run_params(workdir, step=12),
                 weights.read_run_params(reference_run, step=12))
    (workdir / "checkpoints" / "13" / "state" / "_METADATA").unlink()
    with pytest.raises(ConversionError, match=r"checkpoint step 13 .* cannot be read.* Earlier steps: \[.*12\]"):
        weights.read_params(workdir)


def test_disk_full_during_a_save_is_one_clear_error_and_keeps_the_last_step(data_dir, tmp_path, monkeypatch):
    save = checkpointing.save

    def full_disk(mngr, step, *args, **kwargs):
        if step >= 6:
            raise OSError(errno.ENOSPC, "No space left on device", str(mngr.directory))
        return save(mngr, step, *args, **kwargs)

    monkeypatch.setattr(checkpointing, "save", full_disk)
    workdir = tmp_path / "full"
    with pytest.raises(training.TrainingError, match=r"no space left on the device of .*checkpoints while writing a "
                                                      r"checkpoint \(noticed at step 8\); the newest complete checkpoint "
                                                      r"is step 4"):
        training.train(tiny_config(data_dir), workdir)
    assert weights.run_steps(workdir) == [4]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(weights.read_params(workdir)))


# --- configs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,message", [
    ("batch_size", -3, "batch_size=-3: must be a positive integer"),
    ("batch_size", 0, "batch_size=0: must be a positive integer"),
    ("checkpoint.every", 0, "checkpoint.every=0: must be >= 1"),
    ("model.num_frame", 4, "model.num_frame=4: must be odd"),
    ("model.num_feat", 30, r"model.num_feat=30: must be a positive multiple of model.deformable_groups \(8\)"),
    ("data.gt_size", 60, "data.gt_size=60: must be a positive multiple of 16"),
    ("optim.restart_weights", (1.0, 0.5), r"optim.restart_weights=\(1.0, 0.5\): must be as many weights"),
    ("compute_dtype", "float16", "compute_dtype='float16': must be float32 or bfloat16"),
    ("dcn_impl", "triton", r"dcn_impl='triton': must be one of \('auto', 'gather', 'pallas'\)"),
    ("data.name", "redz", "data.name='redz': must be one of"),
    ("model.hr_in", True, "model.hr_in=True: must be False unless model.with_predeblur"),
])
def test_config_errors_name_the_field_its_value_and_what_is_allowed(field, value, message):
    with pytest.raises(training.ConfigError, match=message):
        training.validate_config(load_config("demo", **{field: value}))


def test_train_py_config_errors_are_one_line(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    for flag, message in [("--config.modle.num_feat=8", "the config has no field 'modle'"),
                          ("--config.batch_size=-3", "invalid config: batch_size=-3: must be a positive integer")]:
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), flag, f"--workdir={tmp_path / 'w'}"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and f"error: {message}" in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and not (tmp_path / "w").exists()


# --- weights -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_state_dict():
    return synthetic_state_dict(convert.basicsr_shapes(EDVR(**SMALL)))


@pytest.mark.parametrize("spoil,message", [
    (lambda v: np.where(np.arange(v.size).reshape(v.shape) < 2, np.nan, v), "2 of 216 values are not finite"),
    (lambda v: np.full_like(v, np.inf), "216 of 216 values are not finite"),
    (lambda v: v.astype(np.int32), "dtype int32; EDVR weights must be floating point"),
])
def test_non_finite_and_non_float_weights_are_refused_on_every_path(small_state_dict, spoil, message, tmp_path, capsys):
    from safetensors.numpy import save_file

    key = "conv_first.weight"
    path = tmp_path / "bad.safetensors"
    save_file({**small_state_dict, key: np.ascontiguousarray(spoil(small_state_dict[key]))}, str(path))
    match = rf"conv_first.weight: {message}"
    assert convert_cli([str(path), str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()
    with pytest.raises(ConversionError, match=match):
        load(path)  # edvr_jax.load, eval.py and the restore CLI
    target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), weights.abstract_params(EDVR(**SMALL)))
    with pytest.raises(ConversionError, match=match):
        weights.load_params_non_strict(path, target)  # train.py's init_from


def test_complex_weights_are_refused():
    with pytest.raises(ConversionError, match="w: dtype complex64"):
        convert.checked_float32("w", np.ones(3, np.complex64))


def test_damaged_weight_files_and_headers_are_named(small_state_dict, tmp_path):
    from safetensors.numpy import save_file

    good = tmp_path / "good.safetensors"
    save_file(small_state_dict, str(good))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ConversionError, match="cut.safetensors: not a readable safetensors file"):
        load(cut)
    pth = tmp_path / "cut.pth"  # a BasicSR checkpoint whose download stopped half-way
    pth.write_bytes((ROOT / "tests" / "data" / "pth" / "basicsr_edvr.pth").read_bytes()[:400_000])
    with pytest.raises(ConversionError, match="cut.pth: not a readable PyTorch checkpoint .*BadZipFile"):
        load(pth)
    pth.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ConversionError, match="cut.pth: not a readable PyTorch checkpoint"):
        load(pth)
    # A weights directory whose header is wrong in each way a hand edit can make it.
    model = EDVR(**SMALL)
    weights.save_weights(tmp_path / "w", model, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                                                              weights.abstract_params(model)))
    header = json.loads((tmp_path / "w" / "config.json").read_text())
    for edit, message in [(lambda h: h["config"].update(foo=1), r"unknown EDVR argument\(s\) \['foo'\]"),
                          (lambda h: h["config"].update(num_feat="8"), 'num_feat="8" should be int'),
                          (lambda h: h["config"].update(with_tsa=1), "with_tsa=1 should be bool"),
                          (lambda h: h.pop("config"), 'expected {"model": "EDVR" or "TwoStageEDVR"')]:
        bad = json.loads(json.dumps(header))
        edit(bad)
        (tmp_path / "w" / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ConversionError, match=message):
            load(tmp_path / "w")
    (tmp_path / "w" / "config.json").write_text("{not json")
    with pytest.raises(ConversionError, match=r"w/config.json: invalid JSON"):
        load(tmp_path / "w")
    (tmp_path / "good.json").write_text(json.dumps({"model": "EDVR"}))  # a sidecar without its config
    with pytest.raises(ConversionError, match=r"good.json: expected"):
        load(good)


# --- restore inputs and outputs ------------------------------------------------------------------

def _png16(path: Path, rgb: bool) -> None:
    """A 16-bit PNG written by hand (PIL cannot write 16-bit RGB)."""
    h, w, c = 4, 5, 3 if rgb else 1
    data = (np.arange(h * w * c).reshape(h, w * c) * 1000).astype(">u2")
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)  # noqa: E731
    raw = b"".join(b"\x00" + row.tobytes() for row in data)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2 if rgb else 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_frames_are_refused_alike(tmp_path):
    for rgb, name in ((True, "rgb16.png"), (False, "gray16.png")):
        _png16(tmp_path / name, rgb)
        with pytest.raises(InputError, match=rf"{name} is a .*16"):
            read_rgb(tmp_path / name)


def test_restore_outputs_a_video_into_a_new_folder_and_refuses_unknown_suffixes(tmp_path, capsys):
    model = EDVR(**SMALL)
    weights.save_weights(tmp_path / "w", model, synthetic_variables(model)["params"])
    frames = tmp_path / "in"
    frames.mkdir()
    yy, xx = np.mgrid[:8, :8]
    for i in range(5):  # coloured: red rises along x and with i, green falls along y, blue is flat
        rgb = np.stack([40 * i + 10 * xx, 200 - 15 * yy, np.full_like(xx, 60)], axis=-1)
        Image.fromarray(rgb.astype(np.uint8)).save(frames / f"{i:03d}.png")
    args = [str(frames), "--checkpoint", str(tmp_path / "w")]
    assert restore_cli.main([args[0], str(tmp_path / "out.txt"), *args[1:]]) == 2
    assert "not a '.txt' file" in capsys.readouterr().err and not (tmp_path / "out.txt").exists()
    out = tmp_path / "new" / "folder" / "out.mp4"
    assert restore_cli.main([args[0], str(out), *args[1:]]) == 0
    video, _, fps = read_clip(out)
    want = load(tmp_path / "w")(read_clip(frames)[0]).astype(float)
    assert video.shape == want.shape == (5, 32, 32, 3) and fps == 25
    # Each decoded frame is its restored frame within H.264's loss (crf 12, 4:2:0 chroma), and far from the others.
    mse = np.array([[np.mean((v - w) ** 2) for w in want] for v in video.astype(float)])
    assert np.all(10 * np.log10(255 ** 2 / np.diag(mse)) > 30), mse
    assert np.all(np.diag(mse) * 10 < np.min(mse + np.diag(np.full(5, np.inf)), axis=1)), mse


def test_a_frame_damaged_midway_stops_the_stream_keeping_the_frames_before_it(tmp_path, capsys):
    """Frames are checked by their headers when the clip is opened; one whose data is cut is met
    only when the stream reaches it: one error line naming it, the frames restored before it in
    OUT.partial (the whole-clip restore's first frames), nothing at OUT."""
    model = EDVR(**SMALL)
    params = synthetic_variables(model)["params"]
    weights.save_weights(tmp_path / "w", model, params)
    frames = (np.random.default_rng(3).random((8, 8, 12, 3)) * 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / "in" / f"{i:03d}.png")
    cut = tmp_path / "in" / "006.png"
    cut.write_bytes(cut.read_bytes()[:len(cut.read_bytes()) // 2])
    assert restore_cli.main([str(tmp_path / "in"), str(tmp_path / "out"), "--checkpoint", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2] == f"error: restoration stopped; the 2 frames written so far are in {tmp_path / 'out.partial'}"
    assert err[-1].startswith(f"error: cannot decode {cut}: ")
    assert not (tmp_path / "out").exists()
    # Output frames 0 and 1 come from input frames 0-4 (5-frame windows): they are the undamaged clip's.
    written = np.stack([np.asarray(Image.open(tmp_path / "out.partial" / f"{i:03d}.png")) for i in range(2)])
    assert sorted(p.name for p in (tmp_path / "out.partial").iterdir()) == ["000.png", "001.png"]
    np.testing.assert_array_equal(written, load(tmp_path / "w")(frames)[:2])


# --- datasets ------------------------------------------------------------------------------------

def test_two_processes_building_one_dataset_share_it(tmp_path):
    """Both wait for one build (a lock per dataset), instead of one failing on the other's files."""
    for clip in ("calendar", "city", "foliage", "walk"):
        for kind, size in (("GT", 32), ("BIx4", 8)):
            (tmp_path / "vid4" / kind / clip).mkdir(parents=True)
            for f in range(6):
                Image.fromarray(np.full((size, size, 3), 10 * f, np.uint8)).save(tmp_path / "vid4" / kind / clip / f"{f}.png")
    code = ("import sys; from edvr_jax.data import load_builder; "
            "b = load_builder('vid4', data_dir=sys.argv[1], manual_dir=sys.argv[2]); "
            "print(sum(c[2] for c in b.info.metadata['clips']['test']))")  # frames, whatever the layout
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "tfds"), str(tmp_path / "vid4")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        assert out.strip().splitlines()[-1] == "24"
