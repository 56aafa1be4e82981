"""The training state and one update, as pure functions of the model, the optimizer and a config.

* ``create_train_state(rng, *, model, tx, input_shape, ema)``: a dict of ``step``, ``params``,
  ``opt_state`` (and ``ema_params``); pure, so ``jax.eval_shape`` gives its shapes and
  ``jax.jit(..., out_shardings=...)`` creates it sharded (``init_sharded_state``).
* ``train_step(state, batch, *, model, tx, schedule, ...)``: one Charbonnier + optimizer
  update, pure; bound with ``functools.partial`` and jitted with shardings by ``jit_train_step``.
  Batches arrive as the input pipeline makes them, uint8, and become float here, on the device
  (``batch_to_float``): a quarter of the bytes to make, copy and transfer.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from edvr_jax import optim, sharding
from edvr_jax.models.edvr import EDVR


# Equal configs give the same schedule, optimizer and bound functions (the caches below), so that
# a second run in a process (a notebook's, or a resume) reuses the traces and compiled programs of
# the first instead of tracing the model again: jax.jit keys its traces on the function object.
# FrozenConfigDict: hashable, equal for equal configs.

def make_schedule(optim_cfg) -> Callable:
    return _schedule(ml_collections.FrozenConfigDict(optim_cfg))


def make_tx(optim_cfg, schedule: Callable) -> optax.GradientTransformation:
    return _tx(ml_collections.FrozenConfigDict(optim_cfg), schedule)


@functools.lru_cache(maxsize=8)
def _schedule(c: ml_collections.FrozenConfigDict) -> Callable:
    return optim.cosine_annealing_restart(c.lr, c.periods, c.restart_weights, c.eta_min)


@functools.lru_cache(maxsize=8)
def _tx(c: ml_collections.FrozenConfigDict, schedule: Callable) -> optax.GradientTransformation:
    return optim.make_optimizer(schedule, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay, tsa_iter=c.tsa_iter,
                                dcn_lr_mul=c.dcn_lr_mul, grad_clip=c.grad_clip or None)


@functools.lru_cache(maxsize=8)
def _bound(fn: Callable, **kwargs) -> Callable:
    return functools.partial(fn, **kwargs)


def create_train_state(rng: jax.Array, *, model: EDVR, tx: optax.GradientTransformation,
                       input_shape: Sequence[int], ema: bool = False) -> dict[str, Any]:
    params = model.init(rng, jnp.zeros(input_shape, jnp.float32))["params"]
    state = {"step": jnp.zeros([], jnp.int32), "params": params, "opt_state": tx.init(params)}
    if ema:
        state["ema_params"] = params
    return state


def offset_means(intermediates: Any) -> dict[str, jax.Array]:
    """``{'pcd_align/dcn_pack_l1': mean |offset|, ...}`` from the sown ``intermediates``."""
    leaves = jax.tree_util.tree_leaves_with_path(intermediates, is_leaf=lambda x: isinstance(x, tuple))
    return {jax.tree_util.keystr(path[:-1], simple=True, separator="/"): v[0] for path, v in leaves}


# NumPy's float32(u) / float32(255) for every uint8 u: the values the host pipeline used to make.
# XLA computes x / 255 as x * (1 / 255) (the CPU backend even for a divisor it only gets at run
# time), which differs in the last bit for 126 of the 256 values; a table lookup is exact anywhere.
_U8_TO_FLOAT = np.arange(256, dtype=np.float32) / np.float32(255)


def to_float(x: jax.Array) -> jax.Array:
    """uint8 pixels -> float32 in [0, 1], bit for bit NumPy's ``float32(x) / float32(255)``; float
    input as it is."""
    if x.dtype != jnp.uint8:
        return x
    return jnp.take(jnp.asarray(_U8_TO_FLOAT), x.astype(jnp.int32), mode="clip")  # uint8 is always in range


def batch_to_float(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: to_float(v) for k, v in batch.items()}


def train_step(state: dict[str, Any], batch: dict[str, jax.Array], *, model: EDVR, tx: optax.GradientTransformation,
               schedule: Callable, loss_eps: float = 1e-12, loss_reduction: str = "sum",
               ema_decay: float = 0.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """One Charbonnier + optimizer update. A non-finite loss or gradient leaves the state as it was
    (``metrics['finite']`` says so). ``batch``: ``lq`` and ``gt``, uint8 or float in [0, 1]."""
    batch = batch_to_float(batch)

    def loss_fn(params):
        out, inter = model.apply({"params": params}, batch["lq"], mutable=["intermediates"])
        return optim.charbonnier(out, batch["gt"], loss_eps, loss_reduction), (out, inter["intermediates"])

    (loss, (out, inter)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
    if "ema_params" in state:
        new["ema_params"] = optax.incremental_update(params, state["ema_params"], 1 - ema_decay)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)  # never step into NaN
    mse = jnp.mean(jnp.square(jnp.clip(out, 0, 1) - batch["gt"]))
    metrics = {"loss": loss, "loss_per_pixel": loss / batch["gt"].size, "grad_norm": grad_norm,
               "lr": schedule(state["step"]), "psnr": -10 * jnp.log10(mse), "finite": finite,
               "offsets": offset_means(inter)}
    return new, metrics


def jit_train_step(cfg, model: EDVR, tx, schedule, state_shardings, mesh):
    """``train_step`` bound to the config and jitted with the state's and the batch's shardings."""
    step = _bound(train_step, model=model, tx=tx, schedule=schedule, loss_eps=cfg.loss.eps,
                  loss_reduction=cfg.loss.reduction, ema_decay=cfg.ema_decay)
    return jax.jit(step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(state_shardings, NamedSharding(mesh, P())), donate_argnums=0)


def init_sharded_state(cfg, model: EDVR, tx, mesh, input_shape) -> tuple[dict[str, Any], Any]:
    """The initial state created directly in its shardings (the config's regex rules)."""
    init = _bound(create_train_state, model=model, tx=tx, input_shape=tuple(input_shape), ema=bool(cfg.ema_decay))
    rng = jax.random.key(cfg.seed)
    shapes = jax.eval_shape(init, rng)
    shardings = sharding.tree_shardings(shapes, mesh, [tuple(r) for r in cfg.sharding_rules])
    return jax.jit(init, out_shardings=shardings)(rng), shardings
