"""Temporal windows over a clip with BasicSR's boundary padding modes."""

from __future__ import annotations

import numpy as np

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
