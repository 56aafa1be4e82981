import os
import sys
from pathlib import Path

import numpy as np
import pytest

# Tests run on CPU; keep XLA from grabbing every core for its thread pool twice.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).parent))

GOLDENS = Path(__file__).parent / "data" / "basicsr_goldens.npz"


@pytest.fixture(scope="session")
def goldens():
    """Outputs of BasicSR 1.4.2 / torchvision (tools/make_basicsr_goldens.py)."""
    with np.load(GOLDENS) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="session")
def demo_builder(tmp_path_factory):
    """The demo dataset (sr_x4), built once per test session (~15 s)."""
    from edvr_jax.data import load_builder

    return load_builder("demo", data_dir=str(tmp_path_factory.mktemp("tfds")))
