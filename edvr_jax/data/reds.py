"""REDS (NTIRE 2019) for EDVR's four REDS tasks."""

from __future__ import annotations

from pathlib import Path


from edvr_jax.data.builder import Clip, VideoConfig, VideoRestorationBuilder
from edvr_jax.data.frames import DatasetError, list_frames
from edvr_jax.data.layout import base_name, with_layouts

REDS4 = ("000", "011", "015", "020")
# Task -> (LQ folder suffix, scale). The GT folder is always ``*_sharp``.
TASKS = {"sr_x4": ("sharp_bicubic/X4", 4), "deblur": ("blur", 1), "deblurcomp": ("blur_comp", 1),
         "srblur": ("blur_bicubic/X4", 4)}


class EdvrReds(VideoRestorationBuilder):
    """REDS, built from the NTIRE 2019 folders in the manual dir::

        train_sharp/000/00000000.png ... train_sharp/239/00000099.png   (GT)
        train_sharp_bicubic/X4/000/00000000.png ...                      (sr_x4 LQ)
        train_blur/..., train_blur_comp/..., train_blur_bicubic/X4/...   (other tasks' LQ)
        val_sharp/000/..., val_<same LQ folders>/000/...                 (30 more clips)

    Splits as BasicSR's: ``reds4`` = train clips 000, 011, 015, 020; ``train`` = the
    other train clips plus the val clips, the latter named ``240 + i`` as BasicSR does.
    """

    BUILDER_CONFIGS = with_layouts([VideoConfig(name=name, scale=scale, description=f"{lq} -> sharp")
                                    for name, (lq, scale) in TASKS.items()])

    def _clips(self, root: Path) -> dict[str, list[Clip]]:
        lq_suffix, _ = TASKS[base_name(self.builder_config.name)]
        splits = {"train": [], "reds4": []}
        for part in ("train", "val"):
            gt_root = root / f"{part}_sharp"
            lq_root = root / f"{part}_{lq_suffix}"
            for folder in (gt_root, lq_root):
                if not folder.is_dir():
                    raise DatasetError(f"REDS: missing folder {folder}; expected the NTIRE 2019 layout "
                                       f"({part}_sharp/000/00000000.png and {part}_{lq_suffix}/000/...)")
            names = sorted(p.name for p in gt_root.iterdir() if p.is_dir())
            if not names:
                raise DatasetError(f"REDS: {gt_root} holds no clip folders (expected 000, 001, ...)")
            for name in names:
                gt = list_frames(gt_root / name, "GT")
                lq = [lq_root / name / p.name for p in gt]  # LQ frames must carry the GT frame names
                clip_name = name if part == "train" else f"{int(name) + 240:03d}"
                split = "reds4" if part == "train" and name in REDS4 else "train"
                splits[split].append(Clip(clip_name, lq, gt))
        missing = sorted(set(REDS4) - {c.name for c in splits["reds4"]})
        if missing:
            raise DatasetError(f"REDS: REDS4 clips {missing} are missing from {root / 'train_sharp'}")
        return splits
