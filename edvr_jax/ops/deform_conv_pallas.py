"""DCNv2 as Pallas (Triton) GPU kernels: implicit GEMM forward, per-tap backward.

This is the GPU fast path of ``edvr_jax.ops.deform_conv.modulated_deform_conv``
(``impl="pallas"``, or ``impl="auto"`` when lowering for CUDA). Semantics, layouts
and the sampling rule are exactly those of the gather path in ``deform_conv.py``
(torchvision's ``deform_conv2d`` in NHWC); see that module's docstring.

Inputs are flattened over the batch: ``N = B * Ho * Wo`` output pixels. The input
is zero-padded by one pixel and reshaped to a table ``[B * (H+2) * (W+2), C]``
(one row per padded pixel), so that every bilinear corner of every sample, inside
the image or not, is a valid row (corners outside the image read the zero border
and get zero weight where the sample is outside, as in the gather path); no
masked loads and no masked atomics are needed.

Forward (``_fwd_kernel``), grid ``(cdiv(N, P),)``: a program owns ``P`` output
pixels. For each tap ``k`` (unrolled) it computes the sample coordinates and the
four bilinear weights per (pixel, group) in float32 (``[P, G]``), broadcasts them
to the channels of each group (``[P, C]``), gathers the four corner rows (the
``C / G`` channels of one group are contiguous in NHWC, as DCNv4 arranges its
threads), forms the modulated sample ``A_k [P, C]`` in float32 and accumulates
``A_k @ W_k`` (``W_k = kernel[i, j]``, ``[C, O]``) into a ``[P, O]`` float32 tile:
the im2col columns never leave the chip. Bias is added in the kernel and the tile
is stored in the output dtype.

Backward (``_bwd_kernel``), grid ``(K, S)``: program ``(k, s)`` handles tap ``k``
for the ``s``-th contiguous range of pixel tiles. Per tile it recomputes ``A_k``
(the corners), forms ``g_A = g_out @ W_k^T`` on the tensor cores, and from these:

* offset and mask gradients in closed form, summed over each group's channels
  (a ``[P, G, C/G]`` reduction in registers), stored once per (pixel, group, tap):
  no other program writes them, so plain stores, no atomics;
* the kernel gradient ``A_k^T @ g_out`` accumulated in a ``[C, O]`` float32
  register tile over the program's tiles and written once per program as a
  partial; the ``S`` partials are summed by XLA (deterministic, no contention);
* the input gradient: each corner's ``w_q * g_A`` added atomically into a float32
  table: relaxed vector atomics on the GPU (``_relaxed_add_primitive``; SASS
  ``REDG.E.ADD.F32x4``), a scatter-add in interpret mode. Pallas' own
  ``jax.ref.addupdate`` lowers to acquire-release atomics, which ptxas brackets
  with ``MEMBAR.ALL.GPU`` before and ``CCTL.IVALL`` (an L1 invalidation) after
  every add (sm_90a SASS of this kernel, compiled without a GPU): the kernels
  measured on H100/H200 before 2026-11-27's sixth session ran those. XLA's
  scatter-add is relaxed too. This is the one global scatter left: its
  targets are data-dependent (the transpose of the bilinear gather), and a
  gather-formulated transpose would need the inverse map of the offsets. Taps
  run as separate programs next to each other in the grid, so concurrent
  programs share the pixel range (``g_out``, offsets and corners stay in L2)
  while their atomics spread over 9 different shifts of the image.

Supported here: ``C``, ``G``, ``O`` powers of two, ``C >= 16`` and ``O >= 16``
(Triton's ``dot`` needs 16-wide tiles), floating inputs up to 32 bits, table
sizes below 2**31 elements. ``supports(...)`` tells; the caller falls back to
the gather path otherwise. Tile sizes and warps are in ``PallasConfig``;
the defaults are educated guesses awaiting a GPU (see benchmarks/README.md).

On CPU the kernels run in Pallas interpret mode (tests compare them with the
gather path); that is slow and only meant for testing.
"""

from __future__ import annotations

import dataclasses
import os
from functools import partial

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu


@dataclasses.dataclass(frozen=True)
class PallasConfig:
    """Launch parameters of the two kernels (hashable: a static argument).

    The defaults (``config_for``) keep both kernels free of register spills on
    sm_90 at 64 and 128 channels: ptxas register counts of the Triton output,
    compiled on a CPU machine (``tools/triton_regs.py``); their speed awaits a GPU.
    ``EDVR_JAX_DCN_PALLAS="block_p=64,warps=8,..."`` overrides fields (for tuning).
    """

    block_p: int = 64  # output pixels per forward program
    warps: int = 8
    tap_loop: bool = True  # forward: taps (and channel blocks) in a loop; unrolled needs ~2x the registers
    block_c: int = 64  # input channels per step (whole deformable groups)
    bwd_block_p: int = 32  # output pixels per backward tile
    bwd_warps: int = 8
    bwd_programs: int = 1024  # target number of backward programs: a few waves on a ~132-SM GPU
    stages: int = 1  # Triton software pipelining of the loops
    relaxed_atomics: bool = True  # backward: the input gradient's atomic adds relaxed, not acquire-release


#: Overrides fields of the default config, ``name=value`` pairs separated by commas.
CONFIG_ENV = "EDVR_JAX_DCN_PALLAS"


def config_for(dtype) -> PallasConfig:
    """The default launch parameters for inputs of this dtype (float32 needs smaller backward tiles)."""
    cfg = PallasConfig(bwd_block_p=16) if jnp.dtype(dtype) == jnp.float32 else PallasConfig()
    env = os.environ.get(CONFIG_ENV, "").strip()
    if env:
        fields = {f.name: f.type for f in dataclasses.fields(PallasConfig)}
        updates = {}
        for item in env.split(","):
            name, _, value = item.partition("=")
            name = name.strip()
            if name not in fields:
                raise ValueError(f"{CONFIG_ENV}: unknown field {name!r}; known: {sorted(fields)}")
            updates[name] = value.strip().lower() in ("1", "true", "yes") if fields[name] in ("bool", bool) \
                else int(value)
        cfg = dataclasses.replace(cfg, **updates)
    return cfg


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def supports(x_shape, x_dtype, out_ch: int, groups: int) -> str | None:
    """None when the kernels handle this call, else the reason they do not."""
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


class Dims(tuple):
    """Static problem size: a plain tuple ``(b, h, w, c, ho, wo, o, g, kh, kw, stride, pad, dil)``."""

    __slots__ = ()

    def __new__(cls, *args):
        return super().__new__(cls, args)

    b = property(lambda s: s[0])
    h = property(lambda s: s[1])
    w = property(lambda s: s[2])
    c = property(lambda s: s[3])
    ho = property(lambda s: s[4])
    wo = property(lambda s: s[5])
    o = property(lambda s: s[6])
    g = property(lambda s: s[7])
    kh = property(lambda s: s[8])
    kw = property(lambda s: s[9])
    stride = property(lambda s: s[10])
    pad = property(lambda s: s[11])
    dil = property(lambda s: s[12])


def _table(x: jax.Array) -> jax.Array:
    """``[B, H, W, C]`` -> ``[B * (H+2) * (W+2), C]``, zero border."""
    return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(-1, x.shape[-1])


def _tap_terms(d: Dims, k, p, off_ref, msk_ref, g0, gc: int, packed: bool = False):
    """Per (pixel, group) sample terms of tap ``k``, groups ``g0 .. g0 + gc``, pixels ``p`` ``[P]`` (``< N``).

    Returns ``(top_left [P, gc] int32 table rows, ly, lx, inside, mi [P, gc] float32)``; ``k`` and
    ``g0`` may be traced scalars (program ids, loop indices) or Python ints. ``packed``: ``off_ref`` and
    ``msk_ref`` are both the ``[N, 3*G*K]`` offsets-and-mask-logits array (``forward``), the mask its
    sigmoid.
    """
    kk = d.kh * d.kw
    (sh, sw), (ph, pw), (dh, dw) = d.stride, d.pad, d.dil
    hw = d.ho * d.wo
    bi = jax.lax.div(p, hw)
    r = jax.lax.rem(p, hw)
    oy, ox = jax.lax.div(r, d.wo), jax.lax.rem(r, d.wo)
    ti, tj = jax.lax.div(k, d.kw), jax.lax.rem(k, d.kw)
    gk = (g0 + jnp.arange(gc, dtype=jnp.int32)) * kk + k  # [gc]: column (g * K + k) of the mask
    rows = p[:, None]
    dy = plgpu.load(off_ref.at[rows, (2 * gk)[None, :]]).astype(jnp.float32)
    dx = plgpu.load(off_ref.at[rows, (2 * gk + 1)[None, :]]).astype(jnp.float32)
    m = plgpu.load(msk_ref.at[rows, ((2 * d.g * kk if packed else 0) + gk)[None, :]]).astype(jnp.float32)
    if packed:
        m = 1.0 / (1.0 + jnp.exp(-m))
    py = (oy * sh - ph + ti * dh).astype(jnp.float32)[:, None] + dy
    px = (ox * sw - pw + tj * dw).astype(jnp.float32)[:, None] + dx
    inside = (py > -1) & (py < d.h) & (px > -1) & (px < d.w)
    y0f, x0f = jnp.floor(py), jnp.floor(px)
    y0 = jnp.clip(y0f, -1, d.h - 1).astype(jnp.int32)
    x0 = jnp.clip(x0f, -1, d.w - 1).astype(jnp.int32)
    top_left = (bi[:, None] * (d.h + 2) + y0 + 1) * (d.w + 2) + x0 + 1
    insf = inside.astype(jnp.float32)
    return gk, top_left, py - y0f, px - x0f, insf, m * insf


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


def _corner_rows(d: Dims, top_left_c):
    """Table rows of the four corners, ``(0,0), (0,1), (1,0), (1,1)``."""
    return (top_left_c, top_left_c + 1, top_left_c + (d.w + 2), top_left_c + (d.w + 3))


def _block_c(d: Dims, cfg: PallasConfig) -> int:
    """Channels per step: whole groups, at most ``cfg.block_c`` unless one group is wider."""
    return max(d.c // d.g, min(d.c, cfg.block_c))


def _fwd_kernel(table_ref, off_ref, msk_ref, w_ref, b_ref, out_ref, *, d: Dims, n: int, block_p: int,
                block_c: int, tap_loop: bool, packed: bool):
    cg = d.c // d.g
    gc, n_ch = block_c // cg, d.c // block_c
    rows_out = pl.program_id(0) * block_p + jnp.arange(block_p, dtype=jnp.int32)
    p = jnp.minimum(rows_out, n - 1)  # rows past N (the last tile) read row N-1, write padding rows

    def step(kc, acc):  # one (tap, channel block)
        k, ch = (kc // n_ch, kc % n_ch) if isinstance(kc, int) else (jax.lax.div(kc, n_ch), jax.lax.rem(kc, n_ch))
        _, top_left, ly, lx, _, mi = _tap_terms(d, k, p, off_ref, msk_ref, ch * gc, gc, packed)
        col = (ch * block_c + jnp.arange(block_c, dtype=jnp.int32))[None, :]
        hy, hx = 1.0 - ly, 1.0 - lx
        weights = (hy * hx * mi, hy * lx * mi, ly * hx * mi, ly * lx * mi)
        rows = _corner_rows(d, _expand(top_left, cg))
        sample = None
        for wq, rq in zip(weights, rows):
            term = _expand(wq, cg) * plgpu.load(table_ref.at[rq, col]).astype(jnp.float32)
            sample = term if sample is None else sample + term
        w = w_ref[k, pl.ds(ch * block_c, block_c), :]
        return acc + jnp.dot(sample.astype(w_ref.dtype), w, preferred_element_type=jnp.float32)

    acc = jnp.zeros((block_p, d.o), jnp.float32)
    steps = d.kh * d.kw * n_ch
    if tap_loop:
        acc = jax.lax.fori_loop(0, steps, step, acc)
    else:
        for kc in range(steps):
            acc = step(kc, acc)
    acc += b_ref[...].astype(jnp.float32)
    plgpu.store(out_ref.at[rows_out[:, None], jnp.arange(d.o, dtype=jnp.int32)[None, :]], acc.astype(out_ref.dtype))


def _bwd_kernel(table_ref, off_ref, msk_ref, w_ref, gout_ref, gx_in_ref,
                gx_ref, goff_ref, gmsk_ref, gw_ref, *, d: Dims, n: int, block_p: int, block_c: int, tiles: int,
                add=jax.ref.addupdate):
    del gx_in_ref  # aliased with gx_ref (zeros on entry)
    cg = d.c // d.g
    gc, n_ch = block_c // cg, d.c // block_c
    kc = pl.program_id(0)
    k, ch = jax.lax.div(kc, n_ch), jax.lax.rem(kc, n_ch)
    s = pl.program_id(1)
    c0 = ch * block_c
    col = (c0 + jnp.arange(block_c, dtype=jnp.int32))[None, :]
    ocol = jnp.arange(d.o, dtype=jnp.int32)[None, :]
    w_k = w_ref[k, pl.ds(c0, block_c), :]  # [block_c, O]

    def tile(t, g_w):
        rows_out = (s * tiles + t) * block_p + jnp.arange(block_p, dtype=jnp.int32)
        valid = rows_out < n
        p = jnp.minimum(rows_out, n - 1)
        gk, top_left, ly, lx, inside, mi = _tap_terms(d, k, p, off_ref, msk_ref, ch * gc, gc)
        mi = jnp.where(valid[:, None], mi, 0.0)
        inside = jnp.where(valid[:, None], inside, 0.0)
        g_o = plgpu.load(gout_ref.at[p[:, None], ocol])  # [P, O]
        g_o = jnp.where(valid[:, None], g_o, jnp.zeros_like(g_o))
        g_a = jax.lax.dot_general(g_o, w_k, (((1,), (1,)), ((), ())),
                                  preferred_element_type=jnp.float32)  # [P, block_c]
        rows = _corner_rows(d, _expand(top_left, cg))
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

    g_w = jax.lax.fori_loop(0, tiles, tile, jnp.zeros((block_c, d.o), jnp.float32))
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
#: The backward kernel's atomics on the GPU with this jax (``relaxed_atomics=True``), as the benchmarks print it.
BACKWARD_ATOMICS = "relaxed" if _RELAXED_ADD is not None else "acquire-release (fallback: jax internals missing)"


def _interpret() -> bool:
    return jax.default_backend() != "gpu"


def forward(x, off, msk, kern, bias, d: Dims, cfg: PallasConfig, interpret: bool):
    """``x [B, H, W, C]``, ``off [N, G*K*2]``, ``msk [N, G*K]`` (float32), ``kern [K, C, O]`` (x.dtype),
    ``bias [O]`` (float32) -> ``[N, O]`` in ``x.dtype``.

    ``msk=None``: ``off`` is ``[N, 3*G*K]``, the offsets followed by the mask's logits (BasicSR's
    ``DCNv2Pack`` predicts both with one conv), read in place with the sigmoid taken in the kernel: no
    sliced copies of the offsets and the mask are written first (XLA cannot fuse them into the kernel).
    """
    n = d.b * d.ho * d.wo
    block_p = cfg.block_p
    packed = msk is None
    kernel = partial(_fwd_kernel, d=d, n=n, block_p=block_p, block_c=_block_c(d, cfg), tap_loop=cfg.tap_loop,
                     packed=packed)
    if packed:  # one operand, read as both the offsets and the mask logits
        kernel = partial(lambda fwd, table_ref, om_ref, *refs: fwd(table_ref, om_ref, om_ref, *refs), kernel)
    offsets_and_mask = (off,) if packed else (off, msk)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((pl.cdiv(n, block_p) * block_p, d.o), x.dtype),
        grid=(pl.cdiv(n, block_p),),
        compiler_params=plgpu.CompilerParams(num_warps=cfg.warps, num_stages=cfg.stages),
        interpret=interpret,
        name="dcn_fwd",
    )(_table(x), *offsets_and_mask, kern, bias.reshape(1, d.o))
    return out if out.shape[0] == n else out[:n]


def backward(x, off, msk, kern, g_out, d: Dims, cfg: PallasConfig, interpret: bool):
    """Gradients ``(g_x [B, H, W, C] float32, g_off [N, G*K*2], g_msk [N, G*K], g_kern [K, C, O] float32)``."""
    n = d.b * d.ho * d.wo
    kk = d.kh * d.kw
    block_p = cfg.bwd_block_p
    n_tiles = pl.cdiv(n, block_p)
    splits = max(1, min(n_tiles, cfg.bwd_programs // (kk * (d.c // _block_c(d, cfg)))))
    tiles = pl.cdiv(n_tiles, splits)
    splits = pl.cdiv(n_tiles, tiles)
    n_pad = splits * tiles * block_p
    table = _table(x)
    block_c = _block_c(d, cfg)
    relaxed = cfg.relaxed_atomics and not interpret and _RELAXED_ADD is not None
    kernel = partial(_bwd_kernel, d=d, n=n, block_p=block_p, block_c=block_c, tiles=tiles,
                     add=_RELAXED_ADD if relaxed else jax.ref.addupdate)
    gx, g_off, g_msk, g_w = pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct(table.shape, jnp.float32),
                   jax.ShapeDtypeStruct((n_pad, off.shape[1]), jnp.float32),
                   jax.ShapeDtypeStruct((n_pad, msk.shape[1]), jnp.float32),
                   jax.ShapeDtypeStruct((splits, kk, d.c, d.o), jnp.float32)),
        grid=(kk * (d.c // block_c), splits),
        input_output_aliases={5: 0},
        compiler_params=plgpu.CompilerParams(num_warps=cfg.bwd_warps, num_stages=cfg.stages),
        interpret=interpret,
        name="dcn_bwd",
    )(table, off, msk, kern, g_out, jnp.zeros(table.shape, jnp.float32))
    gx = gx.reshape(d.b, d.h + 2, d.w + 2, d.c)[:, 1:-1, 1:-1]
    if n_pad != n:
        g_off, g_msk = g_off[:n], g_msk[:n]
    return gx, g_off, g_msk, jnp.sum(g_w, axis=0)
