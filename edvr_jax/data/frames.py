"""Frame files as the dataset builders read them: ``edvr_jax.media``'s readers raising
``DatasetError`` and limited to the dataset suffixes, and the PNG codec of the records."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from edvr_jax import media
from edvr_jax.errors import UserError

DATASET_SUFFIXES = media.IMAGE_SUFFIXES[:4]  # .png, .jpg, .jpeg, .bmp


class DatasetError(UserError, ValueError):
    """A dataset folder or file that does not have the expected layout or content."""


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """uint8 ``[H, W, 3]`` of an 8-bit RGB frame file; anything else is a ``DatasetError``."""
    return media.read_rgb(path, DatasetError)


def encode_png(img: np.ndarray) -> bytes:
    """uint8 ``[H, W, 3]`` -> PNG bytes as the builders store them: zlib level 1, about 4x
    faster than TFDS's default encoder (level 6) on 720p frames for ~10 % more bytes."""
    out = io.BytesIO()
    Image.fromarray(img).save(out, format="png", compress_level=1)
    return out.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes as stored in a record -> uint8 ``[H, W, 3]``."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def list_frames(folder: Path, what: str) -> list[Path]:
    """The frame files of one clip folder, in name order; an empty or missing folder is a ``DatasetError``."""
    return media.list_frames(folder, what, DatasetError, DATASET_SUFFIXES)
