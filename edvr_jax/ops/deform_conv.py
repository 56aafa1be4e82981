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

How it is computed: the zero-padded input is laid out once as a group-major
table with one row of ``C / G`` channels per (batch, group, pixel). Four row
gathers per (pixel, group, tap) fetch the bilinear corners; they are weighted
and summed elementwise (one fused loop, the only large intermediate being the
``[B, Ho, Wo, G, K, C/G]`` columns) and contracted with the kernel in one matmul.
Out-of-image corners land in the zero border of the table. Sample
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


def _corner_terms(h: int, w: int, py: jax.Array, px: jax.Array, m: jax.Array):
    """Top-left table rows and bilinear terms of each sample; all [B, Ho, Wo, G, K].

    Returns ``(top_left, ly, lx, inside, mi)`` with ``mi`` the mask zeroed outside the image.
    Row ``top_left`` of the ``(H + 2) x (W + 2)`` padded image of each (batch,
    group) is the sample's top-left corner; the other corners are at ``+1``,
    ``+(W + 2)`` and ``+(W + 3)``.
    """
    b, _, _, groups, _ = py.shape
    inside = (py > -1) & (py < h) & (px > -1) & (px < w)
    y0f, x0f = jnp.floor(py), jnp.floor(px)
    # Inside the image y0 is in [-1, H-1]; clipping only moves samples that are
    # zeroed anyway onto valid rows.
    y0 = jnp.clip(y0f, -1, h - 1).astype(jnp.int32)
    x0 = jnp.clip(x0f, -1, w - 1).astype(jnp.int32)
    plane = jnp.arange(b)[:, None, None, None, None] * groups + jnp.arange(groups)[None, None, None, :, None]
    top_left = (y0 + 1) * (w + 2) + (x0 + 1) + plane * ((h + 2) * (w + 2))
    return top_left, py - y0f, px - x0f, inside, m * inside


def _padded_table(x: jax.Array, groups: int) -> jax.Array:
    """``[B, H, W, C]`` -> ``[B * G * (H + 2) * (W + 2), C / G]``: zero-padded, group-major rows."""
    b, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return jnp.transpose(xp.reshape(b, h + 2, w + 2, groups, c // groups), (0, 3, 1, 2, 4)).reshape(-1, c // groups)


@jax.custom_vjp
def bilinear_columns(x: jax.Array, py: jax.Array, px: jax.Array, m: jax.Array) -> jax.Array:
    """Masked bilinear samples of ``x`` (``[B, H, W, C]``) at ``(py, px)``, per deformable group.

    ``py, px, m``: ``[B, Ho, Wo, G, K]`` sample rows, columns and mask (float32+).
    Returns ``[B, Ho, Wo, G, K, C / G]`` in ``x.dtype``: ``m * x_g(py, px)`` with
    torchvision's border rules. The backward pass is written out: one packed
    scatter-add for ``x``, closed forms for ``py``, ``px`` and ``m``.
    """
    b, h, w, c = x.shape
    groups = py.shape[3]
    cg = c // groups
    table = _padded_table(x, groups)
    top_left, ly, lx, _, mi = _corner_terms(h, w, py, px, m)
    hy, hx = 1.0 - ly, 1.0 - lx
    wp = w + 2

    def corner(shift: int, weight: jax.Array) -> jax.Array:
        values = table.at[(top_left + shift).reshape(-1)].get(mode="promise_in_bounds")
        return weight.astype(x.dtype)[..., None] * values.reshape(*py.shape, cg)

    # Four row gathers, weighted and summed elementwise: XLA fuses them into one
    # loop that writes only the columns.
    return (corner(0, hy * hx * mi) + corner(1, hy * lx * mi)
            + corner(wp, ly * hx * mi) + corner(wp + 1, ly * lx * mi))


def _bilinear_columns_fwd(x, py, px, m):
    return bilinear_columns(x, py, px, m), (x, py, px, m)


def _bilinear_columns_bwd(res, g_cols):
    x, py, px, m = res
    b, h, w, c = x.shape
    groups = py.shape[3]
    cg = c // groups
    wp = w + 2
    top_left, ly, lx, inside, mi = _corner_terms(h, w, py, px, m)
    hy, hx = 1.0 - ly, 1.0 - lx
    g_cols = g_cols.astype(jnp.promote_types(x.dtype, jnp.float32))

    # d/d(corner weight q) = <g_cols, corner value q> over the group's channels.
    table = _padded_table(x, groups)
    packed = jnp.stack([table.at[(top_left + s).reshape(-1)].get(mode="promise_in_bounds")
                        for s in (0, 1, wp, wp + 1)], axis=1).reshape(*py.shape, 4, cg)
    g_w = jnp.einsum("...qc,...c->...q", packed.astype(g_cols.dtype), g_cols)
    g00, g01, g10, g11 = (g_w[..., q] for q in range(4))
    g_py = (mi * (hx * (g10 - g00) + lx * (g11 - g01))).astype(py.dtype)
    g_px = (mi * (hy * (g01 - g00) + ly * (g11 - g10))).astype(px.dtype)
    g_m = (inside * (hy * hx * g00 + hy * lx * g01 + ly * hx * g10 + ly * lx * g11)).astype(m.dtype)

    # d/dx: one scatter-add of 4 * Cg-wide rows indexed by the top-left corner
    # (a table over top-left positions), then the four shifted corner planes summed.
    weights = jnp.stack([hy * hx, hy * lx, ly * hx, ly * lx], axis=-1) * mi[..., None]
    contrib = (weights[..., None] * g_cols[..., None, :]).reshape(-1, 4 * cg)
    g_packed = jnp.zeros((b * groups * (h + 2) * wp, 4 * cg), g_cols.dtype).at[top_left.reshape(-1)].add(contrib)
    g_packed = g_packed.reshape(b, groups, h + 2, wp, 4, cg)
    # Corner q of top-left (ty, tx) is padded pixel (ty + dy, tx + dx); top-left rows
    # never exceed H (resp. W), so shifting by one stays inside the padded grid.
    shift = lambda a, dy, dx: jnp.pad(a[:, :, :h + 2 - dy, :wp - dx], ((0, 0), (0, 0), (dy, 0), (dx, 0), (0, 0)))  # noqa: E731
    g_xp = (g_packed[..., 0, :] + shift(g_packed[..., 1, :], 0, 1)
            + shift(g_packed[..., 2, :], 1, 0) + shift(g_packed[..., 3, :], 1, 1))
    g_x = jnp.transpose(g_xp[:, :, 1:-1, 1:-1], (0, 2, 3, 1, 4)).reshape(b, h, w, c).astype(x.dtype)
    return g_x, g_py, g_px, g_m


bilinear_columns.defvjp(_bilinear_columns_fwd, _bilinear_columns_bwd)


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
    m = mask.astype(coord_t).reshape(b, ho, wo, groups, k)
    cols = bilinear_columns(x, py, px, m)
    # One matmul over (g, k, c); the kernel is reordered to match, not the columns.
    wmat = jnp.transpose(kernel.astype(x.dtype).reshape(k, groups, cg, out_ch), (1, 0, 2, 3))
    out = jnp.dot(cols.reshape(b * ho * wo, groups * k * cg), wmat.reshape(groups * k * cg, out_ch),
                  preferred_element_type=acc_t).reshape(b, ho, wo, out_ch)
    if bias is not None:
        out = out + bias.astype(acc_t)
    return out.astype(x.dtype)
