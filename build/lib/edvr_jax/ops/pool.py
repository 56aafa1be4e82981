"""3x3 / stride 2 / pad 1 pooling as PyTorch's ``MaxPool2d`` and ``AvgPool2d`` do it (NHWC)."""

from __future__ import annotations

import jax


def _window(k: int, s: int, p: int):
    return dict(window_dimensions=(1, k, k, 1), window_strides=(1, s, s, 1),
                padding=((0, 0), (p, p), (p, p), (0, 0)))


def max_pool(x: jax.Array, kernel: int = 3, stride: int = 2, padding: int = 1) -> jax.Array:
    """``nn.MaxPool2d(kernel, stride, padding)``: padding never wins the max."""
    # A Python-scalar init value lets JAX recognise the max monoid (and differentiate it).
    return jax.lax.reduce_window(x, -float("inf"), jax.lax.max, **_window(kernel, stride, padding))


def avg_pool(x: jax.Array, kernel: int = 3, stride: int = 2, padding: int = 1) -> jax.Array:
    """``nn.AvgPool2d(kernel, stride, padding)`` with ``count_include_pad=True``:
    every window is divided by ``kernel**2``, zero padding included."""
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, **_window(kernel, stride, padding))
    return total / (kernel * kernel)
