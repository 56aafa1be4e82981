"""The degradations that make LQ frames from GT frames, by name.

``bi``: MATLAB's ``imresize(gt, 1/scale, 'bicubic')`` (antialiased; ``edvr_jax.data.bicubic``),
the "BI" degradation of REDS, Vimeo-90K and Vid4 (BIx4).

``bd``: Gaussian blur, then decimation: the video SR "BD" degradation of DUF (Jo et al.,
CVPR 2018, whose TensorFlow code defines it) as BasicSR ports it in ``duf_downsample``
(``basicsr/data/data_util.py``: "Downsamping with Gaussian kernel used in the DUF official
code"). A 13x13 kernel made by ``scipy.ndimage.gaussian_filter`` of a centred delta with
sigma ``0.4 * scale`` (1.6 for x4; that is the sampled 1-D Gaussian, normalized, truncated
at 6 pixels, along both axes), reflect padding (edge pixel not repeated, torch's
``'reflect'``), and every ``scale``-th pixel kept starting from the first: LQ pixel
``(i, j)`` is the blurred GT at ``(scale * i, scale * j)``. Other "BD"s exist (e.g.
single-image SR's blur followed by bicubic downsampling); this one is behind the video SR
papers' BD tables. Unlike bicubic antialiasing, its blur is too narrow to remove all
aliasing, which is what several frames of a moving scene can resolve. Computed in float64
on the 0-255 scale, rounded to uint8.

``add_noise``: white Gaussian noise of standard deviation ``sigma`` (0-255 scale) on an LQ
frame, rounded and clipped to uint8, the same for the same ``key`` (a clip name and frame
index): a noisy camera's footage, which several frames of a scene can clean where one cannot.
"""

from __future__ import annotations

import hashlib

import numpy as np

from edvr_jax.data.bicubic import downsample_uint8

DEGRADATIONS = ("bi", "bd")
BD_KERNEL_SIZE = 13


def gaussian_taps(size: int = BD_KERNEL_SIZE, sigma: float = 1.6) -> np.ndarray:
    """The normalized 1-D Gaussian of ``size`` taps; ``np.outer`` of it is DUF's 2-D kernel."""
    x = np.arange(size, dtype=np.float64) - size // 2
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


def bd_downsample_uint8(img: np.ndarray, scale: int = 4) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> DUF/BasicSR ``duf_downsample`` (blur sigma ``0.4 * scale``, 13x13,
    then every ``scale``-th pixel), rounded to uint8. H and W must be multiples of ``scale``."""
    if img.shape[0] % scale or img.shape[1] % scale:
        raise ValueError(f"image of {img.shape[0]}x{img.shape[1]} is not divisible by {scale}")
    taps = gaussian_taps(BD_KERNEL_SIZE, 0.4 * scale)
    pad = BD_KERNEL_SIZE // 2
    x = np.pad(img.astype(np.float64), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    h, w = img.shape[:2]
    # Only the kept rows and columns are computed: output row i is centred on input row scale * i.
    rows = sum(t * x[k:k + h:scale] for k, t in enumerate(taps))
    out = sum(t * rows[:, k:k + w:scale] for k, t in enumerate(taps))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def degrade(gt: np.ndarray, degradation: str, scale: int) -> np.ndarray:
    """The LQ frame of a uint8 GT frame ``[H, W, 3]`` under ``degradation`` (``bi`` or ``bd``)."""
    if degradation == "bi":
        return downsample_uint8(gt, scale)
    if degradation == "bd":
        return bd_downsample_uint8(gt, scale)
    raise ValueError(f"unknown degradation {degradation!r}; expected one of {DEGRADATIONS}")


def add_noise(lq: np.ndarray, sigma: float, key: tuple[str, int]) -> np.ndarray:
    """uint8 ``lq`` plus Gaussian noise of std ``sigma`` (0-255 scale), rounded and clipped;
    deterministic in ``key`` = (clip name, frame index), whatever process or order makes it."""
    if sigma < 0:
        raise ValueError(f"noise sigma {sigma} must be >= 0")
    if sigma == 0:
        return lq
    name, frame = key
    seed = int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "little")
    noise = np.random.default_rng([seed, int(frame)]).normal(0.0, sigma, lq.shape)
    return np.clip(np.round(lq.astype(np.float64) + noise), 0, 255).astype(np.uint8)
