"""An offline demo dataset: short clips filmed by a virtual camera moving over real photographs.

The photographs are the RGB sample images that ship inside scikit-image's wheel
(nothing is downloaded). Each clip follows a smooth random camera path with
sub-pixel translation, a slow zoom and a small rotation, and half of the clips
carry a second, independently moving disc cut from another photograph (per-region
motion). GT frames are rendered with bicubic (spline) interpolation from the
photograph; LQ frames are MATLAB-bicubic x4 downsamples of the GT (``sr_x4``) or,
for ``deblur``, the average of sub-frames along the camera path over the exposure
plus Gaussian noise, at full size. Consecutive LQ frames differ by sub-pixel
shifts, so a multi-frame model has real information to gather.

Deterministic: the same seed and version always give the same bytes.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import skimage
from PIL import Image
from scipy import ndimage

from edvr_jax.data.bicubic import downsample_uint8
from edvr_jax.data.builder import Clip, VideoConfig, VideoRestorationBuilder
from edvr_jax.data.layout import with_layouts
from edvr_jax.media import to_uint8

TRAIN_PHOTOS = ("astronaut.png", "chelsea.png", "hubble_deep_field.jpg", "ihc.png", "motorcycle_left.png",
                "retina.jpg")
TEST_PHOTOS = ("coffee.png", "rocket.jpg")
GT_SIZE = (128, 192)
NUM_FRAMES = 10
NUM_CLIPS = {"train": 12, "test": 4}


@dataclasses.dataclass
class DemoConfig(VideoConfig):
    blur: bool = False
    noise_sigma: float = 0.0  # in uint8 units
    seed: int = 0


def photo(name: str) -> np.ndarray:
    """One of scikit-image's bundled RGB photographs as float64 ``[H, W, 3]`` in [0, 255]."""
    path = os.path.join(os.path.dirname(skimage.__file__), "data", name)
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), np.float64)


def _sample(img: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Cubic-spline samples of ``img [H, W, 3]`` at ``coords [2, h, w]`` (reflecting borders)."""
    return np.stack([ndimage.map_coordinates(img[..., c], coords, order=3, mode="mirror")
                     for c in range(3)], axis=-1)


def _grid(h: int, w: int) -> np.ndarray:
    y, x = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
    return np.stack([y, x])


def _affine(grid: np.ndarray, center, angle: float, zoom: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    y, x = grid
    return np.stack([center[0] + zoom * (c * y - s * x), center[1] + zoom * (s * y + c * x)])


@dataclasses.dataclass
class _Path:
    """A smooth camera (or sprite) path: position, angle and zoom as functions of time."""

    start: np.ndarray
    velocity: np.ndarray
    accel: np.ndarray
    spin: float
    zoom_rate: float

    def at(self, t: float):
        return self.start + self.velocity * t + 0.5 * self.accel * t * t, self.spin * t, 1.0 + self.zoom_rate * t


def _random_path(rng: np.random.Generator, start, speed: float) -> _Path:
    return _Path(np.asarray(start, np.float64), rng.uniform(-speed, speed, 2), rng.uniform(-0.15, 0.15, 2),
                 np.deg2rad(rng.uniform(-0.4, 0.4)), rng.uniform(-0.006, 0.006))


def render_clip(rng: np.random.Generator, photos: list[np.ndarray],
                config: DemoConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(GT frames, LQ frames)`` of one clip, uint8 ``[H, W, 3]`` each."""
    h, w = GT_SIZE
    grid = _grid(h, w)
    bg = photos[rng.integers(len(photos))]
    margin = 0.5 * np.hypot(h, w) * 1.1 + 3.0 * NUM_FRAMES
    lo = np.array([margin, margin])
    hi = np.array(bg.shape[:2]) - margin
    camera = _random_path(rng, rng.uniform(lo, np.maximum(hi, lo + 1)), speed=2.5)
    sprite = None
    if rng.random() < 0.5:
        tex = photos[rng.integers(len(photos))]
        radius = rng.uniform(18, 30)
        tex_center = rng.uniform([radius * 2] * 2, np.array(tex.shape[:2]) - radius * 2)
        pos = _random_path(rng, rng.uniform([radius, radius], [h - radius, w - radius]) - [(h - 1) / 2, (w - 1) / 2],
                           speed=3.0)
        sprite = (tex, tex_center, radius, pos)

    def frame(t: float) -> np.ndarray:
        center, angle, zoom = camera.at(t)
        img = _sample(bg, _affine(grid, center, angle, zoom))
        if sprite is not None:
            tex, tex_center, radius, pos = sprite
            p, spin, _ = pos.at(t)
            rel = grid - p[:, None, None]
            alpha = np.clip(radius - np.hypot(rel[0], rel[1]) + 0.5, 0.0, 1.0)[..., None]  # antialiased edge
            img = alpha * _sample(tex, _affine(rel, tex_center, spin, 1.0)) + (1 - alpha) * img
        return img

    gts, lqs = [], []
    for i in range(NUM_FRAMES):
        sharp = frame(float(i))
        gts.append(to_uint8(sharp, scale=1.0))
        # Blur: exposure over 0.8 of the frame interval, centred on the sharp frame.
        lq = np.mean([frame(i + dt) for dt in np.linspace(-0.4, 0.4, 9)], axis=0) if config.blur else sharp
        if config.scale != 1:
            lq = downsample_uint8(to_uint8(lq, scale=1.0), config.scale).astype(np.float64)
        if config.noise_sigma:
            lq = lq + rng.normal(0, config.noise_sigma, lq.shape)
        lqs.append(to_uint8(lq, scale=1.0))
    return gts, lqs


class EdvrDemo(VideoRestorationBuilder):
    """Demo clips rendered from scikit-image's bundled photographs; no manual dir needed.

    ``train``: 12 clips over 6 photographs; ``test``: 4 clips over 2 other photographs.
    Every clip has 10 frames of 128x192 GT (32x48 LQ for ``sr_x4``).
    """

    VERSION = VideoRestorationBuilder.VERSION
    MANUAL_DOWNLOAD_INSTRUCTIONS = None
    BUILDER_CONFIGS = with_layouts([
        DemoConfig(name="sr_x4", scale=4, description="clean MATLAB-bicubic x4 LQ"),
        DemoConfig(name="deblur", scale=1, blur=True, noise_sigma=2.0, description="motion blur + noise, full size"),
    ])

    def _clips(self, _) -> dict[str, list[Clip]]:
        config = self.builder_config
        splits = {}
        for k, (split, names) in enumerate((("train", TRAIN_PHOTOS), ("test", TEST_PHOTOS))):
            photos = [photo(n) for n in names]
            rng = np.random.default_rng([config.seed, k])
            clips = []
            for c in range(NUM_CLIPS[split]):
                gts, lqs = render_clip(rng, photos, config)
                clips.append(Clip(f"{split}{c:02d}", lqs, gts))
            splits[split] = clips
        return splits
