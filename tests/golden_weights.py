"""Deterministic synthetic BasicSR EDVR weights and golden-test variants (numpy only).

Imported by the tests and by ``tools/make_basicsr_goldens.py``, which runs under
PyTorch with BasicSR's own source: both sides build the very same state dict
from ``synthetic_state_dict`` so only inputs and outputs need to be stored
(``tools/make_pth_fixtures.py`` likewise, for the ``.pth`` fixtures).
"""

from __future__ import annotations

import re
import zlib
from typing import Mapping, Sequence

import numpy as np

# Small spatial size, every BasicSR variant the issue names. Widths/heights are
# multiples of 4 (16 with hr_in) but not square, and L3 is odd-sized (5x6).
VARIANTS: dict[str, dict] = {
    "edvr_m": dict(config=dict(num_feat=64, num_reconstruct_block=10), hw=(20, 24)),
    "edvr_m_wo_tsa": dict(config=dict(num_feat=64, num_reconstruct_block=10, with_tsa=False), hw=(20, 24)),
    "edvr_l": dict(config=dict(num_feat=128, num_reconstruct_block=40), hw=(20, 24)),
    "edvr_m_7f_center1": dict(config=dict(num_feat=64, num_frame=7, center_frame_idx=1,
                                          num_reconstruct_block=10), hw=(20, 24)),
    "edvr_l_srblur": dict(config=dict(num_feat=128, num_reconstruct_block=40, with_predeblur=True), hw=(20, 24)),
    "edvr_l_deblur": dict(config=dict(num_feat=128, num_reconstruct_block=40, hr_in=True, with_predeblur=True),
                          hw=(32, 48)),
}

# Offset convs get weights large enough that offsets are pixels, not zero: the
# deformable sampling really moves (checked by the tests via the sown means).
OFFSET_GAIN = 50.0
RESBLOCK_GAIN = 0.15
_RESBLOCK_CONV = re.compile(r"\.conv[12]\.weight$")


def synthetic_state_dict(shapes: Mapping[str, Sequence[int]], seed: int = 0) -> dict[str, np.ndarray]:
    """One float32 array per key, each drawn from its own seed (so key order does not matter)."""
    out = {}
    for key in sorted(shapes):
        shape = tuple(int(s) for s in shapes[key])
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        if key.endswith(".weight"):
            fan_in = int(np.prod(shape[1:]))
            gain = OFFSET_GAIN if "conv_offset" in key else RESBLOCK_GAIN if _RESBLOCK_CONV.search(key) else 1.0
            value = rng.standard_normal(shape) * gain / np.sqrt(fan_in)
        else:
            value = rng.standard_normal(shape) * 0.02
        out[key] = value.astype(np.float32)
    return out


def synthetic_variables(model, seed: int = 0) -> dict:
    """``model``'s Flax variables from ``synthetic_state_dict`` through the BasicSR converter: random
    weights with offsets of several pixels, as a converted checkpoint has, and no init to compile."""
    from edvr_jax.convert import basicsr_shapes, from_basicsr

    return from_basicsr(synthetic_state_dict(basicsr_shapes(model), seed=seed), model)


def synthetic_input(name: str, seed: int = 1) -> np.ndarray:
    """``[1, T, 3, H, W]`` float32 in [0, 1] (torch layout), smooth enough to be image-like."""
    cfg = VARIANTS[name]["config"]
    t = cfg.get("num_frame", 5)
    h, w = VARIANTS[name]["hw"]
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    frames = []
    for i in range(t):
        base = np.stack([np.sin(6 * xx + 0.3 * i + c) * np.cos(4 * yy - 0.2 * i) for c in range(3)])
        frames.append(0.5 + 0.35 * base + 0.1 * rng.standard_normal((3, h, w)))
    return np.clip(np.stack(frames)[None], 0, 1).astype(np.float32)


#: The EDVR in tests/data/pth/basicsr_edvr.pth (tools/make_pth_fixtures.py): the tiny training
#: run's architecture (tests/conftest.py TINY), BasicSR-keyed.
PTH_EDVR_CONFIG = dict(num_feat=8, deformable_groups=2, num_extract_block=1, num_reconstruct_block=1, with_tsa=False)


def pth_state_dict(shapes: Mapping[str, Sequence[int]], seed: int) -> dict[str, np.ndarray]:
    """``synthetic_state_dict`` rounded to multiples of 1/256 (exact in float32), so that the
    committed ``.pth`` compresses in git to a third."""
    return {k: np.round(v * 256) / 256 for k, v in synthetic_state_dict(shapes, seed).items()}
