"""EDVR training as library functions; ``train.py`` is a thin command line over ``train``.

* ``step``: the state (``create_train_state``) and one update (``train_step``), pure functions
  bound with ``functools.partial`` and jitted with shardings (``jit_train_step``).
* ``config``: ``validate_config``, every field of a training config checked before any work.
* ``validation``: ``Validator``, BasicSR's test protocol on the validation clips.
* ``loop``: ``train(cfg, workdir)``, the loop with resume, checkpoints, metrics and preemption.
"""

from edvr_jax.training.config import ConfigError, validate_config, window_spec
from edvr_jax.training.loop import TrainingError, load_state_if_possible, train
from edvr_jax.training.step import (create_train_state, init_sharded_state, jit_train_step, make_schedule, make_tx,
                                    offset_means, train_step)
from edvr_jax.training.validation import Validator

__all__ = ["ConfigError", "TrainingError", "Validator", "create_train_state", "init_sharded_state", "jit_train_step",
           "load_state_if_possible", "make_schedule", "make_tx", "offset_means", "train", "train_step",
           "validate_config", "window_spec"]
