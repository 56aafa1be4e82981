"""Shared TFDS machinery for the video restoration datasets.

Every dataset stores its frames in one of two layouts (``edvr_jax.data.layout``: raw tiles, the
default, or one PNG record per frame), in ``array_record`` files written in clip/frame order
(shuffling disabled), so that any window of frames, or any crop of them, is read at random
without touching the rest of its clip. The dataset's metadata holds, per split, the clip table
(``clips``: name, first record, frame count) and each clip's LQ size (``sizes``), plus the
``layout``, the ``tile`` side, the ``scale`` and each shard's size and SHA-256 (``shards``).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import tensorflow_datasets as tfds

from edvr_jax.data import layout as layouts
from edvr_jax.data.degrade import degrade
from edvr_jax.data.frames import DatasetError, read_rgb
from edvr_jax.data.shards import RecordingWriter

@dataclasses.dataclass
class Clip:
    """One clip to store. ``lq``/``gt`` hold, per frame, a file path, a uint8 ``[H, W, 3]``
    array or a ``LazyFrame``; an ``lq`` entry of None is made from its GT by the config's
    degradation (MATLAB bicubic unless the config says otherwise)."""

    name: str
    lq: Sequence
    gt: Sequence

    def __post_init__(self):
        if len(self.lq) != len(self.gt):
            raise DatasetError(f"clip {self.name}: {len(self.lq)} LQ frames but {len(self.gt)} GT frames")
        if not self.gt:
            raise DatasetError(f"clip {self.name} has no frames")


@dataclasses.dataclass
class VideoConfig(tfds.core.BuilderConfig):
    """``scale``: GT size / LQ size (4 for SR, 1 for deblurring); ``degradation``: how LQ
    frames that a dataset does not provide are made from GT (``edvr_jax.data.degrade``);
    ``layout``: ``png`` or ``tiles`` of ``tile`` pixels (``edvr_jax.data.layout``; a builder lists
    each config in both, ``layout.with_layouts``)."""

    scale: int = 4
    degradation: str = "bi"
    layout: str = "png"
    tile: int = layouts.TILE


@dataclasses.dataclass(frozen=True)
class LazyFrame:
    """A frame read only when stored: ``read()`` -> uint8 ``[H, W, 3]`` (e.g. one frame of a
    video); ``source`` names it in error messages."""

    read: Callable[[], np.ndarray]
    source: str


def _describe(clip: Clip, f: int, kind: str, item, degradation: str = "bi") -> str:
    source = (f"{degradation} of GT" if item is None else "array" if isinstance(item, np.ndarray)
              else item.source if isinstance(item, LazyFrame) else item)
    return f"clip {clip.name} frame {f} {kind} ({source})"


def _load(item, what: str) -> np.ndarray:
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[-1] != 3:
            raise DatasetError(f"{what}: expected uint8 [H, W, 3], got {item.dtype} {item.shape}")
        return item
    if isinstance(item, LazyFrame):
        return _load(item.read(), what)
    return read_rgb(item)


class _LocalDatasetInfo(tfds.core.DatasetInfo):
    """The info of a dataset that is only ever built here: TFDS does not look for precomputed info
    on its bucket (offline it found none and left an empty ``/tmp/tmp*tfds`` folder per builder)."""

    def initialize_from_bucket(self) -> None:
        pass


class VideoRestorationBuilder(tfds.core.GeneratorBasedBuilder):
    """Base builder: subclasses define ``BUILDER_CONFIGS`` and ``_clips(manual_dir) -> {split: [Clip]}``.

    ``source_build``: a prepared build of the same dataset (its PNG twin) to take the frames from
    instead of ``_clips``, for ``edvr_jax.data.convert``: no source folders needed."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = "See the builder's docstring for the expected folder layout."

    def __init__(self, *, source_build: tfds.core.DatasetBuilder | None = None, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        self._source_build = source_build
        super().__init__(**kwargs)
        layouts.check_layout(self.builder_config.layout)

    def _info(self) -> tfds.core.DatasetInfo:
        return _LocalDatasetInfo(
            builder=self,
            features=layouts.features(self.builder_config.layout),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
            description=self.__doc__,
        )

    def _example_writer(self):
        """TFDS's writer hook: our array_record options, and each shard's size and checksum recorded."""
        return RecordingWriter(self.info.file_format, self.info.metadata.setdefault("shards", {}))

    def _clips(self, manual_dir: Path) -> dict[str, list[Clip]]:
        raise NotImplementedError

    def _manual_dir(self, dl_manager) -> Path:
        try:
            return Path(str(dl_manager.manual_dir))
        except AssertionError:  # TFDS asserts that the manual dir exists and is not empty
            raise DatasetError(f"{self.name}: the manual dir {dl_manager._manual_dir} is missing or empty; "
                               f"expected:\n{self.__doc__}") from None

    def _split_generators(self, dl_manager):
        cfg, meta = self.builder_config, self.info.metadata
        if self._source_build is not None:
            splits = _stored_clips(self._source_build)
            meta["converted_from"] = self._source_build.builder_config.name
            meta["source"] = self._source_build.info.metadata.get("source")
        else:
            manual_dir = self._manual_dir(dl_manager) if self.MANUAL_DOWNLOAD_INSTRUCTIONS else None
            splits = self._clips(manual_dir)
            meta["source"] = str(manual_dir) if manual_dir else None
        meta.update(scale=cfg.scale, layout=cfg.layout, tile=cfg.tile, clips={}, sizes={})
        return {split: self._generate_examples(split, clips) for split, clips in splits.items()}

    def _generate_examples(self, split: str, clips: list[Clip]):
        """The records of every frame; fills the split's clip table as the frames' sizes become known."""
        cfg = self.builder_config
        scale, degradation = cfg.scale, cfg.degradation
        table = self.info.metadata["clips"].setdefault(split, [])
        sizes = self.info.metadata["sizes"].setdefault(split, [])
        index = 0
        for clip in clips:
            table.append([clip.name, index, len(clip.gt)])
            size = None
            for f, (lq_item, gt_item) in enumerate(zip(clip.lq, clip.gt)):
                gt_what = _describe(clip, f, "GT", gt_item)
                lq_what = _describe(clip, f, "LQ", lq_item, degradation)
                gt = _load(gt_item, gt_what)
                lq = degrade(gt, degradation, scale) if lq_item is None else _load(lq_item, lq_what)
                if gt.shape[:2] != (lq.shape[0] * scale, lq.shape[1] * scale):
                    raise DatasetError(f"{gt_what} is {gt.shape[0]}x{gt.shape[1]} but {lq_what} is "
                                       f"{lq.shape[0]}x{lq.shape[1]}; expected GT = {scale} x LQ")
                if size is None:
                    size = lq.shape
                    sizes.append(list(size[:2]))
                elif lq.shape != size:
                    raise DatasetError(f"{lq_what} is {lq.shape[0]}x{lq.shape[1]} but earlier frames of the "
                                       f"clip are {size[0]}x{size[1]}; a clip's frames must share one size")
                # Integer keys in clip/frame order: with shuffling disabled, the record order.
                for record in layouts.frame_records(lq, gt, clip.name, f, cfg.layout, cfg.tile):
                    yield index, record
                    index += 1


def _stored_clips(build: tfds.core.DatasetBuilder) -> dict[str, list[Clip]]:
    """The clips of a prepared build, each frame read from its records when it is stored again."""
    from edvr_jax.data.reader import ClipReader

    def clip(reader: ClipReader, c: int) -> Clip:
        name, _, count = reader.clips[c]
        return Clip(name, [LazyFrame(partial(_first, reader.lq, c, f), f"{reader.name} {name} LQ {f}")
                           for f in range(count)],
                    [LazyFrame(partial(reader.gt, c, f), f"{reader.name} {name} GT {f}") for f in range(count)])

    readers = {split: ClipReader(build, split) for split in build.info.splits}
    return {split: [clip(r, c) for c in range(len(r.clips))] for split, r in readers.items()}


def _first(read_frames, clip: int, frame: int) -> np.ndarray:
    return read_frames(clip, [frame])[0]
