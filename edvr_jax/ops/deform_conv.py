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

How it is computed, per image: the zero-padded NHWC input, reshaped, is a table
with one row of ``C / G`` channels per (pixel, group). Four row gathers per
(output pixel, group, tap) fetch the bilinear corners; they are weighted and
summed elementwise in one fused loop into im2col columns ``[.., G, K, C/G]``, which
one matmul contracts with the kernel. Out-of-image corners land in the zero
border of the table. Sample coordinates and bilinear weights are computed in (at
least) float32 whatever the input dtype, since bf16 cannot even represent pixel
positions above 256.

The images are handled by ``vmap`` (batched gathers and scatters, which the SPMD
partitioner keeps on the devices holding each image), and each image's output
rows in chunks by a ``lax.scan``: on CPU, where memory bandwidth is the limit
(7 GB/s on the 2-core machine of benchmarks/README.md), a chunk's columns (a few
MB) stay in cache between the sampling loop and the matmul, and the full
``[B, Ho, Wo, G*K*C/G]`` columns (133 MB per image for EDVR's 64 channels at
180x320) are never materialised. The backward pass is written out (custom VJP,
chunked the same way): it recomputes each chunk's corners instead of storing the
columns, forms the offset and mask gradients in closed form, and scatter-adds
each corner's weighted column gradient into the input's table rows.

On GPUs (``_deform_conv_accel``, whole batch, no chunks; also any other
non-CPU, non-TPU backend; TPU has its own layout, below) the same maths is
arranged for HBM traffic instead of cache: each sample's four corners come from
one gather of a 2x2 window of ``[B, H+2, W+2, G, C/G]`` (image and group as
batching dimensions), and the input gradient goes back through one scatter-add
of the same windows; the forward keeps its columns (XLA writes them to HBM for
the matmul anyway) for the kernel gradient instead of recomputing them; the
matmuls run in the compute dtype with float32 accumulation, so a bf16 DCN's
column gradients are bf16 (half the bytes of the largest array of the
backward); the offset and mask gradients come from the four corner sums
``S_q = <g_cols, v_q>`` per sample and tap (four light reductions instead of
one fused expression per gradient that compiled to 110 registers per thread);
the input-gradient scatter reuses the forward's (dtype-rounded) corner weights,
the exact gradient of the columns computed. Deviceless compilation for an H100
(``tools/accel_aot.py``, bytes of every kernel's operands and results) puts the
EDVR-M bf16 training step at batch 32 at 19.8 ms of HBM traffic against 27.3 ms
for the CPU formulation run as one chunk (the DCN's gathers and scatters 3.6 vs
10.8 ms). Measured on an H200 (jax 0.11.2, ``benchmarks/gather_ab.py``, the two
interleaved in one process): 57.5 / 57.7 ms -> 44.8 / 45.5 ms per step (1.28x);
the fused offset-gradient form (``EDVR_JAX_DCN_OFFSET_GRAD=direct``), lighter in
bytes, ran 54.8-55.3 ms against 44.3-44.7 for the corner sums. The DCN alone,
forward+backward, 16x64x64x64 bf16: 1.04 ms, 5.8x a plain conv (before: 1.73 ms
on an H100; 2.15 ms in f32 on an H200, ``shared/reference/gpu-h200.md``).

Two implementations behind ``modulated_deform_conv``, with equal results (tests:
values and all gradients, f32 and bf16):

* **gather** (this module): the reference formulation, and the path on CPU, TPU
  and ROCm. Described below.
* **pallas** (``deform_conv_pallas.py``): Pallas Triton kernels for CUDA GPUs, an
  implicit GEMM that samples each tile's bilinear corners on chip and contracts
  them with the kernel per tap, never writing the im2col columns to HBM; the
  backward recomputes the samples per tap and writes offset/mask gradients once,
  kernel gradients as per-program partials, input gradients by atomic adds (relaxed
  since 2026-11-27's sixth session: the figures below ran Pallas' default
  acquire-release atomics, a GPU-wide memory barrier around every add; unmeasured since).

``impl="auto"`` (default) picks per *lowering* platform with
``lax.platform_dependent``: CUDA -> the Pallas forward kernel for a bfloat16 (or
float16) DCN that is not differentiated, when the shapes suit the kernels
(``deform_conv_pallas.supports``); the gather for everything else, including both
passes of a differentiated DCN (a custom VJP whose primal is the kernel and whose
forward and backward rules are the gather's); CPU -> gather tuned for CPU;
anything else -> gather with the accelerator settings (one chunk, ``jnp.sum``).
So ``jax.export(..., platforms=("cuda",))`` of a bf16 inference holds the kernel
and ``platforms=("tpu",)`` the gather, from any machine. (One platform per export:
a multi-platform export that includes CUDA fails, since this jax lowers every
branch of a platform switch for every platform and a Triton kernel has no TPU
or CPU lowering.) ``impl="pallas"`` runs both passes in the kernels;
``"pallas-forward"`` / ``"pallas-backward"`` one pass in the kernels and the other in
the gather (for measurement).

Why that split on CUDA: EDVR-M, whole model, one process per card, jax 0.11.2,
medians (``python benchmarks/run.py gpu`` and ``gpu --study``, 2026-11-27, with the
gather path as the CPU formulation in one chunk, before ``_deform_conv_accel``;
milliseconds, gather / pallas):

=================================  =============  =============
work                               H100           H200
=================================  =============  =============
inference bf16, 8 clips 5x180x320  47.9 / 39.7    41.0 / 31.2
inference bf16, 1 clip             -              6.47 / 5.24
inference f32, 8 clips             -              64.7 / 68.7
inference f32, 1 clip              -              9.59 / 10.2
train step bf16, batch 32 (64px)   65.6 / 66.6    56.8 / 58.9
train step f32, batch 32           -              87.3 / 85.9
=================================  =============  =============

(H200 training, kernels for one pass only: bf16 61.7 forward-only / 61.8
backward-only; f32 94.4 / 83.0.) With the gather's GPU formulation (H200, one
``run.py gpu`` run, 2026-11-27): bf16 training at batch 32 44.37 ms with the
gather against 60.17 with the kernels for both passes; bf16 inference of 8
clips 44.80 with the gather against 37.26 with the kernel forward; op level
(16x64x64x64, fwd+bwd) gather 1.05 / 1.04 ms against the kernels' 1.39 / 1.88
(f32 / bf16). So the split stands. The kernel forward wins by 17-24 % in bf16
inference and loses by 4-6 % in float32 inference; in training neither wins by
more than the few % that separate repeated runs, except that bf16 training was
faster with the gather on both cards (1.5 %, 3.6 %), so training stays on the
reference formulation. (Not profiled: why the f32 kernel is slower.) Op
level on H100 (16x64x64x64, 8 groups, ms, gather / pallas): forward f32 0.50 /
0.58, bf16 0.47 / 0.37; forward+backward f32 1.57 / 1.49, bf16 1.73 / 2.06.

Why gather on TPU: a Pallas TPU (Mosaic) kernel would need per-row dynamic
gathers from VMEM (the four corners of each sample come from data-dependent
rows), which Mosaic supports only in restricted forms, or one DMA per 8-channel
row (16-32 bytes, far below DMA efficiency); XLA's TPU gather is the better
starting point, and no TPU was available to measure either. On TPU the gather
path has its own layout (``_deform_conv_tpu``): TPU stores every array in
tiles of its two minor dimensions, (8, 128) elements, and the GPU/CPU
formulations' arrays end in (taps, channels of a group) = (9, 8) or (2, 8):
padded 14-64x. Compiled for a v5e (16 GB HBM) without a TPU
(``tools/accel_aot.py``), EDVR-M with the CPU formulation in one chunk needed
15.25 GB of temporaries for a training step at 4 clips per chip (8 clips:
37.7 GB, out of memory) and 44 GB for inference of one 180x320 clip in
float32. ``_deform_conv_tpu`` ends every large array in the output pixels:
training 3.98 GB at 4 clips, 5.94 GB at 8, 12.56 GB at 16; inference 4.42 GB
(one clip, f32); data-parallel over 4 chips the batch splits with no collective
but the gradient all-reduce. Its TPU speed is unmeasured. (With later changes,
2026-11-27: training 3.90 / 6.73 / 12.67 GiB, inference 3.91 GiB; and the
table's pixel axis padded to 2048 so that XLA keeps the 32x32 and 16x16 levels'
gathers pixels-last too: the training step at 8 clips had 74 arrays padded
more than 4x by the tiles, 10.2 GiB of them in all (0.7 GiB of data), now 31,
0.5 GiB (``_TPU_MIN_TABLE_PIXELS``).)

``modulated_deform_conv_packed`` takes the offsets and the mask's logits in one array, as BasicSR's
``DCNv2Pack`` predicts them with one conv (EDVR's DCNs call it). The gather splits it and takes the sigmoid
(fused by XLA into its consumers, so the same program as before); the Pallas forward kernel reads the array
in place and takes the sigmoid itself, since a kernel's operands are materialised: before, bf16 inference
wrote each 180x320-level DCN's offsets (bf16) and mask (float32) as separate copies first, 1.3 GB per call
at 8 clips. Deviceless H200 bytes estimate of the 8-clip bf16 inference: 11.69 -> 9.93 ms (not a
measurement). ``EDVR_JAX_DCN_SAMPLE_ORDER=kg`` orders the GPU gather's per-sample arrays [.., K, G] instead
of [.., G, K] (same results; 0.3 ms more of bytes in the training step for the transposes): for measuring
whether the atomics of the input-gradient scatter, 3 ms per 64x64-level DCN in the bf16 training step at
batch 32 on an H200 (~8x its bytes estimate), gain from neighbouring threads updating adjacent channels of
one pixel (``benchmarks/gather_ab.py sample-order``); unmeasured so far.

Why the kernels exist (from the H200 profile in ``shared/reference/gpu-h200.md``,
before they were written): the gather
forward wrote 2.65 GB of bf16 im2col columns per EDVR-M inference call (34 % of
it), and its backward's fused offset/mask-gradient expression ran at 25 %
occupancy (26 % of the training step). The kernels remove the columns and
compute the offset/mask gradients per (pixel, group) tile in registers; the
halving sum ``_sum_minor`` (8 % of the GPU training step) is CPU-only.
"""

from __future__ import annotations

import os
from functools import partial
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from edvr_jax.ops import deform_conv_pallas


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def _output_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


class _Geometry(NamedTuple):
    """Static shape of one call (hashable: a ``nondiff_argnums`` argument of the custom VJP)."""

    h: int
    w: int
    ho: int
    wo: int
    kh: int
    kw: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    chunk: int  # output rows per scan step; ho is padded up to a multiple
    cpu: bool = True  # CPU-tuned channel sums (``_sum_minor``); elsewhere plain ``jnp.sum``
    taps_major: bool = False  # per-sample arrays [.., K, G] (groups innermost) instead of [.., G, K]


# Rows per chunk on CPU: at least two, and at least 2**19 column values (2 MiB in
# float32). Measured on a 2-core EPYC (benchmarks/README.md): one-row chunks are
# 1.2-1.6x slower (per-step overhead), chunks far beyond the cache lose the
# cache reuse; in between the time is flat within noise.
_CPU_CHUNK_VALUES = 1 << 19


def _sample_positions(geo: _Geometry, rows, off: jax.Array, msk: jax.Array):
    """Top-left corners and bilinear terms of the samples of output rows ``rows`` (the DCN's border rules).

    ``off``: ``[..., R, Wo, G, K, 2]``, ``msk``: ``[..., R, Wo, G, K]`` (float32+; ``[..., K, G, ..]`` with
    ``geo.taps_major``); ``rows``: the R output row indices (NumPy for constants, jnp for traced or symbolic
    ones). Returns ``(y0, x0, ly, lx, inside, mi)``: the top-left corner (int32, in ``[-1, H-1]`` x
    ``[-1, W-1]``), the fractions, whether the sample is inside the image, and the mask zeroed outside it.
    """
    h, w = geo.h, geo.w
    (sh, sw), (ph, pw), (dh, dw) = geo.stride, geo.padding, geo.dilation
    # Static (NumPy) tap positions: XLA sees constants, not per-element div/mod.
    tap_i, tap_j = np.divmod(np.arange(geo.kh * geo.kw), geo.kw)
    arange = np.arange if isinstance(geo.wo, int) else jnp.arange  # jnp for symbolic (jax.export) widths
    base_x = ((arange(geo.wo) * sw - pw)[:, None] + tap_j * dw).astype(np.float32)  # [Wo, K]
    base_y = (rows * sh - ph)[:, None].astype(off.dtype) + (tap_i * dh).astype(np.float32)  # [R, K]
    if geo.taps_major:
        py, px = base_y[:, None, :, None] + off[..., 0], base_x[None, :, :, None] + off[..., 1]
    else:
        py, px = base_y[:, None, None, :] + off[..., 0], base_x[None, :, None, :] + off[..., 1]
    inside = (py > -1) & (py < h) & (px > -1) & (px < w)
    y0f, x0f = jnp.floor(py), jnp.floor(px)
    # Inside the image y0 is in [-1, H-1]; clipping only moves samples that are
    # zeroed anyway onto valid rows.
    y0 = jnp.clip(y0f, -1, h - 1).astype(jnp.int32)
    x0 = jnp.clip(x0f, -1, w - 1).astype(jnp.int32)
    return y0, x0, py - y0f, px - x0f, inside, msk * inside


def _sample_terms(geo: _Geometry, row0: jax.Array, off: jax.Array, msk: jax.Array):
    """Top-left table rows and bilinear terms of the samples of output rows ``row0 ...``.

    ``off``: ``[R, Wo, G, K, 2]``, ``msk``: ``[R, Wo, G, K]`` (float32+), one image.
    Returns ``(top_left, ly, lx, inside, mi)``, each ``[R, Wo, G, K]``, ``mi`` being the
    mask zeroed outside the image. Row ``top_left`` of ``_table`` is the sample's
    top-left corner in its group; the other corners are ``_corner_shifts`` further.
    """
    y0, x0, ly, lx, inside, mi = _sample_positions(geo, row0 + jnp.arange(off.shape[0]), off, msk)
    top_left = ((y0 + 1) * (geo.w + 2) + (x0 + 1)) * geo.groups + jnp.arange(geo.groups)[:, None]
    return top_left, ly, lx, inside, mi


def _table(x: jax.Array, groups: int) -> jax.Array:
    """``[H, W, C]`` -> ``[(H + 2) * (W + 2) * G, C / G]``: the zero-padded image, one row per (pixel, group).

    A reshape of the padded NHWC array, not a transpose: the gathers read rows
    straight from it. (A group-major transpose here is folded by XLA into the
    gather as per-element index arithmetic, which made the op 1.7x slower.)
    """
    return jnp.pad(x, ((1, 1), (1, 1), (0, 0))).reshape(-1, x.shape[-1] // groups)


def _corner_shifts(w: int, groups: int) -> tuple[int, int, int, int]:
    """Row offsets from a top-left corner to its (0,0), (0,1), (1,0), (1,1) corners in ``_table``."""
    return (0, groups, (w + 2) * groups, (w + 3) * groups)


def _corner_weights(ly, lx, mi):
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * mi, hy * lx * mi, ly * hx * mi, ly * lx * mi)


def _corners(table: jax.Array, top_left: jax.Array, geo: _Geometry) -> list[jax.Array]:
    """The four corner rows of every sample: each ``top_left.shape + [C / G]``."""
    return [table.at[(top_left + s).reshape(-1)].get(mode="promise_in_bounds").reshape(*top_left.shape, -1)
            for s in _corner_shifts(geo.w, geo.groups)]


def _columns(corners, weights, dtype) -> jax.Array:
    # Weighted and summed elementwise: XLA fuses the gathers and this into one loop
    # that writes only the columns, the per-sample index and weight arithmetic
    # hoisted out of the (unrolled) channel loop.
    return sum(wq.astype(dtype)[..., None] * v for wq, v in zip(weights, corners))


def _sum_minor(a: jax.Array) -> jax.Array:
    """Sum over the last (small) axis by halving: XLA CPU's reduction over a minor axis of 8 is ~4x slower.

    CPU only: on the GPU the halving adds cost 8 % of the EDVR-M bf16 training step against ``jnp.sum``
    (H200, gpu-h200.md), so ``_channel_sum`` uses ``jnp.sum`` off CPU.
    """
    while a.shape[-1] > 1:
        n = a.shape[-1]
        half = a[..., :n // 2] + a[..., n // 2:2 * (n // 2)]
        a = jnp.concatenate([half, a[..., 2 * (n // 2):]], axis=-1) if n % 2 else half
    return a[..., 0]


def _channel_sum(a: jax.Array, geo: _Geometry) -> jax.Array:
    return _sum_minor(a) if geo.cpu else jnp.sum(a, axis=-1)


def _chunks(a: jax.Array, chunk: int) -> jax.Array:
    """``[Ho, ...]`` -> ``[Ho' / chunk, chunk, ...]``, zero-padding the rows up to a multiple of ``chunk``."""
    pad = -a.shape[0] % chunk
    a = jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1))
    return a.reshape(a.shape[0] // chunk, chunk, *a.shape[1:])


def _fused_offset_mask_grads(g_cols, corners, ly, lx, inside, mi, geo: _Geometry):
    """Gradients wrt the sample's y, x and mask as ``<g_cols, d cols / d(py, px, m)>`` over each group's
    channels, one fused channel sum each, with ``d cols / d py = m * (hx * (v10 - v00) + lx * (v11 - v01))``
    etc. (``v``: the corner rows, last axis the channels)."""
    v00, v01, v10, v11 = corners
    hy, hx, ly_, lx_ = ((1.0 - ly)[..., None], (1.0 - lx)[..., None], ly[..., None], lx[..., None])
    g_py = mi * _channel_sum(g_cols * (hx * (v10 - v00) + lx_ * (v11 - v01)), geo)
    g_px = mi * _channel_sum(g_cols * (hy * (v01 - v00) + ly_ * (v11 - v10)), geo)
    g_msk = inside * _channel_sum(g_cols * (hy * (hx * v00 + lx_ * v01) + ly_ * (hx * v10 + lx_ * v11)), geo)
    return g_py, g_px, g_msk


def _offset_mask_grads(sums, ly, lx, inside, mi):
    """Gradients wrt the sample's y, x and mask from the corner sums ``S_q = <g_cols, v_q>`` (q = 00, 01, 10,
    11): ``d cols / d y = m * ((1 - lx) * (v10 - v00) + lx * (v11 - v01))`` etc., summed over channels."""
    s00, s01, s10, s11 = sums
    hy, hx = 1.0 - ly, 1.0 - lx
    g_py = mi * (hx * (s10 - s00) + lx * (s11 - s01))
    g_px = mi * (hy * (s01 - s00) + ly * (s11 - s10))
    g_msk = inside * (hy * (hx * s00 + lx * s01) + ly * (hx * s10 + lx * s11))
    return g_py, g_px, g_msk


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _deform_conv_image(x, off, msk, wmat, geo: _Geometry):
    """One image: ``x [H, W, C]``, ``off [Ho, Wo, G, K, 2]``, ``msk [Ho, Wo, G, K]`` (float32+),
    ``wmat [G * K * C/G, O]`` -> ``[Ho, Wo, O]`` accumulated in float32+ (no bias)."""
    return _deform_conv_image_fwd(x, off, msk, wmat, geo)[0]


def _pipelined_scan(step, geo: _Geometry, off, msk, carry, xs=None):
    """Runs ``step`` over the row chunks, each getting its chunk's sample terms precomputed.

    ``step(carry, terms, x) -> (carry, y)`` with ``terms = _sample_terms(...)`` and
    ``x`` the chunk of ``xs`` (``[Ho, ...]``, or None). Returns the final carry and the
    ``y`` stacked over chunks. In the ``lax.scan``, step ``i`` computes the terms of
    chunk ``i + 1`` and hands them on in the loop carry. The point is the loop
    boundary: XLA would otherwise fuse the floor/clip/weight arithmetic into every
    consumer and, in loops over the flat columns, redo it for every channel of
    every sample. One chunk (the default off CPU, and for symbolic shapes) runs
    without a loop.
    """
    r = geo.chunk
    if r == geo.ho:
        carry, y = step(carry, _sample_terms(geo, 0, off, msk), xs)
        return carry, jax.tree.map(lambda a: a[None], y)
    off_chunks, msk_chunks = _chunks(off, r), _chunks(msk, r)
    n = off_chunks.shape[0]
    terms_of = lambda i: _sample_terms(geo, i * r, off_chunks[i], msk_chunks[i])  # noqa: E731

    def body(state, inputs):
        carry, terms = state
        i, x = inputs
        carry, y = step(carry, terms, x)
        return (carry, terms_of(jnp.minimum(i + 1, n - 1))), y

    xs = None if xs is None else _chunks(xs, r)
    (carry, _), ys = jax.lax.scan(body, (carry, terms_of(0)), (jnp.arange(n), xs))
    return carry, ys


def _deform_conv_image_fwd(x, off, msk, wmat, geo):
    table = _table(x, geo.groups)
    acc_t = jnp.promote_types(x.dtype, jnp.float32)

    def step(carry, terms, _):
        top_left, ly, lx, _, mi = terms
        cols = _columns(_corners(table, top_left, geo), _corner_weights(ly, lx, mi), x.dtype)
        return carry, jnp.dot(cols.reshape(-1, wmat.shape[0]), wmat, preferred_element_type=acc_t)

    _, out = _pipelined_scan(step, geo, off, msk, None)
    out = out.reshape(-1, geo.wo, wmat.shape[1])[:geo.ho]
    return out, (x, off, msk, wmat)


def _deform_conv_image_bwd(geo, res, g_out):
    x, off, msk, wmat = res
    h, w, c = x.shape
    groups = geo.groups
    cg = c // groups
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
        cols = _columns(corners, _corner_weights(ly, lx, mi), x.dtype).reshape(g_c.shape[0], -1).astype(acc_t)
        g_wmat = g_wmat + jax.lax.dot_general(cols, g_c, (((0,), (0,)), ((), ())), preferred_element_type=acc_t)
        g_cols = jnp.dot(g_c, wmat_t).reshape(top_left.shape + (cg,))
        g_py, g_px, g_msk = _fused_offset_mask_grads(g_cols, [v.astype(acc_t) for v in corners], ly, lx, inside,
                                                     mi, geo)
        # Input: each corner's weighted column gradient scatter-added into its table row.
        for wq, s in zip(_corner_weights(ly, lx, mi), _corner_shifts(geo.w, groups)):
            g_rows = g_rows.at[(top_left + s).reshape(-1)].add((wq[..., None] * g_cols).reshape(-1, cg),
                                                                mode="promise_in_bounds")
        return (g_rows, g_wmat), (g_py, g_px, g_msk)

    init = (jnp.zeros(((h + 2) * (w + 2) * groups, cg), acc_t), jnp.zeros(wmat.shape, acc_t))
    (g_rows, g_wmat), (g_py, g_px, g_msk) = _pipelined_scan(step, geo, off, msk, init, g_out)
    g_off = jnp.stack([g_py, g_px], axis=-1)
    g_x = g_rows.reshape(h + 2, w + 2, c)[1:-1, 1:-1].astype(x.dtype)
    g_off = g_off.reshape(-1, *off.shape[1:])[:geo.ho].astype(off.dtype)
    g_msk = g_msk.reshape(-1, *msk.shape[1:])[:geo.ho].astype(msk.dtype)
    return g_x, g_off, g_msk, g_wmat.astype(wmat.dtype)


_deform_conv_image.defvjp(_deform_conv_image_fwd, _deform_conv_image_bwd)



# ------------------------------------------------------------------------------------------ gather, accelerators


def _window_coords(geo: _Geometry, off: jax.Array, msk: jax.Array):
    """Every sample's 2x2 window in the zero-padded image and its bilinear terms (whole batch, one chunk).

    ``off``: ``[B, Ho, Wo, G, K, 2]``, ``msk``: ``[B, Ho, Wo, G, K]`` (float32+; ``K, G`` with
    ``geo.taps_major``). Returns ``(corner, ly, lx, inside, mi)``: ``corner [B, Ho, Wo, G, K, 2]`` int32, the
    (row, column) of the window's top-left pixel in the image padded by one pixel on each side; the others
    ``[B, Ho, Wo, G, K]`` (``_sample_positions``); in the same order of ``G`` and ``K`` as the input.
    """
    rows = (np.arange if isinstance(geo.ho, int) else jnp.arange)(geo.ho)
    y0, x0, ly, lx, inside, mi = _sample_positions(geo, rows, off, msk)
    return jnp.stack([y0 + 1, x0 + 1], axis=-1), ly, lx, inside, mi


# The padded image as [B, H+2, W+2, G, C/G]; a sample's window is (1, 2, 2, 1, C/G) at (b, y0, x0, g), with
# the image and the group as batching dimensions shared with the window indices [B, Ho, Wo, G, K, 2]
# (or [B, Ho, Wo, K, G, 2]: ``_window_dims(taps_major=True)``).
def _window_dims(taps_major: bool):
    group = 4 if taps_major else 3
    return (jax.lax.GatherDimensionNumbers(
                offset_dims=(5, 6, 7), collapsed_slice_dims=(), start_index_map=(1, 2),
                operand_batching_dims=(0, 3), start_indices_batching_dims=(0, group)),
            jax.lax.ScatterDimensionNumbers(
                update_window_dims=(5, 6, 7), inserted_window_dims=(), scatter_dims_to_operand_dims=(1, 2),
                operand_batching_dims=(0, 3), scatter_indices_batching_dims=(0, group)))


def _padded_groups(x: jax.Array, groups: int) -> jax.Array:
    b, h, w, c = x.shape
    return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(b, h + 2, w + 2, groups, c // groups)


def _windows(x: jax.Array, corner: jax.Array, geo: _Geometry) -> jax.Array:
    """``[B, Ho, Wo, G, K, 2, 2, C/G]`` (``K, G`` if ``geo.taps_major``): each sample's four corners, one 2x2
    window gather."""
    xg = _padded_groups(x, geo.groups)
    return jax.lax.gather(xg, corner, _window_dims(geo.taps_major)[0], slice_sizes=(1, 2, 2, 1, xg.shape[-1]),
                          mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _rounded_corner_weights(ly, lx, mi, dtype) -> list[jax.Array]:
    """The corner weights (mask included) rounded to ``dtype``, in the order (0,0), (0,1), (1,0), (1,1).

    The forward's columns and the backward's input-gradient scatter use the same rounded weights: the
    gradient of the function computed, and arrays that XLA materialises once for both.
    """
    return [wq.astype(dtype) for wq in _corner_weights(ly, lx, mi)]


#: Accelerator gather path, for measurement: how the offset and mask gradients are formed. "sums" (default):
#: the four corner sums ``S_q = <g_cols, v_q>`` first, then the bilinear terms per sample; "direct": one fused
#: channel sum per gradient, as on CPU (one XLA fusion at 110 registers per thread on sm_90).
OFFSET_GRAD_ENV = "EDVR_JAX_DCN_OFFSET_GRAD"
#: Accelerator gather path, for measurement: the order of the per-sample arrays. "gk" (default): ``[.., G, K]``
#: as the offsets come, so the samples that neighbouring GPU threads gather and scatter are the taps of one
#: group; "kg": ``[.., K, G]`` (offsets, mask and kernel rows reordered), the groups of one tap, which sample
#: adjacent channels of nearby pixels.
SAMPLE_ORDER_ENV = "EDVR_JAX_DCN_SAMPLE_ORDER"


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _deform_conv_accel(x, off, msk, wmat, geo: _Geometry):
    """Whole batch, one chunk: ``x [B, H, W, C]``, ``off [B, Ho, Wo, G, K, 2]``, ``msk [B, Ho, Wo, G, K]``
    (float32+), ``wmat [G * K * C/G, O]`` -> ``[B, Ho, Wo, O]`` accumulated in float32+ (no bias)."""
    return _deform_conv_accel_fwd(x, off, msk, wmat, geo)[0]


def _deform_conv_accel_fwd(x, off, msk, wmat, geo):
    acc_t = jnp.promote_types(x.dtype, jnp.float32)
    corner, ly, lx, _, mi = _window_coords(geo, off, msk)
    win = _windows(x, corner, geo)
    wts = _rounded_corner_weights(ly, lx, mi, x.dtype)
    cols = sum(wq[..., None] * win[..., q // 2, q % 2, :] for q, wq in enumerate(wts))
    cols = cols.reshape(-1, wmat.shape[0])
    out = jnp.dot(cols, wmat, preferred_element_type=acc_t)
    # The columns are kept for the kernel gradient: XLA writes them to memory for the matmul anyway.
    return out.reshape(*off.shape[:3], wmat.shape[1]), (x, off, msk, wmat, cols)


def _deform_conv_accel_bwd(geo, res, g_out):
    x, off, msk, wmat, cols = res
    b, h, w, c = x.shape
    acc_t = jnp.promote_types(x.dtype, jnp.float32)
    # Matmuls in the compute dtype with float32 accumulation (a bf16 DCN's output gradient is bf16-valued).
    g = g_out.reshape(-1, g_out.shape[-1]).astype(x.dtype)
    g_wmat = jax.lax.dot_general(cols, g, (((0,), (0,)), ((), ())), preferred_element_type=acc_t)
    corner, ly, lx, inside, mi = _window_coords(geo, off, msk)
    g_cols = jnp.dot(g, wmat.T, preferred_element_type=acc_t).astype(x.dtype)
    g_cols = g_cols.reshape(corner.shape[:-1] + (c // geo.groups,)).astype(acc_t)
    win = _windows(x, corner, geo).astype(acc_t)
    corners = [win[..., 0, 0, :], win[..., 0, 1, :], win[..., 1, 0, :], win[..., 1, 1, :]]
    if os.environ.get(OFFSET_GRAD_ENV, "sums") == "direct":
        g_py, g_px, g_msk = _fused_offset_mask_grads(g_cols, corners, ly, lx, inside, mi, geo)
    else:
        g_py, g_px, g_msk = _offset_mask_grads([jnp.sum(g_cols * v, axis=-1) for v in corners], ly, lx, inside, mi)
    # Input: one scatter-add of each sample's 2x2 window of weighted column gradients.
    w00, w01, w10, w11 = (wq.astype(acc_t) for wq in _rounded_corner_weights(ly, lx, mi, x.dtype))
    wts = jnp.stack([jnp.stack([w00, w01], axis=-1), jnp.stack([w10, w11], axis=-1)], axis=-2)
    updates = wts[..., None] * g_cols[..., None, None, :]
    g_xg = jax.lax.scatter_add(jnp.zeros((b, h + 2, w + 2, geo.groups, c // geo.groups), acc_t), corner, updates,
                               _window_dims(geo.taps_major)[1], mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)
    g_x = g_xg.reshape(b, h + 2, w + 2, c)[:, 1:-1, 1:-1].astype(x.dtype)
    g_off = jnp.stack([g_py, g_px], axis=-1).astype(off.dtype)
    return g_x, g_off, g_msk.astype(msk.dtype), g_wmat.astype(wmat.dtype)


_deform_conv_accel.defvjp(_deform_conv_accel_fwd, _deform_conv_accel_bwd)


# ------------------------------------------------------------------------------------------ gather, TPU
# TPU tiles the two minor dimensions of every array in HBM by (8, 128) (bf16: (16, 128)). The GPU
# formulation's arrays end in (K=9, C/G=8) or (2, C/G): padded 14-64x, the EDVR-M training step at 4 clips
# per chip needed 24.6 GB on a 16 GB v5e (deviceless compile; benchmarks/README.md). Here every array ends
# in the output pixels (Ho*Wo, lane-dense): the image is a table [B, G, C/G, (H+2)(W+2)], each corner a
# gather of the group's C/G channels at one position of its last axis, the columns [B, G, K, C/G, Ho*Wo].


# XLA TPU (libtpu 0.0.42, v4 and v5e, deviceless compiles) lowers the corner gathers from a table whose
# pixel axis is short (up to 1536 entries tried; >= 1792 not) as row gathers of each group's C/G channels,
# [N, C/G] arrays padded 16x to the (8, 128) tiles, then transposes them: the 32x32 and 16x16 levels of
# EDVR-M. Padding the table's pixel axis with zeros to _TPU_MIN_TABLE_PIXELS keeps the pixels-last layout:
# one DCN forward+backward, bf16, 40 images, HBM temporaries 32x32: 0.95 -> 0.62 GiB (v4: 0.97 -> 0.60),
# 16x16: 0.48 -> 0.11 GiB. The padding is never indexed (indices stay below (H+2)*(W+2)).
_TPU_MIN_TABLE_PIXELS = 2048


def _tpu_table_pixels(h: int, w: int) -> int:
    if not (isinstance(h, int) and isinstance(w, int)):  # symbolic (jax.export) sizes: no comparison, no padding
        return (h + 2) * (w + 2)
    return max((h + 2) * (w + 2), _TPU_MIN_TABLE_PIXELS)


def _tpu_table(x: jax.Array, groups: int) -> jax.Array:
    """``[B, G, C/G, P]``: the zero-padded image, pixels last, ``P = _tpu_table_pixels(H, W)``."""
    b, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(b, (h + 2) * (w + 2), groups, c // groups)
    xp = jnp.pad(xp, ((0, 0), (0, _tpu_table_pixels(h, w) - (h + 2) * (w + 2)), (0, 0), (0, 0)))
    return jnp.transpose(xp, (0, 2, 3, 1))


_TPU_GATHER = jax.lax.GatherDimensionNumbers(
    offset_dims=(3,), collapsed_slice_dims=(3,), start_index_map=(3,),
    operand_batching_dims=(0, 1), start_indices_batching_dims=(0, 1))
_TPU_SCATTER = jax.lax.ScatterDimensionNumbers(
    update_window_dims=(3,), inserted_window_dims=(3,), scatter_dims_to_operand_dims=(3,),
    operand_batching_dims=(0, 1), scatter_indices_batching_dims=(0, 1))


def _tpu_terms(geo: _Geometry, off, msk):
    """``off [B, Ho, Wo, G, K, 2]``, ``msk [B, Ho, Wo, G, K]`` -> ``(top_left, ly, lx, inside, mi)``, each
    ``[B, G, K, Ho*Wo]``; ``top_left`` indexes the last axis of ``_tpu_table``."""
    corner, ly, lx, inside, mi = _window_coords(geo, off, msk)
    top_left = corner[..., 0] * (geo.w + 2) + corner[..., 1]
    b, g, k = off.shape[0], geo.groups, geo.kh * geo.kw
    pixels_last = lambda a: jnp.transpose(a.reshape(b, -1, g, k), (0, 2, 3, 1))  # noqa: E731
    return tuple(map(pixels_last, (top_left, ly, lx, inside, mi)))


def _tpu_corners(table, top_left, w):
    """The four corners of every sample, each ``[B, G, K, C/G, Ho*Wo]``."""
    slice_sizes = (1, 1, table.shape[2], 1)
    return [jax.lax.gather(table, (top_left + s)[..., None], _TPU_GATHER, slice_sizes,
                           mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS) for s in _corner_shifts(w, 1)]


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _deform_conv_tpu(x, off, msk, wmat, geo: _Geometry):
    """As ``_deform_conv_accel``, in TPU-dense layouts."""
    return _deform_conv_tpu_fwd(x, off, msk, wmat, geo)[0]


def _deform_conv_tpu_fwd(x, off, msk, wmat, geo):
    acc_t = jnp.promote_types(x.dtype, jnp.float32)
    b = x.shape[0]
    top_left, ly, lx, _, mi = _tpu_terms(geo, off, msk)
    corners = _tpu_corners(_tpu_table(x, geo.groups), top_left, geo.w)
    cols = sum(wq[..., None, :] * v for wq, v in zip(_rounded_corner_weights(ly, lx, mi, x.dtype), corners))
    cols = cols.reshape(b, wmat.shape[0], -1)  # [B, G*K*C/G, Ho*Wo]
    out = jnp.einsum("bjm,jo->bmo", cols, wmat, preferred_element_type=acc_t)
    return out.reshape(*off.shape[:3], wmat.shape[1]), (x, off, msk, wmat, cols)


def _deform_conv_tpu_bwd(geo, res, g_out):
    x, off, msk, wmat, cols = res
    b, h, w, c = x.shape
    cg = c // geo.groups
    acc_t = jnp.promote_types(x.dtype, jnp.float32)
    g = g_out.reshape(b, -1, g_out.shape[-1]).astype(x.dtype)  # [B, Ho*Wo, O]
    g_wmat = jnp.einsum("bjm,bmo->jo", cols, g, preferred_element_type=acc_t)
    top_left, ly, lx, inside, mi = _tpu_terms(geo, off, msk)
    g_cols = jnp.einsum("bmo,jo->bjm", g, wmat, preferred_element_type=acc_t).astype(x.dtype)
    g_cols = g_cols.reshape(*top_left.shape[:3], cg, -1).astype(acc_t)  # [B, G, K, C/G, Ho*Wo]
    v00, v01, v10, v11 = (v.astype(acc_t) for v in _tpu_corners(_tpu_table(x, geo.groups), top_left, w))
    g_py, g_px, g_msk = _offset_mask_grads([jnp.sum(g_cols * v, axis=-2) for v in (v00, v01, v10, v11)],
                                           ly, lx, inside, mi)
    # Padded like the table: unpadded, the 16x16 level's scatters become row scatters too (one DCN
    # forward+backward, 40 images bf16, v5e: 0.47 against 0.11 GiB).
    g_table = jnp.zeros((b, geo.groups, cg, _tpu_table_pixels(h, w)), acc_t)
    for wq, s in zip(_rounded_corner_weights(ly, lx, mi, x.dtype), _corner_shifts(w, 1)):
        g_table = jax.lax.scatter_add(g_table, (top_left + s)[..., None], wq.astype(acc_t)[..., None, :] * g_cols,
                                      _TPU_SCATTER,
                                      mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)
    g_table = g_table[..., :(h + 2) * (w + 2)]
    g_x = jnp.transpose(g_table, (0, 3, 1, 2)).reshape(b, h + 2, w + 2, c)[:, 1:-1, 1:-1].astype(x.dtype)
    back = lambda a: jnp.transpose(a, (0, 3, 1, 2)).reshape(msk.shape)  # noqa: E731  [B, G, K, M] -> [B, Ho, Wo, G, K]
    g_off = jnp.stack([back(g_py), back(g_px)], axis=-1).astype(off.dtype)
    return g_x, g_off, back(g_msk).astype(msk.dtype), g_wmat.astype(wmat.dtype)


_deform_conv_tpu.defvjp(_deform_conv_tpu_fwd, _deform_conv_tpu_bwd)


# ------------------------------------------------------------------------------------------ Pallas (GPU)


@partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _pallas_dcn(x, off, msk, kern, bias, dims, cfg, interpret):
    """``x [B, H, W, C]``, ``off [N, G*K*2]``, ``msk [N, G*K]``, ``kern [K, C, O]``, ``bias [O]`` -> ``[N, O]``."""
    return _pallas_fwd(x, off, msk, kern, bias, dims, cfg, interpret)[0]


def _pallas_fwd(x, off, msk, kern, bias, dims, cfg, interpret):
    out = deform_conv_pallas.forward(x, off, msk, kern, bias, dims, cfg, interpret)
    return out, (x, off, msk, kern, bias)


def _pallas_bwd(dims, cfg, interpret, res, g_out):
    x, off, msk, kern, bias = res
    g_x, g_off, g_msk, g_kern = deform_conv_pallas.backward(x, off, msk, kern, g_out, dims, cfg, interpret)
    g_bias = jnp.sum(g_out.astype(jnp.float32), axis=0)
    return (g_x.astype(x.dtype), g_off.astype(off.dtype), g_msk.astype(msk.dtype), g_kern.astype(kern.dtype),
            g_bias.astype(bias.dtype))


_pallas_dcn.defvjp(_pallas_fwd, _pallas_bwd)


# ------------------------------------------------------------------------------------------ entry point

IMPLS = ("auto", "gather", "pallas", "pallas-forward", "pallas-backward")
#: Overrides ``impl="auto"`` everywhere (e.g. ``EDVR_JAX_DCN_IMPL=gather`` to rule the Pallas kernels out).
IMPL_ENV = "EDVR_JAX_DCN_IMPL"


def _split_vjp(forward, backward_of, primal=None):
    """A DCN whose gradient is the VJP of ``backward_of``; its value is ``forward``'s under differentiation and
    ``primal``'s (default ``forward``) when it is not differentiated. All three compute the same function.

    ``backward_of``'s own forward output is unused in the backward pass and removed by XLA.
    """
    @jax.custom_vjp
    def dcn(*args):
        return (primal or forward)(*args)

    def dcn_fwd(*args):
        return forward(*args), args

    def dcn_bwd(args, g_out):
        return jax.vjp(backward_of, *args)[1](g_out)

    dcn.defvjp(dcn_fwd, dcn_bwd)
    return dcn


def _gather_path(x, offset, mask, kernel, bias, *, geo_args, chunk_rows, form):
    """The vectorized-gather DCN in the formulation for ``form``: "cpu" (row chunks, halving sums), "gpu"
    (``_deform_conv_accel``) or "tpu" (``_deform_conv_tpu``), the last two the whole batch at once, or the
    chunked formulation when ``chunk_rows`` asks for chunks."""
    cpu = form == "cpu"
    b, ho, wo, (h, w, kh, kw, stride, padding, dilation, groups) = *offset.shape[:3], geo_args
    c, out_ch = x.shape[-1], kernel.shape[-1]
    k = kh * kw
    if not all(isinstance(d, int) for d in (b, ho, wo)):  # symbolic shapes (jax.export): one chunk
        chunk = ho
    elif chunk_rows is None:
        chunk = min(max(2, _CPU_CHUNK_VALUES // (b * wo * k * c)), ho) if cpu else ho
    else:
        chunk = min(int(chunk_rows), ho)
    accel = form == "gpu" and chunk == ho
    taps_major = accel and os.environ.get(SAMPLE_ORDER_ENV, "gk") == "kg"
    geo = _Geometry(h, w, ho, wo, kh, kw, stride, padding, dilation, groups, chunk, cpu, taps_major)
    # Coordinates, weights and accumulation in at least float32 (float64 stays float64).
    coord_t = jnp.promote_types(offset.dtype, jnp.float32)
    acc_t = jnp.promote_types(x.dtype, jnp.float32)
    off = offset.astype(coord_t).reshape(b, ho, wo, groups, k, 2)
    m = mask.astype(coord_t).reshape(b, ho, wo, groups, k)
    # One matmul over (g, k, c) (or (k, g, c)); the kernel is reordered to match, not the columns.
    cg = c // groups
    wmat = kernel.astype(x.dtype).reshape(k, groups, cg, out_ch)
    if taps_major:
        off, m = jnp.swapaxes(off, 3, 4), jnp.swapaxes(m, 3, 4)
    else:
        wmat = jnp.transpose(wmat, (1, 0, 2, 3))
    wmat = wmat.reshape(groups * k * cg, out_ch)
    if cpu or chunk < ho:
        out = jax.vmap(_deform_conv_image, in_axes=(0, 0, 0, None, None))(x, off, m, wmat, geo)
    else:
        out = (_deform_conv_tpu if form == "tpu" else _deform_conv_accel)(x, off, m, wmat, geo)
    if bias is not None:
        out = out + bias.astype(acc_t)
    return out.astype(x.dtype)


def _pallas_path(x, offset, mask, kernel, bias, *, geo_args, interpret, config):
    b, ho, wo = offset.shape[:3]
    h, w, kh, kw, stride, padding, dilation, groups = geo_args
    c, out_ch = x.shape[-1], kernel.shape[-1]
    dims = deform_conv_pallas.Dims(b, h, w, c, ho, wo, out_ch, groups, kh, kw, stride, padding, dilation)
    n = b * ho * wo
    # Offsets and mask are read in their own dtype and converted to float32 in the kernel.
    float_t = lambda a: a if a.dtype in (jnp.float32, jnp.bfloat16, jnp.float16) else a.astype(jnp.float32)  # noqa: E731
    off = float_t(offset).reshape(n, -1)
    kern = kernel.astype(x.dtype).reshape(kh * kw, c, out_ch)
    bias = jnp.zeros((out_ch,), jnp.float32) if bias is None else bias.astype(jnp.float32)
    if mask is None:  # ``offset``: offsets and mask logits in one array; the forward kernel only
        out = deform_conv_pallas.forward(x, off, None, kern, bias, dims, config, interpret)
    else:
        out = _pallas_dcn(x, off, float_t(mask).reshape(n, -1), kern, bias, dims, config, interpret)
    return out.reshape(b, ho, wo, out_ch)


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
    chunk_rows: int | None = None,
    impl: str = "auto",
    pallas_config: deform_conv_pallas.PallasConfig | None = None,
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
      chunk_rows: gather path only: output rows per step of the sampling loop
        (all ``B`` images at once). None: on CPU, two rows or more, about 2 MiB
        of columns or more; elsewhere all rows in one step (the accelerator
        formulation; a smaller ``chunk_rows`` there bounds memory with the
        CPU's chunked formulation). The result does not depend on it.
      impl: ``"auto"`` (default): when lowered for CUDA, the Pallas forward
        kernel for a bf16/f16 DCN that is not differentiated (where the shapes
        suit it); the vectorized gather for everything else and everywhere else
        (CPU, TPU, ROCm): the faster choice in each case as measured on
        H100/H200 (module docstring). The choice is made when lowering
        (``lax.platform_dependent``), so ``jax.export`` for one platform gets
        that platform's path. ``"gather"``: always the gather. ``"pallas"``:
        the Pallas kernels for both passes where the shapes suit them (in
        Pallas interpret mode off CUDA: slow, for tests), else the gather.
        ``"pallas-forward"`` / ``"pallas-backward"``: the kernels for one pass,
        the gather for the other. The environment variable
        ``EDVR_JAX_DCN_IMPL`` (any of these but ``auto``) overrides ``"auto"``.
      pallas_config: launch parameters of the Pallas kernels (tile sizes, warps);
        None: ``deform_conv_pallas.config_for(x.dtype)``.

    Returns:
      ``[B, Ho, Wo, O]`` in ``x.dtype`` (accumulated in float32 or wider).

    Keep ``offset`` in float32 under bfloat16 compute: bf16 offsets of magnitude
    ``2**n`` are only resolved to ``2**(n-7)`` pixels.

    The number of deformable groups ``G`` is ``mask.shape[-1] // (kh * kw)``.
    """
    b, ho, wo, k = _check_conv(x, kernel, bias, stride, padding, dilation, chunk_rows)
    if mask.ndim != 4 or mask.shape[:3] != (b, ho, wo) or mask.shape[-1] % k:
        raise ValueError(
            f"mask must be [B, Ho, Wo, G*{k}] = [{b}, {ho}, {wo}, G*{k}], got {mask.shape}")
    groups = mask.shape[-1] // k
    if offset.shape != (b, ho, wo, groups * k * 2):
        raise ValueError(
            f"offset must be [B, Ho, Wo, G*{k}*2] = {(b, ho, wo, groups * k * 2)}, got {offset.shape}")
    return _dispatch(x, (offset, mask), kernel, bias, groups, stride=stride, padding=padding, dilation=dilation,
                     chunk_rows=chunk_rows, impl=impl, pallas_config=pallas_config)


def modulated_deform_conv_packed(
    x: jax.Array,
    offset_mask: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    chunk_rows: int | None = None,
    impl: str = "auto",
    pallas_config: deform_conv_pallas.PallasConfig | None = None,
) -> jax.Array:
    """``modulated_deform_conv`` with the offsets and the mask as BasicSR's ``DCNv2Pack`` predicts them.

    ``offset_mask``: ``[B, Ho, Wo, 3 * G * kh * kw]``, one conv's output: the first ``2 * G * kh * kw``
    channels are the offsets (``modulated_deform_conv``'s layout; BasicSR's ``cat(o1, o2)``), the last
    ``G * kh * kw`` the mask's logits; the mask is their sigmoid, in float32. The same function as
    ``modulated_deform_conv(x, offset_mask[..., :2GK], sigmoid(offset_mask[..., 2GK:]), ...)``, with the same
    keyword arguments; the difference is where the Pallas forward kernel runs (bf16 inference on CUDA): it
    reads this array in place, where the split would first write the offsets and the mask to memory
    (XLA cannot fuse producers into a kernel's operands).
    """
    b, ho, wo, k = _check_conv(x, kernel, bias, stride, padding, dilation, chunk_rows)
    if offset_mask.ndim != 4 or offset_mask.shape[:3] != (b, ho, wo) or offset_mask.shape[-1] % (3 * k):
        kh, kw = kernel.shape[:2]
        raise ValueError(f"offset_mask must be [B, Ho, Wo, 3*G*{kh}*{kw}] = [{b}, {ho}, {wo}, G*{3 * k}], "
                         f"got {offset_mask.shape}")
    return _dispatch(x, (offset_mask,), kernel, bias, offset_mask.shape[-1] // (3 * k), stride=stride,
                     padding=padding, dilation=dilation, chunk_rows=chunk_rows, impl=impl,
                     pallas_config=pallas_config)


def _check_conv(x, kernel, bias, stride, padding, dilation, chunk_rows) -> tuple[int, int, int, int]:
    """``(B, Ho, Wo, kh * kw)`` of a DCN call, or a ValueError naming the argument that does not fit."""
    if x.ndim != 4:
        raise ValueError(f"x must be [B, H, W, C], got shape {x.shape}")
    if kernel.ndim != 4:
        raise ValueError(f"kernel must be [kh, kw, C, O], got shape {kernel.shape}")
    b, h, w, c = x.shape
    kh, kw, kc, out_ch = kernel.shape
    if kc != c:
        raise ValueError(f"kernel expects {kc} input channels, x has {c} (x {x.shape}, kernel {kernel.shape})")
    if bias is not None and bias.shape != (out_ch,):
        raise ValueError(f"bias must be [{out_ch}], got {bias.shape}")
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    return b, _output_size(h, kh, sh, ph, dh), _output_size(w, kw, sw, pw, dw), kh * kw


def _dispatch(x, data, kernel, bias, groups, *, stride, padding, dilation, chunk_rows, impl, pallas_config):
    """The DCN on ``data``: ``(offset, mask)``, or ``(offset_mask,)`` (``modulated_deform_conv_packed``), with
    the implementation ``impl`` picks per lowering platform (``modulated_deform_conv``'s docstring)."""
    if x.shape[-1] % groups:
        raise ValueError(f"{x.shape[-1]} input channels do not split into {groups} deformable groups")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = os.environ.get(IMPL_ENV, "auto") or "auto"
        if impl not in IMPLS:
            raise ValueError(f"{IMPL_ENV} must be one of {IMPLS}, got {impl!r}")
    h, w = x.shape[1:3]
    kh, kw, _, out_ch = kernel.shape
    geo_args = (h, w, kh, kw, _pair(stride), _pair(padding), _pair(dilation), groups)
    packed = len(data) == 1
    n_off = 2 * groups * kh * kw

    def split(dcn):  # a DCN of (x, offset, mask, kernel, bias) as one of (x, *data, kernel, bias)
        if not packed:
            return dcn
        def unpacked(x, om, kernel, bias):
            # jnp.split, not two slices: its gradient is one concatenate (two slices' is a sum of two padded
            # arrays, which XLA fused with the conv's bias reduction into a kernel that spills registers).
            offset, logits = jnp.split(om, [n_off], axis=-1)
            return dcn(x, offset, jax.nn.sigmoid(logits.astype(jnp.float32)), kernel, bias)
        return unpacked

    gather_cpu, gather_accel, gather_tpu = (split(partial(_gather_path, geo_args=geo_args, chunk_rows=chunk_rows,
                                                          form=f)) for f in ("cpu", "gpu", "tpu"))
    branches = dict(cpu=gather_cpu, tpu=gather_tpu, default=gather_accel)
    if impl != "gather" and deform_conv_pallas.supports(x.shape, x.dtype, out_ch, groups) is None:
        config = pallas_config or deform_conv_pallas.config_for(x.dtype)

        def forward_kernel(interpret):  # reads packed offsets and mask logits in place; no backward of its own
            pallas = partial(_pallas_path, geo_args=geo_args, config=config, interpret=interpret)
            return (lambda x, om, kernel, bias: pallas(x, om, None, kernel, bias)) if packed else pallas

        def kernels(interpret):
            pallas = split(partial(_pallas_path, geo_args=geo_args, config=config, interpret=interpret))
            if impl == "pallas-forward":
                return _split_vjp(forward_kernel(interpret), gather_accel)
            if impl == "pallas-backward":
                return _split_vjp(gather_accel, pallas)
            return _split_vjp(pallas, pallas, primal=forward_kernel(interpret)) if packed else pallas

        if impl != "auto":
            branches = dict(cuda=kernels(interpret=False), default=kernels(interpret=True))  # interpret off CUDA
        elif x.dtype in (jnp.bfloat16, jnp.float16):  # the kernels for inference, the gather for training
            branches["cuda"] = _split_vjp(gather_accel, gather_accel, primal=forward_kernel(interpret=False))
    return jax.lax.platform_dependent(x, *data, kernel, bias, **branches)
