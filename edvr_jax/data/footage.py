"""The ``footage`` dataset: a folder of your clips (read by ``data/folders.py``) as a TFDS
builder, ``EdvrFootage``, whose config is made per folder and options by ``make_config``, so
two folders, two option sets, or a folder whose files changed never share a build."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from functools import partial
from pathlib import Path

from edvr_jax.data.builder import Clip, LazyFrame, VideoConfig, VideoRestorationBuilder
from edvr_jax.data.codec import Codec, Stream
from edvr_jax.data.folders import FootageClip, check_made_lq, find_clips, noise_std, split_clips
from edvr_jax.data.frames import DatasetError
from edvr_jax.data.layout import base_name, config_name, with_layouts

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FootageConfig(VideoConfig):
    """A degradation (``bi_x4``, ``bd_x4``) plus the options of ``data.footage`` (the codec's
    as one checked ``Codec``, or None), and ``source``, a fingerprint of the folder: the
    config's name ends in a hash of all of them, so two folders (or two option sets, or a
    folder whose files changed) never share a build."""

    clips: tuple[str, ...] = ()
    test_clips: tuple[str, ...] = ()
    test_part: tuple[float, ...] = (0.9, 1.0)
    gt_resize: float = 1.0
    gt_crop: tuple[int, ...] = ()
    min_frames: int = 5
    noise: float = 0.0
    codec: Codec | None = None
    source: str = ""


OPTIONS = ("clips", "test_clips", "test_part", "gt_resize", "gt_crop", "min_frames", "noise")
CODEC_OPTIONS = ("codec", "crf", "preset", "gop", "crf_seed")  # edvr_jax.data.codec.Codec.make's arguments
CONFIG_ALIASES = {"sr_x4": "bi_x4"}  # the other datasets' name for bicubic x4


def base_configs(**options) -> list[FootageConfig]:
    return with_layouts([FootageConfig(name="bi_x4", scale=4, degradation="bi",
                                       description="MATLAB bicubic x4 LQ made from GT", **options),
                         FootageConfig(name="bd_x4", scale=4, degradation="bd",
                                       description="Gaussian blur (13x13, sigma 1.6) + x4 decimation LQ made from GT "
                                                   "(DUF's BD)", **options)])


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
    unknown = sorted(set(options) - set(OPTIONS) - set(CODEC_OPTIONS))
    if unknown:
        raise DatasetError(f"unknown footage options {unknown}; expected some of {list(OPTIONS + CODEC_OPTIONS)}")
    codec = Codec.make(**{k: options[k] for k in CODEC_OPTIONS if k in options})
    out = {"codec": codec} if codec is not None else {}
    for key, value in options.items():
        if key in CODEC_OPTIONS:
            continue
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


def make_config(builder_cls, config: str | None, root: Path, options: dict | None = None,
                layout: str = "tiles") -> FootageConfig:
    """The ``FootageConfig`` of a degradation name (``bi_x4``, ``bd_x4``; ``sr_x4`` = ``bi_x4``),
    the builder's defaults, ``options`` (``data.footage``), ``root``'s fingerprint and the layout
    (``edvr_jax.data.layout``; the PNG layout's names are those of builds made before it existed)."""
    name = base_name(config or "")
    name = CONFIG_ALIASES.get(name, name) or builder_cls.BUILDER_CONFIGS[0].name
    bases = {c.name: c for c in builder_cls.BUILDER_CONFIGS if c.layout == "png"}
    if name not in bases:
        raise DatasetError(f"{builder_cls.__name__}: unknown config {config!r}; expected one of {sorted(bases)}")
    base = bases[name]
    fields = {k: getattr(base, k) for k in OPTIONS + ("codec",)}
    fields.update(_normalized(dict(options or {})))
    codec = fields.pop("codec")
    key = (base.name, base.scale, base.degradation, sorted(fields.items()), fingerprint(root))
    if codec is not None:  # only then: builds without a codec keep the names they had before it existed
        key += (repr(codec),)
    digest = hashlib.sha1(repr(key).encode()).hexdigest()[:12]
    lq = f"; LQ compressed: {codec.describe()}" if codec is not None else ""
    return FootageConfig(name=config_name(f"{base.name}-{digest}", layout), scale=base.scale,
                         degradation=base.degradation, layout=layout,
                         description=f"{base.description}{lq}; {root}; {fields}", source=str(root.resolve()),
                         codec=codec, **fields)


class _CompressedClips:
    """The compressed LQ of each source clip, encoded whole on its first frame's read (a part
    of a clip is cut from its clip's stream, as from a real recording) and kept encoded for the
    build; one clip's stream is decoded at a time."""

    def __init__(self, degradation: str, noise: float, codec: Codec):
        self.degradation, self.noise, self.codec = degradation, noise, codec
        self.streams: dict[str, Stream] = {}
        self.last: Stream | None = None

    def frame(self, clip: FootageClip, i: int):
        stream = self.streams.get(clip.name)
        if stream is None:
            stream = self.streams[clip.name] = clip.compressed_lq(self.degradation, self.noise, self.codec)
        if self.last is not None and self.last is not stream:
            self.last.close()
        self.last = stream
        return stream.frame(i)


def _builder_clips(parts: list[tuple[str, FootageClip, int, int]], degradation: str, noise: float,
                   compressed: _CompressedClips | None = None) -> list[Clip]:
    out = []
    for name, clip, lo, hi in parts:
        gt = [LazyFrame(partial(clip.gt_frame, i), clip.gt.describe(i)) for i in range(lo, hi)]
        if clip.lq is not None:
            lq = [LazyFrame(partial(clip.lq_frame, i), clip.lq.describe(i)) for i in range(lo, hi)]
        elif compressed is not None:
            lq = [LazyFrame(partial(compressed.frame, clip, i),
                            f"{degradation} of {clip.gt.describe(i)}{f' + noise {noise:g}' if noise else ''}, "
                            f"{compressed.codec.describe()}") for i in range(lo, hi)]
        elif noise:  # keyed by source clip and frame, as folder_clips makes it, from GT read once more
            own = clip.own_reader()  # in order: sharing the GT's reader would re-open a video at every frame
            lq = [LazyFrame(partial(own.made_lq_frame, i, degradation, noise),
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
    ``test_clips``, ``test_part``, ``gt_crop``, ``gt_resize``, ``min_frames``, ``noise``, and
    the codec's ``codec``, ``crf``, ``preset``, ``gop``, ``crf_seed``) by ``make_config``. Splits:
    ``train``, and ``test`` = the clips named in ``test_clips``, or else the ``test_part``
    fraction of every clip (default: its last 10 %). The folder layout: ``edvr_jax.data.folders``.
    """

    VERSION = VideoRestorationBuilder.VERSION
    BUILDER_CONFIGS = base_configs()

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
        check_made_lq(clips, cfg.noise, cfg.codec)
        splits = split_clips(clips, cfg.test_clips, cfg.test_part, cfg.min_frames)
        for split, parts in splits.items():
            log.info("%s/%s %s: %d clips, %d frames", self.name, cfg.name, split, len(parts),
                     sum(hi - lo for _, _, lo, hi in parts))
        # One _CompressedClips for all splits: a clip split into parts is encoded once.
        compressed = _CompressedClips(cfg.degradation, cfg.noise, cfg.codec) if cfg.codec is not None else None
        return {split: _builder_clips(parts, cfg.degradation, cfg.noise, compressed) for split, parts in splits.items()}
