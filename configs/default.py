"""Base config: BasicSR's official EDVR-M x4 SR recipe on REDS (with TSA).

Variants import this and override fields; any field can also be overridden on the
command line, e.g. ``--config.batch_size=16 --config.mesh.fsdp=4``.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    # EDVR's constructor arguments (BasicSR's names); center_frame_idx unset = middle frame.
    c.model = ml_collections.ConfigDict(dict(
        num_in_ch=3, num_out_ch=3, num_feat=64, num_frame=5, deformable_groups=8, num_extract_block=5,
        num_reconstruct_block=10, center_frame_idx=config_dict.placeholder(int), hr_in=False,
        with_predeblur=False, with_tsa=True))
    c.compute_dtype = "float32"  # or bfloat16 (parameters stay float32)

    c.data = ml_collections.ConfigDict(dict(
        name="reds", config="sr_x4", data_dir="", manual_dir="",
        train_split="train", val_split="reds4",
        gt_size=256, interval_list=(1,), random_reverse=False, use_hflip=True, use_rot=True, centers="all",
        worker_count=4,
        val_padding="reflection_circle", val_clips=config_dict.placeholder(tuple), val_crop_border=0))
    # Options of the footage dataset (--config.data.name=footage --config.data.manual_dir=FOLDER,
    # data.config bi_x4 or bd_x4; edvr_jax/data/footage.py); the other datasets ignore them.
    # Held out: the clips named in test_clips, or else frames [a * n, b * n) of every clip.
    c.data.footage = ml_collections.ConfigDict(dict(
        clips=(), test_clips=(), test_part=(0.9, 1.0), gt_crop=(), gt_resize=1.0, min_frames=5))

    c.batch_size = 32  # global, over all processes
    c.total_steps = 600_000

    c.optim = ml_collections.ConfigDict(dict(
        lr=4e-4, b1=0.9, b2=0.99, weight_decay=0.0,
        periods=(50_000, 100_000, 150_000, 150_000, 150_000), restart_weights=(1.0, 1.0, 1.0, 1.0, 1.0),
        eta_min=1e-7, tsa_iter=50_000, dcn_lr_mul=1.0, grad_clip=0.0))
    c.loss = ml_collections.ConfigDict(dict(eps=1e-12, reduction="sum"))
    c.ema_decay = 0.0  # BasicSR's ema_decay; 0 = no EMA

    # Sequences are tuples so that the command line can override them: --config.optim.periods='(300, 600)'.
    # Mesh sizes (-1 = all remaining devices) and sharding rules: regex over parameter paths
    # (optimizer states reuse the names) -> PartitionSpec. Conv kernels are HWIO; the default
    # splits output channels over 'fsdp' (a no-op while fsdp == 1).
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    c.sharding_rules = ((r"kernel$", (None, None, None, "fsdp")),)

    c.checkpoint = ml_collections.ConfigDict(dict(every=5_000, keep=3, async_save=True))
    c.log_every = 100
    c.eval_every = 5_000
    c.val_batch_size = 1
    c.num_val_images = 3

    # Initialise from another run / converted checkpoint (BasicSR's pretrain_network_g);
    # strict=False copies every parameter whose name and shape match (strict_load_g: false).
    c.init_from = ""
    c.init_strict = False
    return c
