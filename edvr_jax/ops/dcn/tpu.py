"""The TPU formulation of the gather DCN: every large array ends in the output pixels.

Runs on TPU for ``impl="auto"`` and ``"gather"``. TPU stores arrays in tiles of their two minor dimensions,
(8, 128) elements, and the GPU formulation's arrays end in (taps, channels of a group) = (9, 8): padded
14-64x. Here the image is a table ``[B, G, C/G, P]`` (pixels last), each corner a gather of a group's
``C/G`` channels at one position of its last axis, and the columns ``[B, G, K, C/G, Ho*Wo]``; the maths is
the GPU formulation's. Figures (deviceless v4/v5e compiles; TPU time unmeasured): docs/dcn.md.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from edvr_jax.ops.dcn.gpu import window_coords
from edvr_jax.ops.dcn.sampling import Geometry, corner_shifts, offset_mask_grads, rounded_corner_weights

#: The table's pixel axis is zero-padded to at least this many entries: below it XLA TPU lowers the corner
#: gathers as row gathers of ``[N, C/G]`` arrays padded 16x by the tiles (EDVR's 32x32 and 16x16 levels).
#: The padding is never indexed.
MIN_TABLE_PIXELS = 2048

_GATHER = jax.lax.GatherDimensionNumbers(
    offset_dims=(3,), collapsed_slice_dims=(3,), start_index_map=(3,),
    operand_batching_dims=(0, 1), start_indices_batching_dims=(0, 1))
_SCATTER = jax.lax.ScatterDimensionNumbers(
    update_window_dims=(3,), inserted_window_dims=(3,), scatter_dims_to_operand_dims=(3,),
    operand_batching_dims=(0, 1), scatter_indices_batching_dims=(0, 1))


def _table_pixels(h: int, w: int) -> int:
    if not (isinstance(h, int) and isinstance(w, int)):  # symbolic (jax.export) sizes: no comparison, no padding
        return (h + 2) * (w + 2)
    return max((h + 2) * (w + 2), MIN_TABLE_PIXELS)


def _table(x: jax.Array, groups: int) -> jax.Array:
    """``[B, G, C/G, P]``: the zero-padded image, pixels last, ``P = _table_pixels(H, W)``."""
    b, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(b, (h + 2) * (w + 2), groups, c // groups)
    xp = jnp.pad(xp, ((0, 0), (0, _table_pixels(h, w) - (h + 2) * (w + 2)), (0, 0), (0, 0)))
    return jnp.transpose(xp, (0, 2, 3, 1))


def _terms(geo: Geometry, off, msk):
    """``(top_left, ly, lx, inside, mi)``, each ``[B, G, K, Ho*Wo]``; ``top_left`` indexes ``_table``'s last
    axis."""
    corner, ly, lx, inside, mi = window_coords(geo, off, msk)
    top_left = corner[..., 0] * (geo.w + 2) + corner[..., 1]
    b = off.shape[0]
    pixels_last = lambda a: jnp.transpose(a.reshape(b, -1, geo.groups, geo.k), (0, 2, 3, 1))  # noqa: E731
    return tuple(map(pixels_last, (top_left, ly, lx, inside, mi)))


def _corners(table, top_left, w):
    """The four corners of every sample, each ``[B, G, K, C/G, Ho*Wo]``."""
    slice_sizes = (1, 1, table.shape[2], 1)
    return [jax.lax.gather(table, (top_left + s)[..., None], _GATHER, slice_sizes,
                           mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS) for s in corner_shifts(w, 1)]


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def deform_conv(x, off, msk, wmat, geo: Geometry):
    """As ``gpu.deform_conv``, in TPU-dense layouts."""
    return _fwd(x, off, msk, wmat, geo)[0]


def _fwd(x, off, msk, wmat, geo):
    acc_t = jnp.promote_types(x.dtype, jnp.float32)
    b = x.shape[0]
    top_left, ly, lx, _, mi = _terms(geo, off, msk)
    corners = _corners(_table(x, geo.groups), top_left, geo.w)
    cols = sum(wq[..., None, :] * v for wq, v in zip(rounded_corner_weights(ly, lx, mi, x.dtype), corners))
    cols = cols.reshape(b, wmat.shape[0], -1)  # [B, G*K*C/G, Ho*Wo]
    out = jnp.einsum("bjm,jo->bmo", cols, wmat, preferred_element_type=acc_t)
    return out.reshape(*off.shape[:3], wmat.shape[1]), (x, off, msk, wmat, cols)


def _bwd(geo, res, g_out):
    x, off, msk, wmat, cols = res
    b, h, w, c = x.shape
    acc_t = jnp.promote_types(x.dtype, jnp.float32)
    g = g_out.reshape(b, -1, g_out.shape[-1]).astype(x.dtype)  # [B, Ho*Wo, O]
    g_wmat = jnp.einsum("bjm,bmo->jo", cols, g, preferred_element_type=acc_t)
    top_left, ly, lx, inside, mi = _terms(geo, off, msk)
    g_cols = jnp.einsum("bmo,jo->bjm", g, wmat, preferred_element_type=acc_t).astype(x.dtype)
    g_cols = g_cols.reshape(*top_left.shape[:3], geo.cg, -1).astype(acc_t)  # [B, G, K, C/G, Ho*Wo]
    corners = [v.astype(acc_t) for v in _corners(_table(x, geo.groups), top_left, w)]
    g_py, g_px, g_msk = offset_mask_grads([jnp.sum(g_cols * v, axis=-2) for v in corners], ly, lx, inside, mi)
    # Padded like the table: unpadded, the 16x16 level's scatters become row scatters too.
    g_table = jnp.zeros((b, geo.groups, geo.cg, _table_pixels(h, w)), acc_t)
    for wq, s in zip(rounded_corner_weights(ly, lx, mi, x.dtype), corner_shifts(w, 1)):
        g_table = jax.lax.scatter_add(g_table, (top_left + s)[..., None], wq.astype(acc_t)[..., None, :] * g_cols,
                                      _SCATTER, mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)
    g_table = g_table[..., :(h + 2) * (w + 2)]
    g_x = jnp.transpose(g_table, (0, 3, 1, 2)).reshape(b, h + 2, w + 2, c)[:, 1:-1, 1:-1].astype(x.dtype)
    back = lambda a: jnp.transpose(a, (0, 3, 1, 2)).reshape(msk.shape)  # noqa: E731  [B, G, K, M] -> [B, Ho, Wo, G, K]
    g_off = jnp.stack([back(g_py), back(g_px)], axis=-1).astype(off.dtype)
    return g_x, g_off, back(g_msk).astype(msk.dtype), g_wmat.astype(wmat.dtype)


deform_conv.defvjp(_fwd, _bwd)
