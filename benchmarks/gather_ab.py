"""EDVR-M training step on an accelerator with variants of the DCN, interleaved in one process.

    python benchmarks/gather_ab.py formulations   # the GPU formulation against the CPU one run as one chunk
    python benchmarks/gather_ab.py offset-grad    # corner sums (default) against the fused offset gradient
    python benchmarks/gather_ab.py sample-order   # per-sample arrays [.., G, K] (default) against [.., K, G]
    python benchmarks/gather_ab.py pallas         # the gather (impl="auto") against the Pallas kernels,
                                                  # with relaxed and with acquire-release atomics
    python benchmarks/gather_ab.py sample-order --tiny  # batch 1 of 32x32 clips, 2 steps: checks the script

bf16, batch 32 of 5x64x64 LR clips, train.py's own step; each variant ``--rounds`` times (default 2),
interleaved (A, B, A, B); median of 15 steps after 3 warm-up steps; compile time excluded. The DCNs'
``conv_offset`` parameters are drawn at random (kernels std 0.02, biases std 2: mean |offset| about
1.6 px, printed), so that samples fall between pixels and differ between groups and taps, as in a trained
model. (EDVR initialises them to zero: every sample would sit on a pixel, the same one for all groups,
which flatters gathers and atomics.) The "cpu" formulation is swapped in by replacing
``deform_conv._deform_conv_accel`` with the vmapped per-image ``_deform_conv_image`` (one chunk,
``jnp.sum``), which is what the accelerators ran before the GPU formulation; the other variants set the
DCN's environment variables (``EDVR_JAX_DCN_OFFSET_GRAD``, ``EDVR_JAX_DCN_SAMPLE_ORDER``,
``EDVR_JAX_DCN_IMPL``, ``EDVR_JAX_DCN_PALLAS``), read when the step is traced. "pallas" runs both passes
of every DCN in the Pallas kernels (``impl="pallas"``), whose backward now adds the input gradient with
relaxed atomics (the acquire-release ones of the earlier measurements put a GPU-wide memory barrier
around each add). Only
jax, flax, optax and edvr_jax's model, ops and training step are imported (the accelerator image has
nothing more). Each measurement is appended as it is taken to ``run.RESULTS`` (benchmarks/results.jsonl
or ``$EDVR_JAX_RESULTS``; bench "gather-ab").
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from run import record  # noqa: E402

from edvr_jax import training  # noqa: E402
from edvr_jax.models import edvr_from_preset  # noqa: E402
from edvr_jax.ops import deform_conv  # noqa: E402
from edvr_jax.optim import make_optimizer  # noqa: E402


def offsets_of_a_few_pixels(params, seed: int = 5):
    """``params`` with every ``conv_offset`` kernel ~ N(0, 0.02) and bias ~ N(0, 2)."""
    def draw(path, p):
        name = jax.tree_util.keystr(path)
        if "conv_offset" not in name:
            return p
        key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()))
        return (0.02 if "kernel" in name else 2.0) * jax.random.normal(key, p.shape, p.dtype)
    return jax.tree_util.tree_map_with_path(draw, params)


def setup(batch: int, dtype, size: int = 64):
    """EDVR-M, its optimizer and schedule, a fresh train state with ``offsets_of_a_few_pixels``, and a batch."""
    model = edvr_from_preset("edvr_m", dtype=dtype)
    schedule = lambda n: 4e-4  # noqa: E731
    tx = make_optimizer(schedule)
    state = training.create_train_state(jax.random.key(0), model=model, tx=tx, input_shape=(1, 5, 64, 64, 3))
    state["params"] = offsets_of_a_few_pixels(state["params"])
    data = {"lq": jax.random.uniform(jax.random.key(3), (batch, 5, size, size, 3)),
            "gt": jax.random.uniform(jax.random.key(4), (batch, 4 * size, 4 * size, 3))}
    return model, tx, schedule, state, data


def offset_means(batch: int, size: int, dtype=jnp.bfloat16) -> dict[str, float]:
    """Mean |offset| of each DCN on the first clip (the same in every variant: same parameters and data)."""
    model, _, _, state, data = setup(batch, dtype, size)
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x, mutable=["intermediates"])[1])
    means = training.offset_means(forward(state["params"], data["lq"][:1])["intermediates"])
    return {k.split("/")[-1]: float(v) for k, v in means.items()}


def step_ms(batch: int, size: int, steps: int, warmup: int, dtype=jnp.bfloat16) -> tuple[float, float]:
    """(median ms per step, compile seconds) of train.py's step for EDVR-M, as the DCN is set up now."""
    model, tx, schedule, state, data = setup(batch, dtype, size)
    step = jax.jit(functools.partial(training.train_step, model=model, tx=tx, schedule=schedule), donate_argnums=0)
    start = time.perf_counter()
    compiled = step.lower(state, data).compile()
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="?", default="formulations",
                        choices=["formulations", "offset-grad", "sample-order", "pallas"])
    parser.add_argument("--rounds", type=int, default=2, help="times each variant runs, interleaved")
    parser.add_argument("--tiny", action="store_true", help="batch 1 of 32x32 clips, 2 steps, nothing recorded")
    args = parser.parse_args()
    which = args.which
    batch, size, steps, warmup = (1, 32, 2, 1) if args.tiny else (32, 64, 15, 3)
    gpu_form = deform_conv._deform_conv_accel
    cpu_form = lambda x, off, m, wmat, geo: jax.vmap(  # noqa: E731
        deform_conv._deform_conv_image, in_axes=(0, 0, 0, None, None))(x, off, m, wmat, geo)
    grad, order, impl = deform_conv.OFFSET_GRAD_ENV, deform_conv.SAMPLE_ORDER_ENV, deform_conv.IMPL_ENV
    kernels = deform_conv.deform_conv_pallas.CONFIG_ENV
    variants = {  # name: (the accelerators' gather formulation, environment)
        "formulations": {"cpu formulation, one chunk": (cpu_form, {}), "gpu formulation": (gpu_form, {})},
        "offset-grad": {"corner sums": (gpu_form, {grad: "sums"}), "fused (direct)": (gpu_form, {grad: "direct"})},
        "sample-order": {"[.., G, K] (default)": (gpu_form, {order: "gk"}), "[.., K, G]": (gpu_form, {order: "kg"})},
        "pallas": {"gather (auto)": (gpu_form, {}), "pallas kernels, both passes": (gpu_form, {impl: "pallas"}),
                   "pallas, acq_rel atomics": (gpu_form, {impl: "pallas", kernels: "relaxed_atomics=0"})},
    }[which]
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}: EDVR-M train step, bf16, batch {batch}; "
          f"Pallas backward atomics {deform_conv.deform_conv_pallas.BACKWARD_ATOMICS}", flush=True)
    means = offset_means(batch, size)
    print("  mean |offset| " + ", ".join(f"{k} {v:.2f}" for k, v in means.items()), flush=True)
    for repeat in range(args.rounds):
        for name, (form, env) in variants.items():
            deform_conv._deform_conv_accel = form
            for var in (grad, order, impl, kernels):
                os.environ.pop(var, None)
            os.environ.update(env)
            ms, compile_s = step_ms(batch, size, steps, warmup)
            print(f"  {name:28} {ms:7.2f} ms  (compile {compile_s:.0f} s)", flush=True)
            if not args.tiny:
                record("gather-ab", {"comparison": which, "variant": name, "repeat": repeat, "ms": ms,
                                     "compile_s": compile_s, "batch": batch, "dtype": "bfloat16",
                                     "mean_abs_offset": means})
    deform_conv._deform_conv_accel = gpu_form


if __name__ == "__main__":
    main()
