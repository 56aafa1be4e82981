"""Random access to the frames of one split of a built dataset, in either layout
(``edvr_jax.data.layout``): whole frames, or crops that read only the tiles they overlap."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from edvr_jax.data import shards
from edvr_jax.data.frames import DatasetError, decode_png
from edvr_jax.data.layout import TileGrid, base_name


class ClipReader:
    """Random access to the frames of one split: ``lq(clip, frames)``, ``gt(clip, frame)``, and the
    crops ``lq_crop`` / ``gt_crop``.

    Opening checks the split's shards (``shards.open_split``: missing, truncated or resized files
    are a ``DatasetError`` here, not in a worker). Picklable (Grain workers reopen the files).
    Clip ``c`` is row ``c`` of ``clips``: ``(name, first record, frame count)``.
    """

    def __init__(self, builder: tfds.core.DatasetBuilder, split: str):
        self.name = f"{builder.name}/{builder.builder_config.name}"
        self.split = split
        meta = builder.info.metadata
        table = meta.get("clips", {})
        if split not in table:
            raise DatasetError(f"{self.name} has no split {split!r}; it has {sorted(table)}")
        self.clips = [(str(n), int(s), int(c)) for n, s, c in table[split]]
        self.scale = int(meta["scale"])
        self.layout = meta.get("layout", "png")  # builds made before the tile layout are PNG
        self.tile = int(meta.get("tile", 0))
        self._sizes = [tuple(map(int, s)) for s in meta["sizes"][split]] if "sizes" in meta else [None] * len(self.clips)
        self._records = shards.open_split(builder, split)

    @property
    def dataset(self) -> str:
        """The dataset and its config without the layout: the same data in either layout."""
        return base_name(self.name)

    # ------------------------------------------------------------------ sizes and records

    def lq_size(self, clip: int) -> tuple[int, int]:
        """``(h, w)`` of the clip's LQ frames (GT: ``scale`` times that)."""
        if self._sizes[clip] is None:  # an older PNG build: the size from the first frame's PNG header
            self._sizes[clip] = decode_png(self._examples(clip, 0)[0]["lq"]).shape[:2]
        return self._sizes[clip]

    def _grids(self, clip: int) -> tuple[TileGrid, TileGrid]:
        h, w = self.lq_size(clip)
        return TileGrid(h, w, self.tile), TileGrid(h * self.scale, w * self.scale, self.tile)

    def _examples(self, clip: int, frame: int, indices: Sequence[int] = (0,)) -> list[dict]:
        """Records ``indices`` of one frame (its tiles, or its one PNG record), parsed and checked."""
        name, start, count = self.clips[clip]
        if not 0 <= frame < count:
            raise IndexError(f"{self.name}: clip {name} has {count} frames, asked for frame {frame}")
        per_frame = 1 if self.layout == "png" else sum(map(len, self._grids(clip)))
        first = start + frame * per_frame
        raw = self._records.read([first + i for i in indices])
        return [self._parse(r, first + i, clip, frame, i) for r, i in zip(raw, indices)]

    def _parse(self, raw: bytes, index: int, clip: int, frame: int, tile: int) -> dict:
        feature = tf_example_pb2.Example.FromString(raw).features.feature
        name = self.clips[clip][0]
        got = (feature["clip"].bytes_list.value[0].decode(), feature["frame"].int64_list.value[0],
               feature["index"].int64_list.value[0] if self.layout == "tiles" else 0)
        if got != (name, frame, tile):
            raise DatasetError(f"{self.name}/{self.split}: record {index} holds clip {got[0]} frame {got[1]} "
                               f"(tile {got[2]}), expected {name} frame {frame} (tile {tile}); the dataset files do not "
                               f"match their clip table ({self._records.hint})")
        if self.layout == "png":
            return {"lq": feature["lq"].bytes_list.value[0], "gt": feature["gt"].bytes_list.value[0]}
        shape = tuple(feature["tile/shape"].int64_list.value)
        return {"tile": np.frombuffer(feature["tile/value"].bytes_list.value[0], np.uint8).reshape(shape)}

    # ------------------------------------------------------------------ frames and crops

    def _window(self, clip: int, frame: int, gt: bool, top: int, left: int, height: int, width: int) -> np.ndarray:
        """uint8 ``[height, width, 3]`` of one frame at ``(top, left)``: from the tiles it overlaps."""
        if self.layout == "png":
            img = decode_png(self._examples(clip, frame)[0]["gt" if gt else "lq"])
            return img[top:top + height, left:left + width]
        lq_grid, gt_grid = self._grids(clip)
        grid, offset = (gt_grid, len(lq_grid)) if gt else (lq_grid, 0)
        parts = grid.covering(top, left, height, width)
        tiles = self._examples(clip, frame, [offset + p[0] for p in parts])
        out = np.empty((height, width, 3), np.uint8)
        for (_, ty, tx, oy, ox), t in zip(parts, tiles):
            out[oy, ox] = t["tile"][ty, tx]
        return out

    def lq_crop(self, clip: int, frames: Sequence[int], top: int, left: int, size: int) -> np.ndarray:
        """uint8 ``[len(frames), size, size, 3]``: the same LQ window of each frame."""
        return np.stack([self._window(clip, f, False, top, left, size, size) for f in frames])

    def gt_crop(self, clip: int, frame: int, top: int, left: int, size: int) -> np.ndarray:
        """uint8 ``[size, size, 3]`` of one GT frame."""
        return self._window(clip, frame, True, top, left, size, size)

    def lq(self, clip: int, frames: Sequence[int]) -> np.ndarray:
        """uint8 ``[len(frames), h, w, 3]``."""
        h, w = self.lq_size(clip)
        return np.stack([self._window(clip, f, False, 0, 0, h, w) for f in frames])

    def gt(self, clip: int, frame: int) -> np.ndarray:
        """uint8 ``[H, W, 3]``."""
        h, w = self.lq_size(clip)
        return self._window(clip, frame, True, 0, 0, h * self.scale, w * self.scale)
