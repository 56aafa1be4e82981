"""The CPU formulation of the gather DCN: per image, output rows in chunks, columns kept in cache.

Runs on CPU (``impl="auto"`` or ``"gather"``), and on any backend when ``DCNOptions.chunk_rows`` asks for
row chunks (to bound memory). Per image (``vmap``), a ``lax.scan`` over chunks of output rows: the
zero-padded NHWC input, reshaped, is a table with one row of ``C / G`` channels per (pixel, group); four
row gathers per sample fetch the bilinear corners, weighted and summed in one fused loop into the chunk's
im2col columns ``[.., G, K, C/G]``, which one matmul contracts with the kernel. The custom VJP is chunked
the same way: it recomputes each chunk's corners instead of storing the columns, forms the offset and mask
gradients in closed form and scatter-adds each corner's weighted column gradient into the table's rows.
Why each choice (XLA CPU's scalar gathers, loop boundaries, small minor axes): docs/dcn.md.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from edvr_jax.ops.dcn.sampling import Geometry, corner_shifts, corner_weights, sample_positions

#: Rows per chunk on CPU: at least two, and at least this many column values (2 MiB in float32).
CHUNK_VALUES = 1 << 19


def default_chunk(geo: Geometry) -> int:
    """Output rows per scan step on CPU: two or more, about ``CHUNK_VALUES`` column values or more."""
    return min(max(2, CHUNK_VALUES // (geo.b * geo.wo * geo.k * geo.c)), geo.ho)


def deform_conv(x, off, msk, wmat, geo: Geometry, chunk: int, halving_sums: bool) -> jax.Array:
    """``x [B, H, W, C]``, ``off [B, Ho, Wo, G, K, 2]``, ``msk [B, Ho, Wo, G, K]`` (float32+), ``wmat
    [G * K * C/G, O]`` -> ``[B, Ho, Wo, O]`` accumulated in float32+ (no bias).

    ``chunk``: output rows per scan step (``geo.ho``: no loop). ``halving_sums``: channel sums as halving
    adds (XLA CPU's reduction over a minor axis of 8 is ~4x slower); ``jnp.sum`` otherwise.
    """
    return jax.vmap(_image, in_axes=(0, 0, 0, None, None, None, None))(x, off, msk, wmat, geo, chunk,
                                                                       halving_sums)


def _table(x: jax.Array, groups: int) -> jax.Array:
    """``[H, W, C]`` -> ``[(H + 2) * (W + 2) * G, C / G]``: the zero-padded image, one row per (pixel, group).

    A reshape of the padded NHWC array, not a transpose: the gathers read rows straight from it (a
    group-major transpose is folded by XLA into the gather as per-element index arithmetic: 1.7x slower).
    """
    return jnp.pad(x, ((1, 1), (1, 1), (0, 0))).reshape(-1, x.shape[-1] // groups)


def _sample_terms(geo: Geometry, row0, off: jax.Array, msk: jax.Array):
    """``(top_left, ly, lx, inside, mi)``, each ``[R, Wo, G, K]``, of the samples of output rows ``row0 ...``
    of one image (``off [R, Wo, G, K, 2]``); ``top_left`` is a row of ``_table``."""
    y0, x0, ly, lx, inside, mi = sample_positions(geo, row0 + jnp.arange(off.shape[0]), off, msk)
    top_left = ((y0 + 1) * (geo.w + 2) + (x0 + 1)) * geo.groups + jnp.arange(geo.groups)[:, None]
    return top_left, ly, lx, inside, mi


def _corners(table: jax.Array, top_left: jax.Array, geo: Geometry) -> list[jax.Array]:
    """The four corner rows of every sample: each ``top_left.shape + [C / G]``."""
    return [table.at[(top_left + s).reshape(-1)].get(mode="promise_in_bounds").reshape(*top_left.shape, -1)
            for s in corner_shifts(geo.w, geo.groups)]


def _columns(corners, weights, dtype) -> jax.Array:
    # Weighted and summed elementwise: XLA fuses the gathers and this into one loop that writes only the
    # columns, the per-sample index and weight arithmetic hoisted out of the (unrolled) channel loop.
    return sum(wq.astype(dtype)[..., None] * v for wq, v in zip(weights, corners))


def _sum_minor(a: jax.Array) -> jax.Array:
    """Sum over the last (small) axis by halving adds."""
    while a.shape[-1] > 1:
        n = a.shape[-1]
        half = a[..., :n // 2] + a[..., n // 2:2 * (n // 2)]
        a = jnp.concatenate([half, a[..., 2 * (n // 2):]], axis=-1) if n % 2 else half
    return a[..., 0]


def _offset_mask_grads(g_cols, corners, ly, lx, inside, mi, halving_sums: bool):
    """Gradients with respect to the sample's y, x and mask as ``<g_cols, d cols / d(py, px, m)>``, one
    fused channel sum each (on CPU faster than ``sampling.offset_mask_grads``' four corner sums first)."""
    channel_sum = _sum_minor if halving_sums else partial(jnp.sum, axis=-1)
    v00, v01, v10, v11 = corners
    hy, hx, ly_, lx_ = ((1.0 - ly)[..., None], (1.0 - lx)[..., None], ly[..., None], lx[..., None])
    g_py = mi * channel_sum(g_cols * (hx * (v10 - v00) + lx_ * (v11 - v01)))
    g_px = mi * channel_sum(g_cols * (hy * (v01 - v00) + ly_ * (v11 - v10)))
    g_msk = inside * channel_sum(g_cols * (hy * (hx * v00 + lx_ * v01) + ly_ * (hx * v10 + lx_ * v11)))
    return g_py, g_px, g_msk


def _chunks(a: jax.Array, chunk: int) -> jax.Array:
    """``[Ho, ...]`` -> ``[Ho' / chunk, chunk, ...]``, zero-padding the rows up to a multiple of ``chunk``."""
    pad = -a.shape[0] % chunk
    a = jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1))
    return a.reshape(a.shape[0] // chunk, chunk, *a.shape[1:])


def _pipelined_scan(step, geo: Geometry, chunk: int, off, msk, carry, xs=None):
    """Runs ``step(carry, terms, x) -> (carry, y)`` over the row chunks, ``terms`` being the chunk's
    ``_sample_terms`` and ``x`` its chunk of ``xs`` (``[Ho, ...]`` or None); returns the final carry and
    the ``y`` stacked over chunks.

    Step ``i`` computes the terms of chunk ``i + 1`` and hands them on in the loop carry: the loop boundary
    keeps XLA from fusing the floor/clip/weight arithmetic into every consumer, where loops over the flat
    columns would redo it for every channel of every sample. One chunk runs without a loop.
    """
    if chunk == geo.ho:
        carry, y = step(carry, _sample_terms(geo, 0, off, msk), xs)
        return carry, jax.tree.map(lambda a: a[None], y)
    off_chunks, msk_chunks = _chunks(off, chunk), _chunks(msk, chunk)
    n = off_chunks.shape[0]
    terms_of = lambda i: _sample_terms(geo, i * chunk, off_chunks[i], msk_chunks[i])  # noqa: E731

    def body(state, inputs):
        carry, terms = state
        i, x = inputs
        carry, y = step(carry, terms, x)
        return (carry, terms_of(jnp.minimum(i + 1, n - 1))), y

    xs = None if xs is None else _chunks(xs, chunk)
    (carry, _), ys = jax.lax.scan(body, (carry, terms_of(0)), (jnp.arange(n), xs))
    return carry, ys


@partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _image(x, off, msk, wmat, geo: Geometry, chunk: int, halving_sums: bool):
    """One image: ``x [H, W, C]``, ``off [Ho, Wo, G, K, 2]``, ``msk [Ho, Wo, G, K]`` -> ``[Ho, Wo, O]``."""
    return _image_fwd(x, off, msk, wmat, geo, chunk, halving_sums)[0]


def _image_fwd(x, off, msk, wmat, geo, chunk, halving_sums):
    table = _table(x, geo.groups)
    acc_t = jnp.promote_types(x.dtype, jnp.float32)

    def step(carry, terms, _):
        top_left, ly, lx, _, mi = terms
        cols = _columns(_corners(table, top_left, geo), corner_weights(ly, lx, mi), x.dtype)
        return carry, jnp.dot(cols.reshape(-1, wmat.shape[0]), wmat, preferred_element_type=acc_t)

    _, out = _pipelined_scan(step, geo, chunk, off, msk, None)
    out = out.reshape(-1, geo.wo, wmat.shape[1])[:geo.ho]
    return out, (x, off, msk, wmat)


def _image_bwd(geo, chunk, halving_sums, res, g_out):
    x, off, msk, wmat = res
    h, w, c = x.shape
    groups, cg = geo.groups, geo.cg
    acc_t = jnp.promote_types(x.dtype, jnp.float32)
    table = _table(x, groups)
    g_out = g_out.astype(acc_t)
    wmat_t = wmat.astype(acc_t).T

    def step(carry, terms, g_c):
        g_rows, g_wmat = carry
        top_left, ly, lx, inside, mi = terms
        corners = _corners(table, top_left, geo)
        g_c = g_c.reshape(-1, g_c.shape[-1])
        # Kernel: columns (recomputed, never stored) against the output gradient.
        cols = _columns(corners, corner_weights(ly, lx, mi), x.dtype).reshape(g_c.shape[0], -1).astype(acc_t)
        g_wmat = g_wmat + jax.lax.dot_general(cols, g_c, (((0,), (0,)), ((), ())), preferred_element_type=acc_t)
        g_cols = jnp.dot(g_c, wmat_t).reshape(top_left.shape + (cg,))
        g_py, g_px, g_msk = _offset_mask_grads(g_cols, [v.astype(acc_t) for v in corners], ly, lx, inside, mi,
                                               halving_sums)
        # Input: each corner's weighted column gradient scatter-added into its table row.
        for wq, s in zip(corner_weights(ly, lx, mi), corner_shifts(geo.w, groups)):
            g_rows = g_rows.at[(top_left + s).reshape(-1)].add((wq[..., None] * g_cols).reshape(-1, cg),
                                                                mode="promise_in_bounds")
        return (g_rows, g_wmat), (g_py, g_px, g_msk)

    init = (jnp.zeros(((h + 2) * (w + 2) * groups, cg), acc_t), jnp.zeros(wmat.shape, acc_t))
    (g_rows, g_wmat), (g_py, g_px, g_msk) = _pipelined_scan(step, geo, chunk, off, msk, init, g_out)
    g_off = jnp.stack([g_py, g_px], axis=-1)
    g_x = g_rows.reshape(h + 2, w + 2, c)[1:-1, 1:-1].astype(x.dtype)
    g_off = g_off.reshape(-1, *off.shape[1:])[:geo.ho].astype(off.dtype)
    g_msk = g_msk.reshape(-1, *msk.shape[1:])[:geo.ho].astype(msk.dtype)
    return g_x, g_off, g_msk, g_wmat.astype(wmat.dtype)


_image.defvjp(_image_fwd, _image_bwd)
