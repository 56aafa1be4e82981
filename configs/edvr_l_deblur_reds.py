"""EDVR-L deblurring on REDS (blur -> sharp; PreDeblur, HR input). The schedule is the SR
recipe's; the task-specific parts follow BasicSR's deblur model (hr_in, predeblur,
replicate padding at test time, GT patch 256 at full resolution).
Use ``--config.data.config=deblurcomp`` for the compressed-input variant."""

from configs import edvr_l_reds


def get_config():
    c = edvr_l_reds.get_config()
    c.model.hr_in = True
    c.model.with_predeblur = True
    c.data.config = "deblur"
    c.data.val_padding = "replicate"
    return c
