"""Restoring whole clips: one EDVR window per output frame, batched and jitted."""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from edvr_jax.models.edvr import EDVR, TwoStageEDVR
from edvr_jax.temporal import window_table


def restore_clip(model: EDVR, variables: Any, clip: np.ndarray, padding: str = "reflection_circle",
                 batch_size: int = 1, apply_fn: Callable | None = None) -> np.ndarray:
    """Restores every frame of ``clip`` (``[N, H, W, C]`` float in [0, 1]).

    Frame ``i`` is restored from ``frame_indices(i, N, model.num_frame, padding)``
    (``'reflection_circle'`` is BasicSR's choice for SR, ``'replicate'`` for deblurring).
    Returns ``[N, sH, sW, 3]`` float32, ``s = model.scale``. H and W must already be
    multiples of ``model.size_multiple``. The last batch is padded, so one
    compilation serves the whole clip.
    """
    clip = np.asarray(clip, np.float32)
    if clip.ndim != 4:
        raise ValueError(f"clip must be [N, H, W, C], got shape {clip.shape}")
    model.check_input((1, model.num_frame, *clip.shape[1:]))
    table = window_table(len(clip), model.num_frame, padding)
    apply_fn = apply_fn or jax.jit(model.apply)
    out = []
    for start in range(0, len(table), batch_size):
        rows = table[start:start + batch_size]
        n = len(rows)
        if n < batch_size:
            rows = np.concatenate([rows, np.repeat(rows[-1:], batch_size - n, axis=0)])
        out.append(np.asarray(apply_fn(variables, clip[rows]))[:n])
    return np.concatenate(out)


def restore_clip_two_stage(model: TwoStageEDVR, variables: Any, clip: np.ndarray,
                           padding: str = "reflection_circle", stage2_padding: str | None = None,
                           batch_size: int = 1) -> np.ndarray:
    """Two-stage restoration of a whole clip: stage 1 restores every frame once,
    its outputs are clipped to [0, 1], then stage 2 restores every frame from them.

    Equals ``model.apply`` on each frame's ``T1 + T2 - 1`` window wherever no
    temporal padding is involved, at ``1 / T2`` of its stage-1 cost.
    """
    s1, s2 = model.stages()
    params = variables["params"]
    stage1 = restore_clip(s1, {"params": params["stage1"]}, clip, padding, batch_size)
    stage1 = np.clip(stage1, 0.0, 1.0)
    return restore_clip(s2, {"params": params["stage2"]}, stage1, stage2_padding or padding, batch_size)
