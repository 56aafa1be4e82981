"""Vimeo-90K septuplets, x4 bicubic."""

from __future__ import annotations

from pathlib import Path

from edvr_jax.data.builder import Clip, VideoConfig, VideoRestorationBuilder
from edvr_jax.data.frames import DatasetError
from edvr_jax.data.layout import with_layouts

LR_FOLDER = "vimeo_septuplet_matlabLRx4/sequences"


class EdvrVimeo90k(VideoRestorationBuilder):
    """Vimeo-90K septuplet, built from the manual dir::

        sequences/00001/0001/im1.png ... im7.png     (GT, 448x256)
        sep_trainlist.txt, sep_testlist.txt           (lines like ``00001/0001``)
        vimeo_septuplet_matlabLRx4/sequences/...      (optional: BasicSR's x4 LR frames)

    Without the LR folder the LR frames are made here with MATLAB's bicubic
    ``imresize(gt, 1/4)`` (``edvr_jax.data.bicubic``), which is how BasicSR made them.
    Splits: ``train`` (sep_trainlist) and ``test`` (sep_testlist, Vimeo-90K-T).
    """

    BUILDER_CONFIGS = with_layouts([VideoConfig(name="sr_x4", scale=4, description="bicubic x4 -> GT")])

    def _clips(self, root: Path) -> dict[str, list[Clip]]:
        lr_root = root / LR_FOLDER
        has_lr = lr_root.is_dir()
        splits = {}
        for split, listname in (("train", "sep_trainlist.txt"), ("test", "sep_testlist.txt")):
            listfile = root / listname
            if not listfile.is_file():
                raise DatasetError(f"Vimeo-90K: missing {listfile}; expected sequences/ and "
                                   f"sep_trainlist.txt / sep_testlist.txt in {root}")
            names = [line.strip() for line in listfile.read_text().splitlines() if line.strip()]
            if not names:
                raise DatasetError(f"Vimeo-90K: {listfile} lists no sequences")
            clips = []
            for name in names:
                gt = [root / "sequences" / name / f"im{i}.png" for i in range(1, 8)]
                lq = [lr_root / name / f"im{i}.png" for i in range(1, 8)] if has_lr else [None] * 7
                clips.append(Clip(name, lq, gt))
            splits[split] = clips
        return splits
