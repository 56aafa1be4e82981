"""Compile EDVR-M (or one DCN) for a GPU (H100/H200) or a TPU (v4/v5e/v5p) on a machine without either, and report.

Deviceless ("AOT") compilation: the accelerator's compiler of the same jax version compiles for a target
description instead of a device. No accelerator, no driver, no autotuning (cuDNN/cuBLAS algorithms are the
defaults), but the fusion structure, which arrays go through HBM, their physical layouts (TPU tiles) and the
memory the program needs are the compiler's own.

GPU (the CUDA plugin compiles for a ``GpuTargetConfigProto``, embedded below from XLA's specs), from the
repository root, in a venv of its own (the same jax version, its CUDA plugin and ptxas)::

    python -m venv .venv-cuda && .venv-cuda/bin/pip install jax==0.10.2 jaxlib==0.10.2 \\
        flax optax einops safetensors pillow
    .venv-cuda/bin/pip install --no-deps jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2 nvidia-cuda-nvcc-cu12
    .venv-cuda/bin/python -m tools.accel_aot train --batch 32 --dtype bfloat16    # train.py's step
    .venv-cuda/bin/python -m tools.accel_aot infer --batch 8                      # clips of 5x180x320
    .venv-cuda/bin/python -m tools.accel_aot dcn --shape 160,64,64,64             # one DCN, forward + backward

For a GPU it prints every kernel's operand and result bytes and a **bytes-only time estimate** at the card's
HBM bandwidth (every operand counted once in full), and each XLA kernel's registers (ptxas on the emitted
PTX). Not a measurement. Calibration against H100 measurements (docs/dcn.md): the gather DCN's
forward+backward took 2.2-2.4x its bytes estimate at all three benchmark shapes, f32 and bf16; the Pallas
kernels 11-18x (they are not bandwidth-bound).

TPU (libtpu compiles for a named topology; 1.5 GB venv)::

    python -m venv .venv-tpu && .venv-tpu/bin/pip install jax==0.10.2 jaxlib==0.10.2 "libtpu==0.0.42.*" \\
        flax optax einops safetensors pillow
    .venv-tpu/bin/python -m tools.accel_aot train --target v5e --batch 8
    .venv-tpu/bin/python -m tools.accel_aot train --target v5e --chips 4 --batch 32  # 8 clips per chip

For a TPU it prints the HBM the program needs per chip (``memory_analysis``) or the compiler's
out-of-memory message, the cross-chip collectives, and the largest arrays with their padding to the
(8, 128) tiles. Use it to compare formulations before spending accelerator time; measure what it suggests
with ``python -m benchmarks.run gpu``. The programs are the benchmarks' (``benchmarks.harness``).
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import os
import re
import subprocess
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # no CUDA runtime here; compiling only
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # no TPU either: several compiling processes may run

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import topologies  # noqa: E402

from benchmarks import harness  # noqa: E402
from edvr_jax.ops.dcn import IMPLS, DCNOptions, modulated_deform_conv  # noqa: E402
from edvr_jax.sharding import batch_sharding, make_mesh  # noqa: E402

# GpuTargetConfigProto, the fields this jaxlib reads, from XLA's xla/backends/gpu/target_config/specs/*.txtpb.
_DEVICE = """gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth} l2_cache_size: 52428800 clock_rate_ghz: 1.98 device_memory_size: {memory}
  shared_memory_per_block_optin: 232448 cuda_compute_capability {{ major: 9 }}
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 10 patch: 0 }}
device_description_str: "{name}"
"""
TARGETS = {
    "h100": dict(name="NVIDIA H100 80GB HBM3", bandwidth=3352320000000, memory=84942979072),
    "h200": dict(name="NVIDIA H200 141GB HBM3e", bandwidth=4800000000000, memory=151397597184),
}
TPU_TOPOLOGIES = {"v4": "v4:2x2x1", "v5e": "v5e:2x2", "v5p": "v5p:2x2x1"}  # --chips of them are used
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8,
          "s64": 8, "u64": 8}


def target_devices(target: str) -> list:
    """The devices of a deviceless topology for ``target`` (a GPU: one; a TPU: four chips)."""
    if target in TPU_TOPOLOGIES:
        topo = topologies.get_topology_desc(topology_name=TPU_TOPOLOGIES[target], platform="tpu")
    else:
        topo = topologies.get_topology_desc(platform="cuda", topology_name="", topology="1x1x1",
                                            target_config=_DEVICE.format(**TARGETS[target]))
    return list(topo.devices)


def compile_for(jitted, args, dump_dir: str | None):
    """``jitted.lower(*args).compile()`` for the target of ``args``' shardings (XLA's dump in ``dump_dir``)."""
    options = {"xla_dump_to": dump_dir} if dump_dir else {}
    return jitted.lower(*args).compile(compiler_options=options)


def _nbytes(shape_text: str) -> int:
    total = 0
    for dtype, dims in re.findall(r"\b(pred|[subf]\d+|bf16)\[([\d,]*)\]", shape_text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _BYTES.get(dtype, 4)
    return total


def kernel_registers(dump_dir: str) -> dict[str, tuple[int, int]]:
    """Kernel name -> (registers per thread, spill-store bytes), from ptxas -v on every dumped PTX file."""
    import nvidia.cuda_nvcc  # noqa: PLC0415  (nvidia-cuda-nvcc-cu12: ptxas)
    ptxas = Path(list(nvidia.cuda_nvcc.__path__)[0]) / "bin" / "ptxas"
    out: dict[str, tuple[int, int]] = {}
    for ptx in glob.glob(f"{dump_dir}/*.ptx"):
        log = subprocess.run([str(ptxas), "-arch=sm_90a", "-v", ptx, "-o", os.devnull],
                             capture_output=True, text=True).stderr
        name, spill = None, 0
        for line in log.splitlines():
            if m := re.search(r"Compiling entry function '([^']+)'", line):
                name = m.group(1)
            elif m := re.search(r"(\d+) bytes spill stores", line):
                spill = int(m.group(1))
            elif (m := re.search(r"Used (\d+) registers", line)) and name:
                out[name] = (int(m.group(1)), spill)
    return out


def kernels(dump_dir: str) -> list[dict]:
    """Every kernel-launching instruction of the optimized entry computation, with bytes and category."""
    hlo = open(glob.glob(f"{dump_dir}/*gpu_after_optimizations.txt")[0]).read()
    bodies = {m.group(1): m.group(0) for m in re.finditer(r"\n%([\w.\-]+) \(.*?\n}\n", hlo, re.S)}
    entry = hlo[hlo.index("\nENTRY"):]
    shapes: dict[str, str] = {}
    rows = []
    for line in entry.split("\n")[1:]:
        m = re.match(r"\s*(?:ROOT )?%(\S+) = (.+?) ([a-z][\w-]*)\((.*)", line)
        if not m:
            continue
        name, shape, op, rest = m.groups()
        shapes[name] = shape
        if op not in ("fusion", "custom-call", "convolution", "dot", "scatter", "gather", "reduce", "sort", "copy"):
            continue
        operands = re.findall(r"%([\w.\-]+)", rest.split("), ")[0])
        calls = re.search(r"calls=%([\w.\-]+)", rest)
        body = bodies.get(calls.group(1), "") if calls else ""
        target = re.search(r'custom_call_target="([^"]+)"', rest)
        kind = re.search(r"kind=(\w+)", rest)
        if target and "cudnn" in target.group(1):
            category = "cuDNN convolution"
        elif target and "triton" in target.group(1):
            category = "Pallas (Triton) kernel"
        elif "gemm" in name or (target and "cublas" in target.group(1)):
            category = "matmul"
        elif " gather(" in body or " scatter(" in body:
            category = "gather/scatter (DCN)"
        elif " reduce(" in body:
            category = "reduction"
        elif " select(" in body:
            category = "select (LeakyReLU etc.)"
        else:
            category = "other elementwise/copy"
        rows.append(dict(name=name, kind=(target or kind).group(1) if (target or kind) else op, category=category,
                         out=_nbytes(shape), inp=sum(_nbytes(shapes.get(a, "")) for a in operands),
                         body=re.sub(r"%[\w.\-]+|\b\w+\.\d+\b", "", re.sub(r", metadata=\{[^}]*\}", "", body))))
    return rows


def report(dump_dir: str, target: str, top: int) -> None:
    bandwidth = TARGETS[target]["bandwidth"]
    rows = kernels(dump_dir)
    regs = kernel_registers(dump_dir)
    for r in rows:
        r["regs"] = regs.get(re.sub(r"[.\-]", "_", r["name"]))
    # XLA emits one kernel for identical fusions: the others find their registers through the body.
    by_body = {r["body"]: r["regs"] for r in rows if r["regs"]}
    est = lambda r: (r["out"] + r["inp"]) / bandwidth * 1e3  # noqa: E731
    total = sum(map(est, rows))
    print(f"{len(rows)} kernel launches; bytes-only estimate {total:.2f} ms at {bandwidth / 1e12:.2f} TB/s "
          f"({TARGETS[target]['name']})")
    cats = collections.defaultdict(lambda: [0, 0.0])
    for r in rows:
        cats[r["category"]][0] += 1
        cats[r["category"]][1] += est(r)
    for cat, (n, t) in sorted(cats.items(), key=lambda kv: -kv[1][1]):
        print(f"  {cat:26} {n:5} launches  {t:7.2f} ms")
    print(f"largest {top}:  name, kind, MiB out / in, registers per thread (spill bytes), estimate")
    for r in sorted(rows, key=est, reverse=True)[:top]:
        reg = r["regs"] or by_body.get(r["body"])
        reg_text = f"{reg[0]:4d} ({reg[1]})" if reg else "   -    "
        print(f"  {r['name'][:44]:44} {r['kind'][:30]:30} {r['out'] / 2**20:8.1f} / {r['inp'] / 2**20:8.1f}"
              f"  {reg_text}  {est(r):.3f} ms")


def tpu_arrays(hlo: str) -> list[tuple[int, int, str]]:
    """(bytes with the layout's tile padding, bytes unpadded, description) of every array in the entry."""
    entry = hlo[hlo.index("\nENTRY"):]
    out = []
    for m in re.finditer(r"\n\s*(?:ROOT )?%(\S+) = (\w+)\[([\d,]*)\]\{([^}]*)\}", entry):
        name, dtype, dims_text, layout = m.groups()
        dims = [int(d) for d in filter(None, dims_text.split(","))]
        size = _nbytes(f"{dtype}[{dims_text}]")
        minor_to_major = layout.split(":")[0]
        tile = re.search(r"T\(([\d,]+)\)", layout)
        padded = size
        if tile and dims and minor_to_major:
            physical = [dims[int(i)] for i in minor_to_major.split(",")][::-1]  # major .. minor
            tiles = [int(t) for t in tile.group(1).split(",")]
            padded = _BYTES.get(dtype, 4)
            for i, d in enumerate(physical):
                t = tiles[i - (len(physical) - len(tiles))] if i >= len(physical) - len(tiles) else 1
                padded *= -(-d // t) * t
        out.append((padded, size, f"{name[:36]:36} {dtype}[{dims_text}]{{{minor_to_major}}}"))
    return sorted(out, reverse=True)


def collectives(hlo: str) -> dict[str, list[int]]:
    """Cross-device ops of the optimized program: name -> [count, bytes of their results]."""
    out = collections.defaultdict(lambda: [0, 0])
    for m in re.finditer(r"= (.+?) (all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(?:-start)?\(",
                         hlo):
        out[m.group(2)][0] += 1
        out[m.group(2)][1] += _nbytes(m.group(1))
    return dict(out)


def report_tpu(compiled, top: int) -> None:
    mem = compiled.memory_analysis()
    print(f"HBM per chip: temporaries {mem.temp_size_in_bytes / 2**30:.2f} GiB, arguments "
          f"{mem.argument_size_in_bytes / 2**30:.2f} GiB, outputs {mem.output_size_in_bytes / 2**30:.2f} GiB")
    hlo = compiled.as_text()
    print("collectives: " + (", ".join(f"{n} x {op} ({b / 2**20:.1f} MiB)" for op, (n, b) in collectives(hlo).items())
                             or "none"))
    arrays = tpu_arrays(hlo)
    print(f"largest {top} arrays: MiB with tile padding / without")
    for padded, size, what in arrays[:top]:
        print(f"  {padded / 2**20:9.1f} / {size / 2**20:8.1f}  {what}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.accel_aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["train", "infer", "dcn"])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, help="train: batch (32); infer: clips (8)")
    parser.add_argument("--shape", default="160,64,64,64", help="dcn: B,H,W,C (8 groups, float32 offsets)")
    parser.add_argument("--impl", default="auto", choices=IMPLS, help="the DCN's DCNOptions.impl")
    parser.add_argument("--target", choices=sorted(TARGETS) + sorted(TPU_TOPOLOGIES), default="h100")
    parser.add_argument("--chips", type=int, default=1, help="TPU: data-parallel over this many chips (<= 4), "
                        "the batch split as train.py splits it, the rest replicated")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--dump", help="keep XLA's dump (HLO, PTX) here; default: a temporary folder")
    args = parser.parse_args()
    mesh = make_mesh(data=args.chips, devices=target_devices(args.target)[:args.chips])
    rep, split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), batch_sharding(mesh)
    on = lambda tree, s: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree)  # noqa: E731
    dtype = jnp.dtype(args.dtype)
    dcn = DCNOptions(impl=args.impl)
    if args.what == "dcn":
        b, h, w, c = (int(v) for v in args.shape.split(","))
        x, offset, mask, kernel, bias = jax.eval_shape(lambda: harness.dcn_inputs((b, h, w, c), dtype))

        @jax.jit
        def fn(x, offset, mask, kernel, bias, g):
            y, vjp = jax.vjp(functools.partial(modulated_deform_conv, options=dcn), x, offset, mask, kernel, bias)
            return y, vjp((y.astype(jnp.float32) * g).astype(y.dtype))  # the gradient depends on the output
        fargs = (*on((x, offset, mask), split), *on((kernel, bias), rep),
                 jax.ShapeDtypeStruct((b, h, w, c), jnp.float32, sharding=split))
    elif args.what == "train":
        fn, state, batch = harness.edvr_m_train_step(args.batch or 32, dtype, dcn, abstract=True)
        fargs = (on(state, rep), on(batch, split))
    else:
        fn, params, clips = harness.edvr_inference(args.batch or 8, dtype, dcn, abstract=True)
        fargs = (on(params, rep), on(clips, split))
    if args.target in TPU_TOPOLOGIES:
        try:
            compiled = compile_for(fn, fargs, args.dump)
        except jax.errors.JaxRuntimeError as e:  # out of HBM: the compiler says how much it needed
            print(f"does not compile for {args.target}: {str(e).splitlines()[0][:300]}")
            return
        report_tpu(compiled, args.top)
        return
    dump = args.dump or tempfile.mkdtemp(prefix="accel_aot_")
    compile_for(fn, fargs, dump)
    report(dump, args.target, args.top)
    print(f"XLA dump: {dump}")


if __name__ == "__main__":
    main()
