"""DCNv2 as Pallas (Triton) GPU kernels: an implicit-GEMM forward and a per-tap backward.

Runs on CUDA for ``impl="auto"`` in bf16/f16 inference (the forward kernel; the gather computes training
steps and float32, where it measured as fast or faster: benchmarks/README.md) and for ``impl="pallas"``
(both passes; in Pallas interpret mode off CUDA, for tests). The semantics are the gather's; the border
rule is ``sampling.bilinear_terms``. ``supports`` says which calls the kernels take.

The input, zero-padded by one pixel, is a table ``[B * (H+2) * (W+2), C]``, so every corner of every sample
is a valid row. Forward, grid ``(cdiv(N, P),)`` over the ``N = B * Ho * Wo`` output pixels: per tap (and
block of whole groups' channels) a program computes the samples' bilinear terms in float32, gathers the four
corner rows, forms the modulated sample ``A_k [P, C]`` and accumulates ``A_k @ W_k`` in a float32 tile: the
im2col columns never leave the chip. Backward, grid ``(K * channel blocks, S)``: per tile of pixels it
recomputes ``A_k``, forms ``g_A = g_out @ W_k^T``, stores the offset and mask gradients once (plain stores),
accumulates the kernel gradient as one partial per program (summed by XLA) and adds each corner's share of
``g_A`` into a float32 table with relaxed atomic adds (``_relaxed_add_primitive``).
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from edvr_jax.ops.dcn.sampling import Geometry, bilinear_terms


@dataclasses.dataclass(frozen=True)
class PallasConfig:
    """Launch parameters of the two kernels (hashable: a static argument). The defaults (``config_for``)
    keep both kernels free of register spills on sm_90 at 64 and 128 channels (ptxas, ``tools/triton_regs.py``)."""

    block_p: int = 64  # output pixels per forward program
    warps: int = 8
    tap_loop: bool = True  # forward: taps (and channel blocks) in a loop; unrolled needs ~2x the registers
    block_c: int = 64  # input channels per step (whole deformable groups)
    bwd_block_p: int = 32  # output pixels per backward tile
    bwd_warps: int = 8
    bwd_programs: int = 1024  # target number of backward programs: a few waves on a ~132-SM GPU
    stages: int = 1  # Triton software pipelining of the loops


def config_for(dtype) -> PallasConfig:
    """The default launch parameters for inputs of this dtype (float32 needs smaller backward tiles)."""
    return PallasConfig(bwd_block_p=16) if jnp.dtype(dtype) == jnp.float32 else PallasConfig()


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def supports(x_shape, x_dtype, out_ch: int, groups: int) -> str | None:
    """None when the kernels handle this call, else the reason they do not: ``C``, ``G``, ``O`` powers of
    two, ``C, O >= 16`` (Triton's ``dot`` needs 16-wide tiles), floating inputs up to 32 bits, 32-bit
    indices, static shapes."""
    b, h, w, c = x_shape
    if not all(isinstance(d, int) for d in (b, h, w, c, out_ch)):
        return "symbolic shapes"
    if jnp.dtype(x_dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"dtype {jnp.dtype(x_dtype).name}"
    if not (_is_pow2(c) and _is_pow2(groups) and _is_pow2(out_ch)):
        return f"channels {c} -> {out_ch} with {groups} groups are not all powers of two"
    if c < 16 or out_ch < 16:
        return f"channels {c} -> {out_ch}: the kernels need at least 16 each"
    if b * (h + 2) * (w + 2) * c >= 2**31 or b * h * w * groups * 18 >= 2**31:
        return "input too large for 32-bit indices"
    return None


def _table(x: jax.Array) -> jax.Array:
    """``[B, H, W, C]`` -> ``[B * (H+2) * (W+2), C]``, zero border."""
    return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(-1, x.shape[-1])


def _tap_terms(geo: Geometry, k, p, off_ref, msk_ref, g0, gc: int, packed: bool = False):
    """Per (pixel, group) sample terms of tap ``k``, groups ``g0 .. g0 + gc``, pixels ``p`` ``[P]`` (``< N``).

    Returns ``(top_left [P, gc] int32 table rows, ly, lx, inside, mi [P, gc] float32)``; ``k`` and
    ``g0`` may be traced scalars (program ids, loop indices) or Python ints. ``packed``: ``off_ref`` and
    ``msk_ref`` are both the ``[N, 3*G*K]`` offsets-and-mask-logits array (``forward``), the mask its
    sigmoid.
    """
    kk = geo.kh * geo.kw
    (sh, sw), (ph, pw), (dh, dw) = geo.stride, geo.padding, geo.dilation
    hw = geo.ho * geo.wo
    bi = jax.lax.div(p, hw)
    r = jax.lax.rem(p, hw)
    oy, ox = jax.lax.div(r, geo.wo), jax.lax.rem(r, geo.wo)
    ti, tj = jax.lax.div(k, geo.kw), jax.lax.rem(k, geo.kw)
    gk = (g0 + jnp.arange(gc, dtype=jnp.int32)) * kk + k  # [gc]: column (g * K + k) of the mask
    rows = p[:, None]
    dy = plgpu.load(off_ref.at[rows, (2 * gk)[None, :]]).astype(jnp.float32)
    dx = plgpu.load(off_ref.at[rows, (2 * gk + 1)[None, :]]).astype(jnp.float32)
    m = plgpu.load(msk_ref.at[rows, ((2 * geo.groups * kk if packed else 0) + gk)[None, :]]).astype(jnp.float32)
    if packed:
        m = 1.0 / (1.0 + jnp.exp(-m))
    py = (oy * sh - ph + ti * dh).astype(jnp.float32)[:, None] + dy
    px = (ox * sw - pw + tj * dw).astype(jnp.float32)[:, None] + dx
    y0, x0, ly, lx, inside = bilinear_terms(py, px, geo.h, geo.w)
    top_left = (bi[:, None] * (geo.h + 2) + y0 + 1) * (geo.w + 2) + x0 + 1
    insf = inside.astype(jnp.float32)
    return gk, top_left, ly, lx, insf, m * insf


def _expand(a: jax.Array, cg: int) -> jax.Array:
    """``[P, G]`` -> ``[P, G * cg]``: each group's value repeated over its channels."""
    p, g = a.shape
    if cg == 1:
        return a
    return jnp.broadcast_to(a[:, :, None], (p, g, cg)).reshape(p, g * cg)


def _group_sum(a: jax.Array, g: int) -> jax.Array:
    """``[P, C]`` -> ``[P, G]``: sum over each group's channels."""
    p, c = a.shape
    if c == g:
        return a
    return jnp.sum(a.reshape(p, g, c // g), axis=-1)


def _corner_rows(geo: Geometry, top_left_c):
    """Table rows of the four corners, ``(0,0), (0,1), (1,0), (1,1)``."""
    return (top_left_c, top_left_c + 1, top_left_c + (geo.w + 2), top_left_c + (geo.w + 3))


def _block_c(geo: Geometry, cfg: PallasConfig) -> int:
    """Channels per step: whole groups, at most ``cfg.block_c`` unless one group is wider."""
    return max(geo.c // geo.groups, min(geo.c, cfg.block_c))


def _fwd_kernel(table_ref, off_ref, msk_ref, w_ref, b_ref, out_ref, *, geo: Geometry, n: int, block_p: int,
                block_c: int, tap_loop: bool, packed: bool):
    cg = geo.c // geo.groups
    gc, n_ch = block_c // cg, geo.c // block_c
    rows_out = pl.program_id(0) * block_p + jnp.arange(block_p, dtype=jnp.int32)
    p = jnp.minimum(rows_out, n - 1)  # rows past N (the last tile) read row N-1, write padding rows

    def step(kc, acc):  # one (tap, channel block)
        k, ch = (kc // n_ch, kc % n_ch) if isinstance(kc, int) else (jax.lax.div(kc, n_ch), jax.lax.rem(kc, n_ch))
        _, top_left, ly, lx, _, mi = _tap_terms(geo, k, p, off_ref, msk_ref, ch * gc, gc, packed)
        col = (ch * block_c + jnp.arange(block_c, dtype=jnp.int32))[None, :]
        hy, hx = 1.0 - ly, 1.0 - lx
        weights = (hy * hx * mi, hy * lx * mi, ly * hx * mi, ly * lx * mi)
        rows = _corner_rows(geo, _expand(top_left, cg))
        sample = None
        for wq, rq in zip(weights, rows):
            term = _expand(wq, cg) * plgpu.load(table_ref.at[rq, col]).astype(jnp.float32)
            sample = term if sample is None else sample + term
        w = w_ref[k, pl.ds(ch * block_c, block_c), :]
        return acc + jnp.dot(sample.astype(w_ref.dtype), w, preferred_element_type=jnp.float32)

    acc = jnp.zeros((block_p, geo.o), jnp.float32)
    steps = geo.kh * geo.kw * n_ch
    if tap_loop:
        acc = jax.lax.fori_loop(0, steps, step, acc)
    else:
        for kc in range(steps):
            acc = step(kc, acc)
    acc += b_ref[...].astype(jnp.float32)
    plgpu.store(out_ref.at[rows_out[:, None], jnp.arange(geo.o, dtype=jnp.int32)[None, :]], acc.astype(out_ref.dtype))


def _bwd_kernel(table_ref, off_ref, msk_ref, w_ref, gout_ref, gx_in_ref,
                gx_ref, goff_ref, gmsk_ref, gw_ref, *, geo: Geometry, n: int, block_p: int, block_c: int, tiles: int,
                add=jax.ref.addupdate):
    del gx_in_ref  # aliased with gx_ref (zeros on entry)
    cg = geo.c // geo.groups
    gc, n_ch = block_c // cg, geo.c // block_c
    kc = pl.program_id(0)
    k, ch = jax.lax.div(kc, n_ch), jax.lax.rem(kc, n_ch)
    s = pl.program_id(1)
    c0 = ch * block_c
    col = (c0 + jnp.arange(block_c, dtype=jnp.int32))[None, :]
    ocol = jnp.arange(geo.o, dtype=jnp.int32)[None, :]
    w_k = w_ref[k, pl.ds(c0, block_c), :]  # [block_c, O]

    def tile(t, g_w):
        rows_out = (s * tiles + t) * block_p + jnp.arange(block_p, dtype=jnp.int32)
        valid = rows_out < n
        p = jnp.minimum(rows_out, n - 1)
        gk, top_left, ly, lx, inside, mi = _tap_terms(geo, k, p, off_ref, msk_ref, ch * gc, gc)
        mi = jnp.where(valid[:, None], mi, 0.0)
        inside = jnp.where(valid[:, None], inside, 0.0)
        g_o = plgpu.load(gout_ref.at[p[:, None], ocol])  # [P, O]
        g_o = jnp.where(valid[:, None], g_o, jnp.zeros_like(g_o))
        g_a = jax.lax.dot_general(g_o, w_k, (((1,), (1,)), ((), ())),
                                  preferred_element_type=jnp.float32)  # [P, block_c]
        rows = _corner_rows(geo, _expand(top_left, cg))
        v00, v01, v10, v11 = (plgpu.load(table_ref.at[rq, col]).astype(jnp.float32) for rq in rows)
        hy, hx = 1.0 - ly, 1.0 - lx
        ly_c, lx_c, hy_c, hx_c, mi_c = (_expand(a, cg) for a in (ly, lx, hy, hx, mi))
        unmod = hy_c * (hx_c * v00 + lx_c * v01) + ly_c * (hx_c * v10 + lx_c * v11)
        g_py = mi * _group_sum(g_a * (hx_c * (v10 - v00) + lx_c * (v11 - v01)), gc)
        g_px = mi * _group_sum(g_a * (hy_c * (v01 - v00) + ly_c * (v11 - v10)), gc)
        g_m = inside * _group_sum(g_a * unmod, gc)
        # Padded outputs: rows past N are written (zeros) and sliced off; no masks, no duplicate rows.
        prow = rows_out[:, None]
        plgpu.store(goff_ref.at[prow, (2 * gk)[None, :]], g_py)
        plgpu.store(goff_ref.at[prow, (2 * gk + 1)[None, :]], g_px)
        plgpu.store(gmsk_ref.at[prow, gk[None, :]], g_m)
        # Kernel: the modulated sample (as in the forward) against the output gradient.
        a_k = (mi_c * unmod).astype(w_ref.dtype)
        g_w = g_w + jax.lax.dot_general(a_k, g_o.astype(w_ref.dtype), (((0,), (0,)), ((), ())),
                                        preferred_element_type=jnp.float32)
        # Input: each corner's share of g_A, added into its table row.
        g_am = g_a * mi_c
        for wq, rq in zip((hy_c * hx_c, hy_c * lx_c, ly_c * hx_c, ly_c * lx_c), rows):
            add(gx_ref, (rq, col), wq * g_am)
        return g_w

    g_w = jax.lax.fori_loop(0, tiles, tile, jnp.zeros((block_c, geo.o), jnp.float32))
    gw_ref[s, k, pl.ds(c0, block_c), :] = g_w


def _relaxed_add_primitive():
    """A primitive like ``jax.ref.addupdate`` whose Triton lowering is a *relaxed* atomic add, or None.

    Pallas lowers ``addupdate`` (and ``pl.atomic_add``) on GPUs to ``tt.atomic_rmw`` with acquire-release
    semantics (jax 0.10-0.11; no argument chooses otherwise): PTX ``atom.global.gpu.acq_rel.add.v4.f32``,
    each add ordered against the program's other memory accesses. The input gradient's adds need no order
    (nothing reads the table until the kernel ends), and XLA's own scatter-add emits relaxed atomics. This
    primitive has ``addupdate``'s abstract evaluation and Triton lowering rule, the latter run with
    ``semantic=RELAXED`` for its atomic. It uses jax internals (``jax._src``): where they are missing, None,
    and the kernel uses ``jax.ref.addupdate``. Interpret mode (CPU) always uses ``jax.ref.addupdate``.
    """
    try:
        from jax._src.lib.triton import dialect as tt_dialect
        from jax._src.pallas.triton import lowering as triton_lowering
        from jax._src.state import primitives as state_primitives

        addupdate_rule = triton_lowering.triton_lowering_rules[state_primitives.addupdate_p]
        atomic_rmw = triton_lowering._atomic_rmw
        relaxed = tt_dialect.MemSemantic.RELAXED
        get_ref_and_transforms = state_primitives.get_ref_and_transforms
    except (ImportError, AttributeError, KeyError):
        return None
    prim = jax.extend.core.Primitive("dcn_relaxed_addupdate")
    prim.multiple_results = True
    prim.is_effectful = lambda params: True
    prim.def_effectful_abstract_eval(state_primitives.addupdate_p.abstract_eval)

    def lowering(ctx, *args, **params):  # addupdate's rule, its atomic made relaxed while it runs
        triton_lowering._atomic_rmw = partial(atomic_rmw, semantic=relaxed)
        try:
            return addupdate_rule(ctx, *args, **params)
        finally:
            triton_lowering._atomic_rmw = atomic_rmw

    triton_lowering.register_lowering(prim)(lowering)

    def relaxed_add(ref, idx, value):
        ref, transforms = get_ref_and_transforms(ref, idx, "dcn_relaxed_addupdate")
        flat, tree = jax.tree_util.tree_flatten(transforms)
        prim.bind(ref, value, *flat, tree=tree)

    return relaxed_add


_RELAXED_ADD = _relaxed_add_primitive()
#: The backward kernel's atomics on the GPU with this jax, as the benchmarks print it.
BACKWARD_ATOMICS = "relaxed" if _RELAXED_ADD is not None else "acquire-release (fallback: jax internals missing)"


def forward(x, off, msk, kern, bias, geo: Geometry, cfg: PallasConfig, interpret: bool):
    """``x [B, H, W, C]``, ``off [N, G*K*2]``, ``msk [N, G*K]`` (float32), ``kern [K, C, O]`` (x.dtype),
    ``bias [O]`` (float32) -> ``[N, O]`` in ``x.dtype``.

    ``msk=None``: ``off`` is ``[N, 3*G*K]``, the offsets followed by the mask's logits (BasicSR's
    ``DCNv2Pack`` predicts both with one conv), read in place with the sigmoid taken in the kernel: no
    sliced copies of the offsets and the mask are written first (XLA cannot fuse them into the kernel).
    """
    n = geo.b * geo.ho * geo.wo
    block_p = cfg.block_p
    packed = msk is None
    kernel = partial(_fwd_kernel, geo=geo, n=n, block_p=block_p, block_c=_block_c(geo, cfg), tap_loop=cfg.tap_loop,
                     packed=packed)
    if packed:  # one operand, read as both the offsets and the mask logits
        kernel = partial(lambda fwd, table_ref, om_ref, *refs: fwd(table_ref, om_ref, om_ref, *refs), kernel)
    offsets_and_mask = (off,) if packed else (off, msk)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((pl.cdiv(n, block_p) * block_p, geo.o), x.dtype),
        grid=(pl.cdiv(n, block_p),),
        compiler_params=plgpu.CompilerParams(num_warps=cfg.warps, num_stages=cfg.stages),
        interpret=interpret,
        name="dcn_fwd",
    )(_table(x), *offsets_and_mask, kern, bias.reshape(1, geo.o))
    return out if out.shape[0] == n else out[:n]


def backward(x, off, msk, kern, g_out, geo: Geometry, cfg: PallasConfig, interpret: bool):
    """Gradients ``(g_x [B, H, W, C] float32, g_off [N, G*K*2], g_msk [N, G*K], g_kern [K, C, O] float32)``."""
    n = geo.b * geo.ho * geo.wo
    kk = geo.kh * geo.kw
    block_p = cfg.bwd_block_p
    n_tiles = pl.cdiv(n, block_p)
    splits = max(1, min(n_tiles, cfg.bwd_programs // (kk * (geo.c // _block_c(geo, cfg)))))
    tiles = pl.cdiv(n_tiles, splits)
    splits = pl.cdiv(n_tiles, tiles)
    n_pad = splits * tiles * block_p
    table = _table(x)
    block_c = _block_c(geo, cfg)
    relaxed = not interpret and _RELAXED_ADD is not None
    kernel = partial(_bwd_kernel, geo=geo, n=n, block_p=block_p, block_c=block_c, tiles=tiles,
                     add=_RELAXED_ADD if relaxed else jax.ref.addupdate)
    gx, g_off, g_msk, g_w = pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct(table.shape, jnp.float32),
                   jax.ShapeDtypeStruct((n_pad, off.shape[1]), jnp.float32),
                   jax.ShapeDtypeStruct((n_pad, msk.shape[1]), jnp.float32),
                   jax.ShapeDtypeStruct((splits, kk, geo.c, geo.o), jnp.float32)),
        grid=(kk * (geo.c // block_c), splits),
        input_output_aliases={5: 0},
        compiler_params=plgpu.CompilerParams(num_warps=cfg.bwd_warps, num_stages=cfg.stages),
        interpret=interpret,
        name="dcn_bwd",
    )(table, off, msk, kern, g_out, jnp.zeros(table.shape, jnp.float32))
    gx = gx.reshape(geo.b, geo.h + 2, geo.w + 2, geo.c)[:, 1:-1, 1:-1]
    if n_pad != n:
        g_off, g_msk = g_off[:n], g_msk[:n]
    return gx, g_off, g_msk, jnp.sum(g_w, axis=0)


@partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _kernels(x, off, msk, kern, bias, geo, cfg, interpret):
    """``x [B, H, W, C]``, ``off [N, G*K*2]``, ``msk [N, G*K]``, ``kern [K, C, O]``, ``bias [O]`` -> ``[N, O]``,
    both passes in the kernels."""
    return forward(x, off, msk, kern, bias, geo, cfg, interpret)


def _kernels_fwd(x, off, msk, kern, bias, geo, cfg, interpret):
    return forward(x, off, msk, kern, bias, geo, cfg, interpret), (x, off, msk, kern, bias)


def _kernels_bwd(geo, cfg, interpret, res, g_out):
    x, off, msk, kern, bias = res
    g_x, g_off, g_msk, g_kern = backward(x, off, msk, kern, g_out, geo, cfg, interpret)
    g_bias = jnp.sum(g_out.astype(jnp.float32), axis=0)
    return (g_x.astype(x.dtype), g_off.astype(off.dtype), g_msk.astype(msk.dtype), g_kern.astype(kern.dtype),
            g_bias.astype(bias.dtype))


_kernels.defvjp(_kernels_fwd, _kernels_bwd)


def deform_conv(x, offset, mask, kernel, bias, geo: Geometry, cfg: PallasConfig, interpret: bool) -> jax.Array:
    """The DCN in the kernels: ``modulated_deform_conv``'s arguments (``kernel [kh, kw, C, O]``, ``bias``
    or None) -> ``[B, Ho, Wo, O]`` in ``x.dtype``. ``mask=None``: ``offset`` holds the offsets and then the
    mask's logits (``modulated_deform_conv_packed``), read in place by the forward kernel, which takes the
    sigmoid itself (no differentiation rule: the caller pairs it with another backward)."""
    n = geo.b * geo.ho * geo.wo
    # Offsets and mask are read in their own dtype and converted to float32 in the kernel.
    float_t = lambda a: a if a.dtype in (jnp.float32, jnp.bfloat16, jnp.float16) else a.astype(jnp.float32)  # noqa: E731
    off = float_t(offset).reshape(n, -1)
    kern = kernel.astype(x.dtype).reshape(geo.k, geo.c, geo.o)
    bias = jnp.zeros((geo.o,), jnp.float32) if bias is None else bias.astype(jnp.float32)
    if mask is None:
        out = forward(x, off, None, kern, bias, geo, cfg, interpret)
    else:
        out = _kernels(x, off, float_t(mask).reshape(n, -1), kern, bias, geo, cfg, interpret)
    return out.reshape(geo.b, geo.ho, geo.wo, geo.o)
