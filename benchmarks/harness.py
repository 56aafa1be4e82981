"""What every benchmark shares: one timer, one machine record, one results writer, one FLOP count,
and the EDVR-M workloads as the library runs them.

The training step is train.py's own: ``edvr_jax.training.train_step`` bound with ``functools.partial``
to the model, BasicSR's Adam and its schedule, the state from ``training.create_train_state``.
Inference is the model's ``apply``. Every DCN's ``conv_offset`` is drawn so that offsets are a few
pixels (EDVR starts them at zero: every sample would sit on a pixel, the same one for all groups, which
flatters gathers and atomic adds).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import platform
import statistics
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from edvr_jax import optim, training
from edvr_jax.models import EDVR, edvr_from_preset
from edvr_jax.ops.dcn import DCNOptions

#: Where ``python -m benchmarks.run`` appends its rows unless told otherwise (git-ignored).
DEFAULT_RESULTS = Path(__file__).resolve().parent / "results" / "results.jsonl"

#: ``--tiny``: EDVR-M's structure at a size that runs in seconds on a CPU, to check a script.
TINY = dict(num_feat=16, num_extract_block=1, num_reconstruct_block=1)

#: EDVR-M's learning rate; BasicSR's Adam betas are ``edvr_jax.optim.make_optimizer``'s defaults.
LEARNING_RATE = 4e-4


# ------------------------------------------------------------------------------------------ timer


@dataclasses.dataclass(frozen=True)
class Timing:
    """``first_s``: the first call (compilation, when the function was not compiled before, plus one run);
    ``min_ms`` and ``median_ms`` over the ``calls`` timed calls that followed the warm-up."""

    first_s: float
    min_ms: float
    median_ms: float
    calls: int


def timeit(call: Callable, *args, warmup: int = 1, min_calls: int = 3, max_calls: int = 20, target_s: float = 1.0,
           sync: Callable[[Any], Any] = jax.block_until_ready) -> Timing:
    """Times ``call(*args)``: one first call, ``warmup`` untimed calls, then at least ``min_calls`` timed
    calls and more until they add up to ``target_s`` or ``max_calls``. ``sync(result)`` waits for the
    device (``jax.block_until_ready``; for torch, ``torch.cuda.synchronize``)."""
    start = time.perf_counter()
    sync(call(*args))
    first = time.perf_counter() - start
    for _ in range(warmup):
        sync(call(*args))
    times: list[float] = []
    while len(times) < min_calls or (len(times) < max_calls and sum(times) < target_s):
        start = time.perf_counter()
        sync(call(*args))
        times.append(time.perf_counter() - start)
    return Timing(first, min(times) * 1e3, statistics.median(times) * 1e3, len(times))


# ------------------------------------------------------------------------------------------ records


def machine() -> dict:
    """The machine a figure was measured on: CPU (model name, family, model, widest vector ISA), cores,
    JAX backend and device, Python / jax / flax versions (torch / torchvision when loaded), UTC date."""
    info: dict[str, str] = {}
    try:  # the first processor's fields: "AMD EPYC" alone hides a 2x spread (Zen 3 AVX2 vs Zen 4 AVX-512)
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    import flax

    device = jax.devices()[0]
    record = dict(cpu=info.get("model name", platform.processor() or "unknown"), cpu_family=info.get("cpu family"),
                  cpu_model=info.get("model"),
                  isa="avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "other",
                  cores=os.cpu_count(), backend=jax.default_backend(), device_kind=device.device_kind,
                  python=platform.python_version(), jax=jax.__version__, flax=flax.__version__)
    for name in ("torch", "torchvision"):
        if name in sys.modules:
            record[name] = sys.modules[name].__version__
    record["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return record


class Results:
    """The rows of one run: each ``add`` keeps the row and appends it as one JSON line (with the bench's
    name and ``machine()``) to ``path``, so that what was measured before a run is cut off is kept.
    ``path=None``: kept in memory only."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self.rows: list[dict] = []
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, bench: str, **row) -> dict:
        row = {"bench": bench, **row}
        self.rows.append(row)
        if self.path:
            with self.path.open("a") as f:
                f.write(json.dumps({**row, "machine": machine()}) + "\n")
        return row

    def find(self, bench: str, **match) -> dict | None:
        """The first row of ``bench`` whose fields equal ``match``."""
        for row in self.rows:
            if row["bench"] == bench and all(row.get(k) == v for k, v in match.items()):
                return row
        return None


# ------------------------------------------------------------------------------------------ work


def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The plain 3x3 conv of a DCN's shape (NHWC, stride 1, padding 1): the DCN's yardstick."""
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def dcn_inputs(shape: tuple[int, int, int, int], dtype, groups: int = 8):
    """One DCN's ``(x, offset, mask, kernel, bias)`` for ``x`` of ``shape`` (C -> C, 3x3): offsets N(0, 2)
    px and the mask a sigmoid of N(0, 1), both float32 (as EDVR computes them); x N(0, 1) and the kernel
    N(0, 0.05) in ``dtype``; zero bias."""
    b, h, w, c = shape
    keys = jax.random.split(jax.random.key(1), 4)
    x = jax.random.normal(keys[0], (b, h, w, c), dtype)
    offset = 2.0 * jax.random.normal(keys[1], (b, h, w, groups * 18))
    mask = jax.nn.sigmoid(jax.random.normal(keys[2], (b, h, w, groups * 9)))
    kernel = (0.05 * jax.random.normal(keys[3], (3, 3, c, c))).astype(dtype)
    return x, offset, mask, kernel, jnp.zeros((c,), dtype)


def edvr_model(preset: str = "edvr_m", dtype=jnp.float32, dcn: DCNOptions = DCNOptions(), tiny: bool = False) -> EDVR:
    """``edvr_from_preset(preset)`` computing in ``dtype`` with ``dcn``; ``tiny``: with ``TINY``'s sizes."""
    return edvr_from_preset(preset, dtype=jnp.dtype(dtype), dcn=dcn, **(TINY if tiny else {}))


def offsets_of_a_few_pixels(params, seed: int = 5):
    """``params`` with every ``conv_offset`` kernel drawn from N(0, 0.02) and bias from N(0, 2): mean
    |offset| of about 1.6 px in EDVR-M, different for every group and tap, as in a trained model."""
    def draw(path, p):
        name = jax.tree_util.keystr(path)
        if "conv_offset" not in name:
            return p
        key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()))
        return (0.02 if "kernel" in name else 2.0) * jax.random.normal(key, p.shape, p.dtype)
    return jax.tree_util.tree_map_with_path(draw, params)


def adam():
    """``(tx, schedule)``: BasicSR's Adam for EDVR-M as train.py builds it after the TSA warm-up
    (``edvr_jax.optim.make_optimizer``: betas 0.9 / 0.99, every parameter trained), at a constant
    ``LEARNING_RATE`` (the cosine schedule's value changes nothing in a step's cost)."""
    schedule = lambda count: jnp.asarray(LEARNING_RATE, jnp.float32)  # noqa: E731
    return optim.make_optimizer(schedule), schedule


def _clips(shape, seed: int, abstract: bool):
    if abstract:
        return jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.random.uniform(jax.random.key(seed), shape)


def edvr_m_train_step(batch: int, dtype=jnp.float32, dcn: DCNOptions = DCNOptions(), *, lr_size: int = 64,
                      tiny: bool = False, state: dict | None = None, abstract: bool = False):
    """``(step, state, data)``: train.py's step for EDVR-M in ``dtype`` (Charbonnier, sum; ``adam()``; the
    NaN guard and the logged metrics), jitted with the state donated; a fresh train state (float32
    parameters from ``create_train_state``, offsets from ``offsets_of_a_few_pixels``), or ``state``;
    and a batch of ``batch`` LR clips of 5 x ``lr_size``^2 with their x4 GT frames, uniform noise.
    ``abstract``: state and batch as ``jax.ShapeDtypeStruct`` (for lowering or export without running)."""
    model = edvr_model("edvr_m", dtype, dcn, tiny)
    tx, schedule = adam()
    step = jax.jit(functools.partial(training.train_step, model=model, tx=tx, schedule=schedule), donate_argnums=0)
    if state is None:
        create = functools.partial(training.create_train_state, model=model, tx=tx,
                                   input_shape=(1, 5, lr_size, lr_size, 3))
        if abstract:
            state = jax.eval_shape(create, jax.random.key(0))
        else:
            state = jax.jit(create)(jax.random.key(0))
            # Adam's initial state depends on the parameters' shapes only: it stays valid.
            state["params"] = offsets_of_a_few_pixels(state["params"])
    data = {"lq": _clips((batch, 5, lr_size, lr_size, 3), 3, abstract),
            "gt": _clips((batch, 4 * lr_size, 4 * lr_size, 3), 4, abstract)}
    return step, state, data


def edvr_inference(clips: int, dtype=jnp.float32, dcn: DCNOptions = DCNOptions(), *, preset: str = "edvr_m",
                   hw=(180, 320), tiny: bool = False, params=None, abstract: bool = False):
    """``(apply, params, x)``: the preset's ``apply`` in ``dtype``, jitted; its parameters (``params``, or
    initialised with offsets as in ``edvr_m_train_step``); ``clips`` clips of 5 x ``hw`` frames (uniform
    noise). ``abstract``: parameters and clips as ``jax.ShapeDtypeStruct``."""
    model = edvr_model(preset, dtype, dcn, tiny)
    if params is None:
        init = lambda key: model.init(key, jnp.zeros((1, 5, 64, 64, 3)))  # noqa: E731
        if abstract:
            params = jax.eval_shape(init, jax.random.key(0))["params"]
        else:
            params = offsets_of_a_few_pixels(jax.jit(init)(jax.random.key(0))["params"])
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    return apply, params, _clips((clips, 5, *hw, 3), 2, abstract)


def stepping(step: Callable, state: dict, data: dict) -> Callable[[], jax.Array]:
    """A call without arguments that runs ``step`` (which donates its state) on a copy of ``state`` and
    keeps the new state for the next call; returns the loss."""
    held = [jax.tree.map(jnp.copy, state)]

    def call():
        held[0], metrics = step(held[0], data)
        return metrics["loss"]
    return call


# ------------------------------------------------------------------------------------------ counts


def memory_bytes(compiled) -> int:
    """Device memory XLA plans for one call of a compiled function: arguments + outputs + temporaries."""
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def count_flops(fn: Callable, *args) -> float:
    """FLOPs (2 per multiply-add) of the convolutions and matmuls in ``fn``'s jaxpr: a ``cond``'s larger
    branch, a ``scan``'s body times its length, nested jaxprs (jit, custom VJPs) included. ``args`` may be
    ``jax.ShapeDtypeStruct``s.

    The DCN's bilinear sampling is not counted, and Pallas kernels count 0: count a model whose DCN is the
    gather (``DCNOptions(impl="gather")``). XLA's own ``cost_analysis`` is not used: it counts a while loop's
    body once, and on GPU it does not count cuDNN convolutions.
    """
    def walk(jaxpr) -> float:
        total = 0.0
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name == "conv_general_dilated":
                rhs, out = eqn.invars[1].aval, eqn.outvars[0].aval
                spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, spatial...)
                taps = np.prod([rhs.shape[i] for i in spec[2:]])
                total += 2.0 * np.prod(out.shape) * taps * rhs.shape[spec[1]]
            elif name == "dot_general":
                (contracting, _), _ = eqn.params["dimension_numbers"]
                lhs = eqn.invars[0].aval
                total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs.shape[i] for i in contracting])
            elif name == "cond":
                total += max(walk(branch.jaxpr) for branch in eqn.params["branches"])
            elif name == "scan":
                total += eqn.params["length"] * walk(eqn.params["jaxpr"].jaxpr)
            else:
                for param in eqn.params.values():
                    for sub in param if isinstance(param, (tuple, list)) else (param,):
                        if isinstance(sub, jax.extend.core.ClosedJaxpr):
                            total += walk(sub.jaxpr)
                        elif isinstance(sub, jax.extend.core.Jaxpr):
                            total += walk(sub)
        return float(total)

    return walk(jax.make_jaxpr(fn)(*args).jaxpr)
