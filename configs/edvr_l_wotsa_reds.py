"""EDVR-L x4 SR on REDS without TSA (BasicSR train_EDVR_L_x4_SR_REDS_woTSA.yml)."""

from configs import edvr_m_wotsa_reds


def get_config():
    c = edvr_m_wotsa_reds.get_config()
    c.model.num_feat = 128
    c.model.num_reconstruct_block = 40
    c.optim.restart_weights = (1.0, 0.5, 0.5, 0.5)
    return c
