"""Resizing ops that equal their PyTorch counterparts bit for bit in layout.

``upsample_bilinear`` equals ``F.interpolate(x, scale_factor=s, mode='bilinear',
align_corners=False)`` for integer ``s``, borders included: PyTorch samples the
source at ``(d + 0.5) / s - 0.5``, clamps negative positions to 0 and the upper
neighbour to ``n - 1``; that is the same as linear interpolation over an
edge-replicated input, which is what is done here with fixed weights.
"""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp


def _upsample_axis(x: jax.Array, scale: int, axis: int) -> jax.Array:
    n = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 1)
    xp = jnp.pad(x, pad, mode="edge")
    prev = jax.lax.slice_in_dim(xp, 0, n, axis=axis)
    cur = jax.lax.slice_in_dim(xp, 1, n + 1, axis=axis)
    nxt = jax.lax.slice_in_dim(xp, 2, n + 2, axis=axis)
    phases = []
    for r in range(scale):
        f = (r + 0.5) / scale - 0.5  # fractional source offset of output phase r
        if f < 0:
            phases.append((-f) * prev + (1.0 + f) * cur)
        else:
            phases.append((1.0 - f) * cur + f * nxt)
    out = jnp.stack(phases, axis=axis + 1)
    shape = list(x.shape)
    shape[axis] = n * scale
    return out.reshape(shape).astype(x.dtype)


def upsample_bilinear(x: jax.Array, scale: int) -> jax.Array:
    """Bilinear upsampling by an integer factor, ``[B, H, W, C] -> [B, sH, sW, C]``.

    Equals PyTorch's ``F.interpolate(mode='bilinear', align_corners=False)``.
    """
    if x.ndim != 4:
        raise ValueError(f"upsample_bilinear expects [B, H, W, C], got shape {x.shape}")
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    return _upsample_axis(_upsample_axis(x, int(scale), 1), int(scale), 2)


def pixel_shuffle(x: jax.Array, scale: int) -> jax.Array:
    """``torch.nn.PixelShuffle`` in NHWC: ``[B, H, W, C*s*s] -> [B, sH, sW, C]``.

    Input channel ``c * s * s + i * s + j`` becomes output pixel ``(s*h + i, s*w + j)``
    of channel ``c``, as in PyTorch, so converted weights keep their meaning.
    """
    if x.shape[-1] % (scale * scale):
        raise ValueError(f"pixel_shuffle({scale}) needs channels divisible by {scale * scale}, got {x.shape}")
    return einops.rearrange(x, "b h w (c i j) -> b (h i) (w j) c", i=scale, j=scale)
