"""Export EDVR-M's training step and inference for CUDA and TPU from this machine (no accelerator needed).

    python tools/export_accel.py [--dtype bfloat16] [--batch 32] [--clips 8] [--out DIR]

The training step is train.py's (``edvr_jax.training.train_step``: Charbonnier,
reduction sum; BasicSR's Adam at 4e-4, betas 0.9/0.99; float32 params and
optimizer state, compute in --dtype) on LR 64x64 patches; inference takes 5 x 180x320 clips. Prints, per platform, the
export time, the module size and whether the Pallas DCN kernels are in it;
with --out, writes the serialized artifacts (load them with the same jax
version: the Triton kernels are not covered by jax.export's compatibility
guarantee). Too slow for the test suite, which exports a tiny EDVR instead.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edvr_jax import training  # noqa: E402
from edvr_jax.lowering import export, has_triton_kernels  # noqa: E402
from edvr_jax.models import edvr_from_preset  # noqa: E402
from edvr_jax.optim import make_optimizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--platforms", default="cuda,tpu")
    parser.add_argument("--out", help="directory for the serialized exports")
    args = parser.parse_args()
    if args.out:  # the optimizer state's pytree types, for Exported.serialize
        for cls in (optax.ScaleByAdamState, optax.EmptyState):
            jax.export.register_namedtuple_serialization(cls, serialized_name=f"optax.{cls.__name__}")
    model = edvr_from_preset("edvr_m", dtype=jnp.dtype(args.dtype))
    s = jax.ShapeDtypeStruct
    lq, gt = s((args.batch, 5, 64, 64, 3), jnp.float32), s((args.batch, 256, 256, 3), jnp.float32)
    clips = s((args.clips, 5, 180, 320, 3), jnp.float32)
    schedule = lambda n: 4e-4  # noqa: E731
    tx = make_optimizer(schedule)  # BasicSR's Adam (0.9, 0.99), as train.py builds it
    state = jax.eval_shape(functools.partial(training.create_train_state, model=model, tx=tx,
                                             input_shape=(1, 5, 64, 64, 3)), jax.random.key(0))
    train_step = functools.partial(training.train_step, model=model, tx=tx, schedule=schedule)

    def inference(params, x):
        return model.apply({"params": params}, x)

    for platform in args.platforms.split(","):
        for name, fn, fargs in (("train_step", train_step, (state, {"lq": lq, "gt": gt})),
                                ("inference", inference, (state["params"], clips))):
            start = time.perf_counter()
            exported = export(fn, *fargs, platforms=(platform,))
            size = len(exported.mlir_module_serialized)
            print(f"{platform:5} {name:10} {args.dtype}: exported in {time.perf_counter() - start:5.1f} s, "
                  f"module {size / 2**20:5.1f} MiB, Pallas DCN kernels: {has_triton_kernels(exported)}", flush=True)
            if args.out:
                blob = exported.serialize()
                path = Path(args.out) / f"edvr_m_{name}_{args.dtype}_{platform}.jax_exported"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(blob)


if __name__ == "__main__":
    main()
