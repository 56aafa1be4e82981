"""Image quality metrics with BasicSR's definitions (``basicsr/metrics/psnr_ssim.py``)."""

from __future__ import annotations

import numpy as np


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB image in [0, 255] (BasicSR's ``bgr2ycbcr(y_only=True)``): range [16, 235]."""
    img = np.asarray(img, np.float64) / 255.0
    return img @ np.array([65.481, 128.553, 24.966]) + 16.0


def _prepared(img: np.ndarray, ref: np.ndarray, crop_border: int) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 with ``crop_border`` pixels cropped from each side."""
    img, ref = np.asarray(img, np.float64), np.asarray(ref, np.float64)
    if img.shape != ref.shape:
        raise ValueError(f"image shapes differ: {img.shape} vs {ref.shape}")
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
        ref = ref[crop_border:-crop_border, crop_border:-crop_border]
    return img, ref


def psnr(img: np.ndarray, ref: np.ndarray, crop_border: int = 0, test_y_channel: bool = False) -> float:
    """PSNR in dB between two ``[H, W, 3]`` RGB images with values in [0, 255]."""
    img, ref = _prepared(img, ref, crop_border)
    if test_y_channel:
        img, ref = rgb_to_y(img), rgb_to_y(ref)
    mse = np.mean((img - ref) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0 ** 2 / mse))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-x ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    return np.outer(g, g)


def _ssim_channel(img: np.ndarray, ref: np.ndarray) -> float:
    from scipy.signal import correlate2d

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    win = _gaussian_window()
    filt = lambda a: correlate2d(a, win, mode="valid")  # noqa: E731  (cv2.filter2D then [5:-5, 5:-5])
    mu1, mu2 = filt(img), filt(ref)
    s11, s22, s12 = filt(img * img) - mu1 ** 2, filt(ref * ref) - mu2 ** 2, filt(img * ref) - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s11 + s22 + c2))
    return float(ssim_map.mean())


def ssim(img: np.ndarray, ref: np.ndarray, crop_border: int = 0, test_y_channel: bool = False) -> float:
    """SSIM (BasicSR's ``calculate_ssim``: 11x11 Gaussian window, sigma 1.5, valid region,
    averaged over channels) between two ``[H, W, 3]`` RGB images with values in [0, 255]."""
    img, ref = _prepared(img, ref, crop_border)
    if test_y_channel:
        return _ssim_channel(rgb_to_y(img), rgb_to_y(ref))
    return float(np.mean([_ssim_channel(img[..., c], ref[..., c]) for c in range(img.shape[-1])]))
