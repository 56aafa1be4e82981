"""DCNv2Pack: a modulated deformable conv whose offsets and mask come from a separate feature."""

from __future__ import annotations

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp

from edvr_jax.models.layers import Conv2d, Dtype, conv_initializers
from edvr_jax.ops.deform_conv import modulated_deform_conv

logger = logging.getLogger("edvr_jax")

#: BasicSR warns when a DCN's mean absolute offset exceeds this (offset blow-up).
OFFSET_WARN_THRESHOLD = 50.0


def _warn_offset(layer: str, value) -> None:
    logger.warning("Offset abs mean of %s is %.2f, larger than %.0f: DCN offsets are blowing up.",
                   layer, float(value), OFFSET_WARN_THRESHOLD)


class DCNv2Pack(nn.Module):
    """BasicSR's ``DCNv2Pack`` (3x3, stride 1, padding 1).

    ``conv_offset(feat)`` gives ``G * 3 * 9`` channels, chunked into ``o1, o2, m``;
    ``offset = concat(o1, o2)`` (torchvision layout, see ``modulated_deform_conv``)
    and ``mask = sigmoid(m)``. ``conv_offset`` starts at zero.

    Sows ``intermediates/offset_absmean`` (mean |offset| over the whole call) and,
    when ``offset_warning`` is set, logs a warning naming the layer if it exceeds 50.

    Params: ``kernel`` ``[3, 3, in, features]``, ``bias``, ``conv_offset/{kernel,bias}``.
    """

    features: int
    deformable_groups: int = 8
    offset_warning: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, feat: jax.Array) -> jax.Array:
        """x: ``[N, H, W, C]`` to be sampled; feat: ``[N, H, W, C']`` predicting offsets."""
        k = 3
        in_ch = x.shape[-1]
        if in_ch % self.deformable_groups:
            raise ValueError(f"{in_ch} channels do not split into {self.deformable_groups} deformable groups")
        out = Conv2d(self.deformable_groups * 3 * k * k, k, init="zeros", dtype=self.dtype,
                     param_dtype=self.param_dtype, name="conv_offset")(feat)
        o1, o2, m = jnp.split(out, 3, axis=-1)
        offset = jnp.concatenate([o1, o2], axis=-1)
        mask = jax.nn.sigmoid(m.astype(jnp.float32))

        absmean = jnp.mean(jnp.abs(offset.astype(jnp.float32)))
        self.sow("intermediates", "offset_absmean", absmean)
        if self.offset_warning and not self.is_initializing():
            layer = "/".join(str(p) for p in self.scope.path)
            jax.lax.cond(absmean > OFFSET_WARN_THRESHOLD,
                         lambda v: jax.debug.callback(_warn_offset, layer, v),
                         lambda v: None, absmean)

        kernel_init, bias_init = conv_initializers("dcn", in_ch * k * k)
        kernel = self.param("kernel", kernel_init, (k, k, in_ch, self.features), self.param_dtype)
        bias = self.param("bias", bias_init, (self.features,), self.param_dtype)
        return modulated_deform_conv(x.astype(self.dtype), offset, mask, kernel.astype(self.dtype),
                                     bias, stride=1, padding=1, dilation=1)
