"""Flax linen modules of the EDVR family."""

from edvr_jax.models.dcn import OFFSET_WARN_THRESHOLD, DCNv2Pack, offset_absmeans, warn_offsets
from edvr_jax.models.edvr import EDVR, PRESETS, TwoStageEDVR, edvr_from_preset, init_variables
from edvr_jax.models.layers import Conv2d, ResidualBlockNoBN
from edvr_jax.models.pcd import PCDAlignment
from edvr_jax.models.predeblur import PredeblurModule
from edvr_jax.models.tsa import TSAFusion

__all__ = ["OFFSET_WARN_THRESHOLD", "offset_absmeans", "warn_offsets", "DCNv2Pack", "EDVR", "PRESETS", "TwoStageEDVR", "edvr_from_preset", "init_variables", "Conv2d",
           "ResidualBlockNoBN", "PCDAlignment", "PredeblurModule", "TSAFusion"]
