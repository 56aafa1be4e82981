"""Reading and checking the PNG frames that the dataset builders store."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class DatasetError(ValueError):
    """A dataset folder or file that does not have the expected layout or content."""


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decodes an 8-bit RGB image file to uint8 ``[H, W, 3]``; any other content is an error."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"missing frame: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            arr = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DatasetError(f"cannot decode {path}: {e}") from e
    if mode != "RGB":
        raise DatasetError(f"{path} is a {mode!r} image; expected 8-bit RGB")
    return arr


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes as stored in a record -> uint8 ``[H, W, 3]``."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def list_frames(folder: Path, what: str) -> list[Path]:
    """The image files of one clip folder, in name order; an empty or missing folder is an error."""
    if not folder.is_dir():
        raise DatasetError(f"missing {what} folder {folder}")
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    if not frames:
        raise DatasetError(f"{what} folder {folder} holds no frames (expected .png files)")
    return frames
