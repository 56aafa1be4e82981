"""MATLAB-compatible ``imresize(img, scale, 'bicubic')`` (antialiased), as BasicSR and the
EDVR datasets use it to make LR frames ("BIx4").

Cubic kernel a = -0.5; when downscaling the kernel is widened by ``1 / scale``
(antialiasing); borders are MATLAB's symmetric padding (the edge pixel repeated).
"""

from __future__ import annotations

import math

import numpy as np

from edvr_jax.media import to_uint8


def _cubic(x: np.ndarray) -> np.ndarray:
    a = np.abs(x)
    a2, a3 = a * a, a * a * a
    return ((1.5 * a3 - 2.5 * a2 + 1) * (a <= 1)
            + (-0.5 * a3 + 2.5 * a2 - 4 * a + 2) * ((a > 1) & (a <= 2)))


def _weights(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``(weights [out, taps], 0-based source indices [out, taps])`` for one axis."""
    width = 4.0
    if scale < 1:
        width /= scale
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # 1-based source coordinate of each output pixel
    left = np.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + np.arange(taps)[None, :]
    dist = u[:, None] - idx
    w = scale * _cubic(dist * scale) if scale < 1 else _cubic(dist)
    w /= w.sum(axis=1, keepdims=True)
    # MATLAB mirrors out-of-range taps: 0 -> 1, -1 -> 2, n + 1 -> n, ...
    idx = np.where(idx < 1, 1 - idx, idx)
    idx = np.where(idx > in_len, 2 * in_len + 1 - idx, idx)
    return w, idx.astype(np.int64) - 1


def imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """``[H, W, C]`` (or ``[H, W]``) float image -> ``[ceil(H * scale), ceil(W * scale), C]`` float64.

    Rows first, then columns, as MATLAB (and BasicSR's ``imresize``) do.
    """
    img = np.asarray(img, np.float64)
    squeeze = img.ndim == 2
    if squeeze:
        img = img[..., None]
    h, w = img.shape[:2]
    out_h, out_w = math.ceil(h * scale), math.ceil(w * scale)
    wh, ih = _weights(h, out_h, scale)
    out = np.einsum("ot,otwc->owc", wh, img[ih])
    ww, iw = _weights(w, out_w, scale)
    out = np.einsum("pt,optc->opc", ww, out[:, iw])
    return out[..., 0] if squeeze else out


def _matrix(in_len: int, scale: float) -> np.ndarray:
    """The resize of one axis as a dense ``[out, in]`` matrix (mirrored taps summed)."""
    w, idx = _weights(in_len, math.ceil(in_len * scale), scale)
    m = np.zeros((w.shape[0], in_len))
    np.add.at(m, (np.arange(w.shape[0])[:, None], idx), w)
    return m


def resize_uint8(img: np.ndarray, scale: float) -> np.ndarray:
    """``imresize`` of a uint8 ``[H, W, 3]`` frame, rounded to uint8, as two float32 matrix
    products: fast on large frames (footage GT resized before its LQ is made), equal to
    ``imresize`` up to float32 rounding."""
    h, w, c = img.shape
    rows = _matrix(h, scale).astype(np.float32) @ img.reshape(h, w * c).astype(np.float32)
    out = np.einsum("ow,hwc->hoc", _matrix(w, scale).astype(np.float32), rows.reshape(-1, w, c), optimize=True)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def downsample_uint8(img: np.ndarray, factor: int = 4) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> its MATLAB-bicubic ``1 / factor`` version, rounded to uint8."""
    if img.shape[0] % factor or img.shape[1] % factor:
        raise ValueError(f"image of {img.shape[0]}x{img.shape[1]} is not divisible by {factor}")
    out = imresize(img.astype(np.float64) / 255.0, 1.0 / factor)
    return to_uint8(out)
