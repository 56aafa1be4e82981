"""Training checkpoints with Orbax: the train state and the data iterator's position per step, the
last K and the best by validation PSNR kept, atomic commits, a guard against resuming with
another config, and a lock so that one process at a time trains in a workdir.

Layout of a run (``edvr_jax.weights`` reads it for inference): ``WORKDIR/config.json`` (the
header, written with the first checkpoint: a run owns its workdir once it has saved) and
``WORKDIR/checkpoints/<step>/{state,data}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import orbax.checkpoint as ocp
from flax import traverse_util

from edvr_jax import weights
from edvr_jax.errors import UserError

log = logging.getLogger("edvr_jax")

# Fields a resumed run may change: bookkeeping, not what is being trained.
RESUMABLE_CHANGES = ("total_steps", "log_every", "eval_every", "checkpoint.", "data.worker_count", "data.layout",
                     "data.data_dir", "data.manual_dir", "mesh.", "val_batch_size", "num_val_images",
                     "data.val_clips", "dcn_impl")
LOCK_FILE = ".lock"


class ConfigMismatchError(UserError, ValueError):
    pass


class WorkdirLockedError(UserError, RuntimeError):
    pass


def _flat(cfg) -> dict[str, Any]:
    """Dot-joined keys; values as JSON gives them back (tuples become lists), so a config and
    its saved copy compare equal."""
    plain = json.loads(json.dumps(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg), default=list))
    return {".".join(k): v for k, v in traverse_util.flatten_dict(plain).items()}


def check_config(workdir: Path, cfg) -> None:
    """A run that has saved a checkpoint owns its workdir: a config whose training-relevant
    fields differ from that run's is an error naming them. A workdir without checkpoints
    (a run that never got that far) is free."""
    workdir = Path(workdir)
    if not weights.run_steps(workdir) or not (workdir / weights.HEADER).is_file():
        return
    header = weights.read_header(workdir)
    old, new = _flat(header.train_config or {}), _flat(cfg)
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)
                  and not any(k == p or (p.endswith(".") and k.startswith(p)) for p in RESUMABLE_CHANGES))
    if diff:
        raise ConfigMismatchError(
            f"{workdir} holds a run with a different config; differing fields: "
            + ", ".join(f"{k}: {old.get(k)!r} (run) vs {new.get(k)!r} (now)" for k in diff[:10])
            + ". Use another --workdir, or the run's own config.")


@contextlib.contextmanager
def workdir_lock(workdir: Path):
    """Holds an exclusive lock on ``workdir`` (an ``flock``, released by the kernel when the process
    ends, however it ends). A second holder is refused at once, naming the first."""
    import fcntl

    path = Path(workdir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = path.read_text().strip() or "unknown"
            raise WorkdirLockedError(
                f"{workdir} is in use by another training process ({holder}). Wait for it to finish or stop it; "
                f"the lock is released when that process exits. If the workdir is on a filesystem without "
                f"working locks and no such process runs, delete {path}.") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"host {socket.gethostname()}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                 .encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def make_manager(directory: Path, *, every: int, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
    """Saves every ``every`` steps (and when forced: preemption, the end, evaluations); keeps
    the last ``keep`` plus the best by ``val_psnr``."""
    cp = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=cp.AnySavePolicy([cp.FixedIntervalPolicy(every), cp.PreemptionCheckpointingPolicy()]),
        preservation_policy=cp.AnyPreservationPolicy([
            cp.LatestN(n=keep),
            cp.BestN(get_metric_fn=lambda m: m["val_psnr"], reverse=False, n=1,
                     keep_checkpoints_without_metrics=False)]),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True)
    return ocp.CheckpointManager(Path(directory).absolute(), item_names=(weights.RUN_STATE, "data"), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, iterator, metrics: Mapping[str, float] | None = None,
         force: bool = False) -> bool:
    import grain.python as grain

    return mngr.save(step, args=ocp.args.Composite(**{weights.RUN_STATE: ocp.args.StandardSave(state),
                                                      "data": grain.PyGrainCheckpointSave(iterator)}),
                     metrics=dict(metrics) if metrics else None, force=force)


def restore_latest(mngr: ocp.CheckpointManager, state, iterator, steps: Sequence[int] | None = None):
    """The newest checkpoint that restores, onto ``state``'s shapes and shardings (and the data
    iterator set to its position), or None when there is none. Unfinished saves are never
    visible (Orbax commits a step by renaming its directory when the write is complete). A
    committed step that fails to restore (damaged files) is moved aside to ``<step>.damaged``
    with a warning naming it, and the next older one is tried."""
    import grain.python as grain

    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    steps = sorted(mngr.all_steps() if steps is None else steps, reverse=True)
    damaged = []
    for step in steps:
        try:
            restored = mngr.restore(step, args=ocp.args.Composite(**{
                weights.RUN_STATE: ocp.args.StandardRestore(abstract),
                "data": grain.PyGrainCheckpointRestore(iterator)}))
        except Exception as e:  # noqa: BLE001  Orbax/TensorStore raise many kinds on damaged files
            first = str(e).splitlines()[0][:300] if str(e) else ""
            log.warning("checkpoint step %d in %s cannot be restored (%s: %s); trying an earlier step", step,
                        mngr.directory, type(e).__name__, first)
            damaged.append(step)
            continue
        if damaged:
            if jax.process_index() == 0:
                for s in damaged:  # out of the way of the steps this run will save again; kept for inspection
                    src = Path(mngr.directory) / str(s)
                    src.rename(src.with_name(f"{s}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"))
            mngr.reload()
            log.warning("resumed from step %d: the newer step(s) %s could not be restored and were moved aside "
                        "(%s/<step>.damaged-*)", step, damaged, mngr.directory)
        return restored[weights.RUN_STATE]
    if steps:
        raise RuntimeError(f"no checkpoint in {mngr.directory} restores (tried steps {steps}); move the directory "
                           f"away to start from scratch")
    return None
