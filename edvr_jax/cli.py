"""What every command line (train.py, eval.py, ``python -m edvr_jax.{restore,convert,export}``)
shares: user errors as one ``error: ...`` line and status 2, config flag errors likewise, and
our own output without the dependencies' log chatter (``--verbose`` keeps it)."""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Callable

from edvr_jax.errors import USER_ERRORS


def underscore_flags(argv: list[str] | None) -> list[str]:
    """Flags are spelled with underscores everywhere (absl's style, train.py and eval.py); the
    argparse CLIs also take the dashed spelling: ``--batch-size`` -> ``--batch_size``."""
    out = []
    for a in sys.argv[1:] if argv is None else argv:
        if a.startswith("--") and not a.startswith("---"):
            name, eq, value = a.partition("=")
            a = "--" + name[2:].replace("-", "_") + eq + value
        out.append(a)
    return out


def quiet_dependencies(verbose: bool = False) -> None:
    """Orbax, TFDS and JAX log through absl at INFO and TensorFlow's C++ code prints its own
    lines; unless ``verbose``, keep only their errors. Call before TensorFlow is imported."""
    if verbose:
        return
    from absl import logging as absl_logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # TensorFlow (TensorBoard summaries, dataset builds; no model maths) announces its oneDNN
    # kernels on import, a line TF_CPP_MIN_LOG_LEVEL no longer hides; without them it is silent.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    absl_logging.set_verbosity(absl_logging.ERROR)
    for name in ("jax._src.xla_bridge", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # A full disk during an asynchronous checkpoint save makes Orbax's threads and asyncio tasks
    # log the same write error hundreds of times; the training loop reports it in one line.
    for handler in (absl_logging.get_absl_handler(), *logging.getLogger().handlers):
        handler.addFilter(_not_disk_full)
    threading.excepthook = _quiet_closed_loops(threading.excepthook)


def _not_disk_full(record: logging.LogRecord) -> bool:
    text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info and record.exc_info[1] else "")
    return "No space left on device" not in text and "RESOURCE_EXHAUSTED" not in text


def _quiet_closed_loops(hook):
    """Orbax's writer threads, once a failed save has closed their event loop, each raise
    'Event loop is closed' at exit: nothing a user can act on."""

    def excepthook(args):
        if not (issubclass(args.exc_type, RuntimeError) and "Event loop is closed" in str(args.exc_value)):
            hook(args)

    return excepthook


def exit_on_user_error(fn: Callable[[], int | None]) -> int:
    """Runs a CLI body; a user error becomes ``error: <message>`` on stderr and status 2."""
    try:
        status = fn()
        return status if isinstance(status, int) else 0
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _unknown_field(e: BaseException, argv: list[str]) -> None:
    text = str(e.args[0]) if e.args else str(e)
    while isinstance(e.args[0] if e.args else None, BaseException):  # AttributeError(KeyError(...))
        e = e.args[0]
        text = str(e.args[0]) if e.args else str(e)
    name, _, hint = text.partition("\n")
    name = name.strip("\"'\\")
    given = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.") and f".{name}." in a.split("=")[0] + "."]
    print(f"error: the config has no field {name!r} ({', '.join(given) or 'a --config. flag'}); "
          f"{hint.strip() + ' ' if hint.strip() else ''}`--config_help` lists every field with its value", file=sys.stderr)
    sys.exit(2)


def define_config_flag(name: str, default: str | None, help_string: str):
    """``config_flags.DEFINE_config_file`` for a main. ml_collections applies ``--config.*``
    overrides as it defines the flag; one naming a field the config does not have ends in one
    line and status 2 instead of a traceback."""
    from ml_collections import config_flags

    try:
        return config_flags.DEFINE_config_file(name, default, help_string)
    except (AttributeError, KeyError) as e:
        _unknown_field(e, sys.argv)


def parse_absl_flags(argv: list[str]) -> list[str]:
    """``absl.app.run``'s ``flags_parser`` for our mains: a bad flag ends in one line and status 2."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:  # ml_collections, on a --config.<field> the config does not have
        _unknown_field(e, argv)
    except flags.Error as e:
        text = str(e)
        if "Traceback (most recent call last)" in text:  # ml_collections quotes the config file's traceback
            text = f"{text.splitlines()[0]} {text.strip().splitlines()[-1]}"
        print(f"error: {text}", file=sys.stderr)
    except ValueError as e:  # the config file's get_config refusing its argument
        print(f"error: --config: {e}", file=sys.stderr)
    sys.exit(2)
