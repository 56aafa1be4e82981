"""Streaming restore and evaluation: frames read, restored and written through a sliding
window, bit for bit the whole-clip restore of before (the reference below), in memory that
does not depend on the clip's length."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import numpy as np
import pytest
from conftest import restore_cli
from golden_weights import synthetic_variables
from PIL import Image

from edvr_jax import EDVR, Restorer, TwoStageEDVR, weights
from edvr_jax.inference import StageRunner, _ramp, _round_up, tile_starts
from edvr_jax.media import Writer, read_clip, to_uint8
from edvr_jax.temporal import PADDING_MODES, stream_windows, window_table

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(num_feat=8, deformable_groups=2, num_extract_block=1, num_reconstruct_block=1)


# --- the reference: the whole-clip restore before streaming ------------------------------------

def whole_clip_stage(runner: StageRunner, clip: np.ndarray, padding: str) -> np.ndarray:
    """``StageRunner.frames`` as it was before streaming (edvr_jax/inference.py, 2026-11-27): the
    whole float clip padded at once, windows cut from it by ``window_table``, the model called
    through the runner's own ``apply_fn`` on the same batches."""
    model, s, m = runner.model, runner.model.scale, runner.model.size_multiple
    n, h, w, _ = clip.shape
    table = window_table(n, model.num_frame, padding)
    ph, pw = _round_up(h, m), _round_up(w, m)
    mode = "reflect" if ph - h < h and pw - w < w else "edge"
    padded = np.pad(clip, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode=mode) if (ph, pw) != (h, w) else clip

    def run(windows):
        k = len(windows)
        if k < runner.batch_size:
            windows = np.concatenate([windows, np.repeat(windows[-1:], runner.batch_size - k, axis=0)])
        return np.asarray(runner.apply_fn(runner.params, windows))[:k]

    if runner.tile is None:
        return np.concatenate([run(padded[table[b:b + runner.batch_size]]) for b in range(0, n, runner.batch_size)]
                              )[:, :h * s, :w * s]
    tile = _round_up(runner.tile, m)
    th, tw = min(tile, ph), min(tile, pw)
    overlap = min(runner.tile_overlap, tile // 2)
    ys, xs = tile_starts(ph, th, overlap), tile_starts(pw, tw, overlap)
    boxes = [(iy, ix) for iy in range(len(ys)) for ix in range(len(xs))]
    out = []
    for f in range(n):
        canvas = np.zeros((ph * s, pw * s, 3), np.float32)
        total = np.zeros((ph * s, pw * s, 1), np.float32)
        window = padded[table[f]]
        for b in range(0, len(boxes), runner.batch_size):
            chunk = boxes[b:b + runner.batch_size]
            tiles = np.stack([window[:, ys[iy]:ys[iy] + th, xs[ix]:xs[ix] + tw] for iy, ix in chunk])
            for (iy, ix), o in zip(chunk, run(tiles)):
                wgt = (_ramp(th * s, ys, iy, overlap, s)[:, None] * _ramp(tw * s, xs, ix, overlap, s)[None, :])[..., None]
                canvas[ys[iy] * s:ys[iy] * s + th * s, xs[ix] * s:xs[ix] * s + tw * s] += o * wgt
                total[ys[iy] * s:ys[iy] * s + th * s, xs[ix] * s:xs[ix] * s + tw * s] += wgt
        canvas /= total
        out.append(canvas[:h * s, :w * s])
    return np.stack(out)


def whole_clip_restore(restorer: Restorer, clip: np.ndarray) -> np.ndarray:
    """``Restorer.__call__`` before streaming: the clip in float, stage 1 over all of it, clipped,
    then stage 2; uint8 in, uint8 out."""
    need = restorer._stages[0].model.num_frame
    if len(clip) < need:
        raise ValueError(f"a clip of {len(clip)} frames is shorter than the model's {need}-frame window")
    x = clip.astype(np.float32)
    if clip.dtype == np.uint8:
        x /= 255.0
    for k, stage in enumerate(restorer._stages):
        x = whole_clip_stage(stage, x, restorer.padding)
        if k < len(restorer._stages) - 1:
            x = np.clip(x, 0, 1)
    return to_uint8(x) if clip.dtype == np.uint8 else x


# --- windows over a stream ---------------------------------------------------------------------

class _Frame:
    """A stand-in frame that knows its index (weak-referenceable, to count the ones alive)."""

    def __init__(self, i):
        self.i = i


@pytest.mark.parametrize("num_frame", [1, 3, 5, 7])
def test_stream_windows_are_window_table_and_hold_a_bounded_number_of_frames(num_frame):
    for padding in PADDING_MODES:
        for n in range(1, 3 * num_frame + 4):
            for group in (1, 2, 3, 5):
                try:
                    expect = window_table(n, num_frame, padding).tolist()
                except ValueError as e:  # a clip too short for the mode: the same error from the stream
                    with pytest.raises(ValueError, match=str(e).replace("(", r"\(").replace(")", r"\)")):
                        list(stream_windows(range(n), num_frame, padding, group))
                    continue
                alive, read, rows = weakref.WeakSet(), [0], []

                def source():
                    for i in range(n):
                        frame = _Frame(i)
                        alive.add(frame)
                        read[0] = i + 1
                        yield frame
                        del frame

                for windows in stream_windows(source(), num_frame, padding, group):
                    rows += [[f.i for f in w] for w in windows]
                    last = rows[-1][num_frame // 2] if num_frame > 1 else rows[-1][0]
                    # read no further than the window of the group's last centre needs ...
                    assert read[0] == min(n, len(rows) + num_frame - 1), (padding, n, group)
                    # ... and hold no more than num_frame - 1 frames on either side of the group
                    assert len(alive) <= 2 * (num_frame - 1) + group
                    del windows
                assert rows == expect, (padding, n, group)
                assert last == n - 1 or padding != "replicate"


# --- the restorer: stream == whole clip, bit for bit --------------------------------------------

@pytest.fixture(scope="module")
def models():
    """Random weights with non-zero offsets (no init to compile): a 5-frame and a 3-frame EDVR
    and a two-stage model (stage 2: 3 frames, HR input)."""
    five, three = EDVR(**SMALL), EDVR(**SMALL, num_frame=3)
    two = TwoStageEDVR(stage1=dict(SMALL), stage2=dict(SMALL, num_frame=3, hr_in=True, with_predeblur=True))
    s1, s2 = two.stages()
    return {"five": (five, synthetic_variables(five, seed=1)["params"]),
            "three": (three, synthetic_variables(three, seed=2)["params"]),
            "two_stage": (two, {"stage1": synthetic_variables(s1, seed=3)["params"],
                                "stage2": synthetic_variables(s2, seed=4)["params"]})}


CASES = [  # (model, clip length, Restorer options)
    *[("five", n, {}) for n in (1, 2, 3, 4, 5, 6, 7, 13)],  # 2N+1 = 5: shorter, equal, one more, longer
    *[("five", n, {"batch_size": 3}) for n in (5, 6, 7, 8, 13)],  # groups of 3 centres, a short last one
    *[("five", n, {"padding": p, "batch_size": 2}) for n in (5, 6, 11) for p in ("replicate", "reflection", "circle")],
    *[("three", n, {}) for n in (1, 2, 3, 4, 9)],  # 2N+1 = 3
    *[("five", n, {"tile": 8, "tile_overlap": 4, "batch_size": 3}) for n in (5, 6, 9)],  # 2 x 3 tiles a frame
    *[("two_stage", n, {"batch_size": 2}) for n in (5, 6, 9)],
    ("two_stage", 6, {"tile": 32, "tile_overlap": 8, "batch_size": 2}),
]


def _reads_before_output(restorer: Restorer, n: int, f: int = 0) -> int:
    """Frames a stream has read when it gives output ``f``: each stage, last first, needs its input
    up to the last centre of the group holding the frame wanted (``batch_size`` centres, one when
    tiled) plus ``num_frame - 1``; and the first ``num_frame`` frames are read before anything
    (the length check)."""
    needed = f  # index of the frame wanted from the stage below
    for stage in reversed(restorer._stages):
        group = 1 if stage.tile else stage.batch_size
        needed = needed // group * group + group - 1 + stage.model.num_frame - 1
    return min(n, max(needed + 1, restorer.num_frame))


@pytest.mark.parametrize("name,n,options", CASES, ids=[f"{m}-{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}"
                                                       for m, n, o in CASES])
def test_stream_equals_the_whole_clip_restore_bit_for_bit(models, name, n, options):
    model, params = models[name]
    restorer = Restorer(model, params, **options)
    size = (24, 36) if name == "two_stage" and "tile" in options else (13, 22)  # 13x22: padded to 16x24
    clip = (np.random.default_rng(n).random((n, *size, 3)) * 255).astype(np.uint8)
    try:
        expect = whole_clip_restore(restorer, clip)
    except ValueError as e:
        for restore in (restorer, lambda c: list(restorer.stream(iter(c)))):
            with pytest.raises(ValueError, match=str(e)):
                restore(clip)
        return
    read = [0]

    def frames():  # a generator: the restorer sees neither the length nor the frames ahead
        for i, frame in enumerate(clip):
            read[0] = i + 1
            yield frame

    outputs = []
    for k, out in enumerate(restorer.stream(frames())):
        assert out.dtype == np.uint8
        if k == 0:  # the first output comes once the windows of its group are read, not the clip
            assert read[0] == _reads_before_output(restorer, n)
        outputs.append(out)
    np.testing.assert_array_equal(np.stack(outputs), expect)
    np.testing.assert_array_equal(restorer(clip), expect)  # the whole-clip API, on the stream
    floats = clip.astype(np.float32) / 255.0
    np.testing.assert_array_equal(restorer(floats), whole_clip_restore(restorer, floats))


# --- the restore CLI and eval.py ---------------------------------------------------------------

def _save(model, params, path: Path) -> Path:
    weights.save_weights(path, model, params)
    return path


def _write_video(path: Path, frames: np.ndarray, fps: int = 10) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def _write_frames(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:05d}.png")




@pytest.mark.heavy
def test_restore_cli_streams_videos_and_folders_bit_for_bit(models, tmp_path, capsys):
    """A video in, frames out, and frames in, a video out, through the CLI: the frames are the
    whole-clip restore's (tiled too); a video too short for the window is refused before anything
    is written."""
    model, params = models["five"]
    ckpt = _save(model, params, tmp_path / "w")
    rng = np.random.default_rng(5)
    frames = (rng.random((8, 16, 24, 3)) * 255).astype(np.uint8)
    _write_video(tmp_path / "in.mp4", frames)
    decoded = read_clip(tmp_path / "in.mp4")[0]  # PyAV's decoding of it, the restorer's input
    proc = restore_cli(capsys, tmp_path / "in.mp4", tmp_path / "out", "--checkpoint", ckpt, "--tile", "8",
                    "--tile_overlap", "4", "--batch_size", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out, names, _ = read_clip(tmp_path / "out")
    assert names == [f"{i:08d}" for i in range(8)]
    np.testing.assert_array_equal(out, whole_clip_restore(Restorer(model, params, tile=8, tile_overlap=4, batch_size=3),
                                                          decoded))
    _write_frames(tmp_path / "in", frames)
    proc = restore_cli(capsys, tmp_path / "in", tmp_path / "o.mp4", "--checkpoint", ckpt, "--batch_size", "2", "--fps", "12")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "restored 8 frames 24x16 -> x4" in proc.stdout
    video, _, fps = read_clip(tmp_path / "o.mp4")
    expect = whole_clip_restore(Restorer(model, params, batch_size=2), frames)
    assert video.shape == expect.shape == (8, 64, 96, 3) and fps == pytest.approx(12)
    reference = Writer(tmp_path / "reference.mp4", fps=12)  # the reference frames, encoded alike
    for i, frame in enumerate(expect):
        reference.write(frame, str(i))
    reference.close(ok=True)
    np.testing.assert_array_equal(video, read_clip(tmp_path / "reference.mp4")[0])
    _write_video(tmp_path / "short.mp4", frames[:4])  # its length is unknown until decoded
    proc = restore_cli(capsys, tmp_path / "short.mp4", tmp_path / "s.mp4", "--checkpoint", ckpt)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (f"error: {tmp_path / 'short.mp4'} has 4 frames, fewer than the "
                                                   f"model's 5-frame window")
    assert not list(tmp_path.glob("s.mp4*"))


@pytest.mark.heavy
def test_eval_streams_clips_through_the_windows_with_the_same_numbers(models, tmp_path):
    """eval.py on a folder (a clip of frames, a clip as video; LQ made by bicubic): every frame's
    metrics equal those of the whole-clip restore; scoring.evaluate reads each clip only as far
    as the frame it scores needs."""
    from edvr_jax.data import folder_clips
    from edvr_jax.scoring import baseline, evaluate, frame_metrics

    model, params = models["five"]
    rng = np.random.default_rng(6)
    y, x = np.mgrid[0:48, 0:64]
    gts = {"a": np.stack([(128 + 100 * np.sin((x + 3 * t) / 5.0 + y / 7.0))[..., None] * [1, 0.8, 0.6]
                          + rng.normal(0, 8, (48, 64, 3)) for t in range(7)]).clip(0, 255).astype(np.uint8),
           "b": (rng.random((9, 48, 64, 3)) * 255).astype(np.uint8)}
    _write_frames(tmp_path / "data" / "GT" / "a", gts["a"])
    _write_video(tmp_path / "data" / "GT" / "b.mp4", gts["b"])
    gts["b"] = read_clip(tmp_path / "data" / "GT" / "b.mp4")[0]
    ckpt = _save(model, params, tmp_path / "w")
    proc = subprocess.run([sys.executable, "eval.py", f"--checkpoint={ckpt}", f"--dataset={tmp_path / 'data'}",
                           f"--out={tmp_path / 'eval'}", "--batch_size=2"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "results.json").read_text())
    restorer = Restorer(model, params, batch_size=2)
    clips = {c.name: c for c in folder_clips(tmp_path / "data")}
    for name, gt in gts.items():
        lq = clips[name].lq
        np.testing.assert_array_equal(clips[name].gt, gt)
        out = whole_clip_restore(restorer, lq)
        expect = [{**frame_metrics(o, g), **{f"base_{k}": v for k, v in frame_metrics(baseline(q, 4), g).items()}}
                  for o, g, q in zip(out, gt, lq)]
        assert report["clips"][name]["frames"] == expect  # the same numbers, to the last bit
    assert Image.open(tmp_path / "eval" / "b_input_output_gt.png").size == (64 * 3, 48)

    reads, seen = [0], []

    def pairs():
        for i, pair in enumerate(zip(clips["b"].lq, clips["b"].gt)):
            reads[0] = i + 1
            yield pair

    clip = dataclasses.replace(clips["b"], read=pairs)
    evaluate(restorer.frames, [clip], 4, on_frame=lambda c, f, out, lq, gt: seen.append(
        (reads[0], np.array_equal(lq, clips["b"].lq[f]) and np.array_equal(gt, clips["b"].gt[f]))))
    assert seen == [(_reads_before_output(restorer, 9, f), True) for f in range(9)]


# --- memory -------------------------------------------------------------------------------------

MEMORY_PROBE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from edvr_jax import load
    from edvr_jax.media import open_clip, read_clip
    from edvr_jax.restore import restore_clip

    def peak_mib():  # the process's peak resident memory so far
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024

    ckpt, short, long, out = sys.argv[1:]
    restorer = load(ckpt)  # one restorer, compiled once
    restore_clip(restorer, open_clip(short), out + "/short_out.mp4")
    warm = peak_mib()
    restore_clip(restorer, open_clip(long), out + "/long_out.mp4")
    streamed = peak_mib()
    x = read_clip(long)[0].astype(np.float32)  # the clip as the whole-clip restore held it, before streaming
    x /= 255.0
    print(json.dumps({"warm": warm, "streamed": streamed, "whole": peak_mib()}))
""")


@pytest.mark.heavy
def test_a_long_video_restores_in_memory_independent_of_its_length(tmp_path):
    """The restore CLI's loop (``restore_clip``: video in, video out) with a tiny HR-input EDVR:
    600 frames of 96x64 raise the process's peak RSS by less than 24 MiB over restoring 60 of
    them; holding the clip whole, in uint8 and float32 as the restore did before streaming
    (53 MiB), raises it by more than that. (Peak RSS moves by up to ~12 MiB between runs under
    load, whatever the length: 300 frames and a 12 MiB bound failed once in CI.)"""
    model = EDVR(**SMALL, hr_in=True, with_predeblur=True)
    ckpt = _save(model, synthetic_variables(model, seed=7)["params"], tmp_path / "w")
    y, x = np.mgrid[0:64, 0:96]
    frames = np.stack([(128 + 100 * np.sin((x + 2 * t) / 9.0 + y / 13.0))[..., None] * [1.0, 0.7, 0.4]
                       for t in range(600)]).astype(np.uint8)
    _write_video(tmp_path / "long.mp4", frames, fps=25)
    _write_video(tmp_path / "short.mp4", frames[:60], fps=25)
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(ckpt), str(tmp_path / "short.mp4"),
                           str(tmp_path / "long.mp4"), str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "restored 600 frames 96x64 -> x1" in proc.stdout
    assert len(read_clip(tmp_path / "long_out.mp4")[0]) == 600
    assert peak["streamed"] - peak["warm"] < 24, peak
    assert peak["whole"] - peak["streamed"] > 24, peak  # the bound is one that whole-clip loading breaks


WRITER_PROBE = textwrap.dedent("""
    import sys
    import numpy as np
    from edvr_jax.media import Writer

    def peak_mib():
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024

    frame = (np.random.default_rng(0).random((720, 1280, 3)) * 255).astype(np.uint8)
    writer, peaks = Writer(sys.argv[1], fps=25), {}
    for i in range(48):
        writer.write(np.roll(frame, 8 * i, axis=1), str(i))
        peaks[i + 1] = peak_mib()
    writer.close(ok=True)
    print(peaks[16], peaks[48])
""")


def test_the_video_writer_holds_a_few_frames_not_the_encoders_default_lookahead(tmp_path):
    """Writing 1280x720 frames to an mp4, the process's peak RSS stops growing within 16 frames:
    x264's default lookahead (40 frames, plus B-frames and threads) held ~5 MiB a frame up to
    the 48th, which at a x4 output of 720p is ~3.7 GiB."""
    proc = subprocess.run([sys.executable, "-c", WRITER_PROBE, str(tmp_path / "o.mp4")], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    at16, at48 = map(float, proc.stdout.split())
    assert at48 - at16 < 16, (at16, at48)
    assert len(read_clip(tmp_path / "o.mp4")[0]) == 48
