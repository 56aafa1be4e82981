"""BasicSR 1.4.2's own EDVR, loaded from its source tree without installing BasicSR.

Only ``archs/edvr_arch.py``, ``archs/arch_util.py`` and ``ops/dcn/deform_conv.py`` are loaded
(the package ``__init__`` pulls in OpenCV, LMDB, ...); the registry and logger they import are
stubbed, and ``distutils.version.LooseVersion`` (gone in Python 3.12) is shimmed. Get the source
with ``pip download --no-deps basicsr==1.4.2`` (``benchmarks/get_basicsr.py`` keeps just those
folders). Used by ``tools/make_basicsr_goldens.py`` and ``benchmarks/gpu.py``.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from pathlib import Path


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_basicsr_edvr(src: Path):
    """BasicSR 1.4.2's ``edvr_arch`` from its source tree (``archs/`` and ``ops/dcn/`` only), with stubs
    for its registry and logger and a ``distutils.version.LooseVersion`` shim (gone in Python 3.12)."""
    pkg = src / "basicsr" if (src / "basicsr").is_dir() else src
    try:
        import distutils.version  # noqa: F401
    except ImportError:
        class LooseVersion:
            def __init__(self, v):
                self.v = tuple(int(p) if p.isdigit() else p for p in str(v).replace("+", ".").split("."))

            def __lt__(self, other):
                return self.v[:3] < other.v[:3]

            def __ge__(self, other):
                return not self < other
        dist = types.ModuleType("distutils")
        dist.__path__ = []
        ver = types.ModuleType("distutils.version")
        ver.LooseVersion = LooseVersion
        dist.version = ver
        sys.modules["distutils"], sys.modules["distutils.version"] = dist, ver
    for name in ("basicsr", "basicsr.archs", "basicsr.ops", "basicsr.ops.dcn", "basicsr.utils",
                 "basicsr.utils.registry"):
        mod = types.ModuleType(name)
        mod.__path__ = []
        sys.modules[name] = mod
    sys.modules["basicsr.utils.registry"].ARCH_REGISTRY = types.SimpleNamespace(register=lambda: (lambda c: c))
    sys.modules["basicsr.utils"].get_root_logger = lambda: logging.getLogger("basicsr")
    dcn = _load_module("basicsr.ops.dcn.deform_conv", pkg / "ops" / "dcn" / "deform_conv.py")
    sys.modules["basicsr.ops.dcn"].ModulatedDeformConvPack = dcn.ModulatedDeformConvPack
    sys.modules["basicsr.ops.dcn"].modulated_deform_conv = dcn.modulated_deform_conv
    _load_module("basicsr.archs.arch_util", pkg / "archs" / "arch_util.py")
    return _load_module("basicsr.archs.edvr_arch", pkg / "archs" / "edvr_arch.py")
