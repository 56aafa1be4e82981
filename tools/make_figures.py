"""The README's pictures of a demo run: a crop of bicubic | EDVR | ground truth from the held-out
footage, and validation PSNR against the training step from the run's ``metrics.jsonl``.

    python tools/make_figures.py                      # runs/demo -> docs/demo_crop.png, docs/demo_psnr.png
    python tools/make_figures.py --run runs/demo --out docs --frame 19 --crop 96,320,128
    python tools/make_figures.py --run runs/demo_h264 --compare runs/demo --name demo_h264   # docs/demo_h264_*.png

``--compare RUN`` adds that model's output on the same input (e.g. the noise-trained demo model
on the H.264 run's compressed input) between bicubic and EDVR.

The frame is one of the run's validation split (its config's dataset, built where train.py built
it: ``--data_dir`` or ``TFDS_DATA_DIR``); the crop, unless given as ``top,left,size`` in GT pixels,
is the ``size`` x ``size`` window with the most detail in the ground truth (largest mean gradient
magnitude), chosen without looking at the output. The PSNRs in the crop figure are over the whole
frame (RGB, as the validation).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def detailed_window(gt: np.ndarray, size: int, step: int = 16) -> tuple[int, int]:
    """``(top, left)`` of the ``size`` x ``size`` window of ``gt`` with the largest mean gradient."""
    g = gt.astype(np.float32).mean(-1)
    mag = np.zeros_like(g)
    mag[:, 1:] += np.abs(np.diff(g, axis=1))
    mag[1:, :] += np.abs(np.diff(g, axis=0))
    best, where = -1.0, (0, 0)
    for top in range(0, g.shape[0] - size + 1, step):
        for left in range(0, g.shape[1] - size + 1, step):
            v = float(mag[top:top + size, left:left + size].mean())
            if v > best:
                best, where = v, (top, left)
    return where


def validation_frame(run: Path, data_dir: str | None, frame: int | None):
    """``(first clip of the run's validation split, frame index)``."""
    from edvr_jax import data, weights

    cfg = weights.read_header(run).train_config
    if not cfg:
        raise SystemExit(f"{run} has no training config (not a train.py run)")
    builder = data.load_config_builder(cfg["data"], data_dir)
    clip = next(data.eval_clips(data.ClipReader(builder, cfg["data"]["val_split"])))
    f = len(clip.gt) // 2 if frame is None else frame
    if not 0 <= f < len(clip.gt):
        raise SystemExit(f"--frame {f}: {clip.name} has frames 0-{len(clip.gt) - 1}")
    return clip, f


def restored_frame(run: Path, clip, f: int) -> tuple[np.ndarray, int]:
    """``(run's model's output for frame f of clip, its frame count)``."""
    import edvr_jax
    from edvr_jax.media import to_uint8
    from edvr_jax.temporal import window_table

    restorer = edvr_jax.load(run)
    n = restorer.num_frame
    # Frame f's input window, as the validation pads the clip: its middle frame restores frame f.
    window = clip.lq[window_table(len(clip.lq), n, restorer.padding)[f]]
    return to_uint8(dict(restorer.frames(window))[n // 2]), n


def crop_figure(run: Path, out: Path, data_dir: str | None, frame: int | None, crop: tuple[int, ...] | None,
                compare: Path | None = None) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edvr_jax import data, weights
    from edvr_jax.data.footage import CODEC_OPTIONS
    from edvr_jax.metrics import psnr
    from edvr_jax.scoring import baseline

    clip, f = validation_frame(run, data_dir, frame)
    dc = weights.read_header(run).train_config["data"]
    made = data.footage_options(dc["name"], dc.get("footage")) or {}  # what the run's LQ is made with
    codec = data.Codec.make(**{k: made[k] for k in CODEC_OPTIONS if k in made})
    lq = " ".join((["noisy"] if made.get("noise") else []) + ([codec.describe()] if codec else []) + ["input"])
    gt = clip.gt[f]
    scale = gt.shape[0] // clip.lq.shape[1]
    panels = [(baseline(clip.lq[f], scale), f"bicubic x4 of the {lq}")]
    for label, model in ((compare.name, compare), (run.name, run)) if compare else ((run.name, run),):
        ours, n = restored_frame(model, clip, f)
        panels.append((ours, f"EDVR {label} ({n} frames)"))
    panels.append((gt, "ground truth"))
    size = crop[2] if crop else 128
    top, left = crop[:2] if crop else detailed_window(gt, size)
    crop_rows = (slice(top, top + size), slice(left, left + size))
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.9), dpi=100)
    for ax, (img, title) in zip(axes, panels):
        ax.imshow(img[crop_rows], interpolation="nearest")
        ax.set_title(title + (f"\n{psnr(img, gt):.2f} dB" if img is not gt else "\n"), fontsize=9)
        ax.axis("off")
    fig.suptitle(f"held-out {clip.name}, frame {f}, GT crop {size}x{size} at ({top}, {left}); PSNR of the whole "
                 f"{gt.shape[1]}x{gt.shape[0]} frame", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.94))  # below the suptitle
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return (f"{out}: {clip.name} frame {f}, crop ({top}, {left}, {size}); "
            + ", ".join(f"{title} {psnr(img, gt):.2f} dB" for img, title in panels[:-1]))


def curve_figure(run: Path, out: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [(r["step"], r["train/psnr"]) for r in rows if "train/psnr" in r]
    val = [(r["step"], r["val/psnr"], r["val/base_psnr"]) for r in rows if "val/psnr" in r]
    if not val:
        raise SystemExit(f"{run}/metrics.jsonl has no validation rows (val/psnr)")
    fig, ax = plt.subplots(figsize=(6, 3.3), dpi=100)
    if train:
        steps, values = map(np.asarray, zip(*train))
        ax.plot(steps, values, color="0.85", lw=1)
        k = min(5, len(values))
        smooth = np.convolve(values, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, color="0.45", lw=1.2,
                label=f"training batches (PSNR, mean of {k} log steps)")
    ax.plot([v[0] for v in val], [v[1] for v in val], "o-", color="C0", label="held-out footage (validation)")
    ax.axhline(val[-1][2], color="C3", ls="--", lw=1, label=f"bicubic on held-out footage ({val[-1][2]:.2f} dB)")
    for step, p, _ in val:
        ax.annotate(f"{p:.2f}", (step, p), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xlabel("training step")
    ax.set_ylabel("PSNR (dB, RGB)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return f"{out}: validation " + ", ".join(f"step {s}: {p:.2f} dB" for s, p, _ in val) + f" (bicubic {val[-1][2]:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=str(ROOT / "runs" / "demo"), help="a train.py run directory")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder for NAME_crop.png and NAME_psnr.png")
    parser.add_argument("--name", default="demo", help="the pictures' file name prefix")
    parser.add_argument("--compare", default=None, help="another run whose output on the same input is shown too")
    parser.add_argument("--data_dir", "--data-dir", default=None, help="TFDS data dir (default: the run's, or TFDS_DATA_DIR)")
    parser.add_argument("--frame", type=int, default=None, help="frame of the first validation clip (default: middle)")
    parser.add_argument("--crop", default=None, help="top,left,size in GT pixels (default: the most detailed window)")
    args = parser.parse_args()
    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    crop = tuple(int(v) for v in args.crop.split(",")) if args.crop else None
    if crop is not None and len(crop) != 3:
        raise SystemExit(f"--crop {args.crop!r}: expected top,left,size")
    compare = Path(args.compare) if args.compare else None
    print(curve_figure(run, out / f"{args.name}_psnr.png"))
    print(crop_figure(run, out / f"{args.name}_crop.png", args.data_dir, args.frame, crop, compare))


if __name__ == "__main__":
    main()
