"""Trains EDVR: sharded over a device mesh, preemption-safe, resumable bit for bit.

    python train.py                                              # the demo config on the demo set
    python train.py --config configs/edvr_m_wotsa_reds.py --workdir runs/m_wotsa \\
        --config.data.manual_dir=/data/REDS
    python train.py ... --num_processes 2 --process_id 0 --coordinator 127.0.0.1:1234   # multi-process

A workdir that holds a run resumes it (same config required). SIGTERM saves the current
step and exits; SIGKILL loses at most the steps since the last checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from absl import logging as absl_logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import config_flags

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

_CONFIG = config_flags.DEFINE_config_file("config", str(ROOT / "configs" / "demo.py"), "Config file (get_config()).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, TensorBoard). Default: runs/<config>.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar (process 0).")


log = logging.getLogger("edvr_jax.train")


class TrainingError(RuntimeError):
    pass


def _setup_logging() -> None:
    """Our progress messages at INFO on stderr; libraries (Orbax, TFDS) at WARNING."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    for name in ("edvr_jax",):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        logger.propagate = False


def main(argv):
    del argv
    _setup_logging()
    cfg = _CONFIG.value
    if _NUM_PROCESSES.value:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    workdir = Path(_WORKDIR.value or ROOT / "runs" / Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem)
    train(cfg, workdir, progress=_PROGRESS.value)


def train(cfg, workdir: Path, progress: bool = False) -> dict:
    """Runs (or resumes) the training described by ``cfg`` in ``workdir``; returns the final
    validation summary (empty when no validation ran)."""
    import tensorflow as tf  # TensorBoard event files (TF is already here for TFDS)

    from edvr_jax import checkpointing, data, evaluation, optim, sharding
    from edvr_jax.models.edvr import EDVR
    from edvr_jax.restorer import StageRunner

    lead = jax.process_index() == 0
    workdir.mkdir(parents=True, exist_ok=True)
    checkpointing.check_config(workdir, cfg)

    # ------------------------------------------------------------------ mesh
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp)
    batch_sharding = sharding.batch_sharding(mesh)
    replicated = NamedSharding(mesh, P())
    if cfg.batch_size % mesh.size:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {mesh.size} devices of the mesh")

    # ------------------------------------------------------------------ input
    dc = cfg.data
    builder_args = dict(config=dc.config or None, data_dir=dc.data_dir or None, manual_dir=dc.manual_dir or None,
                        footage=dc.get("footage"))
    if lead:  # one process builds the dataset if it is not built yet; the others wait for it
        data.load_builder(dc.name, **builder_args)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("dataset built")
    builder = data.load_builder(dc.name, **builder_args)
    reader = data.ClipReader(builder, dc.train_split)
    spec = data.WindowSpec(num_frame=cfg.model.num_frame, gt_size=dc.gt_size,
                           interval_list=tuple(dc.interval_list), random_reverse=dc.random_reverse,
                           use_hflip=dc.use_hflip, use_rot=dc.use_rot, centers=dc.centers)
    loader = data.train_loader(reader, spec, cfg.batch_size, seed=cfg.seed, worker_count=dc.worker_count)
    batches = iter(loader)
    val_reader = data.ClipReader(builder, dc.val_split) if dc.val_split else None

    # ------------------------------------------------------------------ model
    model_kwargs = dict(cfg.model)
    model = EDVR(**model_kwargs, dtype=jnp.dtype(cfg.compute_dtype), offset_warning=False)
    if model.scale != reader.scale:
        raise ValueError(f"the model restores x{model.scale} (hr_in={model.hr_in}) but {reader.name} is a "
                         f"x{reader.scale} dataset")
    lq_patch = dc.gt_size // reader.scale
    model.check_input((1, model.num_frame, lq_patch, lq_patch, 3))
    schedule = optim.cosine_annealing_restart(cfg.optim.lr, cfg.optim.periods, cfg.optim.restart_weights,
                                              cfg.optim.eta_min)
    tx = optim.make_optimizer(schedule, cfg.optim.b1, cfg.optim.b2, cfg.optim.weight_decay, cfg.optim.tsa_iter,
                              cfg.optim.dcn_lr_mul, cfg.optim.grad_clip or None)

    def init_state(rng):
        params = model.init(rng, jnp.zeros(model.input_shape(1, lq_patch, lq_patch)))["params"]
        state = {"step": jnp.zeros([], jnp.int32), "params": params, "opt_state": tx.init(params),
                 "rng": jax.random.fold_in(rng, 1)}
        if cfg.ema_decay:
            state["ema_params"] = params
        return state

    # ------------------------------------------------------------------ shard
    rng = jax.random.PRNGKey(cfg.seed)
    shapes = jax.eval_shape(init_state, rng)
    state_shardings = sharding.tree_shardings(shapes, mesh, [tuple(r) for r in cfg.sharding_rules])
    state = jax.jit(init_state, out_shardings=state_shardings)(rng)
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))

    # ------------------------------------------------------------------ update step
    def train_step(state, batch):
        def loss_fn(params):
            out, inter = model.apply({"params": params}, batch["lq"], mutable=["intermediates"])
            loss = optim.charbonnier(out, batch["gt"], cfg.loss.eps, cfg.loss.reduction)
            return loss, (out, inter["intermediates"])

        (loss, (out, inter)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        rng, _ = jax.random.split(state["rng"])
        new = {"step": state["step"] + 1, "params": params, "opt_state": opt_state, "rng": rng}
        if cfg.ema_decay:
            new["ema_params"] = jax.tree.map(lambda e, p: cfg.ema_decay * e + (1 - cfg.ema_decay) * p,
                                             state["ema_params"], params)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)  # never step into NaN
        offsets = {jax.tree_util.keystr(path[:-1], simple=True, separator="/"): v[0]
                   for path, v in jax.tree_util.tree_leaves_with_path(inter, is_leaf=lambda x: isinstance(x, tuple))}
        mse = jnp.mean(jnp.square(jnp.clip(out, 0, 1) - batch["gt"]))
        metrics = {"loss": loss, "loss_per_pixel": loss / batch["gt"].size, "grad_norm": grad_norm,
                   "lr": schedule(state["step"]), "train_psnr": -10 * jnp.log10(mse), "finite": finite,
                   "offsets": offsets}
        return new, metrics

    step_fn = jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                      out_shardings=(state_shardings, replicated), donate_argnums=0)

    # ------------------------------------------------------------------ checkpoint
    mngr = checkpointing.make_manager(workdir / "checkpoints", cfg)
    start = checkpointing.restore_latest(mngr, state, batches)
    if start is not None:
        state = start
        log.info("resumed from %s at step %d", mngr.directory, int(state["step"]))
    elif cfg.init_from:
        params, report = checkpointing.load_params_non_strict(cfg.init_from, jax.device_get(state["params"]),
                                                              strict=cfg.init_strict)
        log.info("initialised from %s: %s", cfg.init_from, report)
        params = jax.device_put(params, state_shardings["params"])
        state = {**state, "params": params}
        if cfg.ema_decay:
            state["ema_params"] = params
    first_step = int(state["step"])

    stop = {"signal": None}

    def on_sigterm(signum, frame):
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_sigterm)

    # ------------------------------------------------------------------ evals
    writer = tf.summary.create_file_writer(str(workdir / "tensorboard")) if lead else None
    baseline_cache = {}  # the baseline's metrics on the validation clips never change
    val_apply = jax.jit(lambda params, x: model.apply({"params": params}, x), out_shardings=replicated)

    def validate(step: int) -> dict:
        if val_reader is None:
            return {}
        params = state.get("ema_params", state["params"])

        def apply_fn(params, x):
            return val_apply(params, multihost_utils.host_local_array_to_global_array(x, mesh, P()) if
                             jax.process_count() > 1 else jax.device_put(x, replicated))

        runner = StageRunner(model, params, cfg.val_batch_size, apply_fn=apply_fn)

        shown = []

        def keep(clip, f, out):
            if len(shown) < cfg.num_val_images and f == len(clip.gt) // 2:
                panel = np.concatenate([evaluation.baseline(clip.lq[f], reader.scale), out, clip.gt[f]], axis=1)
                shown.append((clip.name, panel))

        def restore(clip):
            return runner.frames(clip.lq.astype(np.float32) / 255.0, dc.val_padding)

        results = evaluation.evaluate(restore, data.eval_clips(val_reader, dc.val_clips), reader.scale,
                                      dc.val_crop_border, on_frame=keep, baseline_cache=baseline_cache)
        summary = evaluation.summarize(results)
        if writer is not None:
            with writer.as_default(step=step):
                for k, v in summary.items():
                    tf.summary.scalar(f"val/{k}", v)
                for name, panel in shown:
                    tf.summary.image(f"val/{name} (input | output | GT)", panel[None], step=step)
        log.info("step %d validation: PSNR %.2f dB (baseline %.2f), SSIM %.4f (baseline %.4f)", step,
                     summary["psnr"], summary["base_psnr"], summary["ssim"], summary["base_ssim"])
        return summary

    # ------------------------------------------------------------------ loop
    if lead:
        log.info("EDVR %s, %d parameters; mesh %s; global batch %d; steps %d -> %d", model_kwargs, n_params,
                     dict(mesh.shape), cfg.batch_size, first_step, cfg.total_steps)
    bar = None
    if lead and progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.total_steps, initial=first_step, unit="step", dynamic_ncols=True)
    summary = {}
    last_time, last_step = time.perf_counter(), first_step
    step = first_step
    try:
        while step < cfg.total_steps:
            batch = sharding.global_batch(next(batches), batch_sharding)
            state, metrics = step_fn(state, batch)
            step += 1
            if not bool(metrics["finite"]):
                raise TrainingError(
                    f"non-finite loss or gradient at step {step} (loss {float(metrics['loss'])}, grad norm "
                    f"{float(metrics['grad_norm'])}); the update was not applied and training stopped. The last "
                    f"good checkpoint is step {mngr.latest_step()} in {mngr.directory}.")
            if step % cfg.log_every == 0 or step == cfg.total_steps:
                now = time.perf_counter()
                rate = (step - last_step) / (now - last_time)
                last_time, last_step = now, step
                m = jax.device_get(metrics)
                for layer, value in m["offsets"].items():
                    if value > 50:
                        log.warning("step %d: DCN offset mean %.1f > 50 in %s (offset blow-up?)", step,
                                        value, layer)
                if lead:
                    with (workdir / "metrics.jsonl").open("a") as f:
                        row = {k: float(m[k]) for k in ("loss", "loss_per_pixel", "grad_norm", "lr", "train_psnr")}
                        f.write(json.dumps({"step": step, **row, "steps_per_s": rate}) + "\n")
                if writer is not None:
                    with writer.as_default(step=step):
                        for k in ("loss", "loss_per_pixel", "grad_norm", "lr", "train_psnr"):
                            tf.summary.scalar(f"train/{k}", m[k])
                        for layer, value in m["offsets"].items():
                            tf.summary.scalar(f"offset_absmean/{layer}", value)
                        tf.summary.scalar("perf/steps_per_s", rate)
                        tf.summary.scalar("perf/clips_per_s", rate * cfg.batch_size)
                if bar is not None:
                    bar.set_postfix(loss=f"{m['loss']:.4g}", lr=f"{m['lr']:.2e}", steps_s=f"{rate:.2f}")
            if bar is not None:
                bar.update(1)
            metrics_for_ckpt = None
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.total_steps):
                summary = validate(step)
                metrics_for_ckpt = {"val_psnr": summary["psnr"]} if summary else None
                if lead and summary:
                    with (workdir / "metrics.jsonl").open("a") as f:
                        f.write(json.dumps({"step": step, **{f"val_{k}": v for k, v in summary.items()}}) + "\n")
            preempted = _stop_requested(stop, mngr, step)
            checkpointing.save(mngr, step, state, batches, metrics_for_ckpt,
                               force=preempted or step == cfg.total_steps or metrics_for_ckpt is not None)
            if preempted:
                mngr.wait_until_finished()
                log.warning("preempted (signal %s): saved step %d to %s, exiting", stop["signal"], step,
                                mngr.directory)
                break
    finally:
        mngr.wait_until_finished()
        mngr.close()
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.flush()
        del batches
    return summary


def _stop_requested(stop: dict, mngr, step: int) -> bool:
    """SIGTERM on any process, or Orbax's preemption sync point (TPU), agreed by all processes."""
    local = stop["signal"] is not None
    if jax.process_count() > 1:
        local = bool(multihost_utils.process_allgather(np.array(local)).any())
    return local or mngr.reached_preemption(step)


if __name__ == "__main__":
    app.run(main)
