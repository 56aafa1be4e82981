"""EDVR and its modules: BasicSR parity, parameter counts, shapes, errors, offsets, gradients (the two-stage
model is tested with its restorer in test_restore.py)."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from golden_weights import VARIANTS, synthetic_variables

from edvr_jax import EDVR, PRESETS, Restorer, edvr_from_preset
from edvr_jax.convert import basicsr_shapes
from edvr_jax.optim import charbonnier
from edvr_jax.models import (DCNv2Pack, PCDAlignment, PredeblurModule, ResidualBlockNoBN, TSAFusion, offset_absmeans,
                              warn_offsets)
from edvr_jax.models.dcn import warn_high_offsets

TINY = dict(num_feat=16, num_extract_block=1, num_reconstruct_block=1)
# The tests of the shared tiny model run on one xdist worker: its init and its float32 gradient
# are compiled once, not once per worker.
on_tiny = pytest.mark.xdist_group("edvr_tiny")


@pytest.fixture(scope="module")
def tiny():
    """One initialised tiny EDVR shared by the tests below (params do not depend on H, W or B)."""
    model = EDVR(**TINY)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 5, 8, 8, 3)))
    return model, variables, jax.jit(model.apply)


def n_params(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


def shapes_of(model, *args):
    return jax.eval_shape(model.init, jax.random.key(0), *args)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_matches_basicsr(goldens, name):
    """Outputs of BasicSR 1.4.2's EDVR (torchvision deform_conv2d) with the same synthetic weights."""
    model = EDVR(**VARIANTS[name]["config"])
    variables = synthetic_variables(model)
    x = np.transpose(goldens[f"{name}/x"], (0, 1, 3, 4, 2))
    ref = np.transpose(goldens[f"{name}/y"], (0, 2, 3, 1))
    out, state = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(variables, x)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # The offsets really deform (pixels, not ~0): the comparison exercises the sampling.
    means = [float(v) for v in jax.tree.leaves(state["intermediates"])]
    assert len(means) == 4 and min(means) > 0.5


@pytest.mark.parametrize("preset,count", [("edvr_m", 3_300_131), ("edvr_m_wo_tsa", 2_996_259),
                                          ("edvr_l", 20_633_827), ("edvr_l_vimeo", 20_699_363),
                                          ("edvr_l_srblur", 23_306_851), ("edvr_l_deblur", 23_602_019)])
def test_parameter_counts_equal_basicsr(preset, count):
    model = edvr_from_preset(preset)
    assert n_params(shapes_of(model, jnp.zeros(model.input_shape(1, 16, 16)))["params"]) == count


@on_tiny
def test_output_shapes_and_init(tiny):
    x = jax.random.uniform(jax.random.key(1), (2, 5, 12, 16, 3))
    model, variables, apply = tiny
    y = apply(variables, x)
    assert y.shape == (2, 48, 64, 3) and y.dtype == jnp.float32
    flat = traverse_util.flatten_dict(variables["params"], sep="/")
    # BasicSR's initialisation: zero offset convs, zero-bias 0.1-scaled residual blocks.
    assert not np.any(flat["pcd_align/dcn_pack_l1/conv_offset/kernel"])
    assert not np.any(flat["feature_extraction_0/conv1/bias"])
    std = float(np.std(flat["feature_extraction_0/conv1/kernel"]))
    assert std == pytest.approx(0.1 * np.sqrt(2 / (9 * 16)), rel=0.15)
    hr = EDVR(**TINY, hr_in=True, with_predeblur=True)
    xh = jax.random.uniform(jax.random.key(1), (1, 5, 32, 48, 3))
    assert jax.eval_shape(hr.apply, shapes_of(hr, xh), xh).shape == (1, 32, 48, 3)


@on_tiny
def test_zero_residual_gives_bilinear_upsampling(tiny):
    """With conv_last zeroed the network adds nothing: the output is the bilinear x4 centre frame."""
    model, variables, apply = tiny
    x = jax.random.uniform(jax.random.key(2), (1, 5, 8, 12, 3))
    params = dict(variables["params"])
    params["conv_last"] = jax.tree.map(jnp.zeros_like, params["conv_last"])
    y = apply({"params": params}, x)
    ref = jax.image.resize(x[:, 2], (1, 32, 48, 3), method="bilinear")
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), atol=1e-6)


@on_tiny
def test_deterministic_and_batch_independent(tiny):
    model, variables, apply = tiny
    x = jax.random.uniform(jax.random.key(3), (1, 5, 8, 8, 3))
    a = np.asarray(apply(variables, x))
    b = np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables, x))  # a second compilation
    np.testing.assert_array_equal(a, b)
    # Batch entries are independent: the same clip inside a batch of 3 gives the same output.
    c = np.asarray(apply(variables, jnp.concatenate([x * 0.5, x, x * 0.2])))[1]
    np.testing.assert_allclose(c, a[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs,shape,match", [
    ({}, (1, 5, 10, 12, 3), "multiples of 4"),
    ({"hr_in": True, "with_predeblur": True}, (1, 5, 24, 32, 3), "multiples of 16"),
    ({}, (1, 3, 8, 8, 3), "num_frame=5, got 3 frames"),
    ({}, (1, 5, 8, 8, 1), "3 input channels, got 1"),
    ({}, (5, 8, 8, 3), r"\[B, T, H, W, C\]"),
    ({"hr_in": True}, (1, 5, 16, 16, 3), "hr_in=True: must be False unless with_predeblur is True"),
    ({"center_frame_idx": 5}, (1, 5, 8, 8, 3), r"center_frame_idx=5: must be None or in \[0, 5\)"),
    ({"deformable_groups": 3}, (1, 5, 8, 8, 3), r"num_feat=16: must be a positive multiple of deformable_groups \(3\)"),
])
def test_bad_input_errors(kwargs, shape, match):
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(EDVR(**TINY, **kwargs).init, jax.random.key(0), jnp.zeros(shape))


@on_tiny
def test_offset_warning_threshold_and_prefix(caplog):
    """The one rule the training loop and ``warn_offsets`` share: strictly above the threshold, each layer once."""
    with caplog.at_level(logging.WARNING, logger="edvr_jax"):
        high = warn_high_offsets({"a": 50.0, "b": 50.5, "c": 3.0}, where="step 7: ")
    assert high == {"b": 50.5}
    assert [r.getMessage() for r in caplog.records] == [
        "step 7: Offset abs mean of b is 50.50, larger than 50: DCN offsets are blowing up."]


def test_offset_means_are_sown_and_blow_up_is_warned(tiny, caplog):
    model, variables, _ = tiny
    x = jax.random.uniform(jax.random.key(4), (1, 5, 8, 8, 3))
    params = jax.tree.map(lambda a: a, variables["params"])
    apply = jax.jit(lambda p: model.apply({"params": p}, x, mutable=["intermediates"]))
    _, state = apply(params)
    sown = traverse_util.flatten_dict(state["intermediates"], sep="/")
    assert sorted(sown) == [f"pcd_align/{n}/offset_absmean" for n in
                            ("cas_dcnpack", "dcn_pack_l1", "dcn_pack_l2", "dcn_pack_l3")]
    assert all(float(v[0]) == 0.0 for v in sown.values())  # zero-initialised offset convs

    # conv_offset has 8 groups * 3 * 9 outputs; bias the 144 offset channels (not the mask third)
    # of level 2 to +-60 px: mean |offset| = 60.
    bias = np.zeros(8 * 27, np.float32)
    bias[:144] = np.where(np.arange(144) % 2, 60.0, -60.0)
    params["pcd_align"]["dcn_pack_l2"]["conv_offset"]["bias"] = jnp.asarray(bias)
    with caplog.at_level(logging.WARNING, logger="edvr_jax"):
        _, state = apply(params)
        jax.effects_barrier()
        assert not caplog.records  # the default model has no host callback in its graph
        high = warn_offsets(state)  # from the returned statistics, outside jit
    value = float(state["intermediates"]["pcd_align"]["dcn_pack_l2"]["offset_absmean"][0])
    assert value == pytest.approx(60.0)
    assert high == {"pcd_align/dcn_pack_l2": pytest.approx(60.0)}
    assert offset_absmeans(state["intermediates"])["pcd_align/dcn_pack_l1"] == 0.0
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "pcd_align/dcn_pack_l2" in warnings[0] and "60.00" in warnings[0]

    # offset_warning=True (debugging) still logs from inside the jitted graph.
    caplog.clear()
    loud = EDVR(**TINY, offset_warning=True)
    with caplog.at_level(logging.WARNING, logger="edvr_jax"):
        jax.jit(lambda p: loud.apply({"params": p}, x))(params)
        jax.effects_barrier()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "pcd_align/dcn_pack_l2" in warnings[0]


def test_default_model_has_no_host_callback_and_exports():
    """The default EDVR's graph holds no host callback, so jax.export serializes it (for CPU here)."""
    model = EDVR()
    x = jnp.zeros((1, 5, 8, 8, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert "callback" not in str(jax.make_jaxpr(model.apply)(variables, x))
    exported = jax.export.export(jax.jit(model.apply))(variables, x)
    assert exported.out_avals[0].shape == (1, 32, 32, 3)
    assert len(exported.serialize()) > 0


@pytest.fixture(scope="module")
def loss_and_grad(tiny):
    """``fn(dtype)(params) -> ((Charbonnier loss, output), grads)`` of the tiny EDVR on a fixed batch,
    one compilation per dtype (the gradient and bf16 tests share the float32 one)."""
    x = jax.random.uniform(jax.random.key(7), (2, 5, 8, 8, 3))
    gt = jax.random.uniform(jax.random.key(2), (2, 32, 32, 3))
    cache = {}

    def fn(dtype):
        if dtype not in cache:
            def loss(p):
                out = EDVR(**TINY, dtype=dtype).apply({"params": p}, x)
                return charbonnier(out, gt), out
            cache[dtype] = jax.jit(jax.value_and_grad(loss, has_aux=True))
        return cache[dtype]

    return fn


@on_tiny
def test_gradients_reach_every_parameter(tiny, loss_and_grad):
    _, variables, _ = tiny
    params = variables["params"]
    grad = loss_and_grad(jnp.float32)

    def zero_grads(p):
        flat = traverse_util.flatten_dict(grad(p)[1], sep="/")
        assert all(np.isfinite(np.asarray(g)).all() for g in flat.values())
        return sorted(k for k, g in flat.items() if not np.any(np.asarray(g)))

    # At BasicSR's init conv_offset is zero, so the convs that only feed it get no gradient yet
    # (exactly as in PyTorch); conv_offset itself does.
    at_init = zero_grads(params)
    assert at_init and all("offset_conv" in k for k in at_init)
    flat = traverse_util.flatten_dict(params, sep="/")
    key = jax.random.key(1)
    for k in flat:
        if "conv_offset/kernel" in k:
            key, sub = jax.random.split(key)
            flat[k] = 0.01 * jax.random.normal(sub, flat[k].shape)
    assert zero_grads(traverse_util.unflatten_dict(flat, sep="/")) == []


@on_tiny
def test_bfloat16_compute_close_to_float32_with_float32_parameters_and_gradients(tiny, loss_and_grad):
    _, variables, _ = tiny
    (l32, out32), g32 = loss_and_grad(jnp.float32)(variables["params"])
    (l16, out16), g16 = loss_and_grad(jnp.bfloat16)(variables["params"])
    assert out16.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out16), np.asarray(out32), atol=2e-2)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g16))
    assert float(l16) == pytest.approx(float(l32), rel=2e-2)
    v16, v32 = (np.concatenate([np.ravel(g) for g in jax.tree.leaves(jax.device_get(t))]) for t in (g16, g32))
    cos = v16 @ v32 / (np.linalg.norm(v16) * np.linalg.norm(v32))
    assert float(cos) > 0.99  # same descent direction


def test_modules_alone():
    x = jax.random.normal(jax.random.key(8), (2, 8, 12, 16))
    block = ResidualBlockNoBN(16)
    v = jax.jit(block.init)(jax.random.key(0), x)
    p = v["params"]
    conv = lambda a, q: jax.lax.conv_general_dilated(a, q["kernel"], (1, 1), ((1, 1), (1, 1)),  # noqa: E731
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + q["bias"]
    np.testing.assert_allclose(np.asarray(jax.jit(block.apply)(v, x)),
                               np.asarray(x + conv(jax.nn.relu(conv(x, p["conv1"])), p["conv2"])), atol=1e-5)

    dcn = DCNv2Pack(24, deformable_groups=8)
    dv = jax.eval_shape(dcn.init, jax.random.key(0), x, x)
    assert dv["params"]["kernel"].shape == (3, 3, 16, 24)
    assert dv["params"]["conv_offset"]["kernel"].shape == (3, 3, 16, 8 * 27)
    pcd_basicsr = sum(int(np.prod(s)) for k, s in basicsr_shapes(EDVR()).items() if k.startswith("pcd_align."))
    feats = [jnp.zeros((1, 16 >> i, 16 >> i, 64)) for i in range(3)]
    assert n_params(shapes_of(PCDAlignment(64, 8), feats, feats)) == pcd_basicsr
    tsa = TSAFusion(16, 5, 2)
    run = lambda m, shape: jax.eval_shape(lambda k: m.apply(m.init(k, jnp.zeros(shape)), jnp.ones(shape)),  # noqa: E731
                                          jax.random.key(0)).shape
    assert run(tsa, (1, 5, 8, 12, 16)) == (1, 8, 12, 16)
    with pytest.raises(ValueError, match="expects 5 frames"):
        jax.eval_shape(tsa.init, jax.random.key(0), jnp.zeros((1, 3, 8, 12, 16)))
    assert run(PredeblurModule(16, hr_in=True), (2, 32, 48, 3)) == (2, 8, 12, 16)


def test_conv2d_init_schemes():
    """``Conv2d.init`` is flax's (the initialisation is the ``init_scheme`` field), and each scheme draws
    BasicSR's values: nn.Conv2d's U(+-1/sqrt(fan_in)) for kernel and bias, the residual blocks' kaiming
    normal x 0.1 with zero bias, zeros for the DCN's offset conv; an unknown scheme names the field."""
    from edvr_jax.models.layers import Conv2d

    x, key = jnp.ones((1, 4, 4, 6)), jax.random.key(3)
    bound = 1 / np.sqrt(6 * 9)
    p = Conv2d(64).init(key, x)["params"]
    assert p["kernel"].shape == (3, 3, 6, 64) and p["bias"].shape == (64,)
    for a in (p["kernel"], p["bias"]):
        assert float(jnp.max(jnp.abs(a))) <= bound and float(jnp.max(jnp.abs(a))) > 0.9 * bound
    k = Conv2d(64, init_scheme="resblock").init(key, x)["params"]
    np.testing.assert_allclose(float(jnp.std(k["kernel"])), 0.1 * np.sqrt(2 / 54), rtol=0.1)
    assert not np.any(np.asarray(k["bias"]))
    z = Conv2d(8, init_scheme="zeros").init(key, x)["params"]
    assert not np.any(np.asarray(z["kernel"])) and not np.any(np.asarray(z["bias"]))
    with pytest.raises(ValueError, match="unknown init_scheme 'he'"):
        Conv2d(8, init_scheme="he").init(key, x)


@pytest.mark.heavy
def test_conv_of_parts_and_per_clip_references():
    """``Conv2d`` on parts equals the conv of their concatenation (a per-clip part broadcast over its
    clip's frames); ``PCDAlignment`` with one reference per clip equals it with the reference repeated per
    frame (float32; the same parameters)."""
    from edvr_jax.models.layers import Conv2d

    keys = jax.random.split(jax.random.key(9), 3)
    frames, ref = jax.random.normal(keys[0], (6, 8, 10, 16)), jax.random.normal(keys[1], (2, 8, 10, 8))
    repeated = jnp.repeat(ref, 3, axis=0)  # clips of 3 frames
    conv = Conv2d(12)
    v = conv.init(keys[2], jnp.concatenate([frames, repeated], axis=-1))
    whole = conv.apply(v, jnp.concatenate([frames, repeated], axis=-1))
    np.testing.assert_allclose(np.asarray(conv.apply(v, (frames, ref))), np.asarray(whole), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="a part of 4 images does not divide the 6 images"):
        conv.apply(v, (frames, jnp.zeros((4, 8, 10, 8))))

    pcd = PCDAlignment(16, 8)
    nbrs = [jax.random.normal(jax.random.fold_in(keys[0], i), (6, 16 >> i, 16 >> i, 16)) for i in range(3)]
    refs = [f[1::3] for f in nbrs]  # each clip's second frame
    pv = pcd.init(keys[2], nbrs, [jnp.repeat(r, 3, axis=0) for r in refs])
    pv = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(keys[1], a.shape), pv)  # offsets: not all zero
    per_frame = pcd.apply(pv, nbrs, [jnp.repeat(r, 3, axis=0) for r in refs])
    np.testing.assert_allclose(np.asarray(pcd.apply(pv, nbrs, refs)), np.asarray(per_frame), rtol=1e-4, atol=1e-5)


def test_presets_are_known():
    assert set(PRESETS) >= {"edvr_m", "edvr_l", "edvr_l_deblur", "edvr_l_stage2"}
    with pytest.raises(KeyError, match="unknown EDVR preset"):
        edvr_from_preset("edvr_xl")


@on_tiny
def test_restorer_uses_padded_windows(tiny):
    model, variables, apply = tiny
    clip = np.asarray(jax.random.uniform(jax.random.key(11), (6, 8, 8, 3)))
    out = Restorer(model, variables["params"], padding="reflection_circle", batch_size=4)(clip)  # batches of 4 + 2
    assert out.shape == (6, 32, 32, 3)
    windows = [[4, 3, 0, 1, 2], [4, 0, 1, 2, 3], [0, 1, 2, 3, 4], [1, 2, 3, 4, 5], [2, 3, 4, 5, 1],
               [3, 4, 5, 2, 1]]  # BasicSR's generate_frame_indices(i, 6, 5, 'reflection_circle'), by hand
    for i, window in enumerate(windows):
        ref = apply(variables, clip[None, window])
        np.testing.assert_allclose(out[i], np.asarray(ref)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_train_step_and_inference_export_for_accelerators(platform):
    """train.py's bf16 training step (edvr_jax.training.train_step: Charbonnier + BasicSR's Adam) and
    inference lower for CUDA and for TPU on this CPU-only machine: bf16 inference on CUDA with the
    Pallas DCN kernels, everything else with the gather DCN (the faster of the two on H100/H200)."""
    import functools

    from edvr_jax import training
    from edvr_jax.lowering import export, has_triton_kernels
    from edvr_jax.optim import make_optimizer

    model = EDVR(**TINY, dtype=jnp.bfloat16)
    lq = jax.ShapeDtypeStruct((2, 5, 16, 16, 3), jnp.float32)
    gt = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    schedule = lambda n: 4e-4  # noqa: E731
    tx = make_optimizer(schedule)
    state = jax.eval_shape(functools.partial(training.create_train_state, model=model, tx=tx,
                                             input_shape=lq.shape), jax.random.key(0))
    step = export(functools.partial(training.train_step, model=model, tx=tx, schedule=schedule), state,
                  {"lq": lq, "gt": gt}, platforms=(platform,))
    infer = export(lambda p, x: model.apply({"params": p}, x), state["params"], lq, platforms=(platform,))
    state_out = step.out_avals[:len(jax.tree.leaves(state))]
    assert {a.dtype for a in state_out} == {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}  # f32 params, Adam state
    assert infer.out_avals[0].shape == (2, 64, 64, 3)
    assert has_triton_kernels(infer) == (platform == "cuda") and not has_triton_kernels(step)
