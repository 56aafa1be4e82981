"""EDVR-L x4 SR on Vimeo-90K septuplets (7 frames; one window per septuplet, centred on im4);
validation on Vimeo-90K-T. The schedule is the REDS recipe's."""

from configs import edvr_l_reds


def get_config():
    c = edvr_l_reds.get_config()
    c.model.num_frame = 7
    c.data.name = "vimeo90k"
    c.data.config = "sr_x4"
    c.data.val_split = "test"
    c.data.centers = "fitting"
    return c
