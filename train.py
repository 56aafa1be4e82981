"""Trains EDVR: sharded over a device mesh, preemption-safe, resumable bit for bit.

    python train.py                                                # the demo on the demo set
    python train.py --config configs/edvr.py:m,tsa=False --config.data.manual_dir=/data/REDS
    python train.py ... --num_processes 2 --process_id 0 --coordinator 127.0.0.1:1234   # multi-process

The default workdir is runs/<config name>. A workdir that holds a run resumes it (same config
required). SIGTERM saves the current step and exits; SIGKILL loses at most the steps since the
last checkpoint. The work itself is edvr_jax.training.train.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

ROOT = Path(__file__).resolve().parent

_CONFIG = config_flags.DEFINE_config_file("config", str(ROOT / "configs" / "edvr.py") + ":demo",
                                          "Config file and its argument (configs/edvr.py:VARIANT,...).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, TensorBoard). Default: runs/<config name>.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar (process 0).")


def _setup_logging() -> None:
    """Our progress messages at INFO on stderr; libraries (Orbax, TFDS) at WARNING."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("edvr_jax")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.propagate = False


def main(argv):
    del argv
    _setup_logging()
    from edvr_jax import training

    cfg = _CONFIG.value
    training.validate_config(cfg)  # before any device or data work
    if _NUM_PROCESSES.value:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    training.train(cfg, Path(_WORKDIR.value or ROOT / "runs" / cfg.name), progress=_PROGRESS.value)


if __name__ == "__main__":
    app.run(main)
