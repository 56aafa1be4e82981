"""Launch parameters of the Pallas DCN forward kernel, timed on a GPU at EDVR-M's inference shapes.

    python benchmarks/pallas_sweep.py [--budget 150]

The forward kernel is what ``impl="auto"`` runs for bf16 inference on CUDA; its ``PallasConfig`` defaults
were chosen on a CPU machine (no register spills, ``tools/triton_regs.py``), never timed against each
other. This times each config on the L1 DCN of an 8-clip inference (40 images of 180x320x64, bf16, offsets
a few pixels), median of up to 10 calls, next to the gather forward and a plain 3x3 conv of the same shape
in the same process; then the best three, and the default, on one clip (5 images). Each config's output is
checked against the gather's (relative L2). Prints as it goes and appends each row as it is measured to
``run.RESULTS`` (benchmarks/results.jsonl or ``$EDVR_JAX_RESULTS``; bench "pallas-sweep"; nothing with
``--tiny``). A config is set for real runs with ``EDVR_JAX_DCN_PALLAS="block_p=..,warps=.."``
or by changing ``deform_conv_pallas.config_for``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gpu import conv3x3, dcn_inputs, time_jax  # noqa: E402  (edvr_jax without what the accelerator image lacks)
from run import RESULTS, record as record_row  # noqa: E402

from edvr_jax.ops import deform_conv_pallas as dp  # noqa: E402
from edvr_jax.ops.deform_conv import modulated_deform_conv  # noqa: E402


def configs(tiny: bool) -> list[dp.PallasConfig]:
    if tiny:
        return [dp.PallasConfig(block_p=bp, warps=4) for bp in (16, 32)]
    out = [dp.PallasConfig(block_p=bp, warps=w, stages=s) for bp in (32, 64, 128, 256) for w in (4, 8)
           for s in (1, 2, 3)]
    out += [dp.PallasConfig(block_p=bp, warps=w, tap_loop=False) for bp in (32, 64) for w in (4, 8)]
    out += [dp.PallasConfig(block_p=bp, warps=8, block_c=32, stages=s) for bp in (64, 128) for s in (1, 2)]
    return out


def label(cfg: dp.PallasConfig) -> str:
    """``block_p``, ``warps`` and ``stages``, and ``tap_loop`` / ``block_c`` where they differ from the default."""
    default = dp.PallasConfig()
    fields = [f for f in ("block_p", "warps", "tap_loop", "block_c", "stages")
              if f in ("block_p", "warps", "stages") or getattr(cfg, f) != getattr(default, f)]
    return ",".join(f"{f}={getattr(cfg, f)}" for f in fields)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=150.0, help="seconds for the whole sweep")
    parser.add_argument("--tiny", action="store_true", help="small shapes (a CPU check; interpret mode)")
    args = parser.parse_args()
    start = time.perf_counter()
    dev = jax.devices()[0]
    big, small = ((2, 12, 16, 32), (1, 12, 16, 32)) if args.tiny else ((40, 180, 320, 64), (5, 180, 320, 64))
    rows = 0
    print(f"{dev.device_kind}, jax {jax.__version__}; DCN forward, bf16, 8 groups, C=O", flush=True)

    def record(shape, name, ms, **extra):
        nonlocal rows
        if not args.tiny:
            record_row("pallas-sweep", {"shape": list(shape), "name": name, "ms": ms, **extra})
            rows += 1
        more = "".join(f"  {k} {v:.1e}" if isinstance(v, float) else f"  {k} {v}" for k, v in extra.items())
        print(f"  {str(shape):22} {name:44} {ms:8.3f} ms{more}", flush=True)

    def baselines(shape):
        x, off, mask, kern, bias = dcn_inputs(shape, jnp.bfloat16)
        gather = jax.jit(lambda *a: modulated_deform_conv(*a, impl="gather"))
        conv = jax.jit(conv3x3)
        record(shape, "gather forward", time_jax(gather, x, off, mask, kern, bias, max_reps=10, target_s=0.3)[0])
        record(shape, "conv 3x3 (same shape)", time_jax(conv, x, kern, max_reps=10, target_s=0.3)[0])
        return gather(x, off, mask, kern, bias).astype(jnp.float32), (x, off, mask, kern, bias)

    def time_config(shape, cfg, ref, inputs):
        fn = jax.jit(lambda *a: modulated_deform_conv(*a, impl="pallas", pallas_config=cfg))
        try:
            out = fn(*inputs).astype(jnp.float32)
            err = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
            ms = time_jax(fn, *inputs, max_reps=10, target_s=0.3)[0]
        except Exception as e:  # noqa: BLE001  (a config Triton cannot compile: reported, the sweep goes on)
            print(f"  {str(shape):22} {label(cfg):44} FAILED {type(e).__name__}: {str(e)[:160]}", flush=True)
            return None
        record(shape, f"pallas {label(cfg)}", ms, rel_l2=err)
        return ms

    ref, inputs = baselines(big)
    default = dp.config_for(jnp.bfloat16)
    timed = {}
    for cfg in [default] + [c for c in configs(args.tiny) if c != default]:
        if time.perf_counter() - start > args.budget * 0.75:
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
        if time.perf_counter() - start > args.budget:
            break
        time_config(small, cfg, ref, inputs)
    print(f"{rows} rows appended to {RESULTS} ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
