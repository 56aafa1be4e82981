"""Convolution and residual block with PyTorch's padding and BasicSR's initialisers (NHWC)."""

from __future__ import annotations

from typing import Any

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


def conv_initializers(init: str, fan_in: int):
    """(kernel_init, bias_init) reproducing BasicSR's initialisation.

    ``'torch'``: ``nn.Conv2d``'s default, U(+-1/sqrt(fan_in)) for weight and bias.
    ``'resblock'``: ``default_init_weights(scale=0.1)``: kaiming normal x 0.1, zero bias.
    ``'dcn'``: ``ModulatedDeformConv.init_weights``: U(+-1/sqrt(fan_in)), zero bias.
    ``'zeros'``: the DCN offset conv, so that training starts from a plain conv.
    """
    bound = 1.0 / (fan_in ** 0.5)
    if init == "torch":
        return _uniform(bound), _uniform(bound)
    if init == "resblock":
        return _normal(0.1 * (2.0 / fan_in) ** 0.5), nn.initializers.zeros_init()
    if init == "dcn":
        return _uniform(bound), nn.initializers.zeros_init()
    if init == "zeros":
        return nn.initializers.zeros_init(), nn.initializers.zeros_init()
    raise ValueError(f"unknown init {init!r}; expected 'torch', 'resblock', 'dcn' or 'zeros'")


class Conv2d(nn.Module):
    """``torch.nn.Conv2d(in, features, k, stride, padding=k // 2)`` in NHWC.

    Params: ``kernel`` ``[k, k, in, features]``, ``bias`` ``[features]``.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    init: str = "torch"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        fan_in = x.shape[-1] * k * k
        kernel_init, bias_init = conv_initializers(self.init, fan_in)
        kernel = self.param("kernel", kernel_init, (k, k, x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", bias_init, (self.features,), self.param_dtype)
        pad = k // 2
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), kernel.astype(self.dtype), (self.stride, self.stride),
            ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias.astype(self.dtype)


class ResidualBlockNoBN(nn.Module):
    """``x + conv2(relu(conv1(x)))``, both 3x3 convs ``num_feat -> num_feat``."""

    num_feat: int = 64
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = Conv2d(self.num_feat, init="resblock", dtype=self.dtype, name="conv1")(x)
        out = Conv2d(self.num_feat, init="resblock", dtype=self.dtype, name="conv2")(nn.relu(out))
        return x + out


def residual_blocks(x: jax.Array, num_blocks: int, num_feat: int, prefix: str, dtype: Dtype) -> jax.Array:
    """BasicSR's ``make_layer(ResidualBlockNoBN, n)``; blocks are named ``{prefix}_{i}``.

    Call from inside a compact module so the blocks become its children.
    """
    for i in range(num_blocks):
        x = ResidualBlockNoBN(num_feat, dtype=dtype, name=f"{prefix}_{i}")(x)
    return x
