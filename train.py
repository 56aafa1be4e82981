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
import sys
from pathlib import Path

import jax
from absl import app, flags
from absl import logging as absl_logging

from edvr_jax.cli import define_config_flag, exit_on_user_error, parse_absl_flags, quiet_dependencies

ROOT = Path(__file__).resolve().parent

_CONFIG = define_config_flag("config", str(ROOT / "configs" / "edvr.py") + ":demo",
                             "Config file and its argument (configs/edvr.py:VARIANT,...).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, TensorBoard). Default: runs/<config name>.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar (process 0).")
_CONFIG_HELP = flags.DEFINE_bool("config_help", False, "List every --config.* field with its value and exit.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Keep the dependencies' log lines (Orbax, TFDS, TensorFlow).")


def _setup_logging() -> None:
    """Our progress messages at INFO on stderr; the libraries' only with --verbose."""
    quiet_dependencies(_VERBOSE.value)
    if _VERBOSE.value:
        absl_logging.set_verbosity(absl_logging.INFO)
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

    def run():
        cfg = _CONFIG.value
        if _CONFIG_HELP.value:
            print(config_help(cfg))
            return 0
        training.validate_config(cfg)  # before any device or data work
        if _NUM_PROCESSES.value:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
            jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        try:
            training.train(cfg, Path(_WORKDIR.value or ROOT / "runs" / cfg.name), progress=_PROGRESS.value)
        except training.TrainingError as e:  # the run failed, not its input: status 1, one line
            print(f"error: {e}", file=sys.stderr)
            return 1

    return exit_on_user_error(run)


def config_help(cfg) -> str:
    """Every field of ``cfg`` as it would be overridden, with its value; the recipes are described
    in configs/edvr.py's docstring."""
    from flax import traverse_util

    flat = traverse_util.flatten_dict(cfg.to_dict())
    width = max(len(".".join(k)) for k in flat)
    return "\n".join(["Fields of the config (override with --config.FIELD=VALUE; variants: configs/edvr.py's docstring):"]
                     + [f"  --config.{'.'.join(k):<{width}}  {v!r}" for k, v in flat.items()])


if __name__ == "__main__":
    app.run(main, flags_parser=parse_absl_flags)
