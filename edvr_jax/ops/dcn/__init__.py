"""Modulated deformable convolution (DCNv2), NHWC, with torchvision's semantics.

``op.py``: the public op, ``DCNOptions`` and the choice of formulation per platform; ``sampling.py``: the
geometry, border rules and bilinear maths every formulation shares; one module per formulation a backend
runs: ``cpu.py`` (row-chunked gather), ``gpu.py`` (window gather), ``tpu.py`` (pixels-last gather),
``pallas.py`` (Triton kernels for CUDA). Design notes and measurements: docs/dcn.md.
"""

from edvr_jax.ops.dcn.op import IMPLS, DCNOptions, modulated_deform_conv, modulated_deform_conv_packed
from edvr_jax.ops.dcn.pallas import PallasConfig

__all__ = ["IMPLS", "DCNOptions", "PallasConfig", "modulated_deform_conv", "modulated_deform_conv_packed"]
