"""BasicSR's EDVR training recipe as optax pieces: Charbonnier loss, cosine annealing with
restarts, Adam per parameter group (``dcn_lr_mul``), and the ``tsa_iter`` warm-up during
which only the fusion module trains."""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax


def charbonnier(pred: jax.Array, target: jax.Array, eps: float = 1e-12, reduction: str = "sum") -> jax.Array:
    """BasicSR's ``CharbonnierLoss``: ``sqrt((pred - target)^2 + eps)``, summed (the official
    EDVR recipe, hence losses in the thousands) or averaged."""
    loss = jnp.sqrt(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)) + eps)
    if reduction == "sum":
        return jnp.sum(loss)
    if reduction == "mean":
        return jnp.mean(loss)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def cosine_annealing_restart(base_lr: float, periods: Sequence[int], restart_weights: Sequence[float],
                             eta_min: float = 0.0):
    """BasicSR's ``CosineAnnealingRestartLR`` as an optax schedule of the update count.

    BasicSR steps its scheduler before each iteration, so iteration ``k`` (1-based) runs at
    ``lr(k)``; optax counts updates from 0, so ``schedule(n) = lr(n + 1)``. With ``c_i`` the
    cumulative periods, iteration ``k`` is in the first period ``i`` with ``k <= c_i`` and
    ``lr(k) = eta_min + w_i / 2 * (base_lr - eta_min) * (1 + cos(pi * (k - c_{i-1}) / p_i))``.
    Past the last period the rate stays at ``eta_min``.
    """
    if len(periods) != len(restart_weights):
        raise ValueError(f"{len(periods)} periods but {len(restart_weights)} restart weights")
    cumulative = np.cumsum(periods)
    starts = jnp.asarray(np.concatenate([[0], cumulative[:-1]]), jnp.float32)
    ends = jnp.asarray(cumulative, jnp.float32)
    weights = jnp.asarray(restart_weights, jnp.float32)
    lengths = jnp.asarray(periods, jnp.float32)

    def schedule(count):
        k = jnp.asarray(count, jnp.float32) + 1.0
        i = jnp.minimum(jnp.searchsorted(ends, k, side="left"), len(periods) - 1)
        lr = eta_min + weights[i] * 0.5 * (base_lr - eta_min) * (1 + jnp.cos(jnp.pi * (k - starts[i]) / lengths[i]))
        return jnp.where(k > ends[-1], eta_min, lr)

    return schedule


def param_labels(params: Any, tsa_iter: int, dcn_lr_mul: float) -> Any:
    """``'fusion'``, ``'dcn'`` or ``'other'`` per parameter, from its path (BasicSR's rules: a
    name containing ``fusion`` trains during ``tsa_iter``; one containing ``dcn`` gets
    ``lr * dcn_lr_mul``)."""

    def label(path, _):
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        if tsa_iter and "fusion" in name:
            return "fusion"
        if dcn_lr_mul != 1 and re.search("dcn", name):
            return "dcn"
        return "other"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(schedule, b1: float = 0.9, b2: float = 0.99, weight_decay: float = 0.0, tsa_iter: int = 0,
                   dcn_lr_mul: float = 1.0, grad_clip: float | None = None):
    """Adam (BasicSR's betas) per parameter group (``param_labels``). With ``tsa_iter``, BasicSR
    trains only ``fusion`` parameters for iterations ``1 .. tsa_iter - 1`` and all from
    ``tsa_iter`` on, i.e. the others start at update ``tsa_iter - 1`` (0-based)."""

    def adam(mul):
        lr = schedule if mul == 1 else (lambda n: schedule(n) * mul)
        if weight_decay:
            return optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay)
        return optax.adam(lr, b1=b1, b2=b2)

    groups = {"fusion": adam(1.0), "dcn": adam(dcn_lr_mul), "other": adam(1.0)}
    if tsa_iter:  # before it: no update, and the Adam moments and count untouched (requires_grad=False)
        def after_warmup(count):
            return count >= tsa_iter - 1

        groups["dcn"] = optax.transforms.conditionally_mask(groups["dcn"], after_warmup)
        groups["other"] = optax.transforms.conditionally_mask(groups["other"], after_warmup)
    tx = optax.multi_transform(groups, lambda params: param_labels(params, tsa_iter, dcn_lr_mul))
    if grad_clip:
        tx = optax.chain(optax.clip_by_global_norm(grad_clip), tx)
    return tx
