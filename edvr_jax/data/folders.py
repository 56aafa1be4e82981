"""A folder of your clips: frame folders or video files, with LQ given or made from GT,
checked (``find_clips``), read a frame at a time (``folder_clips``) or split into training and held-out
parts (``split_clips``).

The folder layout has one owner, ``find_clips``; the ``footage`` dataset (TFDS builder
``edvr_footage``, ``data/footage.py``) and ``eval.py --dataset FOLDER`` (``folder_clips``)
both read through it::

    FOLDER/GT/<clip>/00000.png ...   a clip as a folder of frames (.png .jpg .bmp ..., name order)
    FOLDER/GT/<clip>.mp4             or as a video file (.mp4 .mkv .mov .avi .webm .m4v, PyAV)
    FOLDER/LQ/<clip>/... or LQ/<clip>.mp4   optional LQ of that clip: same frame count (and
                                     frame names, for two folders), GT = scale x LQ

Without a ``GT/`` folder, FOLDER's own frame folders and videos are the GT clips (so a
folder of videos works as it is). The LQ folder is ``LQ/`` (or ``lq/``), else Vid4's
``BIx4/`` for the ``bi`` degradation and ``BDx4/`` for ``bd``. A clip without LQ gets it
made from its GT by the degradation (``edvr_jax.data.degrade``: ``bi`` MATLAB bicubic,
``bd`` DUF's Gaussian blur sigma 1.6 + decimation), then, with the ``noise`` option, Gaussian
noise of that std (0-255 scale), fixed per clip name and frame index (``add_noise``), then,
with a ``codec``, the whole clip encoded as one video stream and decoded back
(``edvr_jax.data.codec``); noise and codec are refused for a folder whose clips bring their
own LQ.

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
import functools
import logging
import math
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edvr_jax.data.bicubic import resize_uint8
from edvr_jax.data.codec import Codec, Stream
from edvr_jax.data.degrade import DEGRADATIONS, add_noise, degrade
from edvr_jax.data.frames import DatasetError
from edvr_jax.data.pipeline import EvalClip
from edvr_jax.data.video import VIDEO_SUFFIXES, Frames, probe

log = logging.getLogger(__name__)

LQ_FOLDERS = {"bi": ("LQ", "lq", "BIx4"), "bd": ("LQ", "lq", "BDx4")}


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

    def made_lq_frame(self, i: int, degradation: str, noise: float = 0.0, gt: np.ndarray | None = None) -> np.ndarray:
        """LQ frame ``i`` made from GT: ``degradation``, then Gaussian noise of std ``noise``
        (0-255 scale; the same for the same clip name and frame). ``gt``: GT frame ``i`` where
        the caller has it already."""
        gt = self.gt_frame(i) if gt is None else gt
        return add_noise(degrade(gt, degradation, self.scale), noise, (self.name, i))

    def own_reader(self) -> "FootageClip":
        """The same clip with a GT reader of its own (a video decodes in order; two readers
        taking turns on one would re-open it at every frame)."""
        return dataclasses.replace(self, gt=dataclasses.replace(self.gt, _video=None))

    def compressed_lq(self, degradation: str, noise: float, codec: Codec) -> Stream:
        """The clip's made LQ frames (``made_lq_frame``) encoded by ``codec`` as one stream;
        GT is read once, in order, by a reader of its own."""
        own = self.own_reader()
        return codec.encode((own.made_lq_frame(i, degradation, noise) for i in range(self.count)), self.name)


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


def has_lq_folder(root: str | os.PathLike, degradation: str = "bi") -> bool:
    """Whether a footage folder brings LQ of its own (an LQ folder beside ``GT/``)."""
    root = Path(root)
    return root.is_dir() and _roots(root, degradation)[1] is not None


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
                 noise: float = 0.0, codec: Codec | None = None) -> Iterator[EvalClip]:
    """The clips of a footage folder as ``EvalClip``s (``eval.py --dataset FOLDER``), read a
    frame at a time: the given LQ, or LQ made from GT by ``degradation`` (then ``noise``, then
    ``codec``: each clip encoded whole, held compressed), exactly as the ``footage`` dataset
    stores them. Every clip is checked before the first is read."""
    noise = noise_std(noise)
    found = find_clips(root, degradation, scale, gt_resize, clips, gt_crop)
    check_made_lq(found, noise, codec)
    for clip in found:
        yield EvalClip(clip.name, clip.count, functools.partial(_footage_pairs, clip, degradation, noise, codec))


def _footage_pairs(clip: FootageClip, degradation: str, noise: float,
                   codec: Codec | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    compressed = clip.compressed_lq(degradation, noise, codec) if clip.lq is None and codec is not None else None
    decoded = compressed.frames() if compressed is not None else None
    for i in range(clip.count):
        gt = clip.gt_frame(i)
        if clip.lq is not None:
            yield clip.lq_frame(i), gt
        elif decoded is not None:
            yield next(decoded), gt
        else:
            yield clip.made_lq_frame(i, degradation, noise, gt), gt


def noise_std(value) -> float:
    """The ``noise`` option as a float, or a ``DatasetError`` unless it is in [0, 255)."""
    value = float(value)
    if not 0 <= value < 255:
        raise DatasetError(f"noise {value:g} must be a standard deviation in [0, 255) (0-255 pixel scale)")
    return value


def check_made_lq(clips: Sequence[FootageClip], noise: float, codec: Codec | None = None) -> None:
    """``noise`` and ``codec`` degrade LQ made here, never given LQ: refuse them for a folder with LQ."""
    given = [c for c in clips if c.lq is not None]
    options = ([f"noise={noise:g}"] if noise else []) + ([f"codec={codec.name}"] if codec is not None else [])
    if options and given:
        verb = "applies" if len(options) == 1 else "apply"
        raise DatasetError(f"{' and '.join(options)} {verb} to LQ made from GT, but clips {[c.name for c in given]} "
                           f"have their own LQ ({given[0].name}: {given[0].lq.path}); drop "
                           f"{' and '.join(o.split('=')[0] for o in options)} or remove their LQ")


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
