"""How a dataset's frames are stored in its records: the two layouts and the tile geometry.

* ``tiles`` (the default for new builds): every LQ and GT frame is cut into square tiles of
  ``tile`` pixels (256; the last row and column are smaller) stored raw, uint8 ``[h, w, 3]``,
  one record each: per frame its LQ tiles, then its GT tiles, row-major. A training crop reads
  only the tiles it overlaps (a 256x256 GT crop 4 tiles, a 64x64 LQ crop of a 180x320 frame 1
  or 2) and a slice of each; a whole frame is its tiles put back together. Lossless, no
  decoding. A read costs ~30 us plus ~0.35 us per KB: 128-pixel tiles read fewer bytes per
  sample in twice the records, and measured within 10 % of 256 (benchmarks/README.md); 256
  halves the records per sample and quarters them per whole frame (validation).
* ``png``: one record per frame, ``{'lq', 'gt'}`` PNG bytes (zlib level 1). About 2.5x smaller on
  disk; every read decodes whole frames.

Both are TFDS ``array_record`` datasets written uncompressed (``WRITER_OPTIONS``): array_record's
default Brotli would compress raw tiles to ~0.7 of their size at 3.5x their read cost, and PNG
bytes not at all. A tile build's TFDS config is its PNG twin's name plus ``-tiles``
(``config_name``), so both can live side by side and older PNG builds keep their names.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds

LAYOUTS = ("tiles", "png")
DEFAULT_LAYOUT = "tiles"
TILE = 256  # against 128 on REDS-size samples: benchmarks/README.md, input pipeline
TILES_SUFFIX = "-tiles"
# array_record writer options: one record per chunk (random reads touch one record), no compression.
WRITER_OPTIONS = "group_size:1,uncompressed"


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        from edvr_jax.data.frames import DatasetError

        raise DatasetError(f"unknown dataset layout {layout!r}; expected one of {LAYOUTS}")
    return layout


def config_name(base: str, layout: str, tile: int = TILE) -> str:
    """The TFDS config name of a dataset config in a layout: ``sr_x4`` (png), ``sr_x4-tiles``
    (``sr_x4-tiles64`` for tiles of another side than ``TILE``)."""
    if check_layout(layout) == "png":
        return base
    return base + TILES_SUFFIX + ("" if tile == TILE else str(tile))


def base_name(name: str) -> str:
    """A config name without its layout: the PNG twin's name (``sr_x4-tiles`` -> ``sr_x4``)."""
    return re.sub(TILES_SUFFIX + r"\d*$", "", name)


def with_layouts(configs: Sequence) -> list:
    """Each ``VideoConfig`` in both layouts: as given (``png``, its name unchanged) and ``-tiles``."""
    out = []
    for c in configs:
        out.append(dataclasses.replace(c, layout="png"))
        out.append(dataclasses.replace(c, name=config_name(c.name, "tiles"), layout="tiles"))
    return out


def features(layout: str) -> tfds.features.FeaturesDict:
    """The record of each layout: a frame's two PNGs, or one raw tile and its place."""
    if layout == "png":
        return tfds.features.FeaturesDict({
            "lq": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "gt": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "clip": tfds.features.Text(),
            "frame": np.int32,
        })
    return tfds.features.FeaturesDict({
        # Raw bytes plus the shape (TFDS's dynamic-shape Tensor): 'tile/value', 'tile/shape'.
        "tile": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="bytes"),
        "clip": tfds.features.Text(),
        "frame": np.int32,
        "index": np.int32,  # the tile's place among its frame's records: LQ tiles, then GT tiles
    })


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """A ``height x width`` frame cut into ``tile``-pixel squares, row-major."""

    height: int
    width: int
    tile: int

    @property
    def rows(self) -> int:
        return -(-self.height // self.tile)

    @property
    def cols(self) -> int:
        return -(-self.width // self.tile)

    def __len__(self) -> int:
        return self.rows * self.cols

    def split(self, img: np.ndarray) -> list[np.ndarray]:
        t = self.tile
        return [np.ascontiguousarray(img[y:y + t, x:x + t])
                for y in range(0, self.height, t) for x in range(0, self.width, t)]

    def covering(self, top: int, left: int, height: int, width: int) -> list[tuple[int, slice, slice, slice, slice]]:
        """The tiles a ``height x width`` window at ``(top, left)`` overlaps, each as ``(tile index,
        rows and columns of the tile, rows and columns of the window)``."""
        t, out = self.tile, []
        for r in range(top // t, (top + height - 1) // t + 1):
            y0, y1 = max(top, r * t), min(top + height, (r + 1) * t, self.height)
            for c in range(left // t, (left + width - 1) // t + 1):
                x0, x1 = max(left, c * t), min(left + width, (c + 1) * t, self.width)
                out.append((r * self.cols + c, slice(y0 - r * t, y1 - r * t), slice(x0 - c * t, x1 - c * t),
                            slice(y0 - top, y1 - top), slice(x0 - left, x1 - left)))
        return out


def frame_records(lq: np.ndarray, gt: np.ndarray, clip: str, frame: int, layout: str, tile: int) -> list[dict]:
    """The records of one frame in ``layout``."""
    if layout == "png":
        from edvr_jax.data.frames import encode_png

        return [{"lq": encode_png(lq), "gt": encode_png(gt), "clip": clip, "frame": frame}]
    tiles = TileGrid(*lq.shape[:2], tile).split(lq) + TileGrid(*gt.shape[:2], tile).split(gt)
    return [{"tile": t, "clip": clip, "frame": frame, "index": i} for i, t in enumerate(tiles)]
