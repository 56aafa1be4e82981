import contextlib
import fcntl
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Tests run on CPU, with 8 host devices so that meshes of 1, 2 x 4 and 8 devices can be
# compared in one process. Set before JAX starts its backend.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA's CPU backend compiles at LLVM -O0: most of the suite's time is compiling small programs
# that then run for milliseconds (the whole suite, 2 cores: 366 s at the default level, 291 s at
# 0). Only the machine code changes, not the XLA program: results can differ from the default
# level's in the last bits, so no test compares with numbers a default-level run produced
# (BasicSR's goldens are PyTorch's, held to tolerances; bitwise tests compare runs of this
# session, and the train.py processes inherit these flags). Users' runs keep the default level.
for flag in ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0"):
    if flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
# Programs compiled once in this session (by this process, the xdist workers, which inherit the
# variable, or the train.py processes the tests start) are reused from JAX's persistent
# compilation cache instead of compiled again. The process that made the folder removes it.
_OWN_JIT_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_JIT_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="edvr_jax_tests_jit_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parent.parent
GOLDENS = Path(__file__).parent / "data" / "basicsr_goldens.npz"


def load_config(arg: str | None = None, **overrides):
    """``configs/edvr.py``'s ``get_config(arg)`` with dotted-field overrides (``{'model.num_feat': 8}``)."""
    spec = importlib.util.spec_from_file_location("edvr_config", ROOT / "configs" / "edvr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config(arg)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


#: The tiny run every training test uses, in-process and through train.py (without TSA: a
#: smaller program to compile; TSA's training rules have their own tests).
TINY = {"model.num_feat": 8, "model.deformable_groups": 2, "model.num_extract_block": 1,
        "model.num_reconstruct_block": 1, "model.with_tsa": False, "data.gt_size": 32, "batch_size": 8, "log_every": 1, "eval_every": 0,
        "total_steps": 12, "checkpoint.every": 4}


TINY_ARG = "demo,data=demo"  # on the demo photo set that the data_dir fixture builds


def tiny_config(data_dir, **overrides):
    return load_config(TINY_ARG, **{**TINY, "data.data_dir": data_dir, **overrides})


def pytest_unconfigure(config):
    if _OWN_JIT_CACHE is not None:
        shutil.rmtree(_OWN_JIT_CACHE, ignore_errors=True)


@pytest.hookimpl(trylast=True)  # after pytest-xdist's own, which tags grouped tests' ids with @group
def pytest_collection_modifyitems(config, items):
    """Tests marked ``heavy`` first: xdist hands out its groups (largest first), then single tests
    in collection order, so the long ones start early and the two workers end together. In an
    xdist worker with ``--dist loadgroup``, a test marked ``xdist_group`` whose id lacks its group
    is an error: the grouping silently stopped working (it does with pytest 9 and xdist 3.8)."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)
    if getattr(config.option, "loadgroup", False):
        lost = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
        if lost:
            raise pytest.UsageError(f"xdist_group marks are not applied by this pytest {pytest.__version__} / "
                                    f"pytest-xdist pair (e.g. {lost[0]}); install requirements.txt's versions")


@pytest.fixture(scope="session")
def goldens():
    """Outputs of BasicSR 1.4.2 / torchvision (tools/make_basicsr_goldens.py)."""
    with np.load(GOLDENS) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="session")
def shared_tmp(tmp_path_factory, worker_id):
    """A folder of this test session shared by its xdist workers (the parent of their own temp
    folders), for what is made once and only read: the demo set, the reference run."""
    return tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent


@contextlib.contextmanager
def _made_once(path: Path):
    """Yields True to the first worker to get here (it makes ``path``), False to the others, which
    wait for it; an exclusive ``flock`` beside ``path``."""
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            done = path.with_name(path.name + ".done")
            yield not done.exists()
            done.touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def demo_builder(shared_tmp):
    """The demo dataset (sr_x4), built once per test session (~15 s; load_builder itself makes
    concurrent builds of one dataset wait for each other)."""
    from edvr_jax.data import load_builder

    return load_builder("demo", data_dir=str(shared_tmp / "tfds"))


@pytest.fixture(scope="session")
def data_dir(demo_builder):
    """The TFDS data dir holding the demo set."""
    return str(Path(demo_builder.data_dir).parents[2])


@pytest.fixture(scope="session")
def reference_run(data_dir, shared_tmp):
    """12 uninterrupted steps of the tiny run, checkpoint every 4, made once per test session (by
    the first xdist worker to ask; the others wait and share it, only reading it), on the 8 host
    devices (data parallel): the layout of the train.py processes of test_train_process, which
    inherit XLA_FLAGS, so that they reuse its compiled programs and must match it bit for bit."""
    from edvr_jax import training

    workdir = shared_tmp / "reference_run"
    with _made_once(workdir) as first:
        if first:
            training.train(tiny_config(data_dir), workdir)
    return workdir


def restore_cli(capsys, *args):
    """``python -m edvr_jax.restore ARGS`` run in this process: ``(exit status, stdout, stderr)``
    as ``returncode`` / ``stdout`` / ``stderr`` (no interpreter, imports and compiles per call)."""
    from types import SimpleNamespace

    from edvr_jax.restore import main

    capsys.readouterr()
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return SimpleNamespace(returncode=status, stdout=out, stderr=err)
