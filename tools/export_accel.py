"""Export EDVR-M's training step and inference for CUDA and TPU from this machine (no accelerator needed).

    python -m tools.export_accel [--dtype bfloat16] [--batch 32] [--clips 8] [--out DIR]

The programs are the benchmarks' (``benchmarks.harness``): train.py's step (``edvr_jax.training.train_step``:
Charbonnier, sum; BasicSR's Adam at 4e-4, betas 0.9/0.99; float32 parameters and optimizer state, compute
in --dtype) on LR 64x64 patches, and inference of 5 x 180x320 clips. Prints, per platform, the export time,
the module size and whether the Pallas DCN kernels are in it; with --out, writes the serialized artifacts
(load them with the same jax version: the Triton kernels are not covered by jax.export's compatibility
guarantee). Too slow for the test suite, which exports a tiny EDVR instead.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks import harness
from edvr_jax.lowering import export, has_triton_kernels


def register_namedtuples(tree) -> None:
    """Registers the NamedTuple node types of ``tree`` (optax's optimizer states) for ``Exported.serialize``."""
    def walk(treedef):
        data = treedef.node_data()
        cls = data[0] if data else None
        if cls is not None and issubclass(cls, tuple) and hasattr(cls, "_fields"):
            try:
                name = f"{cls.__module__}.{cls.__qualname__}"
                jax.export.register_namedtuple_serialization(cls, serialized_name=name)
            except ValueError:  # registered already
                pass
        for child in treedef.children():
            walk(child)
    walk(jax.tree.structure(tree))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.export_accel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--platforms", default="cuda,tpu")
    parser.add_argument("--out", help="directory for the serialized exports")
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype)
    train_step, state, batch = harness.edvr_m_train_step(args.batch, dtype, abstract=True)
    inference, params, clips = harness.edvr_inference(args.clips, dtype, abstract=True)
    if args.out:
        register_namedtuples(state)
    for platform in args.platforms.split(","):
        for name, fn, fargs in (("train_step", train_step, (state, batch)), ("inference", inference, (params, clips))):
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
