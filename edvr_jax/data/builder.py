"""Shared TFDS machinery for the video restoration datasets.

Every dataset is stored one record per frame, ``{'lq', 'gt'}`` PNGs plus the clip
name and frame index, in ``array_record`` files written in clip/frame order
(shuffling disabled), so that ``tfds.data_source`` reads any window of frames at
random without touching the rest of its clip. The clip table (name, first record,
frame count, LQ and GT sizes per split) lives in the dataset's metadata.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import tensorflow_datasets as tfds

from edvr_jax.data.degrade import degrade
from edvr_jax.data.frames import DatasetError, encode_png, read_rgb

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
    frames that a dataset does not provide are made from GT (``edvr_jax.data.degrade``)."""

    scale: int = 4
    degradation: str = "bi"


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


class VideoRestorationBuilder(tfds.core.GeneratorBasedBuilder):
    """Base builder: subclasses define ``BUILDER_CONFIGS`` and ``_clips(manual_dir) -> {split: [Clip]}``."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = "See the builder's docstring for the expected folder layout."

    def __init__(self, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "lq": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                "gt": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                "clip": tfds.features.Text(),
                "frame": np.int32,
            }),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
            description=self.__doc__,
        )

    def _clips(self, manual_dir: Path) -> dict[str, list[Clip]]:
        raise NotImplementedError

    def _manual_dir(self, dl_manager) -> Path:
        try:
            return Path(str(dl_manager.manual_dir))
        except AssertionError:  # TFDS asserts that the manual dir exists and is not empty
            raise DatasetError(f"{self.name}: the manual dir {dl_manager._manual_dir} is missing or empty; "
                               f"expected:\n{self.__doc__}") from None

    def _split_generators(self, dl_manager):
        splits = self._clips(self._manual_dir(dl_manager) if self.MANUAL_DOWNLOAD_INSTRUCTIONS else None)
        table = {}
        for split, clips in splits.items():
            start, rows = 0, []
            for clip in clips:
                rows.append([clip.name, start, len(clip.gt)])
                start += len(clip.gt)
            table[split] = rows
        self.info.metadata["clips"] = table
        self.info.metadata["scale"] = self.builder_config.scale
        return {split: self._generate_examples(clips) for split, clips in splits.items()}

    def _generate_examples(self, clips: list[Clip]):
        scale, degradation = self.builder_config.scale, self.builder_config.degradation
        index = 0
        for clip in clips:
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
                elif lq.shape != size:
                    raise DatasetError(f"{lq_what} is {lq.shape[0]}x{lq.shape[1]} but earlier frames of the "
                                       f"clip are {size[0]}x{size[1]}; a clip's frames must share one size")
                # Keys sort in clip/frame order; with shuffling disabled that is the record order.
                yield f"{index:09d}", {"lq": encode_png(lq), "gt": encode_png(gt), "clip": clip.name, "frame": f}
                index += 1
