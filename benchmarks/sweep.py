"""Launch parameters of the Pallas DCN forward kernel, timed at EDVR-M's inference shapes.

    python -m benchmarks.run sweep [--budget 150] [--tiny]

The forward kernel is what ``DCNOptions(impl="auto")`` runs for bf16 inference on CUDA; its default
``PallasConfig`` (``pallas.config_for``) keeps both kernels free of register spills (``tools/triton_regs.py``).
This times each config (``DCNOptions(impl="pallas", pallas=config)``) on the L1 DCN of an 8-clip inference
(40 images of 180x320x64, bf16, offsets of a few pixels), median of up to 10 calls, next to the gather
forward and a plain 3x3 conv of the same shape; then the best three, and the default, on one clip (5
images). Each config's output is checked against the gather's (relative L2). A config is used by passing
``DCNOptions(pallas=PallasConfig(...))`` to the op or the model (``EDVR(dcn=...)``).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

from benchmarks.harness import Results, conv3x3, dcn_inputs, timeit
from edvr_jax.ops.dcn import DCNOptions, PallasConfig, modulated_deform_conv
from edvr_jax.ops.dcn.pallas import config_for


def configs(tiny: bool) -> list[PallasConfig]:
    if tiny:
        return [PallasConfig(block_p=bp, warps=4) for bp in (16, 32)]
    out = [PallasConfig(block_p=bp, warps=w, stages=s) for bp in (32, 64, 128, 256) for w in (4, 8) for s in (1, 2, 3)]
    out += [PallasConfig(block_p=bp, warps=w, tap_loop=False) for bp in (32, 64) for w in (4, 8)]
    out += [PallasConfig(block_p=bp, warps=8, block_c=32, stages=s) for bp in (64, 128) for s in (1, 2)]
    return out


def label(cfg: PallasConfig) -> str:
    """``block_p``, ``warps`` and ``stages``, and ``tap_loop`` / ``block_c`` where they differ from the default."""
    default = PallasConfig()
    fields = [f for f in ("block_p", "warps", "tap_loop", "block_c", "stages")
              if f in ("block_p", "warps", "stages") or getattr(cfg, f) != getattr(default, f)]
    return ",".join(f"{f}={getattr(cfg, f)}" for f in fields)


def run(results: Results, budget_s: float, tiny: bool) -> None:
    start = time.perf_counter()
    big, small = ((2, 12, 16, 32), (1, 12, 16, 32)) if tiny else ((40, 180, 320, 64), (5, 180, 320, 64))
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}; DCN forward, bf16, 8 groups, C=O", flush=True)
    short = functools.partial(timeit, max_calls=10, target_s=0.3)

    def record(shape, name, ms, **extra):
        results.add("pallas-sweep", shape=list(shape), name=name, ms=ms, **extra)
        more = "".join(f"  {k} {v:.1e}" if isinstance(v, float) else f"  {k} {v}" for k, v in extra.items())
        print(f"  {str(shape):22} {name:44} {ms:8.3f} ms{more}", flush=True)

    def baselines(shape):
        inputs = dcn_inputs(shape, jnp.bfloat16)
        gather = jax.jit(functools.partial(modulated_deform_conv, options=DCNOptions(impl="gather")))
        record(shape, "gather forward", short(gather, *inputs).median_ms)
        record(shape, "conv 3x3 (same shape)", short(jax.jit(conv3x3), inputs[0], inputs[3]).median_ms)
        return gather(*inputs).astype(jnp.float32), inputs

    def time_config(shape, cfg, ref, inputs):
        fn = jax.jit(functools.partial(modulated_deform_conv, options=DCNOptions(impl="pallas", pallas=cfg)))
        try:
            out = fn(*inputs).astype(jnp.float32)
            err = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
            ms = short(fn, *inputs).median_ms
        except Exception as e:  # noqa: BLE001  (a config Triton cannot compile: reported, the sweep goes on)
            print(f"  {str(shape):22} {label(cfg):44} FAILED {type(e).__name__}: {str(e)[:160]}", flush=True)
            return None
        record(shape, f"pallas {label(cfg)}", ms, rel_l2=err)
        return ms

    ref, inputs = baselines(big)
    default = config_for(jnp.bfloat16)
    timed = {}
    for cfg in [default] + [c for c in configs(tiny) if c != default]:
        if time.perf_counter() - start > budget_s * 0.75:
            print(f"  (budget: {len(timed)} configs timed, the rest skipped)", flush=True)
            break
        ms = time_config(big, cfg, ref, inputs)
        if ms is not None:
            timed[cfg] = ms
    del ref, inputs
    best = sorted(timed, key=timed.get)[:3]
    if best:
        print(f"best on {big}: {label(best[0])} {timed[best[0]]:.3f} ms "
              f"(default {timed.get(default, float('nan')):.3f})", flush=True)
    ref, inputs = baselines(small)
    for cfg in dict.fromkeys(best + [default]):
        if time.perf_counter() - start > budget_s:
            break
        time_config(small, cfg, ref, inputs)
    print(f"({time.perf_counter() - start:.0f} s)", flush=True)
