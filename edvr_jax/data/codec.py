"""The codec degradation: a clip's LQ frames encoded as one real video stream and decoded back.

After the downscale (and noise, if any), the frames of a clip go through PyAV's encoder
(``libx264``, ``libx265``, ``libvpx-vp9``, ``libsvtav1``) at a constant rate factor into an
in-memory MP4, which is decoded frame by frame: blocking, ringing, smeared detail and
keyframe pulsing that move with the content and differ between frames, as in footage from a
phone or camera. RGB goes to 4:2:0 YUV (BT.601, limited range, PyAV's default conversion)
and back, as a phone's recording does.

Options (``data.footage.*`` and ``eval.py``'s flags of the same names):

* ``codec``: ``h264``, ``h265``, ``vp9``, ``av1``, or ``none``.
* ``crf``: the constant rate factor, a whole number in the codec's range (``CODECS``), or
  ``(low, high)``: each clip draws one value in ``[low, high]`` from ``crf_seed`` and its name.
  Unset: the encoder's default (23, 28, 31, 35).
* ``preset``: the encoder's speed preset (x264/x265 names, VP9 ``cpu-used`` 0-8, SVT-AV1
  0-13); unset: the encoder's default.
* ``gop``: frames between keyframes; 0: the encoder's default (x264/x265 250, VP9 128,
  SVT-AV1 about 5 s).
* ``crf_seed``: draws the per-clip CRFs of a ``crf`` range (0 by default).

Deterministic: the encoders run single-threaded (x264's and x265's output depends on their
thread count; x264's varies between runs with more than one), x264 without its AVX-512 code
(``x264_asm``), and the MP4 is written bit-exact, so a clip and its options give the same
bytes every time on a machine. Machines with other CPU features may differ (x264's SIMD and C
code do not give the same bytes). Frames of odd width or height
(4:2:0 needs even sizes), or smaller than the encoder takes (x265: 64 pixels), are padded by
repeating the last row or column before encoding and cropped back after decoding: the LQ
keeps its size.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
from fractions import Fraction
from typing import Iterable, Iterator

import numpy as np

from edvr_jax.data.frames import DatasetError

FPS = 25  # the stream's nominal rate (x264's rate control looks at it; the frames are unchanged)
X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")


@dataclasses.dataclass(frozen=True)
class CodecSpec:
    """One codec: PyAV's encoder and decoder names, its CRF range and default, its presets and
    the encoder option they set, and the options that make it single-threaded."""

    encoder: str
    decoder: str
    crf_range: tuple[int, int]
    default_crf: int
    presets: tuple[str, ...]
    preset_option: str
    options: tuple[tuple[str, str], ...] = ()
    min_size: int = 2  # smallest height and width the encoder takes (smaller frames are padded)


CODECS = {
    "h264": CodecSpec("libx264", "h264", (0, 51), 23, X26X_PRESETS, "preset"),
    # PyAV 18's libx265 corrupts its heap on frames narrower than its 64-pixel CTU (43x35: an abort).
    "h265": CodecSpec("libx265", "hevc", (0, 51), 28, X26X_PRESETS, "preset",
                      (("x265-params", "pools=1:frame-threads=1:log-level=error"),), min_size=64),
    # b=0: constant quality (libvpx otherwise caps the bitrate at its default target).
    "vp9": CodecSpec("libvpx-vp9", "vp9", (0, 63), 31, tuple(str(i) for i in range(9)), "cpu-used",
                     (("b", "0"), ("row-mt", "0"))),
    # SVT-AV1 reads crf 0 as "unset", hence 1-63.
    "av1": CodecSpec("libsvtav1", "libdav1d", (1, 63), 35, tuple(str(i) for i in range(14)), "preset",
                     (("svtav1-params", "lp=1"),), min_size=4),
}
NO_CODEC = ("none", "")


def available(name: str) -> bool:
    """Whether this machine's PyAV can encode and decode codec ``name``."""
    import av

    spec = CODECS[name]
    try:
        av.codec.Codec(spec.encoder, "w")
        av.codec.Codec(spec.decoder, "r")
    except (av.error.FFmpegError, ValueError):  # PyAV raises UnknownCodecError (a ValueError)
        return False
    return True


@functools.cache
def x264_asm() -> str | None:
    """x264's CPU capabilities on this machine less AVX-512, as its ``asm`` option (None where
    it has no AVX-512 code to leave out). With it, x264 gives different bytes from one encode
    of the same frames to the next, threads=1 or not: 12 outputs from 15 encodes of the demo's
    132 LQ frames on a 2-core AMD EPYC (AVX-512), 15 equal ones without it. The capabilities
    are x264's own detection, read from its log."""
    import av

    level = av.logging.get_level()
    av.logging.set_level(av.logging.INFO)
    try:
        with av.logging.Capture() as logs:
            _encode_plain("libx264", np.zeros((2, 16, 16, 3), np.uint8))
    finally:
        av.logging.set_level(level)
    caps = next((m.split("capabilities:")[1].split() for _, _, m in logs if "cpu capabilities:" in m), [])
    if not any(c.startswith("AVX512") for c in caps):
        return None
    return ",".join(c for c in caps if not c.startswith("AVX512"))


def _encode_plain(encoder: str, frames: np.ndarray, options: dict | None = None) -> bytes:
    """Frames through ``encoder`` with its defaults (and ``options``), as raw packets."""
    import av

    ctx = av.CodecContext.create(encoder, "w")
    ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base, ctx.thread_count = (
        frames.shape[2], frames.shape[1], "yuv420p", Fraction(1, FPS), 1)
    ctx.options = dict(options or {})
    out = []
    for i, f in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(f, format="rgb24")
        frame.pts = i
        out += [bytes(p) for p in ctx.encode(frame)]
    out += [bytes(p) for p in ctx.encode(None)]
    return b"".join(out)


def _whole(value, what: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{what}: expected a whole number, got {value!r}") from None
    if not number.is_integer():
        raise DatasetError(f"{what}: expected a whole number, got {value!r}")
    return int(number)


@dataclasses.dataclass(frozen=True)
class Codec:
    """The codec degradation with its options checked (``make``); ``apply`` runs it on a clip."""

    name: str
    crf: tuple[int, int]  # (low, high); low == high for a fixed CRF
    preset: str = ""
    gop: int = 0
    crf_seed: int = 0

    @classmethod
    def make(cls, codec="none", crf=None, preset="", gop=0, crf_seed=0) -> "Codec | None":
        """The checked options, or None for ``codec`` none. Errors name the option and what it
        allows: an unknown codec, one this PyAV cannot encode, a CRF outside the codec's range,
        an unknown preset, a negative GOP, a ``crf_seed`` without a CRF range to draw from."""
        name = str(codec or "").lower()
        if name in NO_CODEC:
            set_ = {k: v for k, v in (("crf", crf), ("preset", preset), ("gop", gop), ("crf_seed", crf_seed))
                    if v not in (None, "", 0, ())}
            if set_:
                raise DatasetError(f"codec options {set_} apply to the codec degradation, but codec is none; set "
                                   f"codec to one of {sorted(CODECS)}")
            return None
        if name not in CODECS:
            raise DatasetError(f"codec {codec!r}: expected none or one of {sorted(CODECS)}")
        if not available(name):
            here = [n for n in CODECS if available(n)]
            raise DatasetError(f"codec {name}: this machine's PyAV cannot encode it (encoder {CODECS[name].encoder}, "
                               f"decoder {CODECS[name].decoder}); available here: {here}")
        spec = CODECS[name]
        lo, hi = spec.crf_range
        if crf is None or crf == () or crf == "":
            crf = spec.default_crf
        if isinstance(crf, str):
            crf = crf.strip("()[] ").split(",") if "," in crf else crf
        pair = tuple(crf) if isinstance(crf, (tuple, list)) else (crf, crf)
        if len(pair) == 1:
            pair = pair * 2
        if len(pair) != 2:
            raise DatasetError(f"crf {crf!r}: expected a number or (low, high) in [{lo}, {hi}] for {name}")
        pair = tuple(_whole(v, f"crf {crf!r} for {name}") for v in pair)
        if not lo <= pair[0] <= pair[1] <= hi:
            raise DatasetError(f"crf {crf!r}: {name} takes a whole number or a (low, high) range with "
                               f"{lo} <= low <= high <= {hi}")
        preset = str(preset or "")
        if preset and preset not in spec.presets:
            raise DatasetError(f"preset {preset!r} for {name}: expected one of {list(spec.presets)} "
                               f"({spec.encoder}'s {spec.preset_option}), or empty for its default")
        gop = _whole(gop or 0, "gop")
        if gop < 0:
            raise DatasetError(f"gop {gop}: expected frames between keyframes >= 1, or 0 for the encoder's default")
        crf_seed = _whole(crf_seed or 0, "crf_seed")
        if crf_seed and pair[0] == pair[1]:
            raise DatasetError(f"crf_seed {crf_seed} draws each clip's CRF from a crf range (low, high), but crf is "
                               f"{pair[0]}; give crf a range or leave crf_seed at 0")
        return cls(name, pair, preset, gop, crf_seed)

    def describe(self) -> str:
        crf = f"{self.crf[0]}" if self.crf[0] == self.crf[1] else f"{self.crf[0]}-{self.crf[1]} per clip"
        extra = "".join(f", {k} {v}" for k, v in (("preset", self.preset), ("gop", self.gop)) if v)
        return f"{self.name} crf {crf}{extra}"

    def crf_of(self, clip: str) -> int:
        """The CRF clip ``clip`` is encoded at: fixed, or drawn from ``crf``'s range by
        ``crf_seed`` and the clip's name (the same in every build and process)."""
        lo, hi = self.crf
        if lo == hi:
            return lo
        name = int.from_bytes(hashlib.sha1(clip.encode()).digest()[:8], "little")
        return int(np.random.default_rng([self.crf_seed, name]).integers(lo, hi + 1))

    def encode(self, frames: Iterable[np.ndarray], clip: str) -> "Stream":
        """uint8 ``[H, W, 3]`` frames (one size) -> the clip as one MP4 stream in memory."""
        import av

        spec = CODECS[self.name]
        options = {"crf": str(self.crf_of(clip)), **dict(spec.options)}
        if self.preset:
            options[spec.preset_option] = self.preset
        if spec.encoder == "libx264" and x264_asm() is not None:
            options["x264-params"] = f"asm={x264_asm()}"
        buf, size, count = io.BytesIO(), None, 0
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1's banner on stderr: errors only
        with av.open(buf, "w", format="mp4", options={"fflags": "+bitexact"}) as container:
            stream = None
            for frame in frames:
                if size is None:
                    size = frame.shape[:2]
                    padded = [max(n + n % 2, spec.min_size) for n in size]
                    stream = container.add_stream(spec.encoder, rate=FPS, options=options)
                    stream.height, stream.width = padded
                    stream.pix_fmt, stream.thread_count = "yuv420p", 1
                    if self.gop:
                        stream.gop_size = self.gop
                elif frame.shape[:2] != size:
                    raise DatasetError(f"clip {clip}: frame {count} is {frame.shape[1]}x{frame.shape[0]} but frame 0 "
                                       f"is {size[1]}x{size[0]}; a clip is encoded at one size")
                frame = np.pad(frame, ((0, padded[0] - size[0]), (0, padded[1] - size[1]), (0, 0)), mode="edge")
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                count += 1
            if stream is None:
                raise DatasetError(f"clip {clip} has no frames to encode")
            container.mux(stream.encode())
        return Stream(buf.getvalue(), size, count, f"{clip} ({self.name} crf {self.crf_of(clip)})")

    def apply(self, frames: Iterable[np.ndarray], clip: str) -> np.ndarray:
        """The clip's frames encoded and decoded: uint8 ``[T, H, W, 3]``, the input's size."""
        return np.stack(list(self.encode(frames, clip).frames()))


@dataclasses.dataclass
class Stream:
    """A clip encoded in memory (``data``: an MP4 file's bytes), decoded on demand: ``frames()``
    all in order, ``frame(i)`` sequentially (an earlier frame re-opens the stream)."""

    data: bytes
    size: tuple[int, int]  # (H, W) of the frames given, before padding to even sizes
    count: int
    source: str
    _decoder: Iterator | None = dataclasses.field(default=None, repr=False)
    _next: int = dataclasses.field(default=0, repr=False)

    def frames(self) -> Iterator[np.ndarray]:
        import av

        h, w = self.size
        n = 0
        with av.open(io.BytesIO(self.data), "r") as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")[:h, :w]
                n += 1
        if n != self.count:
            raise DatasetError(f"{self.source}: {self.count} frames encoded but {n} decoded")

    def close(self) -> None:
        """Ends the decoding in progress (``frame`` re-opens the stream when asked again)."""
        if self._decoder is not None:
            self._decoder.close()
        self._decoder = None

    def frame(self, i: int) -> np.ndarray:
        if not 0 <= i < self.count:
            raise IndexError(f"{self.source} has {self.count} frames, asked for frame {i}")
        if self._decoder is None or i < self._next:
            self.close()
            self._decoder, self._next = self.frames(), 0
        while True:
            img = next(self._decoder)
            self._next += 1
            if self._next - 1 == i:
                if self._next == self.count:
                    self.close()
                return img
