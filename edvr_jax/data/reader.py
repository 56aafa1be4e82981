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
    """Random access to the frames of one split: ``lq(clip, frames)``, ``gt(clip, frame)``, a
    training sample's ``crops`` and any ``windows``.

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
        sizes = meta.get("sizes", {}).get(split)  # absent in builds made before the tile layout
        self._sizes = [tuple(map(int, s)) for s in sizes] if sizes else [None] * len(self.clips)
        self._records = shards.open_split(builder, split)

    @property
    def dataset(self) -> str:
        """The dataset and its config without the layout: the same data in either layout."""
        return base_name(self.name)

    # ------------------------------------------------------------------ sizes and records

    def lq_size(self, clip: int) -> tuple[int, int]:
        """``(h, w)`` of the clip's LQ frames (GT: ``scale`` times that)."""
        if self._sizes[clip] is None:  # an older PNG build: the size from the first frame's PNG header
            self._sizes[clip] = decode_png(self._examples(clip, [(0, 0)])[0]["lq"]).shape[:2]
        return self._sizes[clip]

    def _grids(self, clip: int) -> tuple[TileGrid, TileGrid]:
        h, w = self.lq_size(clip)
        return TileGrid(h, w, self.tile), TileGrid(h * self.scale, w * self.scale, self.tile)

    def _examples(self, clip: int, wanted: Sequence[tuple[int, int]]) -> list[dict]:
        """Records ``(frame, index within the frame)`` of one clip (its tiles, or a frame's one PNG
        record), read in one call, parsed and checked."""
        name, start, count = self.clips[clip]
        per_frame = 1 if self.layout == "png" else sum(map(len, self._grids(clip)))
        for frame, _ in wanted:
            if not 0 <= frame < count:
                raise IndexError(f"{self.name}: clip {name} has {count} frames, asked for frame {frame}")
        indices = [start + frame * per_frame + i for frame, i in wanted]
        raw = self._records.read(indices)
        return [self._parse(r, index, clip, frame, i) for r, index, (frame, i) in zip(raw, indices, wanted)]

    def _parse(self, raw: bytes, index: int, clip: int, frame: int, tile: int) -> dict:
        feature = tf_example_pb2.Example.FromString(raw).features.feature
        name = self.clips[clip][0]
        got = (feature["clip"].bytes_list.value[0].decode(), feature["frame"].int64_list.value[0],
               feature["index"].int64_list.value[0] if self.layout == "tiles" else 0)
        if got != (name, frame, tile):
            raise DatasetError(f"{self.name}/{self.split}: record {index} holds clip {got[0]} frame {got[1]} "
                               f"(tile {got[2]}), expected {name} frame {frame} (tile {tile}); the dataset files do "
                               f"not match their clip table ({self._records.hint})")
        if self.layout == "png":
            return {"lq": feature["lq"].bytes_list.value[0], "gt": feature["gt"].bytes_list.value[0]}
        shape = tuple(feature["tile/shape"].int64_list.value)
        return {"tile": np.frombuffer(feature["tile/value"].bytes_list.value[0], np.uint8).reshape(shape)}

    # ------------------------------------------------------------------ frames and crops

    def windows(self, clip: int, wanted: Sequence[tuple[int, bool, int, int, int, int]]) -> list[np.ndarray]:
        """uint8 ``[height, width, 3]`` for each ``(frame, gt, top, left, height, width)`` of one clip:
        from the tiles each overlaps, all read in one call (or from decoded PNG frames)."""
        if self.layout == "png":
            records = self._examples(clip, [(w[0], 0) for w in wanted])
            return [decode_png(r["gt" if gt else "lq"])[top:top + h, left:left + w]
                    for r, (_, gt, top, left, h, w) in zip(records, wanted)]
        lq_grid, gt_grid = self._grids(clip)
        plans = [(gt_grid, len(lq_grid)) if w[1] else (lq_grid, 0) for w in wanted]
        parts = [grid.covering(*w[2:]) for (grid, _), w in zip(plans, wanted)]
        tiles = iter(self._examples(clip, [(w[0], offset + p[0]) for w, (_, offset), ps in zip(wanted, plans, parts)
                                           for p in ps]))
        out = []
        for (*_, h, w), ps in zip(wanted, parts):
            img = np.empty((h, w, 3), np.uint8)
            for (_, ty, tx, oy, ox) in ps:
                img[oy, ox] = next(tiles)["tile"][ty, tx]
            out.append(img)
        return out

    def crops(self, clip: int, frames: Sequence[int], top: int, left: int, size: int,
              gt_frame: int) -> tuple[np.ndarray, np.ndarray]:
        """A training sample's pixels: the ``size``-pixel LQ window at ``(top, left)`` of each frame,
        uint8 ``[len(frames), size, size, 3]``, and the GT window over it in ``gt_frame``."""
        s = self.scale
        got = self.windows(clip, [(f, False, top, left, size, size) for f in frames]
                           + [(gt_frame, True, top * s, left * s, size * s, size * s)])
        return np.stack(got[:-1]), got[-1]

    def lq(self, clip: int, frames: Sequence[int]) -> np.ndarray:
        """uint8 ``[len(frames), h, w, 3]``."""
        h, w = self.lq_size(clip)
        return np.stack(self.windows(clip, [(f, False, 0, 0, h, w) for f in frames]))

    def gt(self, clip: int, frame: int) -> np.ndarray:
        """uint8 ``[H, W, 3]``."""
        h, w = self.lq_size(clip)
        return self.windows(clip, [(frame, True, 0, 0, h * self.scale, w * self.scale)])[0]
