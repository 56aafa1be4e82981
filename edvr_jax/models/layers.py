"""Convolution and residual block with PyTorch's padding and BasicSR's initialisers (NHWC)."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def lrelu(x: jax.Array) -> jax.Array:
    """LeakyReLU with slope 0.1, EDVR's only activation besides the residual ReLU."""
    return jax.nn.leaky_relu(x, 0.1)


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def _normal(std: float):
    def init(key, shape, dtype=jnp.float32):
        return std * jax.random.normal(key, shape, dtype)
    return init


def conv_initializers(scheme: str, fan_in: int):
    """(kernel_init, bias_init) reproducing BasicSR's initialisation.

    ``'torch'``: ``nn.Conv2d``'s default, U(+-1/sqrt(fan_in)) for weight and bias.
    ``'resblock'``: ``default_init_weights(scale=0.1)``: kaiming normal x 0.1, zero bias.
    ``'dcn'``: ``ModulatedDeformConv.init_weights``: U(+-1/sqrt(fan_in)), zero bias.
    ``'zeros'``: the DCN offset conv, so that training starts from a plain conv.
    """
    bound = 1.0 / (fan_in ** 0.5)
    if scheme == "torch":
        return _uniform(bound), _uniform(bound)
    if scheme == "resblock":
        return _normal(0.1 * (2.0 / fan_in) ** 0.5), nn.initializers.zeros_init()
    if scheme == "dcn":
        return _uniform(bound), nn.initializers.zeros_init()
    if scheme == "zeros":
        return nn.initializers.zeros_init(), nn.initializers.zeros_init()
    raise ValueError(f"unknown init_scheme {scheme!r}; expected 'torch', 'resblock', 'dcn' or 'zeros'")


class Conv2d(nn.Module):
    """``torch.nn.Conv2d(in, features, k, stride, padding=k // 2)`` in NHWC.

    Params: ``kernel`` ``[k, k, in, features]``, ``bias`` ``[features]``.

    Called with a sequence of parts instead of one ``[N, H, W, C]`` array, it is the conv of their
    concatenation along channels, computed part by part (each part against its slice of the kernel, in the
    compute dtype, the results summed in float32), so the concatenation is never written. A part may hold
    ``N / T`` images, one per group of ``T`` consecutive images (a clip's reference frame beside its ``T``
    frames): it is convolved once per group and broadcast, instead of ``T`` times.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    init_scheme: str = "torch"  # BasicSR's initialisation of this conv (``conv_initializers``)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array | Sequence[jax.Array]) -> jax.Array:
        parts = [x] if isinstance(x, jax.Array) else list(x)
        in_ch = sum(p.shape[-1] for p in parts)
        k = self.kernel_size
        kernel_init, bias_init = conv_initializers(self.init_scheme, in_ch * k * k)
        kernel = self.param("kernel", kernel_init, (k, k, in_ch, self.features), self.param_dtype)
        bias = self.param("bias", bias_init, (self.features,), self.param_dtype)
        pad = k // 2

        def conv(part, w, **kw):
            return jax.lax.conv_general_dilated(
                part.astype(self.dtype), w.astype(self.dtype), (self.stride, self.stride),
                ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"), **kw)

        if len(parts) == 1:
            return conv(parts[0], kernel) + bias.astype(self.dtype)
        n = max(p.shape[0] for p in parts)
        y, c0 = bias.astype(jnp.float32), 0
        for p in parts:
            if n % p.shape[0]:
                raise ValueError(f"{self.name}: a part of {p.shape[0]} images does not divide the {n} images of "
                                 f"the others (parts {[tuple(q.shape) for q in parts]})")
            yp = conv(p, kernel[:, :, c0:c0 + p.shape[-1]]).astype(jnp.float32)
            y = y + jnp.repeat(yp, n // p.shape[0], axis=0)
            c0 += p.shape[-1]
        return y.astype(self.dtype)


class ResidualBlockNoBN(nn.Module):
    """``x + conv2(relu(conv1(x)))``, both 3x3 convs ``num_feat -> num_feat``."""

    num_feat: int = 64
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = Conv2d(self.num_feat, init_scheme="resblock", dtype=self.dtype, name="conv1")(x)
        out = Conv2d(self.num_feat, init_scheme="resblock", dtype=self.dtype, name="conv2")(nn.relu(out))
        return x + out


def residual_blocks(x: jax.Array, num_blocks: int, num_feat: int, prefix: str, dtype: Dtype) -> jax.Array:
    """BasicSR's ``make_layer(ResidualBlockNoBN, n)``; blocks are named ``{prefix}_{i}``.

    Call from inside a compact module so the blocks become its children.
    """
    for i in range(num_blocks):
        x = ResidualBlockNoBN(num_feat, dtype=dtype, name=f"{prefix}_{i}")(x)
    return x
