"""Temporal windows over a clip with BasicSR's boundary padding modes, over a whole clip
(``window_table``) or a stream of frames of unknown length (``stream_windows``)."""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

import numpy as np

T = TypeVar("T")

PADDING_MODES = ("replicate", "reflection", "reflection_circle", "circle")


def frame_indices(center: int, num_total: int, num_frame: int, padding: str) -> list[int]:
    """Indices of the ``num_frame`` frames centred on ``center`` in a clip of ``num_total`` frames.

    Out-of-range neighbours follow BasicSR's ``generate_frame_indices``:
    ``replicate`` repeats the end frame, ``reflection`` mirrors about it,
    ``reflection_circle`` continues from the far side of the window, ``circle``
    wraps by the window length. E.g. ``frame_indices(0, 100, 5, 'reflection_circle')``
    is ``[4, 3, 0, 1, 2]``.
    """
    if num_frame % 2 != 1:
        raise ValueError(f"num_frame must be odd, got {num_frame}")
    if padding not in PADDING_MODES:
        raise ValueError(f"unknown padding {padding!r}; expected one of {PADDING_MODES}")
    if not 0 <= center < num_total:
        raise ValueError(f"centre frame {center} is outside a clip of {num_total} frames")
    last = num_total - 1
    half = num_frame // 2
    out = []
    for i in range(center - half, center + half + 1):
        if i < 0:
            idx = {"replicate": 0, "reflection": -i, "reflection_circle": center + half - i,
                   "circle": num_frame + i}[padding]
        elif i > last:
            idx = {"replicate": last, "reflection": 2 * last - i,
                   "reflection_circle": (center - half) - (i - last), "circle": i - num_frame}[padding]
        else:
            idx = i
        if not 0 <= idx <= last:
            raise ValueError(f"a clip of {num_total} frames is too short for a {num_frame}-frame window "
                             f"with {padding!r} padding (frame {center} needs index {idx})")
        out.append(idx)
    return out


def window_table(num_total: int, num_frame: int, padding: str) -> np.ndarray:
    """``[num_total, num_frame]`` int array: row ``i`` is ``frame_indices(i, ...)``."""
    return np.array([frame_indices(i, num_total, num_frame, padding) for i in range(num_total)], np.int64)


def stream_windows(frames: Iterable[T], num_frame: int, padding: str, group: int = 1) -> Iterator[list[list[T]]]:
    """The rows of ``window_table`` over a stream of frames, as lists of the frames themselves,
    ``group`` consecutive centres at a time (the last group may be shorter).

    Every padding mode takes a window's frames from within ``num_frame - 1`` of its centre, and
    the clip's length matters only to centres within ``num_frame // 2`` of its end. So a group is
    cut once the frames up to ``num_frame - 1`` past its last centre are read (or the stream has
    ended), and frames more than ``num_frame - 1`` before the next centre are dropped: at most
    ``2 * (num_frame - 1) + group`` frames are held, whatever the clip's length.
    """
    reach = num_frame - 1
    held: dict[int, T] = {}
    source = iter(frames)
    read, total = 0, None  # frames read so far; the clip's length once the stream has ended
    center = 0
    while True:
        while total is None and read < center + group + reach:
            try:
                held[read] = next(source)
            except StopIteration:
                total = read
                break
            read += 1
        # Before the end is read, ``read`` frames stand for the clip: every centre of this group
        # lies at least ``reach`` frames before the last one read, so its window is the same.
        known = read if total is None else total
        if center >= known:
            return
        centers = range(center, min(center + group, known))
        yield [[held[i] for i in frame_indices(c, known, num_frame, padding)] for c in centers]
        center = centers[-1] + 1
        for i in [i for i in held if i < center - reach]:
            del held[i]
