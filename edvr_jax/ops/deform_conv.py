"""Modulated deformable convolution (DCNv2) as a vectorized bilinear gather.

Semantics are those of ``torchvision.ops.deform_conv2d`` (which BasicSR's
``DCNv2Pack`` calls), transposed to NHWC:

* ``offset[..., (g * K + k) * 2 + 0]`` is the row (y) displacement and
  ``offset[..., (g * K + k) * 2 + 1]`` the column (x) displacement of kernel tap
  ``k = i * kw + j`` for deformable group ``g``; ``K = kh * kw``.
* ``mask[..., g * K + k]`` multiplies the sample of that tap and group.
* Deformable group ``g`` covers input channels ``[g * C / G, (g + 1) * C / G)``.
* Output pixel ``(oy, ox)``, tap ``(i, j)`` samples the input at
  ``y = oy * stride - padding + i * dilation + dy`` (likewise ``x``). A sample is
  zero when ``y <= -1``, ``y >= H``, ``x <= -1`` or ``x >= W``; otherwise it is
  bilinear with each corner that falls outside the image counted as zero.

How it is computed: the zero-padded input is laid out once as a table whose
row ``(g, y, x)`` holds the four bilinear corners ``(y, x), (y, x+1), (y+1, x),
(y+1, x+1)`` of group ``g`` side by side (``4 * C / G`` values). One row gather
per (pixel, group, tap) then fetches every corner; the corners are weighted,
summed, and the result contracted with the kernel in one matmul. Sample
coordinates and bilinear weights are computed in (at least) float32 whatever
the input dtype, since bf16 cannot even represent pixel positions above 256.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def _output_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def modulated_deform_conv(
    x: jax.Array,
    offset: jax.Array,
    mask: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
) -> jax.Array:
    """DCNv2: ``sum_k w_k * mask_k * x(p + p_k + offset_k)`` (+ bias).

    Args:
      x: input, ``[B, H, W, C]``.
      offset: ``[B, Ho, Wo, G * kh * kw * 2]``, laid out ``(G, kh*kw, (dy, dx))``.
      mask: ``[B, Ho, Wo, G * kh * kw]``, laid out ``(G, kh*kw)``; usually a
        sigmoid output, used as given.
      kernel: ``[kh, kw, C, O]`` (Flax ``Conv`` layout).
      bias: ``[O]`` or None.
      stride, padding, dilation: as ``torch.nn.Conv2d`` (int or (h, w) pair).

    Returns:
      ``[B, Ho, Wo, O]`` in ``x.dtype`` (accumulated in float32 or wider).

    Keep ``offset`` in float32 under bfloat16 compute: bf16 offsets of magnitude
    ``2**n`` are only resolved to ``2**(n-7)`` pixels.

    The number of deformable groups ``G`` is ``mask.shape[-1] // (kh * kw)``.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be [B, H, W, C], got shape {x.shape}")
    if kernel.ndim != 4:
        raise ValueError(f"kernel must be [kh, kw, C, O], got shape {kernel.shape}")
    b, h, w, c = x.shape
    kh, kw, kc, out_ch = kernel.shape
    if kc != c:
        raise ValueError(f"kernel expects {kc} input channels, x has {c} (x {x.shape}, kernel {kernel.shape})")
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    ho, wo = _output_size(h, kh, sh, ph, dh), _output_size(w, kw, sw, pw, dw)
    k = kh * kw
    if mask.ndim != 4 or mask.shape[:3] != (b, ho, wo) or mask.shape[-1] % k:
        raise ValueError(
            f"mask must be [B, Ho, Wo, G*{k}] = [{b}, {ho}, {wo}, G*{k}], got {mask.shape}")
    groups = mask.shape[-1] // k
    if offset.shape != (b, ho, wo, groups * k * 2):
        raise ValueError(
            f"offset must be [B, Ho, Wo, G*{k}*2] = {(b, ho, wo, groups * k * 2)}, got {offset.shape}")
    if c % groups:
        raise ValueError(f"{c} input channels do not split into {groups} deformable groups")
    if bias is not None and bias.shape != (out_ch,):
        raise ValueError(f"bias must be [{out_ch}], got {bias.shape}")
    cg = c // groups
    # Coordinates, weights and accumulation in at least float32 (float64 stays float64).
    coord_t = jnp.promote_types(offset.dtype, jnp.float32)
    acc_t = jnp.promote_types(x.dtype, jnp.float32)

    # Sample positions: [B, Ho, Wo, G, K].
    off = offset.astype(coord_t).reshape(b, ho, wo, groups, k, 2)
    tap_i, tap_j = jnp.divmod(jnp.arange(k), kw)
    base_y = (jnp.arange(ho) * sh - ph)[:, None] + tap_i * dh  # [Ho, K]
    base_x = (jnp.arange(wo) * sw - pw)[:, None] + tap_j * dw  # [Wo, K]
    py = base_y[None, :, None, None, :] + off[..., 0]
    px = base_x[None, None, :, None, :] + off[..., 1]

    inside = (py > -1) & (py < h) & (px > -1) & (px < w)
    y0f = jnp.floor(py)
    x0f = jnp.floor(px)
    ly = py - y0f
    lx = px - x0f
    # Inside the image y0 is in [-1, H-1]; clipping only moves samples that are
    # zeroed anyway onto a valid row of the table.
    y0 = jnp.clip(y0f, -1, h - 1).astype(jnp.int32)
    x0 = jnp.clip(x0f, -1, w - 1).astype(jnp.int32)
    m = mask.astype(coord_t).reshape(b, ho, wo, groups, k) * inside
    hy, hx = 1.0 - ly, 1.0 - lx
    corner_w = jnp.stack([hy * hx, hy * lx, ly * hx, ly * lx], axis=-1) * m[..., None]  # [B,Ho,Wo,G,K,4]

    # Corner table over the zero-padded input: row (b, g, y+1, x+1) holds the
    # 2x2 neighbourhood whose top-left is (y, x), for y in [-1, H-1].
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    corners = jnp.stack(
        [xp[:, :-1, :-1], xp[:, :-1, 1:], xp[:, 1:, :-1], xp[:, 1:, 1:]], axis=3)  # [B, H+1, W+1, 4, C]
    corners = corners.reshape(b, h + 1, w + 1, 4, groups, cg)
    table = jnp.transpose(corners, (0, 4, 1, 2, 3, 5)).reshape(b * groups * (h + 1) * (w + 1), 4 * cg)

    rows_per_group = (h + 1) * (w + 1)
    row = (y0 + 1) * (w + 1) + (x0 + 1)  # [B, Ho, Wo, G, K]
    row = row + (jnp.arange(b)[:, None, None, None, None] * groups
                 + jnp.arange(groups)[None, None, None, :, None]) * rows_per_group
    sampled = jnp.take(table, row.reshape(-1), axis=0, mode="clip")  # [(B Ho Wo G K), 4*Cg]
    sampled = sampled.reshape(b, ho, wo, groups, k, 4, cg)

    cols = jnp.einsum("bhwgkq,bhwgkqc->bhwgkc", corner_w.astype(x.dtype), sampled,
                      preferred_element_type=acc_t).astype(x.dtype)
    # kernel [kh, kw, C, O] -> [K, G, Cg, O] to match cols' (g, k, c) layout.
    wmat = kernel.astype(x.dtype).reshape(k, groups, cg, out_ch)
    out = jnp.einsum("bhwgkc,kgco->bhwo", cols, wmat, preferred_element_type=acc_t)
    if bias is not None:
        out = out + bias.astype(acc_t)
    return out.astype(x.dtype)
