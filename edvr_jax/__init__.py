"""edvr-jax: EDVR video restoration in JAX/Flax, weight-compatible with BasicSR."""

from edvr_jax.models import (EDVR, PRESETS, DCNv2Pack, PCDAlignment, PredeblurModule, TSAFusion, TwoStageEDVR,
                             edvr_from_preset, init_variables)
from edvr_jax.ops import DCNOptions, modulated_deform_conv, modulated_deform_conv_packed
from edvr_jax.inference import Restorer, load
from edvr_jax.weights import load_model

__version__ = "0.1.0"

__all__ = ["EDVR", "PRESETS", "DCNv2Pack", "PCDAlignment", "PredeblurModule", "TSAFusion", "TwoStageEDVR",
           "edvr_from_preset", "init_variables", "DCNOptions", "modulated_deform_conv",
           "modulated_deform_conv_packed", "Restorer", "load", "load_model", "__version__"]
