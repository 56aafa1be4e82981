"""Restoring clips of any length and size: ``edvr_jax.load(path)`` -> ``Restorer``.

A clip is restored frame by frame from sliding temporal windows (BasicSR's padding
modes at the ends), read as a stream: a frame is dropped once no window needs it, so
memory does not depend on the clip's length. Frames are padded to the model's size multiple and cropped back;
large frames are cut into overlapping spatial tiles whose outputs are blended with
linear ramps across the overlaps, so memory is bounded by the tile, not the frame.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from typing import Any, Callable, Iterable, Iterator

import jax
import numpy as np

from edvr_jax.media import to_uint8
from edvr_jax.models.dcn import warn_offsets
from edvr_jax.models.edvr import EDVR, TwoStageEDVR
from edvr_jax.temporal import stream_windows


def _pad_to(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[H, W, C]`` padded at the bottom/right to ``height x width`` by reflection (edge
    repetition where the frame is too small to reflect)."""
    h, w, _ = frame.shape
    ph, pw = height - h, width - w
    if ph == 0 and pw == 0:
        return frame
    mode = "reflect" if ph < h and pw < w else "edge"
    return np.pad(frame, ((0, ph), (0, pw), (0, 0)), mode=mode)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


#: LQ pixels shared by neighbouring tiles. Measured with the demo model on real footage
#: (``tools/tile_seams.py``): 32 keeps tiled output within one grey level of whole-frame output
#: where 16 left up to 3 levels at the seams.
TILE_OVERLAP = 32


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Origins of tiles of ``tile`` covering ``[0, size)`` with at least ``overlap`` shared."""
    if tile >= size:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step)) + [size - tile]
    return sorted(set(starts))


def _ramp(length: int, starts: list[int], index: int, overlap: int, scale: int) -> np.ndarray:
    """Blend weight along one axis of output tile ``index``: rising over the overlap with the
    previous tile, falling over the overlap with the next, 1 elsewhere and at frame borders."""
    w = np.ones(length, np.float32)
    ramp_len = max(overlap * scale, 1)
    pos = np.arange(length, dtype=np.float32) + 0.5
    if index > 0:
        w = np.minimum(w, pos / ramp_len)
    if index < len(starts) - 1:
        w = np.minimum(w, (length - pos) / ramp_len)
    return np.clip(w, 1e-3, 1.0)


@functools.lru_cache(maxsize=16)
def jitted_apply(model: EDVR) -> Callable:
    """``jax.jit`` of ``model.apply(params, x)`` keeping the sown intermediates, one per model
    configuration: restorers of equal models (checkpoints of one architecture) share its traces
    and compiled programs instead of tracing and compiling the model again."""
    return jax.jit(lambda p, x: model.apply({"params": p}, x, mutable=["intermediates"]))


@dataclasses.dataclass
class StageRunner:
    """One EDVR applied to every frame of a float clip, tiled when asked.

    ``apply_fn(params, x)`` replaces the default ``jax.jit(model.apply)``, e.g. to run
    on a device mesh; it gets numpy float32 ``[batch_size, T, h, w, 3]``.
    """

    model: EDVR
    params: Any
    batch_size: int = 1
    tile: int | None = None  # LQ tile side (rounded up to the size multiple); None = whole frames
    tile_overlap: int = TILE_OVERLAP  # LQ pixels
    apply_fn: Callable | None = None

    def __post_init__(self):
        if self.apply_fn is None:
            jitted = jitted_apply(self.model)

            def apply(params, x):
                out, state = jitted(params, x)
                warn_offsets(state)  # BasicSR's offset blow-up warning, from 4 returned scalars
                return out

            self.apply_fn = apply

    def _run(self, windows: np.ndarray) -> np.ndarray:
        """The model on up to ``batch_size`` windows; a short batch is padded so one compilation serves all."""
        n = len(windows)
        if n < self.batch_size:
            windows = np.concatenate([windows, np.repeat(windows[-1:], self.batch_size - n, axis=0)])
        return np.asarray(self.apply_fn(self.params, windows))[:n]

    def stream(self, frames: Iterable[np.ndarray], padding: str) -> Iterator[np.ndarray]:
        """float32 ``[sH, sW, 3]`` for every frame of a stream of float32 ``[H, W, 3]`` frames, in
        order, each as soon as its window has been read (``temporal.stream_windows``): the frames
        held do not depend on the clip's length."""
        model, s, m = self.model, self.model.scale, self.model.size_multiple
        source = iter(frames)
        first = next(source, None)
        if first is None:
            return
        h, w, _ = first.shape
        ph, pw = _round_up(h, m), _round_up(w, m)
        # Tiled or not, the same padding: only tile seams differ.
        padded = (_pad_to(f, ph, pw) for f in itertools.chain([first], source))
        if self.tile is None:
            for windows in stream_windows(padded, model.num_frame, padding, self.batch_size):
                for frame in self._run(np.stack(windows)):
                    yield frame[:h * s, :w * s]
            return
        tile = _round_up(self.tile, m)
        th, tw = min(tile, ph), min(tile, pw)
        overlap = min(self.tile_overlap, tile // 2)
        ys, xs = tile_starts(ph, th, overlap), tile_starts(pw, tw, overlap)
        boxes = [(iy, ix) for iy in range(len(ys)) for ix in range(len(xs))]
        weights = {(iy, ix): _ramp(th * s, ys, iy, overlap, s)[:, None] * _ramp(tw * s, xs, ix, overlap, s)[None, :]
                   for iy, ix in boxes}
        for (window,) in stream_windows(padded, model.num_frame, padding):
            window = np.stack(window)
            canvas = np.zeros((ph * s, pw * s, 3), np.float32)
            total = np.zeros((ph * s, pw * s, 1), np.float32)
            for b in range(0, len(boxes), self.batch_size):
                chunk = boxes[b:b + self.batch_size]
                tiles = np.stack([window[:, ys[iy]:ys[iy] + th, xs[ix]:xs[ix] + tw] for iy, ix in chunk])
                for (iy, ix), out in zip(chunk, self._run(tiles)):
                    wgt = weights[iy, ix][..., None]
                    y0, x0 = ys[iy] * s, xs[ix] * s
                    canvas[y0:y0 + th * s, x0:x0 + tw * s] += out * wgt
                    total[y0:y0 + th * s, x0:x0 + tw * s] += wgt
            canvas /= total  # in place: the canvas is the largest buffer here
            yield canvas[:h * s, :w * s]

    def frames(self, clip: Iterable[np.ndarray], padding: str) -> Iterator[tuple[int, np.ndarray]]:
        """``(index, float32 [sH, sW, 3])`` for every frame of ``clip`` (float32 ``[N, H, W, 3]``,
        or any iterable of ``[H, W, 3]`` frames)."""
        return enumerate(self.stream(clip, padding))


class Restorer:
    """A loaded EDVR (one- or two-stage) that restores clips of any length and frame size.

    ``restorer.stream(frames)``: any iterable of ``[H, W, 3]`` uint8 (or float in [0, 1]) frames ->
    an iterator of the restored ``[sH, sW, 3]`` frames in the same dtype kind, each as soon as
    its temporal window has been read; memory does not depend on the clip's length.
    ``restorer(clip)``: ``[N, H, W, 3]`` -> ``[N, sH, sW, 3]``, the same frames stacked.
    ``tile`` bounds memory on large frames.
    """

    def __init__(self, model: EDVR | TwoStageEDVR, params: Any, padding: str | None = None,
                 batch_size: int = 1, tile: int | None = None, tile_overlap: int = TILE_OVERLAP):
        self.model, self.params = model, params
        hr = model.hr_in if isinstance(model, EDVR) else True
        self.padding = padding or ("replicate" if hr else "reflection_circle")  # BasicSR's choice per task
        self.batch_size, self.tile, self.tile_overlap = batch_size, tile, tile_overlap
        if isinstance(model, TwoStageEDVR):
            s1, s2 = model.stages()
            self._stages = [StageRunner(s1, params["stage1"], batch_size, tile, tile_overlap),
                            StageRunner(s2, params["stage2"], batch_size, tile, tile_overlap)]
        else:
            self._stages = [StageRunner(model, params, batch_size, tile, tile_overlap)]

    @property
    def num_frame(self) -> int:
        return self.model.num_frame

    @property
    def scale(self) -> int:
        return self._stages[0].model.scale * (self._stages[1].model.scale if len(self._stages) > 1 else 1)

    def _checked(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """The frames as float32 (uint8 / 255), each checked against the first; an error before
        the first output if the clip is shorter than the model's window."""
        if isinstance(frames, np.ndarray) and (frames.ndim != 4 or frames.shape[-1] != 3):
            raise ValueError(f"expected a clip [N, H, W, 3], got shape {frames.shape}")
        need, head, first = self._stages[0].model.num_frame, [], None
        for i, frame in enumerate(frames):
            frame = np.asarray(frame)
            if first is None:
                if frame.ndim != 3 or frame.shape[-1] != 3:
                    raise ValueError(f"expected frames [H, W, 3], got frame 0 of shape {frame.shape}")
                first = frame
            elif frame.shape != first.shape or frame.dtype != first.dtype:
                raise ValueError(f"frame {i} is {frame.dtype} {frame.shape} but frame 0 is {first.dtype} "
                                 f"{first.shape}; all frames of a clip must share one size and dtype")
            x = frame.astype(np.float32)
            if frame.dtype == np.uint8:
                x /= 255.0
            if len(head) < need:  # held until the window is known to fit
                head.append(x)
                if len(head) == need:
                    yield from head
                continue
            yield x
        if len(head) < need:
            raise ValueError(f"a clip of {len(head)} frames is shorter than the model's {need}-frame window")

    def _float_stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        x = self._checked(frames)
        for stage in self._stages[:-1]:
            x = (np.clip(out, 0, 1) for out in stage.stream(x, self.padding))
        return self._stages[-1].stream(x, self.padding)

    def frames(self, clip: Iterable[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
        """``(index, float32 [sH, sW, 3])`` as each output frame is ready, for a clip
        ``[N, H, W, 3]`` or any iterable of ``[H, W, 3]`` frames (uint8, or float in [0, 1])."""
        return enumerate(self._float_stream(clip))

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """The restored frames of ``frames`` (an iterable of ``[H, W, 3]``, read as needed), in
        order: uint8 for uint8 input (rounded as BasicSR's ``tensor2img``), float32 otherwise."""
        source = iter(frames)
        first = next(source, None)
        to_u8 = first is not None and np.asarray(first).dtype == np.uint8
        for out in self._float_stream(source if first is None else itertools.chain([first], source)):
            yield to_uint8(out) if to_u8 else out

    def __call__(self, clip: np.ndarray) -> np.ndarray:
        """``[N, H, W, 3]`` -> ``[N, sH, sW, 3]``: ``stream`` over the clip's frames, stacked."""
        clip = np.asarray(clip)
        if clip.ndim != 4 or clip.shape[-1] != 3:
            raise ValueError(f"expected a clip [N, H, W, 3], got shape {clip.shape}")
        return np.stack(list(self.stream(clip)))


def load(path: str | os.PathLike, **options) -> Restorer:
    """A ``Restorer`` for the weights at ``path``, any kind ``edvr_jax.weights.load_model`` reads
    (a train.py run, an edvr-jax weights directory, a BasicSR .pth/.safetensors); ``options`` go
    to ``Restorer`` (padding, batch_size, tile, tile_overlap)."""
    from edvr_jax import weights

    model, params = weights.load_model(path)
    return Restorer(model, params, **options)
