"""BasicSR 1.4.2's own EDVR, from its source tree without installing BasicSR: fetch the parts it needs,
load them.

    python -m tools.basicsr_source                       # -> benchmarks/.basicsr (git-ignored), from PyPI
    python -m tools.basicsr_source --sdist basicsr-1.4.2.tar.gz   # from an sdist fetched elsewhere

Only ``archs/edvr_arch.py``, ``archs/arch_util.py`` and ``ops/dcn/`` (the model), and
``data/reds_dataset.py`` with the four modules it reads (its training data) are kept and loaded (the
package ``__init__`` pulls in OpenCV, LMDB, ...); the registry and logger they import are stubbed, and
``distutils.version.LooseVersion`` (gone in Python 3.12) is shimmed. ``load_basicsr_edvr`` and
``load_basicsr_reds_dataset`` also take the whole unpacked sdist. Used by
``tools/make_basicsr_goldens.py``, the benchmarks' PyTorch side and the input-pipeline benchmark.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

KEEP = ("basicsr/archs/arch_util.py", "basicsr/archs/edvr_arch.py", "basicsr/ops/dcn/",
        # REDSDataset and what it reads, for the input-pipeline benchmark
        "basicsr/data/reds_dataset.py", "basicsr/data/transforms.py", "basicsr/utils/file_client.py",
        "basicsr/utils/img_util.py", "basicsr/utils/flow_util.py")
DEFAULT_DEST = Path(__file__).resolve().parent.parent / "benchmarks" / ".basicsr"


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_basicsr_edvr(src: str | Path):
    """BasicSR 1.4.2's ``edvr_arch`` from its source tree (``archs/`` and ``ops/dcn/`` only), with stubs
    for its registry and logger and a ``distutils.version.LooseVersion`` shim (gone in Python 3.12)."""
    src = Path(src)
    pkg = src / "basicsr" if (src / "basicsr").is_dir() else src
    if not (pkg / "archs" / "edvr_arch.py").is_file():
        raise FileNotFoundError(f"{src}: no basicsr/archs/edvr_arch.py (fetch it with python -m tools.basicsr_source)")
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


def load_basicsr_reds_dataset(src: str | Path):
    """BasicSR 1.4.2's ``REDSDataset`` (``data/reds_dataset.py``) from its source tree, with the modules
    it reads (``data/transforms.py``, ``utils/{file_client,img_util,flow_util}.py``; OpenCV and torch
    needed) and stubs for its registry and logger. torchvision, which ``img_util`` imports for a
    function REDSDataset never calls, is stubbed when it is not installed."""
    src = Path(src)
    pkg = src / "basicsr" if (src / "basicsr").is_dir() else src
    needed = ["data/reds_dataset.py", "data/transforms.py", "utils/file_client.py", "utils/img_util.py",
              "utils/flow_util.py"]
    missing = [n for n in needed if not (pkg / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{src}: no {missing} (fetch them with python -m tools.basicsr_source)")
    for name in ("basicsr", "basicsr.data", "basicsr.utils", "basicsr.utils.registry"):
        module = sys.modules.get(name) or types.ModuleType(name)
        module.__path__ = []
        sys.modules[name] = module
    sys.modules["basicsr.utils.registry"].DATASET_REGISTRY = types.SimpleNamespace(register=lambda: (lambda c: c))
    try:
        import torchvision.utils  # noqa: F401
    except ImportError:
        tv, tv_utils = types.ModuleType("torchvision"), types.ModuleType("torchvision.utils")
        tv.utils, tv_utils.make_grid = tv_utils, None
        sys.modules["torchvision"], sys.modules["torchvision.utils"] = tv, tv_utils
    utils = sys.modules["basicsr.utils"]
    utils.get_root_logger = lambda: logging.getLogger("basicsr")
    utils.FileClient = _load_module("basicsr.utils.file_client", pkg / "utils" / "file_client.py").FileClient
    img_util = _load_module("basicsr.utils.img_util", pkg / "utils" / "img_util.py")
    utils.imfrombytes, utils.img2tensor = img_util.imfrombytes, img_util.img2tensor
    _load_module("basicsr.utils.flow_util", pkg / "utils" / "flow_util.py")
    _load_module("basicsr.data.transforms", pkg / "data" / "transforms.py")
    return _load_module("basicsr.data.reds_dataset", pkg / "data" / "reds_dataset.py").REDSDataset


def fetch(dest: Path, sdist: Path | None = None) -> None:
    """Keeps ``KEEP``'s files of BasicSR 1.4.2's sdist (downloaded with pip unless given) in ``dest``."""
    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            # Without build isolation: pip would install BasicSR's build requirements (torch) to read its metadata.
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
                            "basicsr==1.4.2", "-d", tmp], check=True)
            [sdist] = Path(tmp).glob("basicsr-1.4.2.tar.gz")
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                rel = member.name.split("/", 1)[-1]
                if member.isfile() and any(rel == k or (k.endswith("/") and rel.startswith(k)) for k in KEEP):
                    target = dest / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.basicsr_source", description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", nargs="?", default=str(DEFAULT_DEST))
    parser.add_argument("--sdist", help="an already downloaded basicsr-1.4.2.tar.gz")
    args = parser.parse_args()
    fetch(Path(args.dest), Path(args.sdist) if args.sdist else None)
    print(f"BasicSR 1.4.2's archs/, ops/dcn/ and REDSDataset in {args.dest}")


if __name__ == "__main__":
    main()
