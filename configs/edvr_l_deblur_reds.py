"""EDVR-L deblurring on REDS (blur -> sharp; PreDeblur, HR input), BasicSR's
train_EDVRL_deblur.yml: Adam 2e-4, cosine restarts [150k] x 4 with weights 1, no
tsa_iter, trained from scratch. Validation uses the test protocol's ``replicate``
padding (the training yml validated with reflection_circle).
Use ``--config.data.config=deblurcomp`` for the compressed-input variant."""

from configs import edvr_l_reds


def get_config():
    c = edvr_l_reds.get_config()
    c.model.hr_in = True
    c.model.with_predeblur = True
    c.data.config = "deblur"
    c.data.val_padding = "replicate"
    c.optim.lr = 2e-4
    c.optim.periods = (150_000,) * 4
    c.optim.restart_weights = (1.0,) * 4
    c.optim.tsa_iter = 0
    return c
