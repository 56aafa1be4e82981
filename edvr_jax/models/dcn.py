"""DCNv2Pack: a modulated deformable conv whose offsets and mask come from a separate feature."""

from __future__ import annotations

import logging
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from edvr_jax.models.layers import Conv2d, Dtype, conv_initializers
from edvr_jax.ops.dcn import DCNOptions, modulated_deform_conv_packed

logger = logging.getLogger("edvr_jax")

#: BasicSR warns when a DCN's mean absolute offset exceeds this (offset blow-up).
OFFSET_WARN_THRESHOLD = 50.0


def _warn_offset(layer: str, value, where: str = "") -> None:
    logger.warning("%sOffset abs mean of %s is %.2f, larger than %.0f: DCN offsets are blowing up.",
                   where, layer, float(value), OFFSET_WARN_THRESHOLD)


def warn_high_offsets(offsets: Mapping[str, float], threshold: float = OFFSET_WARN_THRESHOLD,
                      where: str = "") -> dict[str, float]:
    """Logs BasicSR's offset blow-up warning for each ``{layer: mean |offset|}`` above ``threshold``
    (``where``: a prefix such as ``"step 100: "``); returns those layers and values."""
    high = {k: float(v) for k, v in offsets.items() if v > threshold}
    for layer, value in high.items():
        _warn_offset(layer, value, where)
    return high


def offset_absmeans(intermediates: Mapping[str, Any]) -> dict[str, float]:
    """``{layer path: mean |offset|}`` from the ``intermediates`` collection of an ``apply(...,
    mutable=['intermediates'])`` (the whole collection, or its ``'intermediates'`` entry).

    Host side, outside ``jit``: the values are fetched to the host.
    """
    tree = intermediates.get("intermediates", intermediates) if isinstance(intermediates, Mapping) else intermediates
    out = {}
    for path, value in jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda v: isinstance(v, tuple)):
        keys = [getattr(k, "key", getattr(k, "name", k)) for k in path]
        if keys and keys[-1] == "offset_absmean":
            for i, v in enumerate(value if isinstance(value, tuple) else (value,)):
                name = "/".join(str(k) for k in keys[:-1]) + (f"#{i}" if i else "")
                out[name] = float(jax.device_get(v))
    return out


def warn_offsets(intermediates: Mapping[str, Any], threshold: float = OFFSET_WARN_THRESHOLD) -> dict[str, float]:
    """``warn_high_offsets`` on the sown statistics of an ``apply(..., mutable=['intermediates'])``, outside
    ``jit`` (the free replacement of ``offset_warning=True``'s in-graph callback)."""
    return warn_high_offsets(offset_absmeans(intermediates), threshold)


class DCNv2Pack(nn.Module):
    """BasicSR's ``DCNv2Pack`` (3x3, stride 1, padding 1).

    ``conv_offset(feat)`` gives ``G * 3 * 9`` channels, chunked into ``o1, o2, m``;
    ``offset = concat(o1, o2)`` (torchvision layout, see ``modulated_deform_conv``)
    and ``mask = sigmoid(m)``, taken by ``modulated_deform_conv_packed`` from the conv's
    output as it is. ``conv_offset`` starts at zero.

    Sows ``intermediates/offset_absmean`` (mean |offset| over the whole call): read it
    with ``apply(..., mutable=['intermediates'])`` and ``warn_offsets`` (outside jit).
    ``offset_warning=True`` (off by default) also logs from inside the jitted graph, with
    a ``lax.cond`` + ``jax.debug.callback``: for debugging only, as it costs 12-17 % of GPU
    inference and ``jax.export`` cannot serialize host callbacks.

    ``dcn``: how the op is computed (``DCNOptions``; the same values whatever it says).

    Params: ``kernel`` ``[3, 3, in, features]``, ``bias``, ``conv_offset/{kernel,bias}``.
    """

    features: int
    deformable_groups: int = 8
    offset_warning: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    dcn: DCNOptions = DCNOptions()

    @nn.compact
    def __call__(self, x: jax.Array, feat: jax.Array) -> jax.Array:
        """x: ``[N, H, W, C]`` to be sampled; feat: ``[N, H, W, C']`` predicting offsets."""
        k = 3
        in_ch = x.shape[-1]
        if in_ch % self.deformable_groups:
            raise ValueError(f"{in_ch} channels do not split into {self.deformable_groups} deformable groups")
        out = Conv2d(self.deformable_groups * 3 * k * k, k, init_scheme="zeros", dtype=self.dtype,
                     param_dtype=self.param_dtype, name="conv_offset")(feat)
        offset = out[..., : 2 * self.deformable_groups * k * k]  # concat(o1, o2)
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
        return modulated_deform_conv_packed(x.astype(self.dtype), out, kernel.astype(self.dtype), bias,
                                            stride=1, padding=1, dilation=1, options=self.dcn)
