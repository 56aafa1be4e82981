"""Regenerates the PyTorch checkpoint fixtures in tests/data/pth/ (read by tests/test_pth.py without torch).

Needs the CPU torch wheel (not a dependency of edvr-jax)::

    pip install torch==2.13.0
    python tools/make_pth_fixtures.py

Writes:

* ``basicsr_edvr.pth``: ``{'params': ..., 'params_ema': ...}`` as BasicSR's ``save_network``
  writes it (a module's ``state_dict()``, an OrderedDict with ``_metadata``, tensors moved to
  the CPU), for ``golden_weights.PTH_EDVR_CONFIG``, values from ``golden_weights.pth_state_dict``
  (seed 0 and 1), so the tests know them without a copy.
* ``tensors.pth`` and ``tensors_legacy.pth`` (torch < 1.6's format, ``_use_new_zipfile_serialization
  =False``): the same dict of tensors with storage offsets, strides (transposed, permuted,
  stride 0), views sharing one storage, one tensor stored twice, 0-d and empty tensors, every
  dtype a state dict may hold, an ``nn.Parameter`` and plain values; ``tensors.npz`` holds each
  tensor as torch reads it (bfloat16 as its uint16 bits) and ``dtypes`` (JSON: name -> dtype).
* ``big_endian.pth``: a float32 and an int16 tensor in an archive whose ``byteorder`` is
  ``big`` (written here: torch writes its machine's order), values in tests/test_pth.py.
* ``unsafe_*.pth``: pickles that run code when unpickled (each would create the file ``pwned``
  in the working directory): a ``__reduce__`` to ``os.system`` inside a real state dict, to
  ``builtins.eval`` and (protocol 4, STACK_GLOBAL) ``builtins.exec``, one in the legacy format,
  and one where the legacy format's first pickle (the magic number) is the payload.
  ``torch.load(weights_only=True)`` refuses every one; this script checks that it does.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "pth"
sys.path.insert(0, str(ROOT / "tests"))
from golden_weights import PTH_EDVR_CONFIG, pth_state_dict  # noqa: E402


def basicsr_checkpoint(arrays: dict[str, dict[str, np.ndarray]]) -> dict:
    """BasicSR's ``save_network(net, 'net_g', ...)`` output: per param key, a module's
    ``state_dict()`` (modules named as BasicSR's EDVR names them) with its tensors on the CPU."""
    save_dict = {}
    for param_key, state in arrays.items():
        net = torch.nn.Module()
        for key, value in state.items():
            *path, leaf = key.split(".")
            module = net
            for name in path:
                if name not in module._modules:
                    module.add_module(name, torch.nn.Module())
                module = module._modules[name]
            module.register_parameter(leaf, torch.nn.Parameter(torch.from_numpy(value)))
        state_dict = net.state_dict()
        for key, param in state_dict.items():
            state_dict[key] = param.cpu()
        save_dict[param_key] = state_dict
    return save_dict


def tensors() -> dict:
    base = torch.linspace(-3, 3, 60)
    grid = base.view(3, 4, 5)
    small = torch.arange(-8, 16)
    return {
        "base": base,
        "again": base,  # the same tensor twice: one object in the pickle
        "slice": base[7:19],
        "step": base[2::3],
        "transposed": grid[1].t(),
        "permuted": grid.permute(2, 0, 1),
        "expanded": base[:4].expand(3, 4),
        "shared": [grid[0, :, 1:4], grid[2, 1:]],
        "scalar": base[59],
        "empty": base[:0].view(0, 3),
        "float64": base.double()[::7],
        "float16": (base / 7).half().view(6, 10)[1:5, ::3],
        "bfloat16": (base / 7).bfloat16().view(10, 6).t(),
        "int64": small[1::2],
        "int32": small.int().view(4, 6)[:, 2:],
        "int16": small.short()[5:],
        "int8": small.to(torch.int8).flip(0)[3:],
        "uint8": (small + 8).to(torch.uint8),
        "bool": small > 3,
        "parameter": torch.nn.Parameter(grid[1, 2].clone()),
        "plain": {"iter": 5, "name": "edvr", "lr": [4e-4, 1e-7], "flags": (True, None)},
    }


def expected(obj: dict) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    arrays, dtypes = {}, {}

    def add(name, t):
        t = t.detach().contiguous()
        arrays[name] = t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()
        dtypes[name] = str(t.dtype).removeprefix("torch.")

    for name, value in obj.items():
        if isinstance(value, torch.Tensor):
            add(name, value)
        elif isinstance(value, list):
            for i, t in enumerate(value):
                add(f"{name}/{i}", t)
    return arrays, dtypes


def rewrite_zip(src: Path, dst: Path, replace: dict[str, bytes]) -> None:
    """A copy of the archive ``src`` (records renamed to ``dst``'s stem) with some records replaced."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            name = dst.stem + info.filename[info.filename.index("/"):]
            zout.writestr(name, replace.get(name.split("/", 1)[1], zin.read(info.filename)))


class Payload:
    """Unpickling it calls ``fn(arg)``."""

    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


def unsafe(tmp: Path) -> dict[str, bytes]:
    files = {}
    weight = torch.ones(2, 3)
    torch.save({"params": collections.OrderedDict(conv=weight, evil=Payload(os.system, "touch pwned"))}, tmp)
    files["unsafe_reduce_os_system.pth"] = tmp.read_bytes()
    torch.save({"params": Payload(eval, "open('pwned', 'w').close()")}, tmp)
    files["unsafe_builtins_eval.pth"] = tmp.read_bytes()
    torch.save({"w": weight}, tmp)
    stack_global = pickle.dumps({"w": Payload(exec, "open('pwned', 'w').close()")}, protocol=4)
    rewrite_zip(tmp, tmp.with_name("exec.pth"), {"data.pkl": stack_global})
    files["unsafe_exec_stack_global.pth"] = tmp.with_name("exec.pth").read_bytes()
    torch.save({"params": {"conv": weight, "evil": Payload(os.system, "touch pwned")}}, tmp,
               _use_new_zipfile_serialization=False)
    files["unsafe_legacy_os_system.pth"] = tmp.read_bytes()
    files["unsafe_legacy_magic.pth"] = pickle.dumps(Payload(os.system, "touch pwned"), protocol=2)
    return files


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    from edvr_jax import EDVR
    from edvr_jax.convert import basicsr_shapes

    shapes = basicsr_shapes(EDVR(**PTH_EDVR_CONFIG))
    torch.save(basicsr_checkpoint({"params": pth_state_dict(shapes, 0), "params_ema": pth_state_dict(shapes, 1)}),
               OUT / "basicsr_edvr.pth")

    obj = tensors()
    torch.save(obj, OUT / "tensors.pth")
    torch.save(obj, OUT / "tensors_legacy.pth", _use_new_zipfile_serialization=False)
    arrays, dtypes = expected(obj)
    np.savez(OUT / "tensors.npz", dtypes=json.dumps(dtypes), **arrays)
    for name in ("tensors.pth", "tensors_legacy.pth"):
        back = torch.load(OUT / name, weights_only=True)
        again, _ = expected(back)
        assert again.keys() == arrays.keys() and all(np.array_equal(again[k], arrays[k]) for k in arrays), name
        assert back["again"] is back["base"] and back["plain"] == obj["plain"], name

    # Big-endian: storage 0 is x's (float32), 1 is y's (int16), in the order torch.save meets them.
    x, y = torch.arange(6, dtype=torch.float32).view(2, 3) * 0.5 - 1, torch.arange(-4, 4, dtype=torch.int16)[1::2]
    torch.save({"x": x, "y": y}, OUT / "little.pth")
    with zipfile.ZipFile(OUT / "little.pth") as z:
        swapped = {"byteorder": b"big",
                   "data/0": np.frombuffer(z.read("little/data/0"), "<f4").astype(">f4").tobytes(),
                   "data/1": np.frombuffer(z.read("little/data/1"), "<i2").astype(">i2").tobytes()}
    rewrite_zip(OUT / "little.pth", OUT / "big_endian.pth", swapped)
    (OUT / "little.pth").unlink()
    back = torch.load(OUT / "big_endian.pth", weights_only=True)
    assert torch.equal(back["x"], x) and torch.equal(back["y"], y)

    tmp = OUT / "tmp.pth"
    for name, data in unsafe(tmp).items():
        (OUT / name).write_bytes(data)
        try:
            torch.load(OUT / name, weights_only=True)
        except pickle.UnpicklingError as e:
            why = next((line for line in str(e).splitlines() if "GLOBAL" in line or "Unsupported" in line), str(e))
            print(f"{name}: torch.load(weights_only=True) refuses it: {why.strip()[:120]}")
        else:
            raise AssertionError(f"torch.load(weights_only=True) loaded {name}")
    for p in (tmp, tmp.with_name("exec.pth")):
        p.unlink()
    assert not Path("pwned").exists()
    for p in sorted(OUT.iterdir()):
        print(f"{p.name}: {p.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
