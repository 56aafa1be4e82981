"""Clip I/O: reading and writing a clip as a folder of frames or a video file (PyAV), and
``to_uint8``, the rounding every output goes through."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
import numpy as np
from PIL import Image, UnidentifiedImageError

from edvr_jax.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v")


def to_uint8(img: np.ndarray, scale: float = 255.0) -> np.ndarray:
    """An image with values in [0, 1] (or [0, 255 / scale]) -> uint8, rounded half to even and
    clipped as BasicSR's ``tensor2img`` does."""
    return np.clip(np.round(np.asarray(img, np.float64) * scale), 0, 255).astype(np.uint8)


class InputError(UserError, ValueError):
    """An input clip that cannot be used as it is; the message names the file and the problem."""


def read_rgb(path: str | os.PathLike, error: type[Exception] = InputError) -> np.ndarray:
    """Decodes an 8-bit RGB image file to uint8 ``[H, W, 3]``; a missing, undecodable or
    non-RGB file raises ``error`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"missing frame: {path}")
    try:
        with Image.open(path) as img:
            sixteen_bit = any("16" in str(tile[-1]) for tile in img.tile)  # raw mode, e.g. 'RGB;16B'; PIL keeps 8 bits
            img.load()
            mode = img.mode
            arr = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise error(f"cannot decode {path}: {e}") from e
    if mode != "RGB":
        raise error(f"{path} is a {mode!r} image; expected 8-bit RGB")
    if arr.dtype != np.uint8 or sixteen_bit:
        raise error(f"{path} is a 16-bit image; edvr-jax reads 8-bit RGB frames (convert it first, e.g. "
                    f"ffmpeg -i IN -pix_fmt rgb24 OUT.png)")
    return arr


def list_frames(folder: Path, what: str, error: type[Exception] = InputError,
                suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """The image files of one clip folder, in name order; an empty or missing folder raises ``error``."""
    if not folder.is_dir():
        raise error(f"missing {what} folder {folder}")
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)
    if not frames:
        raise error(f"{what} folder {folder} holds no frames (expected {', '.join(suffixes)} files)")
    return frames


def read_clip(path: str | os.PathLike) -> tuple[np.ndarray, list[str], float | None]:
    """``(frames uint8 [N, H, W, 3], frame names, fps or None)`` from a folder of images (name
    order) or a video file."""
    path = Path(path)
    if path.is_dir():
        files = list_frames(path, "clip")
        frames = []
        for f in files:
            img = read_rgb(f)
            if frames and img.shape != frames[0].shape:
                raise InputError(f"{f} is {img.shape[1]}x{img.shape[0]} but {files[0].name} is "
                                 f"{frames[0].shape[1]}x{frames[0].shape[0]}; all frames of a clip must share one size")
            frames.append(img)
        return np.stack(frames), [f.stem for f in files], None
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        try:
            import av
        except ImportError as e:
            raise InputError(f"reading {path} needs PyAV (pip install av)") from e
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                fps = float(stream.average_rate) if stream.average_rate else None
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        except av.error.FFmpegError as e:
            raise InputError(f"cannot decode video {path}: {e}") from e
        if not frames:
            raise InputError(f"{path} holds no video frames")
        return np.stack(frames), [f"{i:08d}" for i in range(len(frames))], fps
    if not path.exists():
        raise InputError(f"{path} does not exist")
    raise InputError(f"{path}: expected a folder of frames or a video file ({', '.join(VIDEO_SUFFIXES)})")


class Writer:
    """Writes restored frames to a folder of PNGs or a video file, into a ``.partial`` path that
    is renamed into place only when ``close(ok=True)``; a failed run leaves it, and says so."""

    def __init__(self, path: str | os.PathLike, fps: float | None = None, overwrite: bool = False):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass --overwrite to replace it")
        self.video = self.path.suffix.lower() in VIDEO_SUFFIXES
        if self.path.suffix and not self.video and not self.path.is_dir():
            raise InputError(f"{self.path}: an output is a folder of PNG frames (a name without a suffix) or a "
                             f"video ({', '.join(VIDEO_SUFFIXES)}), not a {self.path.suffix!r} file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(self.path.name + ".partial")
        if self.partial.exists():
            shutil.rmtree(self.partial) if self.partial.is_dir() else self.partial.unlink()
        self.fps = fps or 25.0
        self._container = self._stream = None
        if not self.video:
            self.partial.mkdir(parents=True)

    def write(self, frame: np.ndarray, name: str) -> None:
        if not self.video:
            Image.fromarray(frame).save(self.partial / f"{name}.png")
            return
        import av
        from fractions import Fraction
        if self._container is None:
            self._container = av.open(str(self.partial), mode="w", format=self.path.suffix.lstrip(".").replace("m4v", "mp4"))
            self._stream = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
            self._stream.width, self._stream.height = frame.shape[1], frame.shape[0]
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": "12"}
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self._container.mux(packet)

    def close(self, ok: bool) -> None:
        if self._container is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
        if ok:
            if self.path.exists():
                shutil.rmtree(self.path) if self.path.is_dir() else self.path.unlink()
            self.partial.rename(self.path)
