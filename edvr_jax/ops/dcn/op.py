"""The public DCN op, its options and the choice of formulation per lowering platform."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp

from edvr_jax.ops.dcn import cpu, gpu, pallas, tpu
from edvr_jax.ops.dcn.sampling import Geometry

IMPLS = ("auto", "gather", "pallas")


@dataclasses.dataclass(frozen=True)
class DCNOptions:
    """How a DCN is computed; the result does not depend on it (tests hold every path to the same values).

    ``impl``: ``"auto"`` (default): per lowering platform, the vectorized gather in that platform's
    formulation (``cpu.py``, ``gpu.py``, ``tpu.py``), and on CUDA the Pallas forward kernel for a bf16/f16
    DCN that is not differentiated (``pallas.py``); ``"gather"``: the gather everywhere; ``"pallas"``: the
    Pallas kernels for both passes where ``pallas.supports`` the call (in interpret mode off CUDA: slow, for
    tests), else the gather. ``chunk_rows``: the gather's output rows per step of a row-chunked loop, on
    any platform (bounds memory); None: about 2 MiB of columns per step on CPU, one step elsewhere.
    ``pallas``: the kernels' launch parameters; None: ``pallas.config_for(dtype)``.
    """

    impl: str = "auto"
    chunk_rows: int | None = None
    pallas: pallas.PallasConfig | None = None

    def __post_init__(self):
        if self.impl not in IMPLS:
            raise ValueError(f"DCNOptions.impl must be one of {IMPLS}, got {self.impl!r}")
        if self.chunk_rows is not None and (not isinstance(self.chunk_rows, int) or self.chunk_rows < 1):
            raise ValueError(f"DCNOptions.chunk_rows must be None or an integer >= 1, got {self.chunk_rows!r}")


def modulated_deform_conv(x: jax.Array, offset: jax.Array, mask: jax.Array, kernel: jax.Array,
                          bias: jax.Array | None = None, *, stride: int | Sequence[int] = 1,
                          padding: int | Sequence[int] = 1, dilation: int | Sequence[int] = 1,
                          options: DCNOptions = DCNOptions()) -> jax.Array:
    """DCNv2, ``torchvision.ops.deform_conv2d`` in NHWC: ``sum_k w_k * mask_k * x(p + p_k + offset_k)`` (+ bias).

    Args:
      x: input, ``[B, H, W, C]``.
      offset: ``[B, Ho, Wo, G * kh * kw * 2]``: ``offset[..., (g * K + k) * 2 + 0]`` is the row (y) and
        ``... + 1`` the column (x) displacement of tap ``k = i * kw + j`` of deformable group ``g``
        (``K = kh * kw``); group ``g`` covers input channels ``[g * C / G, (g + 1) * C / G)``.
      mask: ``[B, Ho, Wo, G * kh * kw]``, ``mask[..., g * K + k]`` multiplies that tap's sample; used as given.
      kernel: ``[kh, kw, C, O]`` (Flax ``Conv`` layout); bias: ``[O]`` or None.
      stride, padding, dilation: as ``torch.nn.Conv2d`` (int or (h, w) pair).
      options: ``DCNOptions`` (implementation, row chunks, kernel launch parameters).

    Output pixel ``(oy, ox)``, tap ``(i, j)`` samples ``y = oy * stride - padding + i * dilation + dy``
    (likewise ``x``): zero when ``y <= -1``, ``y >= H``, ``x <= -1`` or ``x >= W``, else bilinear with
    out-of-image corners as zero (``sampling.bilinear_terms``). Returns ``[B, Ho, Wo, O]`` in ``x.dtype``,
    accumulated in float32 or wider; coordinates are float32 or wider whatever the input dtype. Keep
    ``offset`` in float32 under bf16 compute (bf16 offsets of magnitude ``2**n`` resolve ``2**(n-7)`` px).
    """
    geo = _geometry(x, kernel, bias, stride, padding, dilation, mask, 1, "mask")
    if offset.shape != (geo.b, geo.ho, geo.wo, geo.groups * geo.k * 2):
        raise ValueError(f"offset must be [B, Ho, Wo, G*{geo.k}*2] = "
                         f"{(geo.b, geo.ho, geo.wo, geo.groups * geo.k * 2)}, got {offset.shape}")
    return _dispatch(x, (offset, mask), kernel, bias, geo, options)


def modulated_deform_conv_packed(x: jax.Array, offset_mask: jax.Array, kernel: jax.Array,
                                 bias: jax.Array | None = None, *, stride: int | Sequence[int] = 1,
                                 padding: int | Sequence[int] = 1, dilation: int | Sequence[int] = 1,
                                 options: DCNOptions = DCNOptions()) -> jax.Array:
    """``modulated_deform_conv`` with offsets and mask as BasicSR's ``DCNv2Pack`` predicts them in one conv.

    ``offset_mask``: ``[B, Ho, Wo, 3 * G * kh * kw]``: the first ``2 * G * kh * kw`` channels are the offsets
    (``modulated_deform_conv``'s layout; BasicSR's ``cat(o1, o2)``), the rest the mask's logits; the mask is
    their sigmoid, in float32. The Pallas forward kernel reads this array in place (a split would first write
    the offsets and the mask to memory: XLA cannot fuse producers into a kernel's operands).
    """
    geo = _geometry(x, kernel, bias, stride, padding, dilation, offset_mask, 3, "offset_mask")
    return _dispatch(x, (offset_mask,), kernel, bias, geo, options)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def _geometry(x, kernel, bias, stride, padding, dilation, per_tap, per_group_tap: int, name: str) -> Geometry:
    """The call's ``Geometry``, or a ValueError naming the argument that does not fit; the deformable groups
    are read from ``per_tap``'s channels (``per_group_tap`` values per group and tap)."""
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
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    k = kh * kw
    unit = per_group_tap * k
    if per_tap.ndim != 4 or per_tap.shape[:3] != (b, ho, wo) or per_tap.shape[-1] % unit:
        raise ValueError(f"{name} must be [B, Ho, Wo, G*{unit}] = [{b}, {ho}, {wo}, G*{unit}], got {per_tap.shape}")
    groups = per_tap.shape[-1] // unit
    if c % groups:
        raise ValueError(f"{c} input channels do not split into {groups} deformable groups")
    return Geometry(b, h, w, c, ho, wo, out_ch, groups, kh, kw, stride, padding, dilation)


def _gather(x, offset, mask, kernel, bias, *, geo: Geometry, form: str, chunk_rows: int | None):
    """The vectorized-gather DCN in the formulation of ``form`` ("cpu", "gpu" or "tpu"); with ``chunk_rows``
    (or on CPU) the row-chunked formulation."""
    symbolic = not all(isinstance(d, int) for d in (geo.b, geo.ho, geo.wo))
    if symbolic:  # jax.export with symbolic shapes: one chunk
        chunk = geo.ho
    elif chunk_rows is not None:
        chunk = min(chunk_rows, geo.ho)
    else:
        chunk = cpu.default_chunk(geo) if form == "cpu" else geo.ho
    # Coordinates, weights and accumulation in at least float32 (float64 stays float64).
    coord_t = jnp.promote_types(offset.dtype, jnp.float32)
    acc_t = jnp.promote_types(x.dtype, jnp.float32)
    off = offset.astype(coord_t).reshape(geo.b, geo.ho, geo.wo, geo.groups, geo.k, 2)
    m = mask.astype(coord_t).reshape(geo.b, geo.ho, geo.wo, geo.groups, geo.k)
    # One matmul over (g, k, c): the kernel is reordered to match the columns.
    wmat = jnp.transpose(kernel.astype(x.dtype).reshape(geo.k, geo.groups, geo.cg, geo.o), (1, 0, 2, 3))
    wmat = wmat.reshape(geo.groups * geo.k * geo.cg, geo.o)
    if form == "cpu" or chunk < geo.ho:
        out = cpu.deform_conv(x, off, m, wmat, geo, chunk, form == "cpu")
    else:
        out = (tpu if form == "tpu" else gpu).deform_conv(x, off, m, wmat, geo)
    if bias is not None:
        out = out + bias.astype(acc_t)
    return out.astype(x.dtype)


def _split_vjp(forward, backward_of, primal):
    """A DCN whose value is ``primal``'s when it is not differentiated and ``forward``'s under
    differentiation, and whose gradient is the VJP of ``backward_of`` (all three compute the same function;
    ``backward_of``'s own forward output is unused and removed by XLA)."""
    @jax.custom_vjp
    def dcn(*args):
        return primal(*args)

    def dcn_fwd(*args):
        return forward(*args), args

    def dcn_bwd(args, g_out):
        return jax.vjp(backward_of, *args)[1](g_out)

    dcn.defvjp(dcn_fwd, dcn_bwd)
    return dcn


def _dispatch(x, data, kernel, bias, geo: Geometry, options: DCNOptions):
    """The DCN on ``data``: ``(offset, mask)``, or ``(offset_mask,)`` (packed), in the formulation
    ``options.impl`` picks per lowering platform (``lax.platform_dependent``: ``jax.export`` for one platform
    gets that platform's path, from any machine)."""
    if not isinstance(options, DCNOptions):
        raise TypeError(f"options must be a DCNOptions, got {type(options).__name__}")
    packed = len(data) == 1
    n_off = 2 * geo.groups * geo.k

    def unpacked(dcn):  # a DCN of (x, offset, mask, kernel, bias) as one of (x, *data, kernel, bias)
        if not packed:
            return dcn

        def split(x, om, kernel, bias):
            # jnp.split, not two slices: its gradient is one concatenate (two slices' is a sum of two padded
            # arrays, which XLA fused with the conv's bias reduction into a kernel that spills registers).
            offset, logits = jnp.split(om, [n_off], axis=-1)
            return dcn(x, offset, jax.nn.sigmoid(logits.astype(jnp.float32)), kernel, bias)
        return split

    gather = {form: unpacked(partial(_gather, geo=geo, form=form, chunk_rows=options.chunk_rows))
              for form in ("cpu", "gpu", "tpu")}
    branches = dict(cpu=gather["cpu"], tpu=gather["tpu"], default=gather["gpu"])
    if options.impl != "gather" and pallas.supports(x.shape, x.dtype, geo.o, geo.groups) is None:
        cfg = options.pallas or pallas.config_for(x.dtype)

        def forward_kernel(interpret):  # reads packed offsets and mask logits in place; no backward of its own
            kernels = partial(pallas.deform_conv, geo=geo, cfg=cfg, interpret=interpret)
            return (lambda x, om, kernel, bias: kernels(x, om, None, kernel, bias)) if packed else kernels

        if options.impl == "pallas":
            def both_passes(interpret):
                kernels = unpacked(partial(pallas.deform_conv, geo=geo, cfg=cfg, interpret=interpret))
                return _split_vjp(kernels, kernels, forward_kernel(interpret)) if packed else kernels
            branches = dict(cuda=both_passes(interpret=False), default=both_passes(interpret=True))
        elif x.dtype in (jnp.bfloat16, jnp.float16):  # auto: the kernel for inference, the gather for training
            branches["cuda"] = _split_vjp(gather["gpu"], gather["gpu"], forward_kernel(interpret=False))
    return jax.lax.platform_dependent(x, *data, kernel, bias, **branches)
