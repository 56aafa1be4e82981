"""modulated_deform_conv against torchvision, an independent NumPy loop, lax.conv and finite differences."""

import math
import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from edvr_jax.ops.dcn import DCNOptions, PallasConfig, modulated_deform_conv, modulated_deform_conv_packed
from edvr_jax.ops.dcn import op, pallas, tpu


def _bilinear_reference(img, y, x):
    """torchvision's bilinear_interpolate (deform_conv2d_kernel.cpp), written out per sample; img [H, W, C]."""
    h, w, _ = img.shape
    if y <= -1 or y >= h or x <= -1 or x >= w:
        return np.zeros(img.shape[-1])
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    out = np.zeros(img.shape[-1])
    for yy, xx, wt in ((y0, x0, (1 - ly) * (1 - lx)), (y0, x0 + 1, (1 - ly) * lx),
                       (y0 + 1, x0, ly * (1 - lx)), (y0 + 1, x0 + 1, ly * lx)):
        if 0 <= yy < h and 0 <= xx < w:
            out += wt * img[yy, xx]
    return out


def dcn_reference(x, offset, mask, kernel, bias, stride=1, pad=1, dil=1):
    """Loops over batch, output pixel, group and tap; NHWC / HWIO like the op under test."""
    b, h, w, c = x.shape
    kh, kw, _, o = kernel.shape
    k = kh * kw
    g = mask.shape[-1] // k
    cg = c // g
    ho, wo = offset.shape[1:3]
    out = np.zeros((b, ho, wo, o))
    for n in range(b):
        for oy in range(ho):
            for ox in range(wo):
                col = np.zeros((kh, kw, c))
                for gi in range(g):
                    for t in range(k):
                        i, j = divmod(t, kw)
                        dy, dx = offset[n, oy, ox, (gi * k + t) * 2: (gi * k + t) * 2 + 2]
                        y = oy * stride - pad + i * dil + dy
                        xx = ox * stride - pad + j * dil + dx
                        sample = _bilinear_reference(x[n, :, :, gi * cg:(gi + 1) * cg], y, xx)
                        col[i, j, gi * cg:(gi + 1) * cg] = mask[n, oy, ox, gi * k + t] * sample
                out[n, oy, ox] = np.einsum("ijc,ijco->o", col, kernel) + bias
    return out


def _random_case(seed, b=2, h=6, w=7, c=8, groups=4, o=5, scale=3.0, stride=1, pad=1, dil=1):
    rng = np.random.default_rng(seed)
    ho = (h + 2 * pad - dil * 2 - 1) // stride + 1
    wo = (w + 2 * pad - dil * 2 - 1) // stride + 1
    x = rng.standard_normal((b, h, w, c)).astype(np.float32)
    offset = (scale * rng.standard_normal((b, ho, wo, groups * 9 * 2))).astype(np.float32)
    mask = rng.uniform(0, 1, (b, ho, wo, groups * 9)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, c, o)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    return x, offset, mask, kernel, bias


@pytest.mark.parametrize("name", ["dcn_op", "dcn_op_s2"])
def test_matches_torchvision_deform_conv2d(goldens, name):
    g = {k.split("/")[1]: v for k, v in goldens.items() if k.startswith(name + "/")}
    stride, pad, dil = (int(v) for v in g["conv"])
    nhwc = lambda a: np.transpose(a, (0, 2, 3, 1))  # noqa: E731
    out = modulated_deform_conv(nhwc(g["x"]), nhwc(g["offset"]), nhwc(g["mask"]),
                                np.transpose(g["weight"], (2, 3, 1, 0)), g["bias"],
                                stride=stride, padding=pad, dilation=dil)
    assert abs(g["offset"]).max() > 8  # samples really leave the 7x9 image
    np.testing.assert_allclose(np.asarray(out), nhwc(g["y"]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride,pad,dil", [(1, 1, 1), (2, 0, 2), (1, 2, 1)])
def test_matches_numpy_loop_reference(stride, pad, dil):
    x, offset, mask, kernel, bias = _random_case(0, stride=stride, pad=pad, dil=dil)
    out = modulated_deform_conv(x, offset, mask, kernel, bias, stride=stride, padding=pad, dilation=dil)
    ref = dcn_reference(x, offset, mask, kernel, bias, stride, pad, dil)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_border_cases_by_hand():
    """One channel, one tap with weight 1: the output is the sample itself."""
    img = np.arange(1, 13, dtype=np.float32).reshape(1, 3, 4, 1)  # rows 1..4, 5..8, 9..12
    kernel = np.zeros((3, 3, 1, 1), np.float32)
    kernel[1, 1] = 1.0  # centre tap only: sample at (oy + dy, ox + dx)
    mask = np.ones((1, 3, 4, 9), np.float32)

    def sample_at(dy, dx, oy=0, ox=0):
        offset = np.zeros((1, 3, 4, 18), np.float32)
        offset[0, oy, ox, 8] = dy  # tap 4 = centre, (dy, dx) at channels 8, 9
        offset[0, oy, ox, 9] = dx
        return float(modulated_deform_conv(img, offset, mask, kernel)[0, oy, ox, 0])

    assert sample_at(0, 0) == 1.0
    assert sample_at(0.5, 0.5) == pytest.approx((1 + 2 + 5 + 6) / 4)
    assert sample_at(-0.5, 0) == pytest.approx(0.5 * 1)            # top corner row is outside: counted as zero
    assert sample_at(-1.0, 0) == 0.0                               # y <= -1: zero
    assert sample_at(-0.999, 0) == pytest.approx(0.001 * 1, abs=1e-5)
    assert sample_at(0, -0.25) == pytest.approx(0.75 * 1)
    assert sample_at(2.5, 3.0, 0, 0) == pytest.approx(0.5 * 12)   # (2.5, 3): half of the bottom-right pixel
    assert sample_at(3.0, 0) == 0.0                                # y >= H: zero
    assert sample_at(0, 1.25, 0, 2) == pytest.approx(0.75 * 4)    # x = 3.25: right neighbour outside
    assert sample_at(0, 2.0, 0, 2) == 0.0                          # x = 4 = W: zero


def test_zero_offset_unit_mask_is_a_plain_conv():
    x, offset, mask, kernel, bias = _random_case(1, b=2, h=9, w=11, c=16, groups=8, o=6)
    out = modulated_deform_conv(x, np.zeros_like(offset), np.ones_like(mask), kernel, bias)
    ref = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_integer_offsets_shift_the_input():
    """dy=1, dx=-2 on every tap: tap (i, j) of pixel (y, x) reads x[y - 1 + i + 1, x - 1 + j - 2], i.e. a
    VALID conv over z[u, v] = x[u, v - 3] (zero outside), z being (H + 2) x (W + 2)."""
    x, offset, mask, kernel, bias = _random_case(2, b=1, h=8, w=10, c=8, groups=2, o=3)
    offset = np.tile(np.array([1.0, -2.0], np.float32), offset.shape[-1] // 2) * np.ones_like(offset)
    z = np.zeros((1, 10, 12, 8), np.float32)
    z[:, :8, 3:12] = x[:, :, :9]
    out = modulated_deform_conv(x, offset, np.ones_like(mask), kernel, bias)
    ref = jax.lax.conv_general_dilated(z, kernel, (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_rows", [None, 2])
def test_gradients_match_finite_differences(chunk_rows):
    # 3 channels per group: the odd case of the halving channel sums.
    x, offset, mask, kernel, bias = _random_case(3, b=2, h=5, w=6, c=6, groups=2, o=3, scale=1.5)
    # Keep samples off integer coordinates, where bilinear sampling has kinks.
    offset = np.floor(offset) + 0.2 + 0.6 * np.random.default_rng(0).uniform(size=offset.shape)
    with jax.enable_x64(True):
        args = [jnp.asarray(a, jnp.float64) for a in (x, offset, mask, kernel, bias)]
        check_grads(lambda *a: modulated_deform_conv(*a, options=DCNOptions(chunk_rows=chunk_rows)), args, order=1, modes=("rev",),
                    eps=1e-5, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("chunk_rows,stride,pad,dil", [(1, 1, 1, 1), (3, 1, 1, 1), (2, 2, 0, 2), (5, 1, 2, 1)])
def test_row_chunks_equal_one_chunk(chunk_rows, stride, pad, dil):
    """The row-chunked loop (CPU default) gives the one-chunk values and gradients, a partial last chunk included."""
    x, offset, mask, kernel, bias = _random_case(7, b=2, h=10, w=7, c=8, groups=2, o=5, stride=stride, pad=pad,
                                                 dil=dil)
    ho = offset.shape[1]
    assert ho % chunk_rows or chunk_rows == 1  # exercises the zero-padded last chunk (or one row per step)

    def loss(chunk, *args):
        out = modulated_deform_conv(*args, stride=stride, padding=pad, dilation=dil,
                                    options=DCNOptions(chunk_rows=chunk))
        return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape))), out

    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(1, 2, 3, 4, 5), has_aux=True), static_argnums=0)
    (_, out), grads = value_and_grad(chunk_rows, x, offset, mask, kernel, bias)
    (_, ref), ref_grads = value_and_grad(ho, x, offset, mask, kernel, bias)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out), dcn_reference(x, offset, mask, kernel, bias, stride, pad, dil),
                               rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-5, atol=1e-5)


def test_gradient_wrt_offset_is_the_image_gradient():
    """A 1-channel ramp image: d(sample)/d(dx) is the ramp's slope inside the image."""
    img = np.tile(np.arange(8, dtype=np.float32) * 0.5, (1, 6, 1))[..., None]  # x-slope 0.5
    kernel = np.zeros((3, 3, 1, 1), np.float32)
    kernel[1, 1] = 1.0
    offset = np.full((1, 6, 8, 18), 0.3, np.float32)
    mask = np.ones((1, 6, 8, 9), np.float32)
    grad = jax.jit(jax.grad(lambda o: modulated_deform_conv(img, o, mask, kernel)[0, 2, 3, 0]))(offset)
    assert float(grad[0, 2, 3, 9]) == pytest.approx(0.5)  # dx of the centre tap
    assert float(grad[0, 2, 3, 8]) == pytest.approx(0.0)  # dy: no vertical slope
    assert float(jnp.abs(grad).sum()) == pytest.approx(0.5)


def test_bfloat16_close_to_float32():
    x, offset, mask, kernel, bias = _random_case(4, b=1, h=12, w=40, c=16, groups=8, o=8, scale=2.0)
    offset[..., 1::2] += 300.0 / 7  # positions far above 256: coordinates must stay float32
    x = np.tile(x, (1, 1, 8, 1))  # width 320
    offset = np.tile(offset, (1, 1, 8, 1))
    mask = np.tile(mask, (1, 1, 8, 1))
    ref = modulated_deform_conv(x, offset, mask, kernel, bias)
    x16, mask16, kernel16, bias16 = (jnp.asarray(a, jnp.bfloat16) for a in (x, mask, kernel, bias))
    out = modulated_deform_conv(x16, offset, mask16, kernel16, bias16)  # offsets stay float32
    assert out.dtype == jnp.bfloat16
    err = np.abs(np.asarray(out, np.float32) - np.asarray(ref))
    assert err.max() < 0.05 * np.abs(np.asarray(ref)).max()


def test_jit_and_determinism():
    args = _random_case(5)
    f = jax.jit(modulated_deform_conv)
    a, b = np.asarray(f(*args)), np.asarray(f(*args))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, np.asarray(modulated_deform_conv(*args)), rtol=1e-6, atol=1e-6)


def test_shape_errors_are_clear():
    x, offset, mask, kernel, bias = _random_case(6)
    with pytest.raises(ValueError, match="offset must be"):
        modulated_deform_conv(x, offset[..., :-2], mask, kernel, bias)
    with pytest.raises(ValueError, match="mask must be"):
        modulated_deform_conv(x, offset, mask[:, :-1], kernel, bias)
    with pytest.raises(ValueError, match="input channels"):
        modulated_deform_conv(x[..., :4], offset, mask, kernel, bias)
    with pytest.raises(ValueError, match="DCNOptions.chunk_rows must be None or an integer >= 1"):
        modulated_deform_conv(x, offset, mask, kernel, bias, options=DCNOptions(chunk_rows=0))
    with pytest.raises(ValueError, match="DCNOptions.impl must be one of"):
        modulated_deform_conv(x, offset, mask, kernel, bias, options=DCNOptions(impl="cuda"))
    with pytest.raises(TypeError, match="options must be a DCNOptions"):
        modulated_deform_conv(x, offset, mask, kernel, bias, options="gather")
    with pytest.raises(ValueError, match=r"x must be \[B, H, W, C\]"):
        modulated_deform_conv(x[0], offset, mask, kernel, bias)


# ------------------------------------------------------------------------------------------ gather on GPU/TPU
# The accelerator formulations of the gather path run here on CPU against the CPU formulation: "gpu" (one
# 2x2 window gather and scatter per sample, columns kept for the kernel gradient, matmuls in the compute
# dtype) and "tpu" (the same maths with the output pixels as the minor axis of every array).


def _weighted_value_and_grads(dcn, args):
    """``dcn(*args)`` and the gradients wrt all its arguments of its output weighted by a cosine."""
    def loss(*a):
        out = dcn(*a)
        weights = jnp.cos(jnp.arange(out.size, dtype=jnp.float32).reshape(out.shape))
        return jnp.sum(out.astype(jnp.float32) * weights), out
    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(args))), has_aux=True))(*args)
    return out, grads


def _gather_value_and_grads(form, args, stride=1, pad=1, dil=1):
    x, offset, mask, kernel, bias = args
    geo = op._geometry(x, kernel, bias, stride, pad, dil, mask, 1, "mask")
    return _weighted_value_and_grads(partial(op._gather, geo=geo, chunk_rows=None, form=form), args)


@pytest.mark.parametrize("form", ["gpu", "tpu"])
@pytest.mark.parametrize("stride,pad,dil,groups", [(1, 1, 1, 4), (2, 0, 2, 2), (1, 2, 1, 1)])
def test_accelerator_gather_matches_cpu_gather(form, stride, pad, dil, groups):
    args = _border_case(20 + stride + pad, b=2, h=7, w=9, c=8, groups=groups, o=6, stride=stride, pad=pad, dil=dil)
    out, grads = _gather_value_and_grads(form, args, stride, pad, dil)
    ref, ref_grads = _gather_value_and_grads("cpu", args, stride, pad, dil)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)
    for name, g, g_ref in zip(("x", "offset", "mask", "kernel", "bias"), grads, ref_grads):
        scale = float(np.abs(np.asarray(g_ref)).max())
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-5, atol=1e-5 * scale, err_msg=name)


@pytest.mark.parametrize("form", ["gpu", "tpu"])
def test_accelerator_gather_bfloat16(form):
    """bf16 compute (float32 offsets, as EDVR keeps them): within bf16 rounding of the float32 result; the
    gradients come back in each input's dtype."""
    x, offset, mask, kernel, bias = _border_case(24, b=1, h=6, w=8, c=16, groups=8, o=16)
    bf = lambda a: jnp.asarray(a, jnp.bfloat16)  # noqa: E731
    out, grads = _gather_value_and_grads(form, (bf(x), offset, bf(mask), bf(kernel), bf(bias)))
    ref, ref_grads = _gather_value_and_grads("cpu", (x, offset, mask, kernel, bias))
    assert out.dtype == jnp.bfloat16 and [g.dtype for g in grads] == [jnp.bfloat16, jnp.float32] + [jnp.bfloat16] * 3
    for name, a, b in zip(("out", "x", "offset", "mask", "kernel", "bias"), (out, *grads), (ref, *ref_grads)):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.abs(a - b).max() <= 0.03 * np.abs(b).max(), name
        if name != "bias":  # the bias gradient, a sum of cancelling terms rounded to bf16: 1.8 % on either path
            assert np.linalg.norm(a - b) <= 0.006 * np.linalg.norm(b), name


def test_tpu_lowering_keeps_pixels_minor():
    """TPU pads the two minor dimensions of every array to (8, 128) tiles: the DCN's gathers and scatters,
    lowered for TPU, end in the output pixels (Ho * Wo) and the padded image's pixels ((H + 2) * (W + 2)),
    never in a group's channels (the layout whose padding made EDVR-M need 44 GB for one f32 clip on a
    16 GB v5e; docs/dcn.md). For CUDA the same call keeps the 2x2-window layout."""
    from edvr_jax.lowering import export

    x, offset, mask, kernel, _ = _random_case(30, b=2, h=7, w=9, c=16, groups=8, o=8)
    grad = jax.grad(lambda *a: modulated_deform_conv(*a).sum(), argnums=(0, 1, 2, 3))

    def minor_dims(platform):
        text = export(grad, x, offset, mask, kernel, platforms=(platform,)).mlir_module()
        gathers = re.findall(r'"stablehlo\.gather".*?-> tensor<([\dx]+)x\w+>', text)
        scatters = re.findall(r'"stablehlo\.scatter".*?\}\) : \(.*?\) -> tensor<([\dx]+)x\w+>', text, re.S)
        return {int(t.split("x")[-1]) for t in gathers}, {int(t.split("x")[-1]) for t in scatters}

    # The scatter's operand: the padded image's pixels, zero-padded to at least 2048 (the gathers' table
    # likewise: XLA TPU keeps a gather from a short table's pixel axis pixels-last only from ~1800 on).
    assert minor_dims("tpu") == ({7 * 9}, {max(9 * 11, tpu.MIN_TABLE_PIXELS)})
    assert minor_dims("cuda") == ({16 // 8}, {16 // 8})


# ------------------------------------------------------------------------------------------ Pallas GPU kernels
# On CPU the kernels run in Pallas interpret mode: the same kernel code, executed by XLA CPU.

def _value_and_grads(impl, args, config=None, **conv):
    """As ``_weighted_value_and_grads``; for ``impl="pallas"`` it first checks that the kernels really run
    (a ``pallas_call`` in the traced program), so that a change in ``pallas.supports`` cannot turn these
    tests into the gather against itself."""
    dcn = partial(modulated_deform_conv, options=DCNOptions(impl=impl, pallas=config), **conv)
    assert _uses_pallas(dcn, *args) == (impl == "pallas")
    return _weighted_value_and_grads(dcn, args)


def _uses_pallas(dcn, *args) -> bool:
    """Whether ``dcn``'s value and gradients, as compiled for this machine, run the Pallas kernels (in
    interpret mode here: the kernels' names stay in the lowered program's debug info)."""
    grads = jax.grad(lambda *a: jnp.sum(dcn(*a).astype(jnp.float32)), argnums=tuple(range(len(args))))
    text = jax.jit(grads).lower(*args).as_text(debug_info=True)
    return "dcn_fwd" in text and "dcn_bwd" in text


def _border_case(seed, **kw):
    """Offsets of a few pixels (samples leave the image), a quarter of them integers (exact corners)."""
    x, offset, mask, kernel, bias = _random_case(seed, scale=3.0, **kw)
    rng = np.random.default_rng(seed + 100)
    offset = np.where(rng.uniform(size=offset.shape) < 0.25, np.round(offset), offset).astype(np.float32)
    return x, offset, mask, kernel, bias


@pytest.mark.parametrize("case", ["plain", "strided", "chunked"])
def test_pallas_matches_gather_float32(case):
    """Values and gradients wrt x, offset, mask, kernel and bias equal the gather path's."""
    cfg = None
    conv = {}
    if case == "plain":  # N = 84: a partial last tile
        args = _border_case(10, b=2, h=6, w=7, c=16, groups=4, o=16)
    elif case == "strided":
        conv = dict(stride=2, padding=0, dilation=2)
        args = _border_case(11, b=1, h=9, w=8, c=16, groups=2, o=32, stride=2, pad=0, dil=2)
    else:  # channel blocks of 2 groups, taps unrolled, several backward tiles per program
        cfg = PallasConfig(block_p=16, block_c=16, tap_loop=False, bwd_block_p=16, bwd_programs=2 * 9 * 2)
        args = _border_case(12, b=2, h=5, w=9, c=32, groups=8, o=16)
    out, grads = _value_and_grads("pallas", args, cfg, **conv)
    ref, ref_grads = _value_and_grads("gather", args, **conv)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)
    for name, g, g_ref in zip(("x", "offset", "mask", "kernel", "bias"), grads, ref_grads):
        scale = float(np.abs(np.asarray(g_ref)).max())
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-5, atol=1e-5 * scale, err_msg=name)


def test_pallas_matches_gather_bfloat16():
    x, offset, mask, kernel, bias = _border_case(13, b=1, h=6, w=8, c=16, groups=8, o=16)
    args = (jnp.asarray(x, jnp.bfloat16), offset, jnp.asarray(mask, jnp.bfloat16), jnp.asarray(kernel, jnp.bfloat16),
            jnp.asarray(bias, jnp.bfloat16))
    out, grads = _value_and_grads("pallas", args)
    ref, ref_grads = _value_and_grads("gather", args)
    assert out.dtype == jnp.bfloat16 and [g.dtype for g in grads] == [a.dtype for a in args]
    for name, a, b in zip(("out", "x", "offset", "mask", "kernel", "bias"), (out, *grads), (ref, *ref_grads)):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.abs(a - b).max() <= 0.03 * np.abs(b).max(), name


# ------------------------------------------------------------------------------------------ packed offsets and mask
# ``modulated_deform_conv_packed``: offsets and mask logits in one array, as DCNv2Pack's conv_offset predicts
# them. The Pallas forward kernel reads that array in place and takes the sigmoid itself.


def _packed_case(seed, **kw):
    x, offset, mask, kernel, bias = _border_case(seed, **kw)
    rng = np.random.default_rng(seed + 200)
    logits = (3 * rng.standard_normal(mask.shape)).astype(np.float32)  # sigmoids from ~0 to ~1
    return x, np.concatenate([offset, logits], axis=-1), kernel, bias


def _unpacked(offset_mask):
    n_off = offset_mask.shape[-1] * 2 // 3
    return offset_mask[..., :n_off], jax.nn.sigmoid(jnp.asarray(offset_mask[..., n_off:], jnp.float32))


@pytest.mark.parametrize("impl", ["gather", "pallas"])
def test_packed_offsets_equal_split_offsets(impl):
    """Value and gradients (wrt x, the packed array, kernel, bias) equal those of the split call on the
    gather path: the offsets' gradient in the first 2GK channels, the logits' (mask gradient times the
    sigmoid's derivative) in the last GK. Pallas in interpret mode; its forward kernel reads the packed array
    and takes the sigmoid in the kernel."""
    args = _packed_case(40, b=2, h=5, w=6, c=16, groups=4, o=16)
    packed = partial(modulated_deform_conv_packed, options=DCNOptions(impl=impl))
    assert _uses_pallas(packed, *args) == (impl == "pallas")
    out, grads = _weighted_value_and_grads(packed, args)

    def split(x, om, kernel, bias):
        return modulated_deform_conv(x, *_unpacked(om), kernel, bias, options=DCNOptions(impl="gather"))
    ref, ref_grads = _weighted_value_and_grads(split, args)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)
    for name, g, g_ref in zip(("x", "offset_mask", "kernel", "bias"), grads, ref_grads):
        scale = float(np.abs(np.asarray(g_ref)).max())
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-5, atol=1e-5 * scale, err_msg=name)


def test_packed_forward_kernel_bfloat16_and_export():
    """bf16 inference through "auto" lowered for CUDA: the kernel reads the packed array itself (no slice or
    sigmoid left outside it); in interpret mode its result is the split call's within bf16 rounding."""
    from edvr_jax.lowering import export, has_triton_kernels

    x, om, kernel, bias = _packed_case(41, b=1, h=6, w=8, c=16, groups=8, o=16)
    bf = lambda a: jnp.asarray(a, jnp.bfloat16)  # noqa: E731
    kernel_forward = partial(modulated_deform_conv_packed, options=DCNOptions(impl="pallas"))
    assert "pallas_call" in str(jax.make_jaxpr(kernel_forward)(bf(x), bf(om), bf(kernel), bf(bias)))
    out = kernel_forward(bf(x), bf(om), bf(kernel), bf(bias))
    ref = modulated_deform_conv(x, *_unpacked(om), kernel, bias, options=DCNOptions(impl="gather"))
    assert out.dtype == jnp.bfloat16
    a, b = np.asarray(out, np.float32), np.asarray(ref)
    assert np.linalg.norm(a - b) <= 0.01 * np.linalg.norm(b)
    exported = export(modulated_deform_conv_packed, bf(x), bf(om), bf(kernel), bf(bias), platforms=("cuda",))
    text = exported.mlir_module()
    slices = re.findall(r"stablehlo\.slice .*-> tensor<([\dx]+)xbf16>", text)
    assert has_triton_kernels(exported) and "stablehlo.exponential" not in text  # the sigmoid: in the kernel
    assert not [t for t in slices if t.endswith(("x144", "x72"))], slices  # offsets / mask never split off
    exported = export(modulated_deform_conv_packed, bf(x), bf(om), bf(kernel), bf(bias), platforms=("tpu",))
    text = exported.mlir_module()
    slices = re.findall(r"stablehlo\.slice .*-> tensor<([\dx]+)xbf16>", text)
    assert "stablehlo.exponential" in text and "1x6x8x144" in slices  # elsewhere the gather on split arrays


def test_packed_offsets_bad_shapes():
    x, om, kernel, bias = _packed_case(42, b=1, h=5, w=6, c=16, groups=4, o=16)
    with pytest.raises(ValueError, match=r"offset_mask must be \[B, Ho, Wo, G\*27\] = \[1, 5, 6, G\*27\]"):
        modulated_deform_conv_packed(x, om[..., :-1], kernel, bias)
    with pytest.raises(ValueError, match="offset_mask must be"):
        modulated_deform_conv_packed(x, om[:, :4], kernel, bias)
    with pytest.raises(ValueError, match="16 input channels do not split into 3 deformable groups"):
        modulated_deform_conv_packed(x, om[..., :81], kernel, bias)
    with pytest.raises(ValueError, match=r"bias must be \[16\]"):
        modulated_deform_conv_packed(x, om, kernel, bias[:3])


def _traces_kernels(x, offset, mask, kernel, bias=None, impl="auto") -> bool:
    fn = lambda *a: modulated_deform_conv(*a, options=DCNOptions(impl=impl))  # noqa: E731
    return "pallas_call" in str(jax.make_jaxpr(fn)(x, offset, mask, kernel, bias))


def test_implementation_selection_and_fallback():
    x, offset, mask, kernel, bias = _random_case(14, b=1, h=4, w=5, c=16, groups=4, o=16)
    assert _traces_kernels(x, offset, mask, kernel, bias, impl="pallas")
    # "auto": the kernels only in the CUDA branch of a bfloat16 DCN (lowered only there; see the CUDA test).
    assert not _traces_kernels(x, offset, mask, kernel, bias, impl="auto")
    assert _traces_kernels(jnp.asarray(x, jnp.bfloat16), offset, mask, jnp.asarray(kernel, jnp.bfloat16))
    assert not _traces_kernels(x, offset, mask, kernel, bias, impl="gather")
    # Shapes the kernels do not take fall back to the gather: 8 channels, 3 output channels, float64.
    x8, off8, mask8, kern8, _ = _random_case(14, b=1, h=4, w=5, c=8, groups=4, o=16)
    assert not _traces_kernels(x8, off8, mask8, kern8, impl="pallas")
    assert not _traces_kernels(x, offset, mask, kernel[..., :3], impl="pallas")
    assert pallas.supports(x.shape, jnp.float64, 16, 4) is not None
    # On CPU "auto" compiles the gather path alone: no kernel in the program.
    hlo = jax.jit(modulated_deform_conv).lower(x, offset, mask, kernel, bias).as_text()
    assert "custom_call" not in hlo and "triton" not in hlo


def test_options_reach_every_dcn_of_the_model():
    """``EDVR(dcn=...)`` is what every DCN of the model computes with: traced with ``impl="pallas"`` the model
    holds the kernels in each of PCD's 4 DCNs, with the default in none (the values are the op's, tested
    above)."""
    from edvr_jax import EDVR

    x = jnp.zeros((1, 3, 8, 8, 3))
    model = EDVR(num_feat=16, num_frame=3, deformable_groups=2, num_extract_block=1, num_reconstruct_block=1)
    variables = jax.eval_shape(model.init, jax.random.key(1), x)
    kernels = model.clone(dcn=DCNOptions(impl="pallas"))
    # Each DCN holds the kernels twice: in the CUDA branch and in the interpret-mode one.
    assert str(jax.make_jaxpr(kernels.apply)(variables, x)).count("pallas_call") == 2 * 4
    assert "pallas_call" not in str(jax.make_jaxpr(model.apply)(variables, x))


def test_pallas_kernels_lower_for_cuda():
    """The Triton kernels (forward and backward) lower for CUDA on a machine without a GPU; "auto" puts
    them only in an undifferentiated bfloat16 DCN (where they measured faster than the gather on H100/H200)."""
    from edvr_jax.lowering import export, has_triton_kernels

    x, offset, mask, kernel, bias = _random_case(15, b=1, h=8, w=8, c=16, groups=8, o=16)

    def grad(impl):
        loss = lambda *a: modulated_deform_conv(*a, options=DCNOptions(impl=impl)).astype(jnp.float32).sum()  # noqa: E731
        return jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4))

    for dtype in (jnp.float32, jnp.bfloat16):
        args = (jnp.asarray(x, dtype), offset, mask, jnp.asarray(kernel, dtype), jnp.asarray(bias, dtype))
        forward = partial(modulated_deform_conv, options=DCNOptions(impl="pallas"))
        assert has_triton_kernels(export(forward, *args, platforms=("cuda",)))
        exported = export(grad("pallas"), *args, platforms=("cuda",))
        assert exported.mlir_module().count("xla.gpu.triton") >= 2  # forward and backward kernels
        assert has_triton_kernels(export(modulated_deform_conv, *args, platforms=("cuda",))) == (dtype == jnp.bfloat16)
        assert not has_triton_kernels(export(grad("auto"), *args, platforms=("cuda",)))
        assert not has_triton_kernels(export(grad("auto"), *args, platforms=("tpu",)))


def test_pallas_backward_atomics_are_relaxed(monkeypatch):
    """The backward kernel's input-gradient adds lower for CUDA to relaxed atomics (``tt.atomic_rmw fadd,
    relaxed``), not Pallas' default acquire-release, which ptxas compiles to a GPU-wide memory barrier and an
    L1 invalidation around every add (``MEMBAR.ALL.GPU``, ``CCTL.IVALL``; relaxed: ``REDG`` alone). Read from
    the Triton module that Pallas lowers."""
    from jax._src.pallas.triton import pallas_call_registration as registration

    from edvr_jax.ops.dcn.sampling import Geometry

    modules = []
    lower_module = registration.lowering.lower_jaxpr_to_triton_module

    def capture(*args, **kwargs):
        result = lower_module(*args, **kwargs)
        modules.append(str(result.module.operation))
        return result

    monkeypatch.setattr(registration.lowering, "lower_jaxpr_to_triton_module", capture)
    x, offset, mask, kernel, _ = _random_case(16, b=1, h=8, w=8, c=16, groups=8, o=16)
    geo = Geometry(1, 8, 8, 16, 8, 8, 16, 8, 3, 3, (1, 1), (1, 1), (1, 1))
    args = (x, offset.reshape(64, -1), mask.reshape(64, -1), kernel.reshape(9, 16, 16), jnp.ones((64, 16)))
    jax.jit(lambda *a: pallas.backward(*a, geo, PallasConfig(), False)).trace(*args).lower(
        lowering_platforms=("cuda",))
    (module,) = modules
    assert module.count("tt.atomic_rmw") == 4  # one per bilinear corner
    assert sorted(set(re.findall(r"tt\.atomic_rmw fadd, (\w+)", module))) == ["relaxed"]
