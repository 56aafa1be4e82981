"""Pyramid, Cascading and Deformable (PCD) alignment."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from edvr_jax.models.dcn import DCNv2Pack
from edvr_jax.models.layers import Conv2d, Dtype, lrelu
from edvr_jax.ops.dcn import DCNOptions
from edvr_jax.ops.resize import upsample_bilinear


def _pair(nbr: jax.Array, ref: jax.Array):
    """A conv's input ``concat(nbr, ref)``: as one array when ``ref`` is per neighbour, as ``Conv2d`` parts
    when it is per clip."""
    return jnp.concatenate([nbr, ref], axis=-1) if ref.shape[0] == nbr.shape[0] else (nbr, ref)


class PCDAlignment(nn.Module):
    """Aligns neighbour features to reference features, coarse (L3) to fine (L1).

    Param names follow BasicSR with ``ModuleDict`` keys joined by ``_``:
    ``offset_conv1_l3`` is ``pcd_align.offset_conv1.l3``.
    """

    num_feat: int = 64
    deformable_groups: int = 8
    offset_warning: bool = False
    dtype: Dtype = jnp.float32
    dcn: DCNOptions = DCNOptions()

    @nn.compact
    def __call__(self, nbr_feats: Sequence[jax.Array], ref_feats: Sequence[jax.Array]) -> jax.Array:
        """nbr_feats, ref_feats: (L1, L2, L3) features, each ``[N, h_l, w_l, C]`` with
        ``h_l = H / 2**(l-1)``. Returns the aligned L1 feature ``[N, H, W, C]``.

        ``ref_feats`` may also be ``[N / T, h_l, w_l, C]``: one reference per group of ``T`` consecutive
        neighbours (one per clip, as ``EDVR`` passes them); the offset convs then take the reference's half
        of their input once per clip instead of once per frame (``Conv2d`` with parts). Same result."""
        conv = lambda name: Conv2d(self.num_feat, dtype=self.dtype, name=name)  # noqa: E731
        dcn_pack = lambda name: DCNv2Pack(self.num_feat, self.deformable_groups,  # noqa: E731
                                     offset_warning=self.offset_warning, dtype=self.dtype, dcn=self.dcn,
                                     name=name)
        up_offset = up_feat = None
        for i in (3, 2, 1):
            level = f"l{i}"
            nbr, ref = nbr_feats[i - 1], ref_feats[i - 1]
            offset = lrelu(conv(f"offset_conv1_{level}")(_pair(nbr, ref)))
            if i == 3:
                offset = lrelu(conv(f"offset_conv2_{level}")(offset))
            else:
                offset = lrelu(conv(f"offset_conv2_{level}")(jnp.concatenate([offset, up_offset], axis=-1)))
                offset = lrelu(conv(f"offset_conv3_{level}")(offset))
            feat = dcn_pack(f"dcn_pack_{level}")(nbr, offset)
            if i < 3:
                feat = conv(f"feat_conv_{level}")(jnp.concatenate([feat, up_feat], axis=-1))
            if i > 1:
                feat = lrelu(feat)
                # The offset *features* are doubled with the resolution, as in BasicSR.
                up_offset = upsample_bilinear(offset, 2) * 2
                up_feat = upsample_bilinear(feat, 2)

        offset = lrelu(conv("cas_offset_conv2")(lrelu(conv("cas_offset_conv1")(_pair(feat, ref_feats[0])))))
        return lrelu(dcn_pack("cas_dcnpack")(feat, offset))
