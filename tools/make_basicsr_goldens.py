"""Regenerates tests/data/basicsr_goldens.npz by running BasicSR 1.4.2's own EDVR.

Not part of the test suite (it needs PyTorch + torchvision with compiled ops and
BasicSR's source). BasicSR's DCNv2Pack calls ``torchvision.ops.deform_conv2d``;
on CPU that needs the registry's default (CUDA) build of torch/torchvision,
since the CPU wheel's torchvision ops do not load::

    python -m venv .venv-torch && .venv-torch/bin/pip install torch==2.13.0 torchvision==0.28.0 numpy
    python -m tools.basicsr_source                  # BasicSR 1.4.2's source -> benchmarks/.basicsr
    .venv-torch/bin/python -m tools.make_basicsr_goldens benchmarks/.basicsr     # from the repository root

BasicSR's EDVR is loaded from the source tree by ``tools/basicsr_source.py``; the synthetic weights
and inputs come from ``tests/golden_weights.py``, which the tests use too.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch

from tools.basicsr_source import load_basicsr_edvr

TESTS = Path(__file__).resolve().parent.parent / "tests"
OUT = TESTS / "data" / "basicsr_goldens.npz"


def _golden_weights():
    """tests/golden_weights.py (tests/ is not a package: loaded from its file)."""
    spec = importlib.util.spec_from_file_location("golden_weights", TESTS / "golden_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(src: str) -> None:
    import torchvision
    golden = _golden_weights()
    edvr_arch = load_basicsr_edvr(Path(src))
    arrays, meta = {}, {"torch": torch.__version__, "torchvision": torchvision.__version__, "basicsr": Path(src).name}
    offset_means: dict[str, list[float]] = {}
    for name, spec in golden.VARIANTS.items():
        model = edvr_arch.EDVR(**spec["config"]).eval()
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        sd = golden.synthetic_state_dict(shapes)
        meta.setdefault("state_dict_shapes", {})[name] = {k: list(v) for k, v in shapes.items()}
        model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
        means = offset_means.setdefault(name, [])
        for mod_name, mod in model.named_modules():
            if type(mod).__name__ == "DCNv2Pack":
                def hook(m, inputs, _out, mod_name=mod_name):
                    o1, o2, _ = torch.chunk(m.conv_offset(inputs[1]), 3, dim=1)
                    means.append(float(torch.cat([o1, o2], 1).abs().mean()))
                mod.register_forward_hook(hook)
        x = golden.synthetic_input(name)
        with torch.no_grad():
            y = model(torch.from_numpy(x)).numpy()
        arrays[f"{name}/x"] = x
        arrays[f"{name}/y"] = y
        print(f"{name}: params={sum(v.size for v in sd.values()):,} in {x.shape} out {y.shape} "
              f"range [{y.min():.3f}, {y.max():.3f}] DCN mean|offset| "
              f"{min(means):.2f}..{max(means):.2f} over {len(means)} calls")
    # The op alone: torchvision.ops.deform_conv2d, large offsets (many samples past the borders).
    rng = np.random.default_rng(7)
    for name, (stride, pad, dil) in {"dcn_op": (1, 1, 1), "dcn_op_s2": (2, 0, 2)}.items():
        x = rng.standard_normal((2, 8, 7, 9)).astype(np.float32)
        weight = rng.standard_normal((5, 8, 3, 3)).astype(np.float32)
        bias = rng.standard_normal(5).astype(np.float32)
        ho = (7 + 2 * pad - dil * 2 - 1) // stride + 1
        wo = (9 + 2 * pad - dil * 2 - 1) // stride + 1
        offset = (3 * rng.standard_normal((2, 4 * 9 * 2, ho, wo))).astype(np.float32)
        mask = rng.uniform(0, 1, (2, 4 * 9, ho, wo)).astype(np.float32)
        y = torchvision.ops.deform_conv2d(*map(torch.from_numpy, (x, offset, weight, bias)), stride=stride,
                                          padding=pad, dilation=dil, mask=torch.from_numpy(mask)).numpy()
        for k, v in dict(x=x, offset=offset, mask=mask, weight=weight, bias=bias, y=y).items():
            arrays[f"{name}/{k}"] = v
        arrays[f"{name}/conv"] = np.array([stride, pad, dil])
    meta["offset_absmean"] = {k: [min(v), max(v)] for k, v in offset_means.items()}
    arrays["meta"] = np.array(json.dumps(meta))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main(sys.argv[1])
