"""EDVR-L x4 SR on REDS with TSA (BasicSR train_EDVR_L_x4_SR_REDS.yml); initialise from the
EDVR-L without-TSA run: ``--config.init_from=RUNS/edvr_l_wotsa_reds``."""

from configs import default


def get_config():
    c = default.get_config()
    c.model.num_feat = 128
    c.model.num_reconstruct_block = 40
    c.optim.restart_weights = (1.0, 0.5, 0.5, 0.5, 0.5)
    return c
