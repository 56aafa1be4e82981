"""A clip as stored: a folder of frame files (PIL) or a video file (PyAV). ``probe`` checks it
once (every frame header read, a video decoded once: frame count and one frame size), then
``Frames.read`` decodes a frame at a time."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edvr_jax import media
from edvr_jax.data.frames import DatasetError, read_rgb

FRAME_SUFFIXES = media.IMAGE_SUFFIXES
VIDEO_SUFFIXES = media.VIDEO_SUFFIXES


class _Video:
    """Frames of one video file in decoding order; a request for an earlier frame than the
    last one decoded re-opens the file (the builders read in order)."""

    def __init__(self, path: Path):
        self.path = path
        self._container = self._frames = None
        self._next = 0

    def _open(self):
        import av

        self.close()
        try:
            self._container = av.open(str(self.path))
            if not self._container.streams.video:
                raise DatasetError(f"{self.path} has no video stream")
            stream = self._container.streams.video[0]
            stream.thread_type = "AUTO"
            self._frames = self._container.decode(stream)
        except DatasetError:
            self.close()
            raise
        except (av.error.FFmpegError, ValueError, OSError) as e:
            self.close()
            raise DatasetError(f"cannot decode video {self.path}: {e}") from None
        self._next = 0

    def close(self):
        if self._container is not None:
            self._container.close()
        self._container = self._frames = None

    def _decode_next(self):
        """The next frame as a PyAV frame, or None at the end of the video."""
        import av

        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        except (av.error.FFmpegError, ValueError, OSError) as e:
            raise DatasetError(f"cannot decode video {self.path} at frame {self._next}: {e}") from None
        self._next += 1
        return frame

    def probe(self) -> tuple[int, tuple[int, int]]:
        """``(frame count, (H, W))``, decoding the whole video once; mixed sizes are an error."""
        self._open()
        count, size = 0, None
        try:
            while (frame := self._decode_next()) is not None:
                if size is None:
                    size = (frame.height, frame.width)
                elif (frame.height, frame.width) != size:
                    raise DatasetError(f"{self.path}: frame {count} is {frame.width}x{frame.height} but frame 0 "
                                       f"is {size[1]}x{size[0]}; all frames of a clip must share one size")
                count += 1
        finally:
            self.close()
        if not count:
            raise DatasetError(f"{self.path} holds no video frames")
        return count, size

    def frame(self, i: int) -> np.ndarray:
        if self._frames is None or i < self._next:
            self._open()
        while True:
            frame = self._decode_next()
            if frame is None:
                self.close()
                raise DatasetError(f"{self.path} ended after {self._next} frames; frame {i} was expected")
            if self._next - 1 == i:
                return frame.to_ndarray(format="rgb24")


@dataclasses.dataclass
class Frames:
    """The frames of one clip as stored: a folder of frame files (``files``) or a video file."""

    path: Path
    count: int
    size: tuple[int, int]  # (H, W)
    files: tuple[Path, ...] | None = None
    _video: _Video | None = dataclasses.field(default=None, repr=False)

    @property
    def is_video(self) -> bool:
        return self.files is None

    def describe(self, i: int) -> str:
        return f"{self.path} frame {i}" if self.is_video else str(self.files[i])

    def read(self, i: int) -> np.ndarray:
        """uint8 ``[H, W, 3]`` of frame ``i``."""
        if not 0 <= i < self.count:
            raise IndexError(f"{self.path} has {self.count} frames, asked for frame {i}")
        if self.is_video:
            if self._video is None:
                self._video = _Video(self.path)
            img = self._video.frame(i)
            if i == self.count - 1:
                self._video.close()
        else:
            img = read_rgb(self.files[i])
        if img.shape[:2] != self.size:
            raise DatasetError(f"{self.describe(i)} is {img.shape[1]}x{img.shape[0]} but the clip's frames are "
                               f"{self.size[1]}x{self.size[0]}; all frames of a clip must share one size")
        return img


def probe(path: Path, what: str) -> Frames:
    """The ``Frames`` of a frame folder (headers read) or a video (decoded once)."""
    if path.is_dir():
        files = media.list_frames(path, what, DatasetError, FRAME_SUFFIXES)
        size = None
        for f in files:
            try:
                with Image.open(f) as img:
                    mode, (w, h) = img.mode, img.size
            except (UnidentifiedImageError, OSError, SyntaxError) as e:
                raise DatasetError(f"cannot decode {f}: {e}") from None
            if mode != "RGB":
                raise DatasetError(f"{f} is a {mode!r} image; expected 8-bit RGB")
            if size is None:
                size = (h, w)
            elif (h, w) != size:
                raise DatasetError(f"{f} is {w}x{h} but {files[0].name} is {size[1]}x{size[0]}; all frames of a "
                                   f"clip must share one size")
        return Frames(path, len(files), size, tuple(files))
    count, size = _Video(path).probe()
    return Frames(path, count, size)
