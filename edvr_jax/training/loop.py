"""The training loop: ``train(cfg, workdir)`` runs or resumes a run, with resume / init-from /
scratch decided by ``load_state_if_possible``, checkpoints (Orbax, ``edvr_jax.checkpointing``),
metrics (``edvr_jax.run_log``), validation, preemption (SIGTERM) and a full disk reported in
one line."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from edvr_jax import checkpointing, sharding, weights
from edvr_jax.models.dcn import warn_high_offsets
from edvr_jax.models.edvr import EDVR
from edvr_jax.ops.dcn import DCNOptions
from edvr_jax.training.config import ConfigError, validate_config, window_spec
from edvr_jax.training.step import init_sharded_state, jit_train_step, make_schedule, make_tx
from edvr_jax.training.validation import Validator

log = logging.getLogger("edvr_jax.train")


class TrainingError(RuntimeError):
    """The run failed (not its input): a non-finite loss, a full disk."""


def load_state_if_possible(cfg, mngr, state, shardings, batches) -> tuple[dict[str, Any], str]:
    """Resume from the run's newest checkpoint that restores; else initialise from
    ``cfg.init_from``; else the fresh ``state``. Returns the state and what was done."""
    restored = checkpointing.restore_latest(mngr, state, batches)
    if restored is not None:
        return restored, f"resumed from {mngr.directory} at step {int(restored['step'])}"
    if not cfg.init_from:
        return state, "initialised from scratch"
    params, report = weights.load_params_non_strict(cfg.init_from, jax.device_get(state["params"]),
                                                    strict=cfg.init_strict)
    params = jax.device_put(params, shardings["params"])
    state = {**state, "params": params}
    if "ema_params" in state:
        state["ema_params"] = params
    return state, f"initialised from {cfg.init_from}: {report}"


def _setup_data(cfg, lead: bool):
    from edvr_jax import data  # TFDS and Grain: imported when a run starts, not with train_step

    dc = cfg.data
    if lead:  # one process builds the dataset if it is not built yet; the others wait for it
        data.load_config_builder(dc)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("dataset built")
    builder = data.load_config_builder(dc)
    reader = data.ClipReader(builder, dc.train_split)
    loader = data.train_loader(reader, window_spec(cfg), cfg.batch_size, seed=cfg.seed, worker_count=dc.worker_count)
    val_reader = data.ClipReader(builder, dc.val_split) if dc.val_split and cfg.eval_every else None
    return reader, val_reader, loader


def _build_model(cfg, scale: int, name: str) -> EDVR:
    model = EDVR(**cfg.model, dtype=jnp.dtype(cfg.compute_dtype), offset_warning=False,
                 dcn=DCNOptions(impl=cfg.dcn_impl))
    if model.scale != scale:
        raise ValueError(f"the model restores x{model.scale} (hr_in={model.hr_in}) but {name} is a x{scale} dataset")
    return model


def _stop_requested(signalled: bool, mngr, step: int) -> bool:
    """SIGTERM on any process, or Orbax's preemption sync point (TPU), agreed by all processes."""
    if jax.process_count() > 1:
        signalled = bool(multihost_utils.process_allgather(np.array(signalled)).any())
    return signalled or mngr.reached_preemption(step)


@contextlib.contextmanager
def _sigterm_flag():
    flag = {"set": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: flag.update(set=True))
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Progress:
    """A tqdm bar (process 0) whose rate and ETA leave out compilation and validation time."""

    def __init__(self, enabled: bool, total: int, initial: int):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, metrics: dict | None, first: bool):
        if self.bar is None:
            return
        if metrics is not None:
            self.bar.set_postfix(loss=f"{metrics['loss']:.4g}", lr=f"{metrics['lr']:.2e}", refresh=False)
        self.bar.update(1)
        if first:  # the first step's time is compilation
            self.bar.unpause()

    def resume(self):
        if self.bar is not None:
            self.bar.unpause()

    def close(self):
        if self.bar is not None:
            self.bar.close()


def train(cfg, workdir: str | Path, *, devices: Sequence[jax.Device] | None = None, progress: bool = False) -> dict:
    """Runs (or resumes) the training ``cfg`` describes in ``workdir``; returns the last
    validation summary (empty when none ran)."""
    validate_config(cfg)
    workdir = Path(workdir)
    lead = jax.process_index() == 0
    workdir.mkdir(parents=True, exist_ok=True)
    lock = checkpointing.workdir_lock(workdir) if lead else contextlib.nullcontext()
    with lock:
        checkpointing.check_config(workdir, cfg)
        if weights.run_steps(workdir) and max(weights.run_steps(workdir)) >= cfg.total_steps:
            log.info("%s already holds step %d >= total_steps %d: nothing to do", workdir,
                     max(weights.run_steps(workdir)), cfg.total_steps)
            return {}
        return _train(cfg, workdir, devices, progress, lead)


def _train(cfg, workdir: Path, devices, progress: bool, lead: bool) -> dict:
    # ------------------------------------------------------------------ mesh
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, devices)
    if cfg.batch_size % mesh.size:
        raise ConfigError(f"batch_size={cfg.batch_size}: must be divisible by the {mesh.size} devices of the mesh")
    # ------------------------------------------------------------------ input
    reader, val_reader, loader = _setup_data(cfg, lead)
    batches = iter(loader)
    # ------------------------------------------------------------------ model and state
    model = _build_model(cfg, reader.scale, reader.name)
    lq_patch = window_spec(cfg).lq_patch(reader.scale, model.size_multiple)
    schedule = make_schedule(cfg.optim)
    tx = make_tx(cfg.optim, schedule)
    state, shardings = init_sharded_state(cfg, model, tx, mesh, model.input_shape(1, lq_patch, lq_patch))
    step_fn = jit_train_step(cfg, model, tx, schedule, shardings, mesh)
    # ------------------------------------------------------------------ checkpoint
    mngr = checkpointing.make_manager(workdir / weights.RUN_CHECKPOINTS, every=cfg.checkpoint.every,
                                      keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
    state, how = load_state_if_possible(cfg, mngr, state, shardings, batches)
    step = int(state["step"])
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state["params"]))
    log.info("%s. EDVR(%s), %d parameters; mesh %s; global batch %d; steps %d -> %d", how, dict(cfg.model),
             n_params, dict(mesh.shape), cfg.batch_size, step, cfg.total_steps)
    from edvr_jax import run_log

    metrics_log = _MetricsLog(run_log.create_writer(workdir, lead, resume_step=step), cfg, step)
    validate = Validator(model, val_reader, mesh, cfg) if val_reader is not None else None
    bar = _Progress(lead and progress, cfg.total_steps, step)
    summary, first = {}, step
    try:
        with _sigterm_flag() as sigterm, _redirect_logging_to(bar):
            while step < cfg.total_steps:
                batch = sharding.global_batch(next(batches), sharding.batch_sharding(mesh))
                state, metrics = step_fn(state, batch)
                step += 1
                if not bool(metrics["finite"]):
                    raise TrainingError(
                        f"non-finite loss or gradient at step {step} (loss {float(metrics['loss'])}, grad norm "
                        f"{float(metrics['grad_norm'])}); the update was not applied and training stopped. The last "
                        f"good checkpoint is step {mngr.latest_step()} in {mngr.directory}.")
                logged = metrics_log.train(step, metrics) if metrics_log.due(step) else None
                bar.update(logged, first=step == first + 1)
                val_metrics = None
                if validate is not None and (step % cfg.eval_every == 0 or step == cfg.total_steps):
                    summary = metrics_log.validation(step, *validate(state.get("ema_params", state["params"])))
                    val_metrics = {"val_psnr": summary["psnr"]}
                    bar.resume()
                preempted = _stop_requested(sigterm["set"], mngr, step)
                _save(mngr, workdir, model, cfg, step, state, batches, val_metrics,
                      force=preempted or step == cfg.total_steps or val_metrics is not None)
                metrics_log.writer.flush()
                if preempted:
                    mngr.wait_until_finished()
                    log.warning("preempted: saved step %d to %s, exiting", step, mngr.directory)
                    break
    except Exception as e:
        if not _is_disk_full(e):
            raise
        _finish_saves(mngr)  # an earlier step's save may still be committing: the message names it
        raise _disk_full_error(mngr, workdir, step) from None
    finally:
        _finish_saves(mngr, close=True)
        bar.close()
        metrics_log.writer.close()
        del batches
    if lead and progress and step >= cfg.total_steps:
        _print_epilogue(workdir, summary)
    return summary


class _MetricsLog:
    """What the loop writes through the metric writer: train metrics every ``log_every`` steps
    (and the first), with the rate of training steps alone; validation summaries and panels."""

    def __init__(self, writer, cfg, step: int):
        self.writer, self.cfg, self.first = writer, cfg, step
        self._since = (time.perf_counter(), step)

    def due(self, step: int) -> bool:
        return step % self.cfg.log_every == 0 or step == self.cfg.total_steps or step == self.first + 1

    def train(self, step: int, metrics: dict) -> dict:
        now = time.perf_counter()
        rate = (step - self._since[1]) / (now - self._since[0])
        self._since = (now, step)
        shown = jax.device_get(metrics)
        warn_high_offsets(shown["offsets"], where=f"step {step}: ")
        self.writer.write_scalars(step, {
            **{f"train/{k}": shown[k] for k in ("loss", "loss_per_pixel", "grad_norm", "lr", "psnr")},
            **{f"offset_absmean/{k}": v for k, v in shown["offsets"].items()},
            "perf/steps_per_s": rate, "perf/clips_per_s": rate * self.cfg.batch_size})
        return shown

    def validation(self, step: int, summary: dict, panels: dict) -> dict:
        self.writer.write_scalars(step, {f"val/{k}": v for k, v in summary.items()})
        self.writer.write_images(step, {k: v[None] for k, v in panels.items()})
        log.info("step %d validation: PSNR %.2f dB (baseline %.2f), SSIM %.4f (baseline %.4f)", step,
                 summary["psnr"], summary["base_psnr"], summary["ssim"], summary["base_ssim"])
        self._since = (time.perf_counter(), self._since[1])  # the rate is of training steps only
        return summary


def _finish_saves(mngr, close: bool = False) -> None:
    """Waits for the saves in flight (and closes the manager); a full disk is reported by the
    caller, without a second traceback."""
    try:
        mngr.wait_until_finished()
        if close:
            mngr.close()
    except Exception as e:  # noqa: BLE001
        if not _is_disk_full(e):
            raise


def _disk_full_error(mngr, workdir: Path, step: int) -> TrainingError:
    steps = weights.run_steps(workdir)
    newest = f"the newest complete checkpoint is step {steps[-1]}" if steps else "no checkpoint was completed"
    return TrainingError(f"no space left on the device of {mngr.directory} while writing a checkpoint (noticed at "
                         f"step {step}); {newest}. Free some space and run the same command to resume.")


def _is_disk_full(e: BaseException | None) -> bool:
    """Whether ``e`` or an exception it came from is a full disk (an OSError, or TensorStore's
    RESOURCE_EXHAUSTED write error as Orbax passes it on)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e)
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in text or (
                "RESOURCE_EXHAUSTED" in text and "writ" in text.lower()):
            return True
        e = e.__cause__ or e.__context__
    return False


def _save(mngr, workdir: Path, model: EDVR, cfg, step: int, state, batches, val_metrics, force: bool) -> None:
    """A checkpoint when the policy (or ``force``) says so; the first one makes the run own the
    workdir by writing its header."""
    if not (force or mngr.should_save(step)):
        return
    if jax.process_index() == 0 and not weights.run_steps(workdir):
        weights.write_header(workdir, model, train_config=cfg)
    checkpointing.save(mngr, step, state, batches, val_metrics, force=force)


@contextlib.contextmanager
def _redirect_logging_to(bar: _Progress):
    """Log lines printed above the progress bar instead of through it."""
    if bar.bar is None:
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm
    with logging_redirect_tqdm(loggers=[logging.getLogger("edvr_jax")]):
        yield


def _print_epilogue(workdir: Path, summary: dict) -> None:
    lines = [f"Run finished: {workdir}",
             f"  checkpoints   {workdir / weights.RUN_CHECKPOINTS} (steps {weights.run_steps(workdir)})",
             f"  metrics       {workdir / 'metrics.jsonl'}; TensorBoard: tensorboard --logdir {workdir / 'tensorboard'}"]
    if summary:
        lines.append(f"  validation    PSNR {summary['psnr']:.2f} dB (baseline {summary['base_psnr']:.2f}), "
                     f"SSIM {summary['ssim']:.4f} (baseline {summary['base_ssim']:.4f})")
    lines += [f"  evaluate      python eval.py --checkpoint {workdir}",
              f"  restore       python -m edvr_jax.restore IN OUT --checkpoint {workdir}"]
    print("\n".join(lines), flush=True)
