"""Temporal and Spatial Attention (TSA) fusion."""

from __future__ import annotations

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from edvr_jax.models.layers import Conv2d, Dtype, lrelu
from edvr_jax.ops.pool import avg_pool, max_pool
from edvr_jax.ops.resize import upsample_bilinear


class TSAFusion(nn.Module):
    """Fuses aligned features ``[B, T, H, W, C]`` into ``[B, H, W, C]``.

    Temporal: each frame is weighted per pixel by ``sigmoid(<emb_t, emb_ref>)``.
    Spatial: a two-level attention pyramid modulates the fused feature,
    ``out = feat * 2 * sigmoid(attn) + add(attn)``. H and W must be multiples of 4.
    """

    num_feat: int = 64
    num_frame: int = 5
    center_frame_idx: int = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, aligned: jax.Array) -> jax.Array:
        b, t, h, w, c = aligned.shape
        if t != self.num_frame:
            raise ValueError(f"TSAFusion expects {self.num_frame} frames, got shape {aligned.shape}")
        conv = lambda name, k=3: Conv2d(self.num_feat, k, dtype=self.dtype, name=name)  # noqa: E731

        emb_ref = conv("temporal_attn1")(aligned[:, self.center_frame_idx])
        emb = einops.rearrange(conv("temporal_attn2")(einops.rearrange(aligned, "b t h w c -> (b t) h w c")),
                               "(b t) h w c -> b t h w c", t=t)
        corr = jax.nn.sigmoid(jnp.sum(emb * emb_ref[:, None], axis=-1, keepdims=True))  # [B, T, H, W, 1]
        # Frame-major channel order, as torch's view(b, t*c, h, w).
        weighted = einops.rearrange(aligned * corr, "b t h w c -> b h w (t c)")

        feat = lrelu(conv("feat_fusion", 1)(weighted))

        pool2 = lambda a: jnp.concatenate([max_pool(a), avg_pool(a)], axis=-1)  # noqa: E731
        attn = lrelu(conv("spatial_attn1", 1)(weighted))
        attn = lrelu(conv("spatial_attn2", 1)(pool2(attn)))
        attn_level = lrelu(conv("spatial_attn_l1", 1)(attn))
        attn_level = lrelu(conv("spatial_attn_l2")(pool2(attn_level)))
        attn_level = upsample_bilinear(lrelu(conv("spatial_attn_l3")(attn_level)), 2)
        attn = lrelu(conv("spatial_attn3")(attn)) + attn_level
        attn = upsample_bilinear(lrelu(conv("spatial_attn4", 1)(attn)), 2)
        attn = conv("spatial_attn5")(attn)
        attn_add = conv("spatial_attn_add2", 1)(lrelu(conv("spatial_attn_add1", 1)(attn)))
        return feat * jax.nn.sigmoid(attn) * 2 + attn_add
