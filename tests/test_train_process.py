"""train.py as a process: exact resume after SIGKILL, SIGTERM saving the current step, two
processes matching one. The processes inherit the test session's XLA_FLAGS (8 host devices), so
a train.py process is the in-process reference run's layout (conftest ``reference_run``): it
reuses that run's compiled programs from JAX's persistent compilation cache and its
uninterrupted result is the reference, bit for bit."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import TINY, TINY_ARG

from edvr_jax import run_log, weights

ROOT = Path(__file__).resolve().parent.parent


def _env(**overrides):
    return {**os.environ, "JAX_PLATFORMS": "cpu", **overrides}


def _cmd(workdir, data_dir, *extra):
    return [sys.executable, str(ROOT / "train.py"), f"--config={ROOT / 'configs' / 'edvr.py'}:{TINY_ARG}",
            f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
            *(f"--config.{k}={v}" for k, v in TINY.items()), "--noprogress", *extra]


def _run(workdir, data_dir, *extra):
    proc = subprocess.run(_cmd(workdir, data_dir, *extra), env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"train.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


def _losses(workdir):
    return {r["step"]: r["train/loss"] for r in run_log.read_jsonl(Path(workdir) / "metrics.jsonl")}


def _wait_for(predicate, proc, what, timeout=300):
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"train.py ended before {what}: {proc.stderr.read()[-3000:]}")
        assert time.time() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.02)


@pytest.mark.heavy
def test_sigkill_then_resume_is_bitwise_equal(reference_run, data_dir, tmp_path):
    assert len(jax.devices()) == 8  # the train.py processes see the same 8 host devices
    workdir = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(workdir, data_dir), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    _wait_for(lambda: any(s >= 4 for s in weights.run_steps(workdir)), proc, "checkpoint 4")
    proc.kill()
    proc.wait()
    steps = weights.run_steps(workdir)
    assert steps and steps[-1] < 12, steps
    _run(workdir, data_dir)  # the same command again
    a, b = weights.read_params(reference_run), weights.read_params(workdir)
    assert jax.tree.all(jax.tree.map(lambda x, y: np.array_equal(x, y), a, b))
    # metrics.jsonl: each step once, as in the uninterrupted run
    assert [r["step"] for r in run_log.read_jsonl(workdir / "metrics.jsonl")] == list(range(1, 13))


@pytest.mark.heavy
def test_sigterm_saves_the_current_step_and_exits_cleanly(data_dir, tmp_path):
    workdir = tmp_path / "term"
    proc = subprocess.Popen(_cmd(workdir, data_dir, "--config.total_steps=100000", "--config.checkpoint.every=1000"),
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (workdir / "metrics.jsonl").is_file() and len(_losses(workdir)) >= 3, proc, "3 steps")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "preempted" in err
    assert weights.run_steps(workdir) == [max(_losses(workdir))]  # saved exactly where it stopped


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.heavy
def test_two_processes_match_one(reference_run, data_dir, tmp_path):
    """Two hosts of four devices each (one global mesh of 8) against the one-host run of 8: the
    first 4 steps and a checkpoint (each further step and save of two processes cost ~2 s)."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "--xla_force_host_platform_device_count=4",
                   os.environ["XLA_FLAGS"])
    port, env = _free_port(), _env(XLA_FLAGS=flags)
    procs = [subprocess.Popen(_cmd(tmp_path / "mp", data_dir, "--num_processes=2", f"--process_id={i}",
                                   f"--coordinator=localhost:{port}", "--config.total_steps=4"),
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "mesh {'data': 8, 'fsdp': 1}" in outs[0][1]
    ref, got = _losses(reference_run), _losses(tmp_path / "mp")
    assert sorted(got) == [1, 2, 3, 4] and weights.run_steps(tmp_path / "mp") == [4]
    np.testing.assert_allclose([got[s] for s in sorted(got)], [ref[s] for s in sorted(got)], rtol=2e-4)
