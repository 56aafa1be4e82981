"""Clip I/O: a clip as a folder of frames or a video file (PyAV), read a frame at a time
(``open_clip``) or whole (``read_clip``) and written a frame at a time (``Writer``), and
``to_uint8``, the rounding every output goes through."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Iterator

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


def _check_rgb(img: Image.Image, path: Path, error: type[Exception]) -> None:
    """An opened (not yet loaded) image is 8-bit RGB, from its header."""
    if img.mode != "RGB":
        raise error(f"{path} is a {img.mode!r} image; expected 8-bit RGB")
    if any("16" in str(tile[-1]) for tile in img.tile):  # raw mode, e.g. 'RGB;16B'; PIL keeps 8 bits
        raise error(f"{path} is a 16-bit image; edvr-jax reads 8-bit RGB frames (convert it first, e.g. "
                    f"ffmpeg -i IN -pix_fmt rgb24 OUT.png)")


def read_rgb(path: str | os.PathLike, error: type[Exception] = InputError) -> np.ndarray:
    """Decodes an 8-bit RGB image file to uint8 ``[H, W, 3]``; a missing, undecodable or
    non-RGB file raises ``error`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"missing frame: {path}")
    try:
        with Image.open(path) as img:
            _check_rgb(img, path, error)
            img.load()
            arr = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise error(f"cannot decode {path}: {e}") from e
    return arr


def rgb_size(path: Path, error: type[Exception] = InputError) -> tuple[int, int]:
    """``(H, W)`` of an 8-bit RGB image file, from its header alone; ``error`` as ``read_rgb``."""
    try:
        with Image.open(path) as img:
            _check_rgb(img, path, error)
            return img.size[1], img.size[0]
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise error(f"cannot decode {path}: {e}") from e


def list_frames(folder: Path, what: str, error: type[Exception] = InputError,
                suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """The image files of one clip folder, in name order; an empty or missing folder raises ``error``."""
    if not folder.is_dir():
        raise error(f"missing {what} folder {folder}")
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)
    if not frames:
        raise error(f"{what} folder {folder} holds no frames (expected {', '.join(suffixes)} files)")
    return frames


@dataclasses.dataclass
class ClipFile:
    """A clip on disk, read a frame at a time: a folder of images (``files``, name order) or a
    video file (PyAV). ``open_clip`` checks it; each iteration decodes its frames in order,
    uint8 ``[H, W, 3]``, holding one at a time."""

    path: Path
    size: tuple[int, int]  # (H, W)
    count: int | None  # None: a video whose container does not record its length
    fps: float | None
    files: tuple[Path, ...] | None = None  # a folder's frames; None for a video

    def name(self, i: int) -> str:
        """Frame ``i``'s name: its file's stem, or its index for a video."""
        return self.files[i].stem if self.files is not None else f"{i:08d}"

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._read_files() if self.files is not None else self._decode_video()

    def _read_files(self) -> Iterator[np.ndarray]:
        for f in self.files:
            img = read_rgb(f)
            if img.shape[:2] != self.size:  # changed since it was opened
                raise InputError(f"{f} is {img.shape[1]}x{img.shape[0]} but {self.files[0].name} is "
                                 f"{self.size[1]}x{self.size[0]}; all frames of a clip must share one size")
            yield img

    def _decode_video(self) -> Iterator[np.ndarray]:
        av = _import_av(self.path)
        i = 0
        try:
            with av.open(str(self.path)) as container:
                for frame in container.decode(container.streams.video[0]):
                    if (frame.height, frame.width) != self.size:
                        raise InputError(f"{self.path}: frame {i} is {frame.width}x{frame.height} but frame 0 is "
                                         f"{self.size[1]}x{self.size[0]}; all frames of a clip must share one size")
                    yield frame.to_ndarray(format="rgb24")
                    i += 1
        except av.error.FFmpegError as e:
            raise InputError(f"cannot decode video {self.path} at frame {i}: {e}") from e


def _import_av(path: Path):
    try:
        import av
    except ImportError as e:
        raise InputError(f"reading {path} needs PyAV (pip install av)") from e
    return av


def open_clip(path: str | os.PathLike) -> ClipFile:
    """A folder of images (every file's header checked: 8-bit RGB, one size) or a video file
    (its first frame decoded) as a ``ClipFile``; anything else is an ``InputError`` naming it."""
    path = Path(path)
    if path.is_dir():
        files = list_frames(path, "clip")
        size = rgb_size(files[0])
        for f in files[1:]:
            h, w = rgb_size(f)
            if (h, w) != size:
                raise InputError(f"{f} is {w}x{h} but {files[0].name} is {size[1]}x{size[0]}; all frames of a "
                                 f"clip must share one size")
        return ClipFile(path, size, len(files), None, tuple(files))
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        av = _import_av(path)
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise InputError(f"{path} has no video stream")
                stream = container.streams.video[0]
                fps = float(stream.average_rate) if stream.average_rate else None
                first = next(container.decode(stream), None)
        except av.error.FFmpegError as e:
            raise InputError(f"cannot decode video {path}: {e}") from e
        if first is None:
            raise InputError(f"{path} holds no video frames")
        return ClipFile(path, (first.height, first.width), stream.frames or None, fps)
    if not path.exists():
        raise InputError(f"{path} does not exist")
    raise InputError(f"{path}: expected a folder of frames or a video file ({', '.join(VIDEO_SUFFIXES)})")


def read_clip(path: str | os.PathLike) -> tuple[np.ndarray, list[str], float | None]:
    """``(frames uint8 [N, H, W, 3], frame names, fps or None)``: a whole clip (``open_clip``)
    in memory."""
    clip = open_clip(path)
    frames = np.stack(list(clip))
    return frames, [clip.name(i) for i in range(len(frames))], clip.fps


class Writer:
    """Writes restored frames, one at a time, to a folder of PNGs or a video file (encoded as
    they come), into a ``.partial`` path that is renamed into place only when ``close(ok=True)``;
    a failed run leaves it if it holds frames (``written``), and says so."""

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
        self.written = 0
        if not self.video:
            self.partial.mkdir(parents=True)

    def write(self, frame: np.ndarray, name: str) -> None:
        self.written += 1
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
            # x264 holds rc-lookahead (default 40) + B-frames + thread frames in flight: 48 frames of
            # 1280x720 held 234 MiB, of a x4 output of 720p ~16x that. 4 frames of lookahead cap
            # it at 64 MiB for 1280x720, reached after 12 frames.
            self._stream.options = {"crf": "12", "rc-lookahead": "4"}
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self._container.mux(packet)

    def close(self, ok: bool) -> None:
        if self._container is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
        if not ok and not self.written and self.partial.is_dir():
            self.partial.rmdir()
        if ok:
            if self.path.exists():
                shutil.rmtree(self.path) if self.path.is_dir() else self.path.unlink()
            self.partial.rename(self.path)
