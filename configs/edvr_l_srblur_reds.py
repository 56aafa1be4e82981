"""EDVR-L x4 SR + deblurring on REDS (blur_bicubic -> sharp; PreDeblur on LR input),
BasicSR's train_EDVRL_SRblur.yml: Adam 2e-4, cosine restarts [150k] x 4 with weights 1,
no tsa_iter, trained from scratch."""

from configs import edvr_l_deblur_reds


def get_config():
    c = edvr_l_deblur_reds.get_config()
    c.model.hr_in = False
    c.data.config = "srblur"
    c.data.val_padding = "reflection_circle"
    return c
