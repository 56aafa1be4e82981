"""The DCN's sampling maths, shared by every formulation: geometry, border rules, bilinear weights and the
closed-form gradients of a sample with respect to its position and mask.

A sample at ``(y, x)`` is zero when ``y <= -1``, ``y >= H``, ``x <= -1`` or ``x >= W``; otherwise it is
bilinear in its four corners ``(y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)``, each corner outside
the image counting as zero (torchvision's ``deform_conv2d``). Every formulation reads its corners from the
input zero-padded by one pixel, so that ``y0, x0`` in ``[-1, H-1] x [-1, W-1]`` are always valid rows.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Geometry(NamedTuple):
    """The static shape of one DCN call (hashable: a static argument of the custom VJPs and kernels).

    ``b, h, w, c``: the input; ``ho, wo, o``: the output; ``groups``: deformable groups; ``kh, kw``: the
    kernel; ``stride``, ``padding``, ``dilation``: ``(h, w)`` pairs. ``b``, ``ho`` and ``wo`` may be
    symbolic (``jax.export`` shape polymorphism).
    """

    b: int
    h: int
    w: int
    c: int
    ho: int
    wo: int
    o: int
    groups: int
    kh: int
    kw: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @property
    def k(self) -> int:
        """Kernel taps, ``kh * kw``."""
        return self.kh * self.kw

    @property
    def cg(self) -> int:
        """Input channels per deformable group."""
        return self.c // self.groups


def bilinear_terms(py, px, h: int, w: int):
    """The border rule: ``(y0, x0, ly, lx, inside)`` of samples at ``(py, px)`` (float32+ arrays).

    ``y0, x0``: the top-left corner (int32, clipped to ``[-1, H-1] x [-1, W-1]``: clipping only moves
    samples that are zero anyway), ``ly, lx``: the fractions, ``inside``: whether the sample is non-zero.
    Used by the gather formulations and, inside the kernels, by the Pallas path.
    """
    inside = (py > -1) & (py < h) & (px > -1) & (px < w)
    y0f, x0f = jnp.floor(py), jnp.floor(px)
    y0 = jnp.clip(y0f, -1, h - 1).astype(jnp.int32)
    x0 = jnp.clip(x0f, -1, w - 1).astype(jnp.int32)
    return y0, x0, py - y0f, px - x0f, inside


def sample_positions(geo: Geometry, rows, off: jax.Array, msk: jax.Array):
    """Top-left corners and bilinear terms of the samples of output rows ``rows``.

    ``off``: ``[..., R, Wo, G, K, 2]`` (``dy, dx``), ``msk``: ``[..., R, Wo, G, K]`` (float32+); ``rows``: the
    R output row indices (NumPy for constants, jnp for traced or symbolic ones). Returns ``(y0, x0, ly, lx,
    inside, mi)`` as ``bilinear_terms``, plus the mask zeroed outside the image.
    """
    (sh, sw), (ph, pw), (dh, dw) = geo.stride, geo.padding, geo.dilation
    # Static (NumPy) tap positions: XLA sees constants, not per-element div/mod.
    tap_i, tap_j = np.divmod(np.arange(geo.k), geo.kw)
    arange = np.arange if isinstance(geo.wo, int) else jnp.arange  # jnp for symbolic (jax.export) widths
    base_x = ((arange(geo.wo) * sw - pw)[:, None] + tap_j * dw).astype(np.float32)  # [Wo, K]
    base_y = (rows * sh - ph)[:, None].astype(off.dtype) + (tap_i * dh).astype(np.float32)  # [R, K]
    py, px = base_y[:, None, None, :] + off[..., 0], base_x[None, :, None, :] + off[..., 1]
    y0, x0, ly, lx, inside = bilinear_terms(py, px, geo.h, geo.w)
    return y0, x0, ly, lx, inside, msk * inside


def corner_weights(ly, lx, mi):
    """The four corners' weights, mask included, in the order (0,0), (0,1), (1,0), (1,1)."""
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * mi, hy * lx * mi, ly * hx * mi, ly * lx * mi)


def rounded_corner_weights(ly, lx, mi, dtype) -> list[jax.Array]:
    """``corner_weights`` rounded to ``dtype``: the forward's columns and the backward's input-gradient
    scatter use the same rounded weights (the exact gradient of the function computed)."""
    return [wq.astype(dtype) for wq in corner_weights(ly, lx, mi)]


def corner_shifts(w: int, groups: int) -> tuple[int, int, int, int]:
    """Row offsets from a top-left corner to the (0,0), (0,1), (1,0), (1,1) corners in a table of the
    padded image with one row per (pixel, group), pixels in row-major order."""
    return (0, groups, (w + 2) * groups, (w + 3) * groups)


def offset_mask_grads(sums, ly, lx, inside, mi):
    """Gradients with respect to a sample's y, x and mask from the corner sums ``S_q = <g_cols, v_q>``
    (q = 00, 01, 10, 11, summed over the group's channels): ``d cols / d y = m * ((1 - lx) * (v10 - v00) +
    lx * (v11 - v01))`` etc."""
    s00, s01, s10, s11 = sums
    hy, hx = 1.0 - ly, 1.0 - lx
    g_py = mi * (hx * (s10 - s00) + lx * (s11 - s01))
    g_px = mi * (hy * (s01 - s00) + ly * (s11 - s10))
    g_msk = inside * (hy * (hx * s00 + lx * s01) + ly * (hx * s10 + lx * s11))
    return g_py, g_px, g_msk
