"""Compile the Pallas DCN kernels to PTX and SASS on a machine without a GPU: registers, spills, shared memory.

Needs a venv of its own with the CUDA plugin of the same jax version (its Triton compiler) and ptxas;
no GPU or driver. From the repository root::

    python -m venv .venv-cuda && .venv-cuda/bin/pip install jax==0.10.2 jaxlib==0.10.2 \\
        flax optax einops safetensors pillow
    .venv-cuda/bin/pip install --no-deps jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2 nvidia-cuda-nvcc-cu12
    .venv-cuda/bin/python -m tools.triton_regs            # the default configs
    .venv-cuda/bin/python -m tools.triton_regs fwd [64]   # sweep forward tile sizes / warps
    .venv-cuda/bin/python -m tools.triton_regs bwd [64]   # sweep backward tiles

The Triton IR is taken from the Pallas lowering for CUDA (sm_90, Triton's
fallback arch without a device), compiled with the plugin's Triton
(``compile_triton_to_asm``), and the PTX assembled by ``ptxas -v`` for sm_90a
(what Triton targets for 9.0). A kernel that spills, or needs so many registers
that few warps fit on an SM, shows here before any GPU time is spent.

With a ``cuobjdump`` (``CUOBJDUMP=...``; the triton wheel carries one:
``pip download --no-deps triton`` and unzip ``triton/backends/nvidia/bin``), each
kernel's SASS is summarised too: instructions, global loads and stores by width,
atomics, memory barriers and L1 invalidations, matrix instructions (acquire-release
atomic adds show as ``MEMBAR.ALL.GPU`` and ``CCTL.IVALL`` around every ``ATOMG``;
relaxed ones as ``REDG`` alone: docs/dcn.md).
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["JAX_PLATFORMS"] = "cpu"
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax._src.lib import triton  # noqa: E402
from jax._src.pallas.triton import pallas_call_registration as reg  # noqa: E402

from edvr_jax.ops.dcn import pallas as dp  # noqa: E402
from edvr_jax.ops.dcn.sampling import Geometry  # noqa: E402

captured: list[dict] = []
_custom_call = reg.mlir.custom_call


def _spy(*args, **kwargs):
    cfg = kwargs["backend_config"]
    captured.append(dict(name=cfg["name"].value, ir=cfg["ir"].value_bytes,
                         warps=int(str(cfg["num_warps"]).split(":")[0]), stages=int(str(cfg["num_stages"]).split(":")[0])))
    return _custom_call(*args, **kwargs)


def _ptxas() -> str:
    import nvidia.cuda_nvcc
    return str(Path(nvidia.cuda_nvcc.__path__[0]) / "bin" / "ptxas")


_SASS_KINDS = re.compile(r"(LDG|STG|REDG|ATOMG|MEMBAR|CCTL|ERRBAR|HGMMA|HMMA)[A-Za-z0-9_.]*")


def sass_summary(cubin: str) -> str:
    """``n instructions; KIND.WIDTH xN ...`` of a cubin's SASS (``$CUOBJDUMP -sass``), or '' without one."""
    tool = os.environ.get("CUOBJDUMP")
    if not tool:
        return ""
    sass = subprocess.run([tool, "-sass", cubin], capture_output=True, text=True).stdout
    ops = re.findall(r"/\*[0-9a-f]{4,5}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)", sass)
    kinds = collections.Counter(o for o in ops if _SASS_KINDS.fullmatch(o))
    return f"{len(ops)} SASS instructions; " + " ".join(f"{k} x{n}" for k, n in sorted(kinds.items()))


def lower(b, h, w, c, g, o, dtype, cfg, which=("fwd", "bwd")) -> None:
    geo = Geometry(b, h, w, c, h, w, o, g, 3, 3, (1, 1), (1, 1), (1, 1))
    n = b * h * w
    s = jax.ShapeDtypeStruct
    args = (s((b, h, w, c), dtype), s((n, g * 18), jnp.float32), s((n, g * 9), jnp.float32), s((9, c, o), dtype))
    if "fwd" in which:
        jax.jit(lambda *a: dp.forward(*a, geo, cfg, False)).trace(*args, s((o,), jnp.float32)).lower(
            lowering_platforms=("cuda",))
    if "bwd" in which:
        jax.jit(lambda *a: dp.backward(*a, geo, cfg, False)).trace(*args, s((n, o), dtype)).lower(
            lowering_platforms=("cuda",))


def main() -> None:
    jax.devices()  # initialises the backends: the CUDA plugin registers its Triton compiler
    if not triton.has_compilation_handler("cuda"):
        raise SystemExit("no Triton compiler for CUDA: run in a venv with jax-cuda12-plugin (see the docstring)")
    reg.mlir.custom_call = _spy
    mode = sys.argv[1] if len(sys.argv) > 1 else "default"
    if mode == "default":
        jobs = [(jnp.dtype(dt).name, dp.config_for(dt), ("fwd", "bwd"), dt) for dt in (jnp.float32, jnp.bfloat16)]
    elif mode == "fwd":
        jobs = [(f"P{bp}w{wp}{'L' if tl else 'U'}", dp.PallasConfig(block_p=bp, warps=wp, tap_loop=tl), ("fwd",), dt)
                for dt in (jnp.float32, jnp.bfloat16) for bp in (32, 64, 128) for wp in (4, 8) for tl in (False, True)]
    else:
        jobs = [(f"P{bp}w{wp}", dp.PallasConfig(bwd_block_p=bp, bwd_warps=wp), ("bwd",), dt)
                for dt in (jnp.float32, jnp.bfloat16) for bp in (16, 32, 64) for wp in (4, 8)]
    channels = [int(sys.argv[2])] if len(sys.argv) > 2 else [64, 128]
    ptxas = _ptxas()
    for c in channels:
        for label, cfg, which, dt in jobs:
            captured.clear()
            lower(2, 32, 48, c, 8, c, dt, cfg, which)
            for k in captured:
                res = triton.compile("cuda", k["ir"], "9.0", num_warps=k["warps"], num_ctas=1, num_stages=k["stages"])
                with tempfile.TemporaryDirectory() as tmp:
                    ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
                    with open(ptx, "w") as f:
                        f.write(res.asm)
                    out = subprocess.run([ptxas, "-arch=sm_90a", "-v", ptx, "-o", cubin],
                                         capture_output=True, text=True)
                    sass = sass_summary(cubin) if out.returncode == 0 else ""
                m = re.search(r"(\d+) bytes spill stores.*?Used (\d+) registers", out.stderr, re.S)
                info = f"registers {m.group(2):>3}, spill stores {m.group(1):>5} B" if m else out.stderr[-300:]
                print(f"C=O={c:<4} {jnp.dtype(dt).name:9} {label:10} {k['name']:8} warps {k['warps']} "
                      f"smem {res.smem_bytes:6} B | {info}" + (f"\n    {sass}" if sass else ""), flush=True)


if __name__ == "__main__":
    main()
