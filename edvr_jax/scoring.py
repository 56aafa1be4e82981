"""BasicSR's test protocol: every frame of every clip, PSNR/SSIM per frame, averaged per clip
and then over clips, with the bicubic (SR) or input (deblur) baseline beside it."""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Iterable, Iterator

import numpy as np

from edvr_jax.data.bicubic import imresize
from edvr_jax.data.pipeline import EvalClip
from edvr_jax.media import to_uint8
from edvr_jax.metrics import psnr, ssim

METRICS = ("psnr", "ssim", "psnr_y", "ssim_y")


def baseline(lq_center: np.ndarray, scale: int) -> np.ndarray:
    """The reference a restoration must beat: MATLAB-bicubic x``scale`` of the centre LQ frame
    (uint8 ``[h, w, 3]``), or the frame itself when ``scale`` is 1 (deblurring)."""
    if scale == 1:
        return lq_center
    return to_uint8(imresize(lq_center.astype(np.float64) / 255.0, scale))


def frame_metrics(out: np.ndarray, gt: np.ndarray, crop_border: int = 0) -> dict[str, float]:
    """PSNR/SSIM on RGB and on BT.601 Y of two uint8 ``[H, W, 3]`` frames."""
    return {"psnr": psnr(out, gt, crop_border), "ssim": ssim(out, gt, crop_border),
            "psnr_y": psnr(out, gt, crop_border, True), "ssim_y": ssim(out, gt, crop_border, True)}


@dataclasses.dataclass
class ClipResult:
    name: str
    frames: list[dict[str, float]]  # per frame: METRICS and base_<metric>

    def mean(self) -> dict[str, float]:
        return {k: float(np.mean([f[k] for f in self.frames])) for k in self.frames[0]}


def evaluate(restore: Callable[[Iterator[np.ndarray]], Iterable[tuple[int, np.ndarray]]], clips: Iterable[EvalClip],
             scale: int, crop_border: int = 0,
             on_frame: Callable[[EvalClip, int, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
             baseline_cache: dict | None = None) -> list[ClipResult]:
    """Metrics of every frame of every clip, model and baseline (``base_*``).

    Each clip is read once, a frame at a time (``EvalClip.pairs``): ``restore(lq frames)`` gets
    an iterator of its uint8 LQ frames and yields ``(frame index, float [H, W, 3] output in
    [0, 1])`` for every frame in order (e.g. ``Restorer.frames``); a frame's LQ and GT are held
    only until its output arrives. Outputs are rounded to uint8 as BasicSR's ``tensor2img``, and
    ``on_frame(clip, f, out, lq, gt)`` gets them so. ``baseline_cache``: a dict kept across calls
    on the same clips (periodic validation) so the baseline metrics are computed once."""
    results = []
    for clip in clips:
        pending = collections.deque()  # (lq, gt) of the frames read and not yet restored

        def lq_frames(clip=clip, pending=pending):
            for lq, gt in clip.pairs():
                pending.append((lq, gt))
                yield lq

        frames = []
        for f, out in restore(lq_frames()):
            if f != len(frames) or not pending:
                raise ValueError(f"clip {clip.name}: restore gave frame {f} where frame {len(frames)} was next")
            lq, gt = pending.popleft()
            out = to_uint8(out)
            if out.shape != gt.shape:
                raise ValueError(f"clip {clip.name} frame {f}: output {out.shape} but GT {gt.shape}")
            row = frame_metrics(out, gt, crop_border)
            key = (clip.name, f)
            base = None if baseline_cache is None else baseline_cache.get(key)
            if base is None:
                base = frame_metrics(baseline(lq, scale), gt, crop_border)
                if baseline_cache is not None:
                    baseline_cache[key] = base
            row.update({f"base_{k}": v for k, v in base.items()})
            frames.append(row)
            if on_frame is not None:
                on_frame(clip, f, out, lq, gt)
        if len(frames) != clip.count:
            raise ValueError(f"clip {clip.name}: {len(frames)} frames restored, {clip.count} expected")
        results.append(ClipResult(clip.name, frames))
    return results


def summarize(results: list[ClipResult]) -> dict[str, float]:
    """Average per clip, then over clips (BasicSR's protocol)."""
    means = [r.mean() for r in results]
    return {k: float(np.mean([m[k] for m in means])) for k in means[0]}
