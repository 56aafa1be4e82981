"""examples/quickstart.ipynb runs as written (on the tiny training run instead of the demo run),
and its cells print what they claim."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.heavy
def test_quickstart_notebook_runs_on_a_train_run(reference_run, tmp_path):
    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = (f"RUN = {str(reference_run)!r}\nFRAMES = range(50, 55)\nWINDOW = (180, 320, 32, 48)\nNOISE = 10.0\n"
                     f"OUT = {str(tmp_path / 'exports')!r}")
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert re.search(r"PSNR  bicubic \d+\.\d\d dB   EDVR \d+\.\d\d dB", text), text
    assert "5 frames 48x32 from a 1280x720 video" in text
    assert len(re.findall(r"mean \|offset\| +\d+\.\d+ px", text)) == 4  # the four DCNs of PCD alignment
    assert int(re.search(r"safetensors round trip: max difference (\d+) grey levels", text).group(1)) == 0
    assert float(re.search(r"jax.export artifact: max difference (\S+)", text).group(1)) < 1e-5
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))  # the figure
