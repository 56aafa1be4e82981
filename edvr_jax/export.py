"""Export a trained or converted EDVR for inference.

    python -m edvr_jax.export CKPT OUT --format params        # Orbax params + config.json (edvr_jax.load)
    python -m edvr_jax.export CKPT OUT.safetensors --format safetensors   # BasicSR keys, + OUT.json
    python -m edvr_jax.export CKPT OUT.jaxexport --format jax  # jax.export, symbolic batch/height/width
    python -m edvr_jax.export CKPT OUT --format savedmodel     # TensorFlow SavedModel via jax2tf

The jax.export and SavedModel artifacts hold the parameters as constants and take
float32 ``[batch, num_frame, H, W, 3]`` in [0, 1] with any batch and any H, W that are
multiples of the model's size multiple (4, or 16 with HR input); they return
``[batch, sH, sW, 3]``. ``tools/run_exported.py`` runs the jax.export one without edvr_jax.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from edvr_jax import convert, weights
from edvr_jax.cli import exit_on_user_error, quiet_dependencies, underscore_flags
from edvr_jax.errors import UserError
from edvr_jax.models.edvr import EDVR, TwoStageEDVR


def _input_multiple(model: EDVR | TwoStageEDVR) -> int:
    """Input H and W must be multiples of this (a two-stage model: its first stage's)."""
    return model.stages()[0].size_multiple if isinstance(model, TwoStageEDVR) else model.size_multiple


def _header(model: EDVR | TwoStageEDVR) -> dict[str, Any]:
    name, config = weights.model_header(model)
    return {"model": name, "config": config}


def export_params(model: EDVR | TwoStageEDVR, params: Any, out: Path, force: bool = False) -> Path:
    """An edvr-jax weights directory (``edvr_jax.weights``); ``edvr_jax.load(out)`` reads it back
    (one- or two-stage)."""
    return weights.save_weights(out, model, params, force=force)


def export_safetensors(model: EDVR | TwoStageEDVR, params: Any, out: Path) -> Path:
    """BasicSR's key names and layouts (an EDVR's file loads in BasicSR's EDVR as well; a two-stage
    model's keys are prefixed ``stage1.`` / ``stage2.``), the header in ``out.json``."""
    from safetensors.numpy import save_file

    if isinstance(model, TwoStageEDVR):
        sd = {f"{stage}.{k}": v for stage in ("stage1", "stage2")
              for k, v in convert.to_basicsr({"params": params[stage]}).items()}
    else:
        sd = convert.to_basicsr({"params": params})
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(out))
    out.with_suffix(".json").write_text(json.dumps(_header(model), indent=2) + "\n")
    return out


def _polymorphic(model: EDVR | TwoStageEDVR) -> str:
    m = _input_multiple(model)
    return f"b, {model.num_frame}, {m}*h, {m}*w, 3"


def export_jax(model: EDVR | TwoStageEDVR, params: Any, out: Path) -> Path:
    """A serialized ``jax.export.Exported`` with symbolic batch, height and width."""
    from jax import export

    b, h, w = export.symbolic_shape("b, h, w")
    m = _input_multiple(model)
    fn = jax.jit(lambda x: model.apply({"params": params}, x))
    exported = export.export(fn, platforms=("cpu", "cuda", "tpu"))(
        jax.ShapeDtypeStruct((b, model.num_frame, m * h, m * w, 3), jnp.float32))
    out.write_bytes(exported.serialize())
    out.with_suffix(".json").write_text(json.dumps({**_header(model), "input": f"float32[{_polymorphic(model)}] "
                                                    "in [0, 1]"}, indent=2) + "\n")
    return out


def export_savedmodel(model: EDVR | TwoStageEDVR, params: Any, out: Path) -> Path:
    """A TensorFlow SavedModel (``serving_default``: ``frames`` -> ``output``) via jax2tf."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    fn = jax2tf.convert(lambda x: model.apply({"params": params}, x), polymorphic_shapes=[f"({_polymorphic(model)})"],
                        native_serialization_platforms=("cpu", "cuda", "tpu"))
    module = tf.Module()
    module.restore = tf.function(lambda frames: {"output": fn(frames)}, autograph=False, input_signature=[
        tf.TensorSpec([None, model.num_frame, None, None, 3], tf.float32, name="frames")])
    tf.saved_model.save(module, str(out), signatures={"serving_default": module.restore})
    (out / "edvr_config.json").write_text(json.dumps(_header(model), indent=2) + "\n")
    return out


FORMATS = {"params": export_params, "safetensors": export_safetensors, "jax": export_jax,
           "savedmodel": export_savedmodel}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="train.py workdir, converted dir, or BasicSR .pth/.safetensors")
    parser.add_argument("out")
    parser.add_argument("--format", choices=sorted(FORMATS), default="params")
    parser.add_argument("--force", action="store_true", help="overwrite OUT")
    parser.add_argument("--verbose", action="store_true", help="keep the dependencies' log lines")
    args = parser.parse_args(underscore_flags(argv))
    quiet_dependencies(args.verbose)
    return exit_on_user_error(lambda: export(args.checkpoint, args.out, args.format, force=args.force))


def export(checkpoint: str | Path, out: str | Path, fmt: str, force: bool = False) -> Path:
    """Exports the weights at ``checkpoint`` (any kind ``edvr_jax.load_model`` reads) as ``fmt``."""
    out = Path(out)
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; expected one of {sorted(FORMATS)}")
    if fmt == "safetensors" and out.suffix != ".safetensors":
        raise UserError(f"--format safetensors writes a .safetensors file (edvr_jax.load tells weights files by "
                        f"their suffix); got {out}")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite")
    model, params = weights.load_model(checkpoint)
    model = model.clone(offset_warning=False)  # no host callbacks in an exported graph
    if fmt == "params":
        export_params(model, params, out, force=force)
    else:
        if out.exists():
            import shutil
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        out.parent.mkdir(parents=True, exist_ok=True)
        FORMATS[fmt](model, params, out)
    print(f"wrote {out} ({fmt})")
    return out


if __name__ == "__main__":
    sys.exit(main())
