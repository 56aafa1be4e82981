"""EDVR-L x4 SR + deblurring on REDS (blur_bicubic -> sharp; PreDeblur on LR input). The
schedule is the SR recipe's."""

from configs import edvr_l_reds


def get_config():
    c = edvr_l_reds.get_config()
    c.model.with_predeblur = True
    c.data.config = "srblur"
    return c
