"""The arithmetic of the accelerator-analysis tools (tools/accel_aot.py, benchmarks/gpu.py), on hand-made input."""

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def aot():
    return _module(ROOT / "tools" / "accel_aot.py", "accel_aot")


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
    gpu = _module(ROOT / "benchmarks" / "gpu.py", "gpu_bench")
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
