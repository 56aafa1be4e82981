"""Pure JAX ops (NHWC) used by the EDVR modules."""

from edvr_jax.ops.dcn import DCNOptions, PallasConfig, modulated_deform_conv, modulated_deform_conv_packed
from edvr_jax.ops.pool import avg_pool, max_pool
from edvr_jax.ops.resize import pixel_shuffle, upsample_bilinear

__all__ = ["DCNOptions", "PallasConfig", "modulated_deform_conv", "modulated_deform_conv_packed", "avg_pool",
           "max_pool", "pixel_shuffle", "upsample_bilinear"]
