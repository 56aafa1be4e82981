"""Pre-deblur module: a small U-shaped residual network run on each frame before PCD."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from edvr_jax.models.layers import Conv2d, Dtype, ResidualBlockNoBN, lrelu
from edvr_jax.ops.resize import upsample_bilinear


class PredeblurModule(nn.Module):
    """``[N, H, W, 3] -> [N, H', W', num_feat]``; ``H' = H / 4`` with ``hr_in`` (two stride-2 convs), else H.

    ``resblock_l1_{0..4}`` are BasicSR's ``resblock_l1.{0..4}``.
    """

    num_feat: int = 64
    hr_in: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = lambda name, stride=1: Conv2d(self.num_feat, 3, stride, dtype=self.dtype, name=name)  # noqa: E731
        block = lambda name: ResidualBlockNoBN(self.num_feat, dtype=self.dtype, name=name)  # noqa: E731

        feat_l1 = lrelu(conv("conv_first")(x))
        if self.hr_in:
            feat_l1 = lrelu(conv("stride_conv_hr1", 2)(feat_l1))
            feat_l1 = lrelu(conv("stride_conv_hr2", 2)(feat_l1))
        feat_l2 = lrelu(conv("stride_conv_l2", 2)(feat_l1))
        feat_l3 = lrelu(conv("stride_conv_l3", 2)(feat_l2))

        feat_l3 = upsample_bilinear(block("resblock_l3")(feat_l3), 2)
        feat_l2 = block("resblock_l2_1")(feat_l2) + feat_l3
        feat_l2 = upsample_bilinear(block("resblock_l2_2")(feat_l2), 2)

        for i in range(2):
            feat_l1 = block(f"resblock_l1_{i}")(feat_l1)
        feat_l1 = feat_l1 + feat_l2
        for i in range(2, 5):
            feat_l1 = block(f"resblock_l1_{i}")(feat_l1)
        return feat_l1
