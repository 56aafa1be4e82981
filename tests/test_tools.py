"""The arithmetic of the benchmarks' harness and of the accelerator-analysis tools (tools/accel_aot.py,
benchmarks/gpu.py), on hand-made input."""

import gzip
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import gpu, harness
from edvr_jax import training


@pytest.fixture(scope="module")
def aot():
    from tools import accel_aot
    return accel_aot


def test_hlo_byte_counts(aot):
    assert aot._nbytes("(bf16[2,3]{1,0}, f32[4]{0}, pred[5])") == 2 * 3 * 2 + 4 * 4 + 5
    assert aot._nbytes("f32[]") == 4


def test_tpu_tile_padding(aot):
    """(8, 128) tiles over the two minor dimensions of the physical (minor-to-major) layout."""
    hlo = "\n".join([
        "HloModule m", "ENTRY %main {",
        "  %rows = bf16[1179648,8]{1,0:T(8,128)(2,1)} fusion(%a), kind=kCustom",  # 8 channels minor: 16x
        "  %dense = f32[40,8,9,8,4096]{4,3,2,1,0:T(8,128)} gather(%b, %c)",  # pixels minor: exact
        "  %transposed = f32[1393920,8]{0,1:T(8,128)} scatter(%d, %e, %f)",  # minor is the 1393920 axis
        "  ROOT %taps = f32[3,9]{1,0:T(8,128)} add(%g, %h)",  # 3x9 in one 8x128 tile
        "}"])
    got = {what.split()[0]: (padded, size) for padded, size, what in aot.tpu_arrays(hlo)}
    assert got["rows"] == (1179648 * 128 * 2, 1179648 * 8 * 2)
    assert got["dense"] == (40 * 8 * 9 * 8 * 4096 * 4,) * 2
    assert got["transposed"] == (1393920 * 8 * 4,) * 2
    assert got["taps"] == (8 * 128 * 4, 3 * 9 * 4)


def test_collectives(aot):
    hlo = ("%ar = f32[100]{0} all-reduce(%x), replica_groups={}\n"
           "%ars = (bf16[10]{0}, bf16[20]{0}) all-reduce-start(%y, %z)\n"
           "%ag = f32[8,4]{1,0} all-gather(%w), dimensions={0}\n")
    assert aot.collectives(hlo) == {"all-reduce": [2, 400 + 60], "all-gather": [1, 128]}


def test_kernel_profile_from_a_trace(tmp_path, monkeypatch):
    events = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
              {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
              {"ph": "X", "pid": 1, "name": "input_scatter_fusion_3", "dur": 3000},
              {"ph": "X", "pid": 1, "name": "sm90_xmma_fprop_implicit_gemm_bf16bf16", "dur": 1500},
              {"ph": "X", "pid": 1, "name": "gemm_fusion_dot_4", "dur": 700},
              {"ph": "X", "pid": 1, "name": "loop_add_fusion", "dur": 500},
              {"ph": "X", "pid": 2, "name": "host work", "dur": 99999}]
    (tmp_path / "plugins" / "profile" / "run").mkdir(parents=True)
    with gzip.open(tmp_path / "plugins" / "profile" / "run" / "host.trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)

    class NoTrace:  # the trace above stands for what jax.profiler would write
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False
    monkeypatch.setattr(gpu.jax.profiler, "trace", NoTrace)
    prof = gpu.kernel_profile(lambda: None, calls=2, trace_dir=str(tmp_path))
    assert prof["total"] == pytest.approx((3000 + 1500 + 700 + 500) / 1e3 / 2)  # device kernels only, per call
    assert prof["kernels"][0] == (1.5, "input_scatter_fusion_3")
    assert prof["categories"] == pytest.approx({"scatter (DCN input gradient)": 1.5, "cuDNN convolution": 0.75,
                                                "matmul": 0.35, "other XLA fusions": 0.25})


def test_count_flops_by_hand():
    """2 per multiply-add: a 3x3 conv, a matmul inside a scan of 4 steps (counted 4 times), a cond's
    larger branch, all under jit."""
    x, k = jnp.ones((2, 5, 6, 3)), jnp.ones((3, 3, 3, 7))
    a, b = jnp.ones((4, 8, 16)), jnp.ones((16, 32))

    @jax.jit
    def fn(x, k, a, b):
        y = harness.conv3x3(x, k)
        _, z = jax.lax.scan(lambda c, ai: (c, ai @ b), 0.0, a)
        w = jax.lax.cond(y.sum() > 0, lambda: b.T @ b, lambda: jnp.zeros((32, 32)))
        return y, z, w

    conv = 2 * (2 * 5 * 6 * 7) * 9 * 3
    scan = 4 * 2 * (8 * 32) * 16
    cond = 2 * (32 * 32) * 16
    assert harness.count_flops(fn, x, k, a, b) == conv + scan + cond


def test_timer_calls_and_statistics():
    """One first call, the warm-up, then min_calls timed calls (target_s=0); min <= median."""
    calls = []
    t = harness.timeit(lambda v: calls.append(v) or v, 1.0, warmup=2, min_calls=4, max_calls=9, target_s=0.0)
    assert len(calls) == 1 + 2 + 4 and t.calls == 4
    assert 0 <= t.min_ms <= t.median_ms
    t = harness.timeit(lambda: None, warmup=0, min_calls=1, max_calls=5, target_s=60.0, sync=lambda _: None)
    assert t.calls == 5  # stops at max_calls before the target time


def test_results_written_as_json_lines(tmp_path):
    results = harness.Results(tmp_path / "sub" / "r.jsonl")
    results.add("dcn", shape=[1, 2], ms=1.5)
    results.add("gpu", section="train", name="a", ms=2.0)
    lines = [json.loads(line) for line in (tmp_path / "sub" / "r.jsonl").read_text().splitlines()]
    assert [(r["bench"], r.get("ms")) for r in lines] == [("dcn", 1.5), ("gpu", 2.0)]
    assert lines[0]["machine"]["jax"] == jax.__version__ and lines[0]["machine"]["cores"] >= 1
    assert results.find("gpu", section="train", name="a")["ms"] == 2.0
    assert results.find("gpu", section="train", name="b") is None


def test_benchmark_step_is_the_training_recipe():
    """The benchmarks' step is train.py's function, ``training.train_step``, bound to the model, BasicSR's Adam
    at 4e-4 (whose first update moves each parameter by the learning rate against its gradient's sign) and
    the schedule; the state is ``create_train_state``'s."""
    step, state, data = harness.edvr_m_train_step(2, lr_size=16, tiny=True, abstract=True)
    bound = step.__wrapped__
    assert bound.func is training.train_step
    assert bound.keywords["model"] == harness.edvr_model(tiny=True)
    assert float(bound.keywords["schedule"](0)) == pytest.approx(4e-4)
    tx = bound.keywords["tx"]
    params = {"pcd_align": {"dcn_pack_l1": {"kernel": jnp.ones(3)}}, "conv_last": {"bias": jnp.ones(2)}}
    grads = {"pcd_align": {"dcn_pack_l1": {"kernel": jnp.array([1.0, -2.0, 0.5])}},
             "conv_last": {"bias": jnp.array([-3.0, 1e-3])}}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["pcd_align"]["dcn_pack_l1"]["kernel"], [-4e-4, 4e-4, -4e-4], rtol=1e-4)
    np.testing.assert_allclose(updates["conv_last"]["bias"], [4e-4, -4e-4], rtol=1e-4)
    assert data["lq"].shape == (2, 5, 16, 16, 3) and data["gt"].shape == (2, 64, 64, 3)
    assert jax.tree.structure(state) == jax.tree.structure(jax.eval_shape(
        lambda k: training.create_train_state(k, model=bound.keywords["model"], tx=tx, input_shape=(1, 5, 16, 16, 3)),
        jax.random.key(0)))


def test_offsets_drawn_a_few_pixels_wide():
    """Only ``conv_offset`` parameters are redrawn: kernels N(0, 0.02), biases N(0, 2)."""
    params = {"dcn_pack_l1": {"conv_offset": {"kernel": jnp.zeros((3, 3, 16, 216)), "bias": jnp.zeros(216 * 50)},
                              "kernel": jnp.zeros((3, 3, 16, 16))}}
    drawn = harness.offsets_of_a_few_pixels(params)
    assert float(jnp.std(drawn["dcn_pack_l1"]["conv_offset"]["kernel"])) == pytest.approx(0.02, rel=0.05)
    assert float(jnp.mean(jnp.abs(drawn["dcn_pack_l1"]["conv_offset"]["bias"]))) == pytest.approx(
        2 * np.sqrt(2 / np.pi), rel=0.05)  # mean |N(0, 2)|
    assert not drawn["dcn_pack_l1"]["kernel"].any()
