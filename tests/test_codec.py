"""The codec degradation (edvr_jax/data/codec.py): what it does to frames, checked against PyAV
driven directly; its determinism, options, errors and odd sizes; the footage dataset, the
folder reader and the demo_video options with a codec."""

import hashlib
import io
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from edvr_jax.data import ClipReader, DatasetError, eval_clips, folder_clips, load_builder
from edvr_jax.data import codec as codec_module
from edvr_jax.data.bicubic import downsample_uint8
from edvr_jax.data.codec import CODECS, Codec
from edvr_jax.data.degrade import add_noise
from edvr_jax.data.demo_video import DEMO_VIDEO, EdvrDemoVideo
from edvr_jax.data.footage import EdvrFootage, fingerprint, make_config
from edvr_jax.data.layout import config_name
from edvr_jax.data.registry import footage_options

ROOT = Path(__file__).resolve().parent.parent


def _frames(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random pattern moving by a pixel per frame."""
    rng = np.random.default_rng(seed)
    base = ndimage.zoom(rng.integers(0, 256, (h // 4 + 4, w // 4 + n + 4, 3)).astype(float), (4, 4, 1), order=1)
    return np.stack([np.clip(base[:h, i:i + w], 0, 255).astype(np.uint8) for i in range(n)])


def _y(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) @ np.array([65.481, 128.553, 24.966]) / 255 + 16


def _psnr_y(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255 ** 2 / np.mean((_y(a) - _y(b)) ** 2)))


def _blockiness(x: np.ndarray, block: int = 8) -> float:
    """Mean luma step across the borders of ``block`` x ``block`` blocks over the mean step
    elsewhere (about 1 for natural content; above 1 when blocks show)."""
    y = _y(x)
    steps = []
    for axis in (1, 2):
        d = np.abs(np.diff(y, axis=axis))
        border = np.take(d, range(block - 1, d.shape[axis], block), axis=axis)
        inside = np.delete(d, range(block - 1, d.shape[axis], block), axis=axis)
        steps.append((border.mean(), inside.mean()))
    return sum(b for b, _ in steps) / sum(i for _, i in steps)


def _x264_reference(frames: np.ndarray, crf: int, **options) -> np.ndarray:
    """The frames through libx264 at ``crf``, driven directly: one thread, no AVX-512 code, 25
    fps, yuv420p, the encoder's other defaults; written to an MP4 file's bytes and decoded by PyAV."""
    asm = codec_module.x264_asm()
    options = {"crf": str(crf), **({"x264-params": f"asm={asm}"} if asm else {}), **options}
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=25, options=options)
        s.width, s.height, s.pix_fmt, s.thread_count = frames.shape[2], frames.shape[1], "yuv420p", 1
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    with av.open(io.BytesIO(buf.getvalue())) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


# --- the degradation itself ----------------------------------------------------------------------------

def test_h264_is_libx264_at_the_crf_and_psnr_falls_as_crf_rises():
    frames = _frames(8, 48, 64, 0)
    out = {crf: Codec.make("h264", crf).apply(frames, "clip") for crf in (10, 28, 45)}
    np.testing.assert_array_equal(out[28], _x264_reference(frames, 28))
    np.testing.assert_array_equal(Codec.make("h264", 28, preset="veryfast", gop=4).apply(frames, "clip"),
                                  _x264_reference(frames, 28, preset="veryfast", g="4"))
    psnr = {crf: _psnr_y(o, frames) for crf, o in out.items()}
    assert psnr[10] > 40 > psnr[28] + 3 > psnr[45] + 8 and psnr[45] > 20, psnr
    assert out[10].shape == frames.shape and out[10].dtype == np.uint8


def test_blocking_shows_at_high_crf():
    frames = _frames(8, 48, 64, 0)
    clean = _blockiness(frames)
    assert 0.85 < clean < 1.1
    assert abs(_blockiness(Codec.make("h264", 10).apply(frames, "c")) - clean) < 0.1
    assert _blockiness(Codec.make("h264", 51).apply(frames, "c")) > 1.3 * clean  # 8x8 steps at CRF 51 (1.37)


@pytest.mark.parametrize("name", sorted(CODECS))
def test_every_codec_is_deterministic_and_degrades(name):
    frames = _frames(6, 40, 56, 1)
    lo, hi = CODECS[name].crf_range
    codec, worst = Codec.make(name, (lo + hi) // 2), Codec.make(name, hi)
    a, b = codec.encode(frames, "clip"), codec.encode(frames, "clip")
    assert a.data == b.data and a.data[4:8] == b"ftyp"  # the same MP4 bytes twice
    out = np.stack(list(a.frames()))
    assert out.shape == frames.shape and not np.array_equal(out, frames)
    with av.open(io.BytesIO(a.data)) as c:  # a real stream of the codec, in an MP4 PyAV opens as a file
        assert c.streams.video[0].codec_context.name == CODECS[name].decoder
        assert c.streams.video[0].frames == 6
    assert _psnr_y(out, frames) > _psnr_y(worst.apply(frames, "clip"), frames) + 3


def test_h264_gives_the_same_bytes_every_time():
    # x264's AVX-512 code gives different bytes from one encode to the next (threads=1); on a CPU
    # with AVX-512 it is left out. Without that, these 10 encodes gave 2-4 different outputs.
    frames = _frames(60, 64, 96, 0).astype(float)
    frames = np.clip(frames + np.random.default_rng(0).normal(0, 8, frames.shape), 0, 255).astype(np.uint8)
    codec = Codec.make("h264", 28)
    assert len({codec.encode(frames, "clip").data for _ in range(10)}) == 1
    assert codec_module.x264_asm() is None or "AVX512" not in codec_module.x264_asm()


def test_odd_and_tiny_frames_keep_their_size():
    # 4:2:0 needs even sides and x265 64 pixels: padded by repeating the edge, cropped after decoding.
    frames = _frames(6, 35, 43, 2)
    for name in sorted(CODECS):
        out = Codec.make(name, CODECS[name].crf_range[0] + 5).apply(frames, "c")
        assert out.shape == frames.shape, name
        assert _psnr_y(out, frames) > 35, name
    # The padded encoding is libx264's of the edge-padded frames, cropped.
    padded = np.pad(frames, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")
    np.testing.assert_array_equal(Codec.make("h264", 20).apply(frames, "c"), _x264_reference(padded, 20)[:, :35, :43])
    # The last row and column (beside the padding) are no worse than the rest.
    out = Codec.make("h264", 20).apply(frames, "c").astype(float)
    edge = np.abs(out[:, -1] - frames[:, -1]).mean() + np.abs(out[:, :, -1] - frames[:, :, -1]).mean()
    assert edge / 2 < 2 * np.abs(out - frames).mean()
    with pytest.raises(DatasetError, match="clip c: frame 1 is 44x36 but frame 0 is 43x35"):
        Codec.make("h264", 20).apply([frames[0], _frames(1, 36, 44, 0)[0]], "c")


def test_crf_range_is_drawn_per_clip_from_the_seed():
    codec = Codec.make("h264", (20, 40), crf_seed=3)
    names = [f"clip{i}" for i in range(200)]
    drawn = [codec.crf_of(n) for n in names]
    assert min(drawn) == 20 and max(drawn) == 40 and len(set(drawn)) == 21  # every value of [20, 40]
    # The same numbers computed by hand: SeedSequence([seed, first 8 bytes of sha1(name)]).
    key = int.from_bytes(hashlib.sha1(b"clip7").digest()[:8], "little")
    assert drawn[7] == np.random.default_rng([3, key]).integers(20, 41)
    assert drawn == [Codec.make("h264", "20,40", crf_seed=3).crf_of(n) for n in names]  # eval.py's spelling
    other = [Codec.make("h264", (20, 40), crf_seed=4).crf_of(n) for n in names]
    assert sum(a != b for a, b in zip(drawn, other)) > 150
    frames = _frames(5, 32, 48, 3)
    np.testing.assert_array_equal(codec.apply(frames, "clip7"), Codec.make("h264", drawn[7]).apply(frames, "x"))
    assert Codec.make("h264", 28).crf_of("anything") == 28
    assert Codec.make("h264").crf == (23, 23) and Codec.make("av1").crf == (35, 35)  # the encoders' defaults


# --- bad options -----------------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    (dict(codec="h266"), r"codec 'h266': expected none or one of \['av1', 'h264', 'h265', 'vp9'\]"),
    (dict(codec="h264", crf=52), r"crf 52: h264 takes a whole number or a \(low, high\) range with 0 <= low <= "
                                 r"high <= 51"),
    (dict(codec="av1", crf=0), r"crf 0: av1 takes .* 1 <= low <= high <= 63"),
    (dict(codec="vp9", crf=(30, 64)), r"crf \(30, 64\): vp9 takes .* 0 <= low <= high <= 63"),
    (dict(codec="h264", crf=(30, 20)), r"crf \(30, 20\): h264 takes .* low <= high"),
    (dict(codec="h264", crf=(20, 25, 30)), r"crf \(20, 25, 30\): expected a number or \(low, high\) in \[0, 51\]"),
    (dict(codec="h264", crf=28.5), r"crf 28.5 for h264: expected a whole number, got 28.5"),
    (dict(codec="h264", crf="high"), r"crf 'high' for h264: expected a whole number"),
    (dict(codec="h264", preset="fastest"), r"preset 'fastest' for h264: expected one of \['ultrafast', .*'placebo'\]"),
    (dict(codec="vp9", preset="medium"), r"preset 'medium' for vp9: expected one of \['0', .*'8'\]"),
    (dict(codec="h264", gop=-1), r"gop -1: expected frames between keyframes >= 1, or 0"),
    (dict(codec="h264", crf=28, crf_seed=2), r"crf_seed 2 draws each clip's CRF from a crf range"),
    (dict(codec="none", crf=28), r"codec options \{'crf': 28\} apply to the codec degradation, but codec is none"),
])
def test_bad_options_name_the_option_and_what_it_allows(options, message):
    with pytest.raises(DatasetError, match=message):
        Codec.make(**options)


def test_a_codec_this_pyav_cannot_encode_is_refused(monkeypatch):
    real = av.codec.Codec

    def without_x265(name, mode="r"):
        if name == "libx265":
            raise av.codec.codec.UnknownCodecError(name)
        return real(name, mode)

    monkeypatch.setattr(av.codec, "Codec", without_x265)
    with pytest.raises(DatasetError, match=r"codec h265: this machine's PyAV cannot encode it \(encoder libx265, "
                                           r"decoder hevc\); available here: \['h264', 'vp9', 'av1'\]"):
        Codec.make("h265", 28)
    assert Codec.make("h264", 28) is not None


# --- the footage dataset, the folder reader, demo_video --------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """GT/a: 10 frames of 36x52 (LQ 9x13: odd sizes); GT/b: 8 frames of 32x48."""
    from test_footage import _save_folder

    root = tmp_path_factory.mktemp("codec_footage")
    _save_folder(root / "GT" / "a", _frames(10, 36, 52, 0))
    _save_folder(root / "GT" / "b", _frames(8, 32, 48, 1))
    return root


OPTIONS = {"codec": "h264", "crf": 30, "noise": 4, "test_part": (0.4, 0.7), "min_frames": 2}


def _stored(builder) -> dict:
    return {c.name: c for split in ("train", "test") for c in eval_clips(ClipReader(builder, split))}


def test_footage_stores_each_clip_compressed_as_one_stream(folder, tmp_path):
    first = load_builder("footage", data_dir=str(tmp_path / "1"), manual_dir=str(folder), footage=OPTIONS)
    second = load_builder("footage", data_dir=str(tmp_path / "2"), manual_dir=str(folder), footage=OPTIONS)
    stored = _stored(first)
    assert sorted(stored) == ["a.0000-0003", "a.0004-0006", "a.0007-0009", "b.0000-0002", "b.0003-0005",
                              "b.0006-0007"]
    # The reference, computed another way: bicubic, noise by clip and frame, then libx264 over the
    # whole clip (the held-out part is cut from the clip's stream, not encoded alone).
    gt = _frames(10, 36, 52, 0)
    noisy = np.stack([add_noise(downsample_uint8(g), 4, ("a", i)) for i, g in enumerate(gt)])
    expect = _x264_reference(np.pad(noisy, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge"), 30)[:, :9, :13]
    lq = np.concatenate([stored[n].lq for n in ("a.0000-0003", "a.0004-0006", "a.0007-0009")])
    np.testing.assert_array_equal(lq, expect)
    assert lq.shape == (10, 9, 13, 3) and 25 < _psnr_y(lq, noisy) < 45
    # Two builds, identical records: the same tf.train.Examples (the frames' tiles included;
    # compared parsed, as a feature map's serialized order follows the process's string hashing).
    import tensorflow as tf
    from array_record.python.array_record_module import ArrayRecordReader

    for split in ("train", "test"):
        (path_a,), (path_b,) = (list(Path(b.data_dir).glob(f"*-{split}.array_record*")) for b in (first, second))
        records = [[tf.train.Example.FromString(r) for r in ArrayRecordReader(str(p)).read_all()]
                   for p in (path_a, path_b)]
        # one GT and one LQ tile per frame (the frames are smaller than a tile): 12 and 6 frames
        assert len(records[0]) == 2 * {"train": 12, "test": 6}[split] and records[0] == records[1]
    # eval.py --dataset FOLDER --codec h264 --crf 30 --noise 4: the same LQ, whole clips.
    read = {c.name: c for c in folder_clips(folder, noise=4, codec=Codec.make("h264", 30))}
    np.testing.assert_array_equal(read["a"].lq, lq)
    np.testing.assert_array_equal(read["b"].lq, np.concatenate(
        [stored[n].lq for n in ("b.0000-0002", "b.0003-0005", "b.0006-0007")]))


def test_config_name_follows_the_codec_options(folder):
    def name(**codec):
        return make_config(EdvrFootage, "bi_x4", folder, {"noise": 4, **codec}).name

    # Without a codec, the name is the one the formula gave before codecs existed (in the default layout).
    fields = {"clips": (), "test_clips": (), "test_part": (0.9, 1.0), "gt_resize": 1.0, "gt_crop": (),
              "min_frames": 5, "noise": 4.0}
    old = hashlib.sha1(repr(("bi_x4", 4, "bi", sorted(fields.items()), fingerprint(folder))).encode()).hexdigest()
    assert name() == name(codec="none") == name(codec="", crf=None, preset="", gop=0, crf_seed=0) == \
        config_name(f"bi_x4-{old[:12]}", "tiles")
    variants = [name(codec="h264"), name(codec="h264", crf=28), name(codec="h265", crf=28),
                name(codec="h264", crf=(20, 30)), name(codec="h264", crf=(20, 30), crf_seed=1),
                name(codec="h264", crf=28, preset="slow"), name(codec="h264", crf=28, gop=12)]
    assert len(set(variants + [name()])) == 8
    assert name(codec="h264", crf=28) == name(codec="H264", crf="28") == name(codec="h264", crf=(28, 28))
    assert name(codec="h264") == name(codec="h264", crf=23)  # the default CRF, spelt out
    cfg = make_config(EdvrFootage, "bi_x4", folder, {"codec": "h264", "crf": 28})
    assert cfg.codec == Codec("h264", (28, 28)) and "LQ compressed: h264 crf 28" in cfg.description
    with pytest.raises(DatasetError, match=r"unknown footage options \['crf_range'\]; expected some of .*'codec', "
                                           r"'crf', 'preset', 'gop', 'crf_seed'"):
        make_config(EdvrFootage, "bi_x4", folder, {"crf_range": 28})


def test_bad_codec_options_end_the_build_before_anything_is_written(folder, tmp_path):
    with pytest.raises(DatasetError, match=r"crf 60: h264 takes"):
        load_builder("footage", data_dir=str(tmp_path), manual_dir=str(folder), footage={"codec": "h264", "crf": 60})
    assert not list(tmp_path.rglob("*.array_record*"))
    with_lq = tmp_path / "with_lq"
    from test_footage import _save_folder
    _save_folder(with_lq / "GT" / "c", _frames(6, 32, 48, 2))
    _save_folder(with_lq / "LQ" / "c", _frames(6, 8, 12, 2))
    with pytest.raises(DatasetError, match=r"codec=h264 applies to LQ made from GT, but clips \['c'\] have their own"):
        list(folder_clips(with_lq, codec=Codec.make("h264", 28)))
    with pytest.raises(DatasetError, match=r"noise=3 and codec=h264 apply to LQ made from GT"):
        load_builder("footage", data_dir=str(tmp_path), manual_dir=str(with_lq),
                     footage={"codec": "h264", "noise": 3})


def test_demo_video_takes_the_codec_options_only():
    given = {"noise": 0.0, "test_part": (0.9, 1.0), "codec": "h264", "crf": 28, "preset": "", "gop": 0,
             "crf_seed": 0}
    options = footage_options("demo_video", given)
    assert options == {**DEMO_VIDEO, "codec": "h264", "crf": 28, "preset": "", "gop": 0, "crf_seed": 0}
    plain = make_config(EdvrDemoVideo, "bi_x4", EdvrDemoVideo.source_root(), footage_options("demo_video", {}))
    compressed = make_config(EdvrDemoVideo, "bi_x4", EdvrDemoVideo.source_root(), options)
    assert compressed.noise == plain.noise == 10 and compressed.codec == Codec("h264", (28, 28))
    assert plain.codec is None and compressed.name != plain.name
    # The demo config's defaults are no codec: the Quickstart's build keeps its name.
    from configs.edvr import get_config
    defaults = get_config("demo").data.footage.to_dict()
    assert make_config(EdvrDemoVideo, "bi_x4", EdvrDemoVideo.source_root(),
                       footage_options("demo_video", defaults)).name == plain.name


def test_eval_py_refuses_bad_codec_flags_before_loading_anything(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")  # never read: the flags are refused first
    cases = [(["--dataset", str(tmp_path), "--codec", "h264", "--crf", "70"], "crf '70': h264 takes"),
             (["--dataset", "reds4", "--codec", "h264"], "--codec: the codec compresses LQ made from GT"),
             (["--dataset", "demo_video", "--crf", "28"], "codec options {'crf': '28'} apply to the codec")]
    for args, message in cases:
        proc = subprocess.run([sys.executable, "eval.py", f"--checkpoint={weights}", *args], capture_output=True,
                              text=True, cwd=ROOT)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr[-2000:])


def test_compressed_clip_tool_writes_the_held_out_part_as_a_video(folder, tmp_path, monkeypatch):
    """python -m tools.compressed_clip: a codec run's held-out frames as LQ/NAME.mp4 (libx264 at the run's
    CRF over the made LQ of those frames alone) and GT/NAME/*.png, the layout eval.py scores."""
    from configs.edvr import get_config
    from edvr_jax.models.edvr import EDVR
    from edvr_jax.weights import write_header

    from tools import compressed_clip as tool
    cfg = get_config("demo,data=footage").unlock()
    cfg.data.manual_dir = str(folder)
    cfg.data.footage.update(clips=("b",), codec="h264", crf=30, noise=4.0, test_part=(0.4, 0.7), min_frames=2)
    (tmp_path / "run").mkdir()
    write_header(tmp_path / "run", EDVR(), train_config=cfg)
    monkeypatch.setattr(sys, "argv", ["compressed_clip.py", str(tmp_path / "run"), str(tmp_path / "out"), "--name",
                                      "phone"])
    tool.main()
    gt = _frames(8, 32, 48, 1)[3:6]  # frames round(0.4 * 8) = 3 to round(0.7 * 8) - 1 = 5
    noisy = np.stack([add_noise(downsample_uint8(g), 4, ("b", i)) for i, g in zip(range(3, 6), gt)])
    with av.open(str(tmp_path / "out" / "LQ" / "phone.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        lq = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    np.testing.assert_array_equal(lq, _x264_reference(noisy, 30))
    np.testing.assert_array_equal(np.stack([np.asarray(Image.open(tmp_path / "out" / "GT" / "phone" / f"{k:05d}.png"))
                                            for k in range(3)]), gt)
    cfg.data.footage.clips = ("a",)  # 9x13 LQ: an MP4 of it would be padded
    write_header(tmp_path / "run", EDVR(), train_config=cfg)
    with pytest.raises(SystemExit, match="LQ frames of 13x9: a 4:2:0 video needs even sides"):
        tool.main()
