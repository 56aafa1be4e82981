"""Evaluates an EDVR checkpoint with BasicSR's test protocol.

    python eval.py --checkpoint runs/demo                          # demo test clips
    python eval.py --checkpoint EDVR_L_x4_SR_REDS.pth --dataset reds4 --manual_dir /data/REDS
    python eval.py --checkpoint CKPT --dataset FOLDER              # FOLDER/GT/<clip>/*.png or <clip>.mp4 (+ LQ/)
    python eval.py --checkpoint CKPT --dataset FOLDER --degradation bd   # LQ made from GT where FOLDER has none
    python eval.py --checkpoint runs/demo --dataset demo_video --codec h264 --crf 28   # that LQ compressed

Every frame of every clip (temporal padding per task: reflection_circle for SR,
replicate for deblurring), PSNR/SSIM on RGB and on BT.601 Y, averaged per clip then
over clips, with the bicubic (SR) or input (deblur) baseline beside every number.
A train.py run is evaluated on its own validation split with its own protocol unless flags
(or --config) say otherwise. Writes results.json and results.csv (and optionally the restored frames and an
input | output | GT image per clip) into --out (default: CHECKPOINT/eval_<dataset>).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
from absl import app, flags
from PIL import Image

from edvr_jax.cli import define_config_flag, exit_on_user_error, parse_absl_flags, quiet_dependencies
from edvr_jax.errors import UserError
from edvr_jax.inference import TILE_OVERLAP
from edvr_jax.temporal import PADDING_MODES

_CONFIG = define_config_flag("config", None, "A train.py config: its dataset, data config, "
                                          "validation padding and crop border become the defaults.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "train.py workdir, converted/exported dir, or .pth/.safetensors.")
_DATASET = flags.DEFINE_string("dataset", "demo", "demo | demo_video | reds4 | vid4 | vimeo90k_test | footage (the "
                               "test split; with --config) | a folder: GT/<clip>/ frames or GT/<clip>.mp4 videos, "
                               "optional LQ/<clip>/ (edvr_jax.data.folders).")
_DEGRADATION = flags.DEFINE_string("degradation", None, "For a folder: how LQ is made from GT "
                                 "where the folder gives none (bi: MATLAB bicubic, bd: Gaussian blur + decimation); "
                                 "default: bd for a bd_* --data_config, else bi.")
_NOISE = flags.DEFINE_float("noise", None, "For a folder: std (0-255 scale) of the Gaussian noise added to the LQ "
                           "made from GT; default: the training config's data.footage.noise, else 0.")
# The codec options of LQ made from GT (a folder, footage, demo_video; edvr_jax/data/codec.py): each
# flag given replaces the training config's data.footage option of the same name.
_CODEC_FLAGS = {
    "codec": flags.DEFINE_string("codec", None, "For LQ made from GT (a folder, footage, demo_video): each clip's "
                                 "LQ encoded as one video stream and decoded back: h264 | h265 | vp9 | av1 | none; "
                                 "default: the training config's data.footage.codec, else none."),
    "crf": flags.DEFINE_string("crf", None, "The codec's constant rate factor: a whole number, or low,high (one "
                               "value drawn per clip); default: the training config's, else the encoder's."),
    "preset": flags.DEFINE_string("preset", None, "The encoder's preset (x264/x265 names, VP9 cpu-used 0-8, "
                                  "SVT-AV1 0-13); default: the training config's, else the encoder's."),
    "gop": flags.DEFINE_integer("gop", None, "Frames between keyframes (0: the encoder's default); default: the "
                                "training config's."),
    "crf_seed": flags.DEFINE_integer("crf_seed", None, "Draws the per-clip CRFs of a --crf range; default: the "
                                     "training config's, else 0."),
}
_DATA_CONFIG = flags.DEFINE_string("data_config", None, "TFDS config (REDS: sr_x4, deblur, deblurcomp, srblur); "
                                   "default: from the model (deblur for HR input, else sr_x4).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Dataset folder, when the TFDS dataset is not built yet.")
_PADDING = flags.DEFINE_enum("padding", None, PADDING_MODES, "Temporal padding (default: per task).")
_CROP_BORDER = flags.DEFINE_integer("crop_border", 0, "Pixels cropped from each border before the metrics.")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Windows (or tiles) per model call.")
_TILE = flags.DEFINE_integer("tile", None, "LQ tile side for large frames; default whole frames.")
_TILE_OVERLAP = flags.DEFINE_integer("tile_overlap", TILE_OVERLAP, "LQ pixels shared by neighbouring tiles.")
_CLIPS = flags.DEFINE_list("clips", None, "Only these clips.")
_OUT = flags.DEFINE_string("out", None, "Output folder (default: eval_<dataset> beside the checkpoint).")
_SAVE_IMAGES = flags.DEFINE_bool("save_images", False, "Write the restored frames as PNGs.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Keep the dependencies' log lines (Orbax, TFDS, TensorFlow).")
_SIDE_BY_SIDE = flags.DEFINE_bool("side_by_side", True, "Write input | output | GT of each clip's middle frame.")

SPLITS = {"demo": ("demo", "test"), "reds4": ("reds", "reds4"), "vid4": ("vid4", "test"),
          "vimeo90k_test": ("vimeo90k", "test"), "demo_video": ("demo_video", "test"), "footage": ("footage", "test")}


def _run_data(checkpoint: str):
    """``(data config, "the run's config")`` of a train.py run (its validation set and protocol), or
    ``(None, None)`` for other weights."""
    import ml_collections

    from edvr_jax import weights

    if weights.kind_of(checkpoint) != "train_run":
        return None, None
    train_config = weights.read_header(checkpoint).train_config
    if not train_config:
        return None, None
    return ml_collections.ConfigDict(train_config["data"]), "the run's config"


def print_table(results: list, summary: dict) -> None:
    from edvr_jax import scoring

    head = f"{'clip':>12} " + " ".join(f"{k:>8} {'(base)':>8}" for k in scoring.METRICS)
    print(head)
    for r in results + [None]:
        m, name = (r.mean(), r.name) if r is not None else (summary, "average")
        print(f"{name:>12} " + " ".join(f"{m[k]:8.4f} {m['base_' + k]:8.4f}" if "ssim" in k
                                        else f"{m[k]:8.2f} {m['base_' + k]:8.2f}" for k in scoring.METRICS))


def codec_options(footage: dict | None) -> dict:
    """The codec options of LQ made from GT: the training config's ``data.footage`` ones, each
    replaced by its flag where given (``--codec none`` drops them all)."""
    given = {k: f.value for k, f in _CODEC_FLAGS.items() if f.value is not None}
    if str(given.get("codec", "")).lower() == "none":
        return given
    return {**{k: v for k, v in (footage or {}).items() if k in _CODEC_FLAGS}, **given}


def main(argv):
    del argv
    quiet_dependencies(_VERBOSE.value)
    return exit_on_user_error(evaluate)


def evaluate() -> None:
    from edvr_jax import data, scoring
    from edvr_jax.data.layout import DEFAULT_LAYOUT
    from edvr_jax.inference import load

    if not _CHECKPOINT.value:
        raise app.UsageError("--checkpoint is required")
    from tqdm import tqdm

    dataset, data_config, padding, crop_border = _DATASET.value, _DATA_CONFIG.value, _PADDING.value, _CROP_BORDER.value
    data_dir, manual_dir, footage, layout = _DATA_DIR.value, _MANUAL_DIR.value, None, DEFAULT_LAYOUT
    # A training config supplies the defaults the flags leave open: --config's, or else the run's own.
    dc, defaults_from = (_CONFIG.value.data, "--config") if _CONFIG.value is not None else _run_data(_CHECKPOINT.value)
    if dc is not None:
        given = lambda name: flags.FLAGS[name].present  # noqa: E731
        dataset = dataset if given("dataset") else {"demo": "demo", "reds": "reds4", "vimeo90k": "vimeo90k_test",
                                                     "vid4": "vid4", "demo_video": "demo_video",
                                                     "footage": "footage"}.get(dc.name, dataset)
        data_config = data_config or dc.config
        data_dir, manual_dir = data_dir or dc.data_dir or None, manual_dir or dc.manual_dir or None
        footage = data.footage_options(dc.name, dc.get("footage"))
        padding = padding or dc.val_padding
        layout = dc.get("layout") or "png"  # the run's own build (a run saved before layouts existed: PNG)
        crop_border = crop_border if given("crop_border") else dc.val_crop_border
    degradation = _DEGRADATION.value or ("bd" if (data_config or "").startswith("bd") else "bi")
    if degradation not in data.DEGRADATIONS:
        raise UserError(f"--degradation {degradation!r}: expected one of {sorted(data.DEGRADATIONS)}")
    if dataset not in SPLITS and data.has_lq_folder(dataset, degradation):
        footage = None  # a run's noise and codec make LQ from GT; this folder brings its own
    codec_given = [f"--{k}" for k, f in _CODEC_FLAGS.items() if f.value is not None]
    if codec_given and SPLITS.get(dataset, ("footage",))[0] not in ("footage", "demo_video"):
        raise UserError(f"{', '.join(codec_given)}: the codec compresses LQ made from GT (a folder, footage, "
                        f"demo_video); {dataset} brings its own LQ")
    codec = data.Codec.make(**codec_options(footage))  # bad codec options end here, before any work
    restorer = load(_CHECKPOINT.value, padding=padding, batch_size=_BATCH.value, tile=_TILE.value,
                    tile_overlap=_TILE_OVERLAP.value)
    scale = restorer.scale
    if dataset in SPLITS:
        name, split = SPLITS[dataset]
        if codec_given:
            made = footage or data.footage_options(name, {})
            footage = {**{k: v for k, v in made.items() if k not in _CODEC_FLAGS}, **codec_options(footage)}
        config = data_config or (None if name != "reds" and name != "demo" else
                                 ("deblur" if scale == 1 else "sr_x4"))
        builder = data.load_builder(name, config=config, data_dir=data_dir, manual_dir=manual_dir, footage=footage,
                                    layout=layout)
        reader = data.ClipReader(builder, split)
        if reader.scale != scale:
            raise UserError(f"the model restores x{scale} but {reader.name} is a x{reader.scale} dataset")
        clips = list(data.eval_clips(reader, _CLIPS.value))
    else:
        noise = _NOISE.value if _NOISE.value is not None else (footage or {}).get("noise", 0.0)
        clips = list(data.folder_clips(Path(dataset), _CLIPS.value, degradation, scale, noise=noise, codec=codec))
    ckpt = Path(_CHECKPOINT.value)
    lq_made = f"_{codec.name}_crf{'-'.join(map(str, sorted(set(codec.crf))))}" if codec_given and codec else ""
    out_dir = Path(_OUT.value or (ckpt if ckpt.is_dir() else ckpt.parent) / f"eval_{Path(dataset).name}{lq_made}")
    out_dir.mkdir(parents=True, exist_ok=True)

    bar = tqdm(total=sum(c.count for c in clips), unit="frame", desc="evaluating")

    def restore(lq_frames):  # a clip's frames, streamed through the model's windows
        for f, out in restorer.frames(lq_frames):
            bar.update(1)
            yield f, out

    def on_frame(clip, f, out, lq, gt):
        if _SAVE_IMAGES.value:
            (out_dir / clip.name).mkdir(exist_ok=True)
            Image.fromarray(out).save(out_dir / clip.name / f"{f:08d}.png")
        if _SIDE_BY_SIDE.value and f == clip.count // 2:
            panel = np.concatenate([scoring.baseline(lq, scale), out, gt], axis=1)
            Image.fromarray(panel).save(out_dir / f"{clip.name}_input_output_gt.png")

    start = time.perf_counter()
    results = scoring.evaluate(restore, clips, scale, crop_border, on_frame=on_frame)
    bar.close()
    summary = scoring.summarize(results)
    print_table(results, summary)
    from edvr_jax import weights

    report = {"checkpoint": str(_CHECKPOINT.value), "weights": weights.describe(_CHECKPOINT.value), "dataset": dataset,
              "defaults_from": defaults_from, "codec": codec.describe() if codec else None, "padding": restorer.padding,
              "crop_border": crop_border, "seconds": time.perf_counter() - start, "average": summary,
              "clips": {r.name: {"mean": r.mean(), "frames": r.frames} for r in results}}
    (out_dir / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    with (out_dir / "results.csv").open("w", newline="") as f:
        keys = list(scoring.METRICS) + [f"base_{k}" for k in scoring.METRICS]
        w = csv.writer(f)
        w.writerow(["clip"] + keys)
        for r in results:
            w.writerow([r.name] + [f"{r.mean()[k]:.6f}" for k in keys])
        w.writerow(["average"] + [f"{summary[k]:.6f}" for k in keys])
    print(f"wrote {out_dir / 'results.json'} and results.csv")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_absl_flags)
