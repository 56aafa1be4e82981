"""EDVR training as library functions; ``train.py`` is a thin command line over ``train``.

* ``create_train_state(rng, *, model, tx, input_shape, ema)``: the state, a dict of ``step``,
  ``params``, ``opt_state`` (and ``ema_params``); pure, so ``jax.eval_shape`` gives its shapes
  and ``jax.jit(..., out_shardings=...)`` creates it sharded.
* ``train_step(state, batch, *, model, tx, schedule, ...)``: one update, pure; bound with
  ``functools.partial`` and jitted with shardings by ``jit_train_step``.
* ``validate(...)``: BasicSR's test protocol on the validation clips.
* ``train(cfg, workdir)``: the loop, with resume / init-from / scratch decided by
  ``load_state_if_possible``, checkpoints, metrics and preemption.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from edvr_jax import checkpointing, optim, sharding, weights
from edvr_jax.errors import ArgumentError, UserError, check_arguments
from edvr_jax.models.dcn import OFFSET_WARN_THRESHOLD
from edvr_jax.models.edvr import EDVR
from edvr_jax.temporal import PADDING_MODES

log = logging.getLogger("edvr_jax.train")


class TrainingError(RuntimeError):
    pass


class ConfigError(UserError, ValueError):
    """A config field whose value cannot work; the message names the field, its value and what is allowed."""


# ------------------------------------------------------------------------------------------ config


def validate_config(cfg) -> None:
    """Checks every field that can be checked without data or devices, before any work starts.
    The model's arguments and the training windows are checked by their owners
    (``EDVR.check_arguments``, ``WindowSpec``), their errors named by the config's fields."""
    from edvr_jax.data import DATASETS  # (imports TFDS: only when a config is checked)

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
        ("data.name", d.name, d.name in DATASETS, f"one of {sorted(DATASETS)}"),
        ("data.val_padding", d.val_padding, d.val_padding in PADDING_MODES, f"one of {PADDING_MODES}"),
        ("data.worker_count", d.worker_count, d.worker_count >= 0, ">= 0"),
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


# ------------------------------------------------------------------------------------------- state


def make_schedule(optim_cfg) -> Callable:
    return optim.cosine_annealing_restart(optim_cfg.lr, optim_cfg.periods, optim_cfg.restart_weights,
                                          optim_cfg.eta_min)


def make_tx(optim_cfg, schedule: Callable) -> optax.GradientTransformation:
    return optim.make_optimizer(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, weight_decay=optim_cfg.weight_decay,
                                tsa_iter=optim_cfg.tsa_iter, dcn_lr_mul=optim_cfg.dcn_lr_mul,
                                grad_clip=optim_cfg.grad_clip or None)


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


def train_step(state: dict[str, Any], batch: dict[str, jax.Array], *, model: EDVR, tx: optax.GradientTransformation,
               schedule: Callable, loss_eps: float = 1e-12, loss_reduction: str = "sum",
               ema_decay: float = 0.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """One Charbonnier + optimizer update. A non-finite loss or gradient leaves the state as it was
    (``metrics['finite']`` says so)."""

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
    step = functools.partial(train_step, model=model, tx=tx, schedule=schedule, loss_eps=cfg.loss.eps,
                             loss_reduction=cfg.loss.reduction, ema_decay=cfg.ema_decay)
    return jax.jit(step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(state_shardings, NamedSharding(mesh, P())), donate_argnums=0)


def init_sharded_state(cfg, model: EDVR, tx, mesh, input_shape) -> tuple[dict[str, Any], Any]:
    """The initial state created directly in its shardings (the config's regex rules)."""
    init = functools.partial(create_train_state, model=model, tx=tx, input_shape=input_shape,
                             ema=bool(cfg.ema_decay))
    rng = jax.random.key(cfg.seed)
    shapes = jax.eval_shape(init, rng)
    shardings = sharding.tree_shardings(shapes, mesh, [tuple(r) for r in cfg.sharding_rules])
    return jax.jit(init, out_shardings=shardings)(rng), shardings


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


# ------------------------------------------------------------------------------------------- evals


@dataclasses.dataclass
class Validator:
    """BasicSR's test protocol on the validation clips, on the training mesh."""

    model: EDVR
    reader: Any
    mesh: Any
    cfg: Any
    baseline_cache: dict = dataclasses.field(default_factory=dict)  # the baseline never changes

    def __post_init__(self):
        model, replicated = self.model, NamedSharding(self.mesh, P())
        self._apply = jax.jit(lambda params, x: model.apply({"params": params}, x), out_shardings=replicated)

    def _apply_on_mesh(self, params, x):
        if jax.process_count() > 1:
            x = multihost_utils.host_local_array_to_global_array(x, self.mesh, P())
        else:
            x = jax.device_put(x, NamedSharding(self.mesh, P()))
        return self._apply(params, x)

    def __call__(self, params) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """``(summary, {name: input | output | GT panel})``."""
        from edvr_jax import data, scoring
        from edvr_jax.inference import StageRunner

        dc = self.cfg.data
        runner = StageRunner(self.model, params, self.cfg.val_batch_size, apply_fn=self._apply_on_mesh)
        panels = {}

        def keep(clip, f, out):
            if len(panels) < self.cfg.num_val_images and f == len(clip.gt) // 2:
                lq = scoring.baseline(clip.lq[f], self.reader.scale)
                panels[f"val/{clip.name} (input | output | GT)"] = np.concatenate([lq, out, clip.gt[f]], axis=1)

        results = scoring.evaluate(lambda clip: runner.frames(clip.lq.astype(np.float32) / 255.0, dc.val_padding),
                                      data.eval_clips(self.reader, dc.val_clips), self.reader.scale,
                                      dc.val_crop_border, on_frame=keep, baseline_cache=self.baseline_cache)
        return scoring.summarize(results), panels


# -------------------------------------------------------------------------------------------- loop


def _setup_data(cfg, lead: bool):
    from edvr_jax import data

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
    model = EDVR(**cfg.model, dtype=jnp.dtype(cfg.compute_dtype), offset_warning=False)
    if model.scale != scale:
        raise ValueError(f"the model restores x{model.scale} (hr_in={model.hr_in}) but {name} is a x{scale} dataset")
    return model


def _warn_offsets(step: int, offsets: dict[str, float]) -> None:
    for layer, value in offsets.items():
        if value > OFFSET_WARN_THRESHOLD:
            log.warning("step %d: DCN offset mean %.1f > %.0f in %s (offset blow-up?)", step, value,
                        OFFSET_WARN_THRESHOLD, layer)


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
    from edvr_jax import run_log  # TensorBoard through TensorFlow: only for the loop

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
        _warn_offsets(step, shown["offsets"])
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
