"""EDVR-M x4 SR on REDS without TSA (BasicSR train_EDVR_M_x4_SR_REDS_woTSA.yml)."""

from configs import default


def get_config():
    c = default.get_config()
    c.model.with_tsa = False
    c.optim.periods = (150_000,) * 4
    c.optim.restart_weights = (1.0,) * 4
    c.optim.tsa_iter = 0
    return c
