"""Vid4 (calendar, city, foliage, walk), test only."""

from __future__ import annotations

from pathlib import Path

from edvr_jax.data.builder import Clip, VideoConfig, VideoRestorationBuilder
from edvr_jax.data.frames import DatasetError, list_frames
from edvr_jax.data.layout import with_layouts

CLIPS = ("calendar", "city", "foliage", "walk")


class EdvrVid4(VideoRestorationBuilder):
    """Vid4, built from the manual dir (BasicSR's layout)::

        GT/calendar/00000000.png ...   BIx4/calendar/00000000.png ...
        (and city, foliage, walk)

    One split, ``test``. LQ frames must carry the GT frames' file names.
    """

    BUILDER_CONFIGS = with_layouts([VideoConfig(name="bi_x4", scale=4, description="BIx4 -> GT")])

    def _clips(self, root: Path) -> dict[str, list[Clip]]:
        clips = []
        for name in CLIPS:
            if not (root / "GT" / name).is_dir():
                raise DatasetError(f"Vid4: missing {root / 'GT' / name}; expected GT/<clip>/*.png and "
                                   f"BIx4/<clip>/*.png for {', '.join(CLIPS)}")
            gt = list_frames(root / "GT" / name, "GT")
            clips.append(Clip(name, [root / "BIx4" / name / p.name for p in gt], gt))
        return {"test": clips}
