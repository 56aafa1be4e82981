"""EDVR-M training step on an accelerator with variants of the gather DCN, interleaved in one process.

    python benchmarks/gather_ab.py formulations   # the GPU formulation against the CPU one run as one chunk
    python benchmarks/gather_ab.py offset-grad    # corner sums (default) against the fused offset gradient

bf16, batch 32 of 5x64x64 LR clips, train.py's own step; each variant twice, interleaved (A, B, A, B);
median of 15 steps after 3 warm-up steps; compile time excluded. The "cpu" formulation is swapped in by
replacing ``deform_conv._deform_conv_accel`` with the vmapped per-image ``_deform_conv_image`` (one chunk,
``jnp.sum``), which is what the accelerators ran before the GPU formulation. Only jax, flax, optax and
edvr_jax's model, ops and training step are imported (the accelerator image has nothing more).
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edvr_jax import training  # noqa: E402
from edvr_jax.models import edvr_from_preset  # noqa: E402
from edvr_jax.ops import deform_conv  # noqa: E402
from edvr_jax.optim import make_optimizer  # noqa: E402


def step_ms(batch: int = 32, dtype=jnp.bfloat16, steps: int = 15) -> tuple[float, float]:
    """(median ms per step, compile seconds) of train.py's step for EDVR-M, as the DCN is set up now."""
    model = edvr_from_preset("edvr_m", dtype=dtype)
    schedule = lambda n: 4e-4  # noqa: E731
    tx = make_optimizer(schedule)
    state = training.create_train_state(jax.random.key(0), model=model, tx=tx, input_shape=(1, 5, 64, 64, 3))
    data = {"lq": jax.random.uniform(jax.random.key(3), (batch, 5, 64, 64, 3)),
            "gt": jax.random.uniform(jax.random.key(4), (batch, 256, 256, 3))}
    step = jax.jit(functools.partial(training.train_step, model=model, tx=tx, schedule=schedule), donate_argnums=0)
    start = time.perf_counter()
    compiled = step.lower(state, data).compile()
    compile_s = time.perf_counter() - start
    for _ in range(3):
        state, metrics = compiled(state, data)
    jax.block_until_ready(metrics["loss"])
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, data)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, compile_s


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "formulations"
    gpu_form = deform_conv._deform_conv_accel
    cpu_form = lambda x, off, m, wmat, geo: jax.vmap(  # noqa: E731
        deform_conv._deform_conv_image, in_axes=(0, 0, 0, None, None))(x, off, m, wmat, geo)
    if which == "formulations":
        variants = {"cpu formulation, one chunk": (cpu_form, "sums"), "gpu formulation": (gpu_form, "sums")}
    elif which == "offset-grad":
        variants = {"corner sums": (gpu_form, "sums"), "fused (direct)": (gpu_form, "direct")}
    else:
        raise SystemExit(f"unknown comparison {which!r}: formulations | offset-grad")
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}: EDVR-M train step, bf16, batch 32", flush=True)
    for _ in range(2):
        for name, (form, offset_grad) in variants.items():
            deform_conv._deform_conv_accel = form
            os.environ[deform_conv.OFFSET_GRAD_ENV] = offset_grad
            ms, compile_s = step_ms()
            print(f"  {name:28} {ms:7.2f} ms  (compile {compile_s:.0f} s)", flush=True)
    deform_conv._deform_conv_accel = gpu_form


if __name__ == "__main__":
    main()
