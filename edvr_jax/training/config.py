"""What a training config must hold: ``validate_config`` checks every field that can be checked
without data or devices, before any work starts; ``window_spec`` reads its training windows."""

from __future__ import annotations

from edvr_jax.errors import ArgumentError, UserError, check_arguments
from edvr_jax.models.edvr import EDVR
from edvr_jax.ops.dcn import IMPLS
from edvr_jax.temporal import PADDING_MODES


class ConfigError(UserError, ValueError):
    """A config field whose value cannot work; the message names the field, its value and what is allowed."""


def validate_config(cfg) -> None:
    """Checks every field that can be checked without data or devices, before any work starts.
    The model's arguments and the training windows are checked by their owners
    (``EDVR.check_arguments``, ``WindowSpec``), their errors named by the config's fields."""
    from edvr_jax.data import DATASETS  # (imports TFDS: only when a config is checked)
    from edvr_jax.data.layout import LAYOUTS

    m, d, o = cfg.model, cfg.data, cfg.optim
    checks = [
        ("batch_size", cfg.batch_size, cfg.batch_size >= 1, "a positive integer"),
        ("total_steps", cfg.total_steps, cfg.total_steps >= 0, ">= 0"),
        ("log_every", cfg.log_every, cfg.log_every >= 1, ">= 1"),
        ("eval_every", cfg.eval_every, cfg.eval_every >= 0, ">= 0 (0: no validation)"),
        ("checkpoint.every", cfg.checkpoint.every, cfg.checkpoint.every >= 1, ">= 1"),
        ("checkpoint.keep", cfg.checkpoint.keep, cfg.checkpoint.keep >= 1, ">= 1"),
        ("val_batch_size", cfg.val_batch_size, cfg.val_batch_size >= 1, ">= 1"),
        ("compute_dtype", cfg.compute_dtype, cfg.compute_dtype in ("float32", "bfloat16"), "float32 or bfloat16"),
        ("dcn_impl", cfg.dcn_impl, cfg.dcn_impl in IMPLS, f"one of {IMPLS}"),
        ("data.name", d.name, d.name in DATASETS, f"one of {sorted(DATASETS)}"),
        ("data.val_padding", d.val_padding, d.val_padding in PADDING_MODES, f"one of {PADDING_MODES}"),
        ("data.worker_count", d.worker_count, d.worker_count >= -1, ">= 0, or -1 (one per core, see README)"),
        ("data.layout", d.layout, d.layout in LAYOUTS, f"one of {LAYOUTS}"),
        ("optim.lr", o.lr, o.lr > 0, "> 0"),
        ("optim.periods", o.periods, len(o.periods) > 0 and all(p >= 1 for p in o.periods),
         "a non-empty tuple of positive integers"),
        ("optim.restart_weights", o.restart_weights, len(o.restart_weights) == len(o.periods),
         f"as many weights as optim.periods has periods ({len(o.periods)})"),
        ("optim.tsa_iter", o.tsa_iter, o.tsa_iter >= 0 and (o.tsa_iter == 0 or m.with_tsa),
         ">= 0, and 0 unless model.with_tsa"),
        ("optim.dcn_lr_mul", o.dcn_lr_mul, o.dcn_lr_mul > 0, "> 0"),
        ("optim.grad_clip", o.grad_clip, o.grad_clip >= 0, ">= 0 (0: no clipping)"),
        ("ema_decay", cfg.ema_decay, 0 <= cfg.ema_decay < 1, "in [0, 1) (0: no EMA)"),
        ("loss.reduction", cfg.loss.reduction, cfg.loss.reduction in ("sum", "mean"), "'sum' or 'mean'"),
        ("mesh.data", cfg.mesh.data, cfg.mesh.data == -1 or cfg.mesh.data >= 1, "-1 (all devices) or >= 1"),
        ("mesh.fsdp", cfg.mesh.fsdp, cfg.mesh.fsdp == -1 or cfg.mesh.fsdp >= 1, "-1 (all devices) or >= 1"),
    ]
    model = EDVR(**m)
    bad = []
    for check, rename in ((lambda: check_arguments(checks), str),
                          (model.check_arguments, lambda name: f"model.{name}"),
                          (lambda: window_spec(cfg).lq_patch(model.scale, model.size_multiple), _window_field)):
        try:
            check()
        except ArgumentError as e:
            bad += e.lines(rename)
    if bad:
        raise ConfigError("invalid config: " + "; ".join(bad))


def window_spec(cfg):
    """The ``data.WindowSpec`` of a config's training windows (``model.num_frame``, ``data.*``)."""
    from edvr_jax.data import WindowSpec

    d = cfg.data
    return WindowSpec(num_frame=cfg.model.num_frame, gt_size=d.gt_size, interval_list=tuple(d.interval_list),
                      random_reverse=d.random_reverse, use_hflip=d.use_hflip, use_rot=d.use_rot, centers=d.centers)


def _window_field(name: str) -> str:
    return "model.num_frame" if name == "num_frame" else f"data.{name}"
