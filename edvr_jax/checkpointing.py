"""Training checkpoints with Orbax: state + data-iterator state per step, the last K and the
best by validation PSNR kept, atomic commits, a config guard, and non-strict initialisation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import grain.python as grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from edvr_jax import convert

CONFIG_FILE = "config.json"
# Fields a resumed run may change: bookkeeping, not what is being trained.
RESUMABLE_CHANGES = ("total_steps", "log_every", "eval_every", "checkpoint.", "data.worker_count",
                     "data.data_dir", "data.manual_dir", "mesh.", "val_batch_size", "num_val_images",
                     "data.val_clips")


class ConfigMismatchError(ValueError):
    pass


def _as_dict(cfg) -> dict[str, Any]:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def _flat(cfg) -> dict[str, Any]:
    """Dot-joined keys; values as JSON gives them back (tuples become lists), so a config and
    its saved ``config.json`` compare equal."""
    plain = json.loads(json.dumps(_as_dict(cfg), default=list))
    return {".".join(k): v for k, v in traverse_util.flatten_dict(plain).items()}


def check_config(workdir: Path, cfg) -> None:
    """Writes ``workdir/config.json`` on a run's first start; on a resume, a config whose
    training-relevant fields differ is an error naming them."""
    path = Path(workdir) / CONFIG_FILE
    new = _flat(cfg)
    if path.is_file():
        old = _flat(json.loads(path.read_text()))
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)
                      and not any(k == p or (p.endswith(".") and k.startswith(p)) for p in RESUMABLE_CHANGES))
        if diff:
            raise ConfigMismatchError(
                f"{workdir} holds a run with a different config; differing fields: "
                + ", ".join(f"{k}: {old.get(k)!r} (run) vs {new.get(k)!r} (now)" for k in diff[:10])
                + ". Use another --workdir, or the run's own config.")
    elif jax.process_index() == 0:
        path.write_text(json.dumps(_as_dict(cfg), indent=2, default=list) + "\n")


def make_manager(directory: Path, cfg) -> ocp.CheckpointManager:
    """Saves every ``cfg.checkpoint.every`` steps (and when forced: preemption, the end,
    evaluations); keeps the last ``keep`` plus the best by ``val_psnr``."""
    cp = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=cp.AnySavePolicy([cp.FixedIntervalPolicy(cfg.checkpoint.every),
                                               cp.PreemptionCheckpointingPolicy()]),
        preservation_policy=cp.AnyPreservationPolicy([
            cp.LatestN(n=cfg.checkpoint.keep),
            cp.BestN(get_metric_fn=lambda m: m["val_psnr"], reverse=False, n=1,
                     keep_checkpoints_without_metrics=False)]),
        enable_async_checkpointing=cfg.checkpoint.async_save,
        cleanup_tmp_directories=True)
    return ocp.CheckpointManager(Path(directory).absolute(), item_names=("state", "data"), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, iterator, metrics: Mapping[str, float] | None = None,
         force: bool = False) -> bool:
    return mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   data=grain.PyGrainCheckpointSave(iterator)),
                     metrics=dict(metrics) if metrics else None, force=force)


def restore_latest(mngr: ocp.CheckpointManager, state, iterator):
    """The newest complete checkpoint restored onto ``state``'s shapes and shardings (and the data
    iterator set to its position), or None when there is none. Unfinished saves are never
    visible: Orbax commits a step by renaming its directory when the write is complete."""
    step = mngr.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                          data=grain.PyGrainCheckpointRestore(iterator)))
    return restored["state"]


def read_params(path: str | Path, ema: bool = False) -> dict[str, Any]:
    """Parameters (nested dict of numpy arrays, Flax layout) from a train.py workdir, a
    ``edvr_jax.convert`` directory, or a BasicSR ``.pth`` / ``.safetensors`` file (the latter
    returned as a flat ``{basicsr key: array}`` dict under the key ``'basicsr'``). ``ema``: a
    run's EMA parameters where it kept them."""
    path = Path(path)
    if path.is_file():
        return {"basicsr": convert.read_state_dict(path)}
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if (path / "config.json").is_file() and (path / "params").is_dir():  # an edvr_jax.convert directory
        return jax.tree.map(np.asarray, convert.load_converted(path)[1]["params"])
    with ocp.CheckpointManager(path.absolute(), item_names=("state", "data")) as mngr:
        step = mngr.latest_step()
        if step is None:
            raise FileNotFoundError(f"{path}: no checkpoint (expected a train.py workdir, an edvr_jax.convert "
                                    f"directory, or a .pth/.safetensors file)")
        item = Path(mngr.directory) / str(step) / "state"
    # Onto this host's first device, whatever mesh the run was saved from.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(item).item_metadata.tree
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
        state = ckptr.restore(item, target)
    return jax.tree.map(np.asarray, state["ema_params" if ema and "ema_params" in state else "params"])


def load_params_non_strict(path: str | Path, target: Mapping[str, Any], strict: bool = False):
    """``(params, report)``: ``target`` (the freshly initialised parameters) with every entry of
    the source whose name and shape match copied in, as BasicSR's ``strict_load_g: false``.
    ``strict`` makes any missing, unexpected or mis-shaped entry an error."""
    source = read_params(path)
    target_flat = traverse_util.flatten_dict(dict(target))
    if "basicsr" in source:
        by_key = {convert.torch_key(p): p for p in target_flat}
        src_flat = {}
        unexpected = []
        for key, value in convert.strip_module_prefix(source["basicsr"]).items():
            if key in by_key:
                src_flat[by_key[key]] = convert._to_flax(np.asarray(value, np.float32))
            else:
                unexpected.append(key)
    else:
        src_flat = traverse_util.flatten_dict(dict(source))
        unexpected = ["/".join(p) for p in src_flat if p not in target_flat]
    out, missing, mismatched = {}, [], []
    for p, value in target_flat.items():
        if p in src_flat and np.shape(src_flat[p]) == np.shape(value):
            out[p] = np.asarray(src_flat[p], np.float32)
        else:
            (mismatched if p in src_flat else missing).append("/".join(p))
            out[p] = np.asarray(value)
    report = {"loaded": len(target_flat) - len(missing) - len(mismatched), "missing": missing,
              "unexpected": sorted(unexpected), "shape_mismatch": mismatched}
    if strict and (missing or unexpected or mismatched):
        raise convert.ConversionError(f"{path} does not fit the model strictly: {report}")
    return traverse_util.unflatten_dict(out), report
