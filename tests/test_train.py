"""The training recipe (loss, schedule, TSA warm-up, dcn_lr_mul), checkpoints and the training
library in-process: the step on 1 vs 8 devices (data parallel and FSDP), a whole run, loading it
for inference, non-finite stops, configs. Process-level behaviour (SIGKILL/SIGTERM, 2 processes)
is in test_train_process.py."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import load_config, tiny_config

from edvr_jax import EDVR, checkpointing, load, load_model, run_log, sharding, training, weights
from edvr_jax.optim import charbonnier, cosine_annealing_restart, make_optimizer, param_labels

SMALL = dict(num_feat=8, deformable_groups=2, num_extract_block=1, num_reconstruct_block=1)


# --- recipe ------------------------------------------------------------------------------------

def test_charbonnier_hand_values():
    pred, target = jnp.array([0.0, 1.0, 0.5]), jnp.array([0.0, 0.0, 0.25])
    assert float(charbonnier(pred, target, eps=1e-12)) == pytest.approx(1e-6 + 1.0 + 0.25, rel=1e-6)
    assert float(charbonnier(pred, target, eps=1e-12, reduction="mean")) == pytest.approx((1e-6 + 1.25) / 3, rel=1e-6)


def test_cosine_restart_schedule_at_restart_points():
    base, eta = 4e-4, 1e-7
    lr = cosine_annealing_restart(base, [50_000, 100_000, 150_000, 150_000, 150_000], [1, 0.5, 0.5, 0.5, 0.5], eta)
    at = lambda it: float(lr(it - 1))  # noqa: E731  BasicSR iteration `it` (1-based) runs after update it-1
    assert at(1) == pytest.approx(eta + 0.5 * (base - eta) * (1 + math.cos(math.pi / 50_000)), rel=1e-6)
    assert at(25_000) == pytest.approx(eta + 0.5 * (base - eta), rel=1e-5)  # half-way: cos(pi/2) = 0
    assert at(50_000) == pytest.approx(eta, rel=1e-4)  # end of period 1
    assert at(50_001) == pytest.approx(eta + 0.5 * 0.5 * (base - eta) * (1 + math.cos(math.pi / 100_000)), rel=1e-6)
    assert at(100_000) == pytest.approx(eta + 0.25 * (base - eta), rel=1e-5)  # half of period 2, weight 0.5
    assert at(150_001) == pytest.approx(eta + 0.5 * 0.5 * (base - eta) * (1 + math.cos(math.pi / 150_000)),
                                        rel=1e-6)  # restart 2
    assert at(600_000) == pytest.approx(eta, rel=1e-4)
    assert at(700_000) == pytest.approx(eta)  # past the last period


def _toy_params():
    return {"fusion": {"kernel": jnp.ones((2,))}, "pcd_align": {"dcn_pack_l1": {"kernel": jnp.ones((2,))}},
            "conv_first": {"kernel": jnp.ones((2,))}}


def test_tsa_iter_trains_only_fusion_then_all_with_fresh_adam():
    """BasicSR: iterations 1 .. tsa_iter-1 update only *fusion*; at tsa_iter the rest start, their
    Adam moments and step count untouched until then (requires_grad=False)."""
    params = _toy_params()
    grads = jax.tree.map(lambda p: jnp.array([0.3, -2.0]), params)
    tx = make_optimizer(lambda n: 1e-2, tsa_iter=3)
    state = tx.init(params)
    initial_state = state
    history = [params]
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        history.append(params)
        if len(history) == 3:  # after iterations 1 and 2 the frozen groups' Adam states are as initialised
            for group in ("dcn", "other"):
                jax.tree.map(np.testing.assert_array_equal, state.inner_states[group].inner_state.inner_state,
                             initial_state.inner_states[group].inner_state.inner_state)
    for it in (1, 2):  # iterations 1 and 2: fusion moves, the rest stay
        assert not np.allclose(history[it]["fusion"]["kernel"], history[it - 1]["fusion"]["kernel"])
        np.testing.assert_array_equal(history[it]["conv_first"]["kernel"], 1.0)
        np.testing.assert_array_equal(history[it]["pcd_align"]["dcn_pack_l1"]["kernel"], 1.0)
    # Iteration 3: the rest take a first Adam step: lr * g / (|g| + eps) = lr * sign(g).
    np.testing.assert_allclose(history[3]["conv_first"]["kernel"], 1.0 - 1e-2 * np.sign([0.3, -2.0]), rtol=1e-6)
    fresh = optax.adam(1e-2, b1=0.9, b2=0.99)
    u, _ = fresh.update(grads["fusion"], fresh.init(history[0]["fusion"]))
    np.testing.assert_allclose(history[1]["fusion"]["kernel"], 1.0 + u["kernel"], rtol=1e-6)


def test_dcn_lr_mul_scales_only_dcn_parameters():
    params = _toy_params()
    assert param_labels(params, 0, 0.5) == {"fusion": {"kernel": "other"}, "pcd_align": {"dcn_pack_l1": {"kernel": "dcn"}},
                                            "conv_first": {"kernel": "other"}}
    tx = make_optimizer(lambda n: 1e-2, dcn_lr_mul=0.5)
    grads = jax.tree.map(lambda p: jnp.array([1.0, -1.0]), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["pcd_align"]["dcn_pack_l1"]["kernel"], [-5e-3, 5e-3], rtol=1e-5)
    np.testing.assert_allclose(updates["conv_first"]["kernel"], [-1e-2, 1e-2], rtol=1e-5)


# --- checkpoints -------------------------------------------------------------------------------

def test_keeps_the_last_k_and_the_best_and_skips_unfinished_saves(tmp_path):
    import grain.python as grain

    it = iter(grain.DataLoader(data_source=grain.RangeDataSource(0, 100, 1),
                               sampler=grain.IndexSampler(100, grain.NoSharding(), shuffle=False, num_epochs=1)))
    state = {"w": jnp.zeros(3)}
    psnr = {2: 20.0, 4: 25.0, 6: 22.0, 8: 21.0, 10: 20.5}
    with checkpointing.make_manager(tmp_path / "ckpt", every=2, keep=2, async_save=False) as mngr:
        for step in range(1, 11):
            state = {"w": state["w"] + 1}
            checkpointing.save(mngr, step, state, it, {"val_psnr": psnr[step]} if step in psnr else None)
        mngr.wait_until_finished()
        assert mngr.all_steps() == [4, 8, 10]  # the last 2, plus step 4, the best PSNR
    # A save that died half-way leaves only a temporary directory, which restore never picks.
    (tmp_path / "ckpt" / "12.orbax-checkpoint-tmp-1234567").mkdir()
    with checkpointing.make_manager(tmp_path / "ckpt", every=2, keep=2, async_save=False) as mngr:
        restored = checkpointing.restore_latest(mngr, {"w": jnp.zeros(3)}, it)
    np.testing.assert_array_equal(restored["w"], 10.0)


def test_non_strict_init_copies_matching_parameters(tmp_path):
    rng = np.random.default_rng(0)
    wo_tsa, tsa = (jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(np.float32),
                                weights.abstract_params(EDVR(**SMALL, with_tsa=t))) for t in (False, True))
    weights.save_weights(tmp_path / "wotsa", EDVR(**SMALL, with_tsa=False), wo_tsa)
    params, report = weights.load_params_non_strict(tmp_path / "wotsa", tsa)
    np.testing.assert_array_equal(params["conv_first"]["kernel"], wo_tsa["conv_first"]["kernel"])
    np.testing.assert_array_equal(params["fusion"]["temporal_attn1"]["kernel"], tsa["fusion"]["temporal_attn1"]["kernel"])
    assert any("fusion" in k for k in report["missing"]) and report["loaded"] > 20
    assert any("fusion" in k for k in report["unexpected"] + report["shape_mismatch"])
    with pytest.raises(Exception, match="does not fit the model strictly"):
        weights.load_params_non_strict(tmp_path / "wotsa", tsa, strict=True)


def test_metrics_jsonl_drops_rows_after_the_resumed_step(tmp_path):
    w = run_log.JsonlWriter(tmp_path / "m.jsonl")
    for step in (1, 2, 3, 4):
        w.write_scalars(step, {"train/loss": float(step)})
    w.close()
    w = run_log.JsonlWriter(tmp_path / "m.jsonl", resume_step=2)  # steps 3, 4 came after the checkpoint
    w.write_scalars(3, {"train/loss": 30.0})
    w.close()
    rows = run_log.read_jsonl(tmp_path / "m.jsonl")
    assert [(r["step"], r["train/loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_tensorboard_events_are_tf_summarys_without_tensorflow(tmp_path):
    """run_log's TensorBoardWriter writes what clu's SummaryWriter (tf.summary) writes for the same
    scalars and images, as TensorBoard reads them back; importing and using it loads no TensorFlow."""
    import subprocess
    import sys

    import io

    from clu import metric_writers
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    rng = np.random.default_rng(0)
    images = {"val/a (input | output | GT)": rng.integers(0, 256, (1, 12, 30, 3), np.uint8)}
    for writer in (run_log.TensorBoardWriter(tmp_path / "ours"), metric_writers.SummaryWriter(str(tmp_path / "tf"))):
        for step in (1, 2):
            writer.write_scalars(step, {"train/loss": np.float32(0.25 * step), "perf/steps_per_s": 3.0 + step})
        writer.write_images(2, images)
        writer.close()
    ours, tf = (EventAccumulator(str(tmp_path / d), size_guidance={"tensors": 0}).Reload() for d in ("ours", "tf"))
    assert sorted(ours.Tags()["tensors"]) == sorted(tf.Tags()["tensors"]) == sorted(["train/loss", "perf/steps_per_s", *images])
    for tag in ours.Tags()["tensors"]:
        a, b = ours.Tensors(tag), tf.Tensors(tag)
        assert [e.step for e in a] == [e.step for e in b]
        assert ours.SummaryMetadata(tag) == tf.SummaryMetadata(tag)
        for x, y in zip(a, b, strict=True):
            x, y = make_ndarray(x.tensor_proto), make_ndarray(y.tensor_proto)
            assert x.dtype == y.dtype and x.shape == y.shape
            if tag in images:  # width, height, then PNGs (other encoders' bytes) of the same pixels
                assert list(x[:2]) == list(y[:2]) == [b"30", b"12"]
                decode = lambda png: np.asarray(Image.open(io.BytesIO(png)))  # noqa: E731
                np.testing.assert_array_equal(decode(x[2]), images[tag][0])
                np.testing.assert_array_equal(decode(y[2]), images[tag][0])
            else:
                assert x == y
    code = ("import sys; from edvr_jax import run_log; import numpy as np; w = run_log.create_writer(sys.argv[1], True); "
            "w.write_scalars(1, {'a': 1.0}); w.write_images(1, {'b': np.zeros((1, 4, 4, 3), np.uint8)}); w.close(); "
            "assert 'tensorflow' not in sys.modules, 'imported tensorflow'")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


# --- the train step on device meshes ------------------------------------------------------------

def _run_model(cfg):
    """The model ``training.train`` builds from ``cfg`` (equal to it: the same cached programs)."""
    from edvr_jax.training.loop import _build_model

    return _build_model(cfg, 4, "demo")


def _run_steps(cfg, devices, data, fsdp, batches):
    model = _run_model(cfg)
    schedule = training.make_schedule(cfg.optim)
    tx = training.make_tx(cfg.optim, schedule)
    mesh = sharding.make_mesh(data, fsdp, devices)
    state, shardings = training.init_sharded_state(cfg, model, tx, mesh, model.input_shape(1, 8, 8))
    step = training.jit_train_step(cfg, model, tx, schedule, shardings, mesh)
    losses = []
    for b in batches:
        state, metrics = step(state, sharding.global_batch(b, sharding.batch_sharding(mesh)))
        losses.append(float(metrics["loss"]))
    specs = {s.spec for s in jax.tree.leaves(shardings["params"])}
    return losses, jax.device_get(state["params"]), specs


@pytest.mark.heavy
def test_same_steps_on_1_and_8_devices_data_parallel_and_fsdp(data_dir):
    cfg = tiny_config(data_dir)
    rng = np.random.default_rng(0)
    gt = rng.random((4, 8, 32, 32, 3), np.float32)
    lq = gt.reshape(4, 8, 8, 4, 8, 4, 3).mean((3, 5))  # box-downsampled GT, repeated over 5 frames
    lq = np.repeat(lq[:, :, None], 5, 2) + 0.01 * rng.standard_normal((4, 8, 5, 8, 8, 3), np.float32)
    u8 = lambda a: np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)  # noqa: E731
    # uint8, as the pipeline's: on 8 devices this is the reference run's program (compiled once per session).
    batches = [{"lq": u8(lq[i]), "gt": u8(gt[i])} for i in range(4)]
    devices = jax.devices()
    assert len(devices) == 8  # conftest asks XLA for 8 host devices
    ref_losses, ref, specs1 = _run_steps(cfg, devices[:1], 1, 1, batches)
    assert ref_losses[-1] < ref_losses[0]
    ref_norm = math.sqrt(sum(np.sum(x ** 2) for x in jax.tree.leaves(ref)))
    for data, fsdp in ((8, 1), (2, 4)):
        losses, params, specs = _run_steps(cfg, devices, data, fsdp, batches)
        if fsdp > 1:  # kernels' output channels really are split over the fsdp axis
            assert jax.sharding.PartitionSpec(None, None, None, "fsdp") in specs
        np.testing.assert_allclose(losses, ref_losses, rtol=2e-4)
        # Only the order of the gradient sums differs. Where a gradient element is near zero,
        # Adam's normalised step (~lr * sign) can then differ by a fraction of a step, so
        # elements are held to one step (lr) and the whole to a relative L2 distance of 1e-4
        # (four steps move the parameters by ~1e-2 of their norm).
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=cfg.optim.lr), ref, params)
        dist = math.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(jax.tree.leaves(ref), jax.tree.leaves(params))))
        assert dist / ref_norm < 1e-4, (data, fsdp)


def _nan_step_program(data_dir):
    """The tiny run's state and jitted step on all 8 host devices (the reference run's mesh), built
    from a fresh config, model and optimizer, and a NaN batch in the mesh's sharding."""
    cfg = tiny_config(data_dir)
    model = _run_model(cfg)
    schedule = training.make_schedule(cfg.optim)
    tx = training.make_tx(cfg.optim, schedule)
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp)
    state, shardings = training.init_sharded_state(cfg, model, tx, mesh, model.input_shape(1, 8, 8))
    batch = {"lq": np.full((8, 5, 8, 8, 3), np.nan, np.float32), "gt": np.zeros((8, 32, 32, 3), np.float32)}
    step = training.jit_train_step(cfg, model, tx, schedule, shardings, mesh)
    return state, step, sharding.global_batch(batch, sharding.batch_sharding(mesh))


def test_a_non_finite_step_is_not_applied_and_an_equal_config_traces_nothing_again(data_dir):
    state, step, batch = _nan_step_program(data_dir)
    before = jax.device_get(state)
    new, metrics = step(state, batch)
    assert not bool(metrics["finite"])
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(new), before)
    # The same run built again in this process (a notebook's second run, a resume): its state's
    # init and its step are the first build's programs; nothing is traced, lowered or compiled.
    events = []
    listener = lambda event, secs, **kw: events.append(event)  # noqa: E731
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        state2, step2, batch2 = _nan_step_program(data_dir)
        new2, _ = step2(state2, batch2)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert step2.__wrapped__ is step.__wrapped__
    assert not [e for e in events if e.endswith(("jaxpr_to_mlir_module_duration", "backend_compile_duration"))], events
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(new2), before)


# --- a whole run in-process ---------------------------------------------------------------------

def test_run_writes_its_header_metrics_and_checkpoints(reference_run):
    header = weights.read_header(reference_run)
    assert header.model == "EDVR" and header.config["num_feat"] == 8 and header.train_config["total_steps"] == 12
    assert weights.run_steps(reference_run) == [4, 8, 12]
    rows = run_log.read_jsonl(reference_run / "metrics.jsonl")
    losses = [r["train/loss"] for r in rows]
    assert [r["step"] for r in rows] == list(range(1, 13)) and losses[-1] < losses[0]
    assert {"train/lr", "train/psnr", "offset_absmean/pcd_align/dcn_pack_l1", "perf/steps_per_s"} <= set(rows[0])


def test_a_train_workdir_loads_for_inference(reference_run):
    """What eval.py and the restore CLI do with a train.py workdir: its final params, its model."""
    model, params = load_model(reference_run)
    jax.tree.map(np.testing.assert_array_equal, params, weights.read_params(reference_run))
    assert (model.num_feat, model.deformable_groups, model.num_frame) == (8, 2, 5)
    clip = np.random.default_rng(0).uniform(size=(5, 8, 12, 3)).astype(np.float32)
    out = load(reference_run)(clip)
    direct = jax.jit(model.apply)({"params": params}, jnp.asarray(clip)[None])[0]  # frame 2's window is the clip itself
    assert out.shape == (5, 32, 48, 3)
    np.testing.assert_allclose(out[2], np.asarray(direct), rtol=1e-5, atol=1e-5)


def test_a_finished_run_resumes_to_nothing_and_another_config_is_refused(reference_run, data_dir):
    before = (reference_run / "metrics.jsonl").read_text()
    assert training.train(tiny_config(data_dir), reference_run) == {}
    assert (reference_run / "metrics.jsonl").read_text() == before
    with pytest.raises(checkpointing.ConfigMismatchError, match=r"model.num_feat: 8 \(run\) vs 16 \(now\)"):
        training.train(tiny_config(data_dir, **{"model.num_feat": 16}), reference_run)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    """Batch 2 of the tiny run turned to NaN: training stops naming step 2, step 1 stays the last
    checkpoint, with finite parameters."""
    global_batch, seen = sharding.global_batch, []

    def nan_second_batch(local, batch_sharding):
        seen.append(1)
        if len(seen) == 2:  # batches are uint8, which holds no NaN: a float32 batch of NaN instead
            local = {k: np.full(v.shape, np.nan, np.float32) for k, v in local.items()}
        return global_batch(local, batch_sharding)

    monkeypatch.setattr(sharding, "global_batch", nan_second_batch)
    cfg = tiny_config(data_dir, **{"checkpoint.every": 1})
    with pytest.raises(training.TrainingError, match="non-finite loss or gradient at step 2"):
        training.train(cfg, tmp_path / "nan")
    assert weights.run_steps(tmp_path / "nan") == [1]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(weights.read_params(tmp_path / "nan")))


# --- configs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("arg,name,params,data", [
    ("m", "edvr_m_reds", 3_300_131, ("reds", "sr_x4")),
    ("m,tsa=False", "edvr_m_wotsa_reds", 2_996_259, ("reds", "sr_x4")),
    ("l", "edvr_l_reds", 20_633_827, ("reds", "sr_x4")), ("l,tsa=False", "edvr_l_wotsa_reds", None, ("reds", "sr_x4")),
    ("l,task=deblur", "edvr_l_deblur_reds", 23_602_019, ("reds", "deblur")),
    ("l,task=srblur", "edvr_l_srblur_reds", 23_306_851, ("reds", "srblur")),
    ("variant=l,data=vimeo90k", "edvr_l_vimeo90k", 20_699_363, ("vimeo90k", "sr_x4")),
    ("demo", "demo", None, ("demo_video", "bi_x4")), ("demo,data=demo", "demo_photos", None, ("demo", "sr_x4")),
    ("m,data=footage", "edvr_m_footage", 3_300_131, ("footage", "bi_x4"))])
def test_configs_build_their_models(arg, name, params, data):
    cfg = load_config(arg)
    training.validate_config(cfg)
    assert cfg.name == name
    model = EDVR(**cfg.model)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(model.input_shape(1, 64, 64)))
    if params is not None:
        assert sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)) == params
    assert bool(cfg.optim.tsa_iter) == (cfg.model.with_tsa and "task" not in arg and not arg.startswith("demo"))
    assert (cfg.data.name, cfg.data.config) == data


def test_recipes_follow_basicsr():
    m, l_tsa, l_wo, deblur = load_config("m"), load_config("l"), load_config("l,tsa=False"), load_config("l,task=deblur")
    assert m.optim.periods == (50_000, 100_000, 150_000, 150_000, 150_000) and m.optim.tsa_iter == 50_000
    assert m.optim.restart_weights == (1.0,) * 5 and l_tsa.optim.restart_weights == (1.0, 0.5, 0.5, 0.5, 0.5)
    assert l_wo.optim.periods == (150_000,) * 4 and l_wo.optim.restart_weights == (1.0, 0.5, 0.5, 0.5)
    assert (deblur.optim.lr, deblur.optim.periods, deblur.optim.restart_weights) == (2e-4, (150_000,) * 4, (1.0,) * 4)
    assert deblur.model.hr_in and deblur.data.val_padding == "replicate" and deblur.data.config == "deblur"
    assert all(c.batch_size == 32 and c.data.gt_size == 256 and c.total_steps == 600_000 for c in (m, l_tsa, deblur))
    with pytest.raises(ValueError, match="task=deblur trains on REDS only"):
        load_config("l,task=deblur,data=vimeo90k")
    with pytest.raises(ValueError, match="variant='xl'"):
        load_config("xl")


def test_a_run_written_before_the_header_still_loads(tmp_path):
    """edvr-jax 0.1 train runs: config.json is the training config itself and the state carries an
    rng and the old warm-up wrapper; edvr_jax.load reads their (EMA) parameters all the same."""
    import collections

    import grain.python as grain

    model = EDVR(**SMALL, offset_warning=False)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(np.float32), weights.abstract_params(model))
    ema = jax.tree.map(lambda p: p + 1.0, params)
    frozen = collections.namedtuple("FrozenState", "count inner")
    state = {"step": jnp.int32(7), "params": params, "ema_params": ema, "rng": jax.random.key_data(jax.random.key(1)),
             "opt_state": (frozen(jnp.int32(7), optax.adam(1e-3).init(params)),)}
    legacy = load_config("demo").to_dict()
    legacy.pop("name")
    legacy["model"].update(SMALL)
    legacy["ema_decay"] = 0.999
    (tmp_path / "config.json").write_text(__import__("json").dumps(legacy, default=list))
    it = iter(grain.DataLoader(data_source=grain.RangeDataSource(0, 10, 1),
                               sampler=grain.IndexSampler(10, grain.NoSharding(), shuffle=False, num_epochs=1)))
    with checkpointing.make_manager(tmp_path / "checkpoints", every=1, keep=1, async_save=False) as mngr:
        checkpointing.save(mngr, 7, state, it, force=True)
    loaded_model, loaded = load_model(tmp_path)
    assert loaded_model.config() == model.config()
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(ema))  # the EMA params, as before
    jax.tree.map(np.testing.assert_array_equal, weights.read_params(tmp_path, ema=False), jax.device_get(params))


def test_dcn_impl_reaches_the_model_and_a_run_may_change_it():
    """``dcn_impl`` picks how the training model's DCNs are computed (the same values whatever it says), so a
    run may resume with another one."""
    from edvr_jax.ops.dcn import DCNOptions
    from edvr_jax.training.loop import _build_model

    for impl in ("auto", "gather", "pallas"):
        assert _build_model(load_config("demo", dcn_impl=impl), 4, "demo_video").dcn == DCNOptions(impl=impl)
    assert "dcn_impl" in checkpointing.RESUMABLE_CHANGES
