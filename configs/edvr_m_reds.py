"""EDVR-M x4 SR on REDS with TSA (BasicSR train_EDVR_M_x4_SR_REDS.yml).

BasicSR initialises it from the EDVR-M without-TSA run, non-strict:
``--config.init_from=RUNS/edvr_m_wotsa_reds``. For the first 50k iterations only the
fusion (TSA) module trains.
"""

from configs.default import get_config  # noqa: F401  (the default is exactly this recipe)
