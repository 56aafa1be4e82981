"""The GPU formulation of the gather DCN: whole batch, one 2x2-window gather and scatter per sample.

Runs on CUDA and ROCm (and any backend other than CPU and TPU) for ``impl="auto"`` and ``"gather"``, except
the bf16 inference forward on CUDA, which the Pallas kernel computes (``pallas.py``). Arranged for HBM
traffic: each sample's four corners come from one gather of a 2x2 window of ``[B, H+2, W+2, G, C/G]``
(image and group as batching dimensions), and the input gradient goes back through one scatter-add of the
same windows; the forward keeps its im2col columns for the kernel gradient (XLA writes them for the matmul
anyway); matmuls run in the compute dtype with float32 accumulation; the offset and mask gradients come from
four corner sums per sample (``sampling.offset_mask_grads``). Figures: benchmarks/README.md, docs/dcn.md.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from edvr_jax.ops.dcn.sampling import Geometry, offset_mask_grads, rounded_corner_weights, sample_positions

# The padded image as [B, H+2, W+2, G, C/G]; a sample's window is (1, 2, 2, 1, C/G) at (b, y0, x0, g), the
# image and the group being batching dimensions shared with the window indices [B, Ho, Wo, G, K, 2].
_WINDOW_GATHER = jax.lax.GatherDimensionNumbers(
    offset_dims=(5, 6, 7), collapsed_slice_dims=(), start_index_map=(1, 2),
    operand_batching_dims=(0, 3), start_indices_batching_dims=(0, 3))
_WINDOW_SCATTER = jax.lax.ScatterDimensionNumbers(
    update_window_dims=(5, 6, 7), inserted_window_dims=(), scatter_dims_to_operand_dims=(1, 2),
    operand_batching_dims=(0, 3), scatter_indices_batching_dims=(0, 3))


def window_coords(geo: Geometry, off: jax.Array, msk: jax.Array):
    """Every sample's 2x2 window in the zero-padded image and its bilinear terms (whole batch).

    ``off``: ``[B, Ho, Wo, G, K, 2]``, ``msk``: ``[B, Ho, Wo, G, K]`` (float32+). Returns ``(corner, ly, lx,
    inside, mi)``: ``corner [B, Ho, Wo, G, K, 2]`` int32, the (row, column) of the window's top-left pixel in
    the image padded by one pixel on each side; the others ``[B, Ho, Wo, G, K]``.
    """
    rows = (np.arange if isinstance(geo.ho, int) else jnp.arange)(geo.ho)
    y0, x0, ly, lx, inside, mi = sample_positions(geo, rows, off, msk)
    return jnp.stack([y0 + 1, x0 + 1], axis=-1), ly, lx, inside, mi


def _windows(x: jax.Array, corner: jax.Array, groups: int) -> jax.Array:
    """``[B, Ho, Wo, G, K, 2, 2, C/G]``: each sample's four corners, one 2x2 window gather."""
    b, h, w, c = x.shape
    xg = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(b, h + 2, w + 2, groups, c // groups)
    return jax.lax.gather(xg, corner, _WINDOW_GATHER, slice_sizes=(1, 2, 2, 1, c // groups),
                          mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def deform_conv(x, off, msk, wmat, geo: Geometry):
    """``x [B, H, W, C]``, ``off [B, Ho, Wo, G, K, 2]``, ``msk [B, Ho, Wo, G, K]`` (float32+), ``wmat
    [G * K * C/G, O]`` -> ``[B, Ho, Wo, O]`` accumulated in float32+ (no bias)."""
    return _fwd(x, off, msk, wmat, geo)[0]


def _fwd(x, off, msk, wmat, geo):
    acc_t = jnp.promote_types(x.dtype, jnp.float32)
    corner, ly, lx, _, mi = window_coords(geo, off, msk)
    win = _windows(x, corner, geo.groups)
    wts = rounded_corner_weights(ly, lx, mi, x.dtype)
    cols = sum(wq[..., None] * win[..., q // 2, q % 2, :] for q, wq in enumerate(wts))
    cols = cols.reshape(-1, wmat.shape[0])
    out = jnp.dot(cols, wmat, preferred_element_type=acc_t)
    return out.reshape(*off.shape[:3], wmat.shape[1]), (x, off, msk, wmat, cols)


def _bwd(geo, res, g_out):
    x, off, msk, wmat, cols = res
    b, h, w, c = x.shape
    acc_t = jnp.promote_types(x.dtype, jnp.float32)
    # Matmuls in the compute dtype with float32 accumulation (a bf16 DCN's output gradient is bf16-valued).
    g = g_out.reshape(-1, g_out.shape[-1]).astype(x.dtype)
    g_wmat = jax.lax.dot_general(cols, g, (((0,), (0,)), ((), ())), preferred_element_type=acc_t)
    corner, ly, lx, inside, mi = window_coords(geo, off, msk)
    g_cols = jnp.dot(g, wmat.T, preferred_element_type=acc_t).astype(x.dtype)
    g_cols = g_cols.reshape(corner.shape[:-1] + (geo.cg,)).astype(acc_t)
    win = _windows(x, corner, geo.groups).astype(acc_t)
    corners = [win[..., 0, 0, :], win[..., 0, 1, :], win[..., 1, 0, :], win[..., 1, 1, :]]
    g_py, g_px, g_msk = offset_mask_grads([jnp.sum(g_cols * v, axis=-1) for v in corners], ly, lx, inside, mi)
    # Input: one scatter-add of each sample's 2x2 window of weighted column gradients.
    w00, w01, w10, w11 = (wq.astype(acc_t) for wq in rounded_corner_weights(ly, lx, mi, x.dtype))
    wts = jnp.stack([jnp.stack([w00, w01], axis=-1), jnp.stack([w10, w11], axis=-1)], axis=-2)
    updates = wts[..., None] * g_cols[..., None, None, :]
    g_xg = jax.lax.scatter_add(jnp.zeros((b, h + 2, w + 2, geo.groups, geo.cg), acc_t), corner, updates,
                               _WINDOW_SCATTER, mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)
    g_x = g_xg.reshape(b, h + 2, w + 2, c)[:, 1:-1, 1:-1].astype(x.dtype)
    g_off = jnp.stack([g_py, g_px], axis=-1).astype(off.dtype)
    return g_x, g_off, g_msk.astype(msk.dtype), g_wmat.astype(wmat.dtype)


deform_conv.defvjp(_fwd, _bwd)
