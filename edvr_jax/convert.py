"""BasicSR <-> edvr-jax weight conversion, and the ``python -m edvr_jax.convert`` CLI.

BasicSR names parameters ``pcd_align.dcn_pack.l1.conv_offset.weight``; the Flax
tree names the same one ``params/pcd_align/dcn_pack_l1/conv_offset/kernel``:
``ModuleDict`` keys and ``Sequential`` indices are joined to their parent with
``_``, ``weight`` is ``kernel`` and conv weights go from torch's ``[O, I, kh, kw]``
to Flax's ``[kh, kw, I, O]``. Nothing else differs, so the mapping is derived
from the model's own parameter tree and every key is checked both ways.

CLI::

    python -m edvr_jax.convert EDVR_L_x4_SR_REDS_official-9f5f5039.pth OUT_DIR [--key params_ema]

reads a BasicSR ``.pth`` (needs the optional CPU torch: ``pip install torch==2.13.0``)
or ``.safetensors`` file and writes ``OUT_DIR/config.json`` + ``OUT_DIR/params``
(an Orbax checkpoint of ``{'params': ...}``), loadable with ``load_converted``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from edvr_jax.models.edvr import EDVR, TwoStageEDVR

MODELS = {"EDVR": EDVR, "TwoStageEDVR": TwoStageEDVR}  # what a converted / exported directory may hold

# Flax path (dot-joined) -> BasicSR key, applied in order to the module part of the path.
_FLAX_TO_TORCH = [
    (re.compile(r"^(feature_extraction|reconstruction)_(\d+)\."), r"\1.\2."),
    (re.compile(r"^pcd_align\.(offset_conv[123]|dcn_pack|feat_conv)_(l[123])\."), r"pcd_align.\1.\2."),
    (re.compile(r"^predeblur\.resblock_l1_(\d+)\."), r"predeblur.resblock_l1.\1."),
]


class ConversionError(ValueError):
    """A state dict that does not fit the model: names the offending keys."""


def torch_key(flax_path: tuple[str, ...]) -> str:
    """``('pcd_align', 'dcn_pack_l1', 'kernel')`` -> ``'pcd_align.dcn_pack.l1.weight'``."""
    *modules, leaf = flax_path
    name = ".".join(modules) + "."
    for pattern, repl in _FLAX_TO_TORCH:
        name = pattern.sub(repl, name)
    return name + {"kernel": "weight", "bias": "bias"}[leaf]


def _to_flax(value: np.ndarray) -> np.ndarray:
    return np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value


def _to_torch(value: np.ndarray) -> np.ndarray:
    return np.transpose(value, (3, 2, 0, 1)) if value.ndim == 4 else value


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape)


def strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drops the ``module.`` prefix that (Distributed)DataParallel adds to every key."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def unwrap_checkpoint(obj: Mapping[str, Any], key: str | None = None, source: str = "checkpoint") -> dict[str, Any]:
    """BasicSR saves ``{'params': state_dict}`` (sometimes ``params_ema``); returns the state dict.

    ``key=None`` takes ``params`` if present, else ``params_ema``, else ``obj`` itself
    when it already looks like a state dict.
    """
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    if key is not None:
        if key not in obj:
            raise ConversionError(f"{source}: no {key!r} entry; top-level keys are {sorted(obj)[:10]}")
        return strip_module_prefix(obj[key])
    for k in ("params", "params_ema"):
        if k in obj and isinstance(obj[k], Mapping):
            return strip_module_prefix(obj[k])
    if all(hasattr(v, "shape") for v in obj.values()):
        return strip_module_prefix(obj)
    raise ConversionError(f"{source}: neither 'params' nor 'params_ema' found and the entries are not tensors; "
                          f"top-level keys are {sorted(obj)[:10]}")


def infer_config(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """BasicSR ``EDVR`` constructor arguments that produce ``state_dict``'s keys and shapes.

    ``center_frame_idx`` cannot be seen in weights and is left at its default.
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise ConversionError(f"key {key!r} is missing: this does not look like a BasicSR EDVR state dict "
                                  f"(first keys: {sorted(state_dict)[:5]})")
        return tuple(np.shape(state_dict[key]))

    def count(prefix: str) -> int:
        pat = re.compile(rf"^{prefix}\.(\d+)\.")
        return len({m.group(1) for k in state_dict if (m := pat.match(k))})

    with_predeblur = any(k.startswith("predeblur.") for k in state_dict)
    with_tsa = any(k.startswith("fusion.temporal_attn1.") for k in state_dict)
    num_feat = shape("conv_l2_1.weight")[0]
    fusion_in = shape("fusion.feat_fusion.weight" if with_tsa else "fusion.weight")[1]
    if fusion_in % num_feat:
        raise ConversionError(f"fusion input channels {fusion_in} are not a multiple of num_feat={num_feat}")
    return dict(
        num_in_ch=3 if with_predeblur else shape("conv_first.weight")[1],
        num_out_ch=3,
        num_feat=num_feat,
        num_frame=fusion_in // num_feat,
        deformable_groups=shape("pcd_align.dcn_pack.l1.conv_offset.weight")[0] // 27,
        num_extract_block=count("feature_extraction"),
        num_reconstruct_block=count("reconstruction"),
        center_frame_idx=None,
        hr_in="predeblur.stride_conv_hr1.weight" in state_dict,
        with_predeblur=with_predeblur,
        with_tsa=with_tsa,
    )


def param_shapes(model: EDVR) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flat Flax param paths -> shapes, without allocating anything."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(model.input_shape(1, 16, 16)))
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes["params"]).items()}


def basicsr_shapes(model: EDVR) -> dict[str, tuple[int, ...]]:
    """BasicSR state-dict keys -> torch shapes for ``model``."""
    return {torch_key(k): _torch_shape(s) for k, s in param_shapes(model).items()}


def from_basicsr(state_dict: Mapping[str, Any], model: EDVR | None = None) -> dict[str, Any]:
    """BasicSR EDVR state dict (key -> array) to the variables ``model.apply`` takes.

    ``model`` defaults to the EDVR ``infer_config`` finds. Every key must be used
    and every parameter given, with matching shapes; otherwise ConversionError
    names the keys. Values are returned as float32 numpy arrays.
    """
    state_dict = strip_module_prefix(state_dict)
    if model is None:
        model = EDVR(**infer_config(state_dict))
    expected = param_shapes(model)
    by_key = {torch_key(path): path for path in expected}
    unknown = sorted(set(state_dict) - set(by_key))
    missing = sorted(set(by_key) - set(state_dict))
    if unknown or missing:
        raise ConversionError(
            f"state dict does not fit EDVR({model.config()}): "
            + (f"unexpected keys {unknown[:8]}{' ...' if len(unknown) > 8 else ''} " if unknown else "")
            + (f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}" if missing else ""))
    flat = {}
    for key, path in by_key.items():
        value = np.asarray(state_dict[key], dtype=np.float32)
        want = _torch_shape(expected[path])
        if value.shape != want:
            raise ConversionError(f"{key}: shape {value.shape} does not match the model's {want}")
        flat[path] = _to_flax(value)
    return {"params": traverse_util.unflatten_dict(flat)}


def to_basicsr(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Inverse of ``from_basicsr``: ``{'params': ...}`` (or the params tree) to a BasicSR state dict."""
    params = variables.get("params", variables)
    flat = traverse_util.flatten_dict(jax.device_get(dict(params)))
    return {torch_key(path): np.ascontiguousarray(_to_torch(np.asarray(v, np.float32))) for path, v in flat.items()}


# ---------------------------------------------------------------------------------------------- files


def read_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, np.ndarray]:
    """Reads a BasicSR ``.pth`` (torch, optional dependency) or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file
        obj: Mapping[str, Any] = load_file(str(path))
    elif path.suffix in (".pth", ".pt", ".ckpt"):
        try:
            import torch
        except ImportError as e:
            raise ImportError(f"reading {path} needs PyTorch (CPU build is enough): pip install torch==2.13.0") from e
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    else:
        raise ConversionError(f"{path}: unknown checkpoint type {path.suffix!r}; expected .pth or .safetensors")
    sd = unwrap_checkpoint(obj, key, source=str(path))
    return {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)) for k, v in sd.items()}


def save_converted(out_dir: str | os.PathLike, variables: Mapping[str, Any], config: Mapping[str, Any],
                   *, force: bool = False, model: str = "EDVR") -> Path:
    """Writes ``config.json`` (``{'model': model, 'config': config}``) and an Orbax checkpoint
    ``params`` into ``out_dir``. ``model``: ``'EDVR'`` or ``'TwoStageEDVR'`` (``config`` then
    holds ``stage1`` and ``stage2``)."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {model!r}")
    import orbax.checkpoint as ocp

    out = Path(out_dir).absolute()
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} exists and is not empty; pass --force to overwrite")
        import shutil
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(out / "params", jax.tree.map(np.asarray, dict(variables)))
    (out / "config.json").write_text(json.dumps({"model": model, "config": dict(config)}, indent=2) + "\n")
    return out


def load_converted(path: str | os.PathLike) -> tuple[EDVR | TwoStageEDVR, dict[str, Any]]:
    """Reads what ``save_converted`` wrote: ``(model, variables)``; parameters that do not fit
    the config's model are an error naming them."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: missing; expected a directory written by edvr_jax.convert")
    meta = json.loads(cfg_file.read_text())
    if meta.get("model") not in MODELS or "config" not in meta:
        raise ConversionError(f"{cfg_file}: expected {{'model': 'EDVR' or 'TwoStageEDVR', 'config': {{...}}}}, "
                              f"got {json.dumps(meta)[:200]}")
    model = MODELS[meta["model"]](**meta["config"])
    target = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(model.input_shape(1, 16, 16)))
    with ocp.StandardCheckpointer() as ckptr:
        saved = ckptr.metadata(path / "params").item_metadata.tree
        want = traverse_util.flatten_dict(dict(target), sep="/")
        have = traverse_util.flatten_dict(dict(saved), sep="/")
        problems = [f"{k}: saved {tuple(have[k].shape)}, config wants {tuple(v.shape)}"
                    for k, v in want.items() if k in have and tuple(have[k].shape) != tuple(v.shape)]
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        if problems or missing or extra:
            raise ConversionError(f"{path}: the parameters do not fit {cfg_file.name}'s {meta['model']}({meta['config']}): "
                                  + "; ".join(problems[:5] + [f"missing {m}" for m in missing[:5]]
                                              + [f"unexpected {e}" for e in extra[:5]]))
        variables = ckptr.restore(path / "params", target)
    return model, variables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edvr_jax.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="BasicSR checkpoint (.pth or .safetensors)")
    parser.add_argument("output", help="output directory (config.json + Orbax 'params')")
    parser.add_argument("--key", default=None, help="entry to read: params or params_ema (default: params, "
                        "falling back to params_ema)")
    parser.add_argument("--center-frame-idx", type=int, default=None, help="if the model used a non-default centre")
    parser.add_argument("--force", action="store_true", help="overwrite a non-empty output directory")
    args = parser.parse_args(argv)
    try:
        sd = read_state_dict(args.input, args.key)
        config = infer_config(sd)
        config["center_frame_idx"] = args.center_frame_idx
        variables = from_basicsr(sd, EDVR(**config))
        out = save_converted(args.output, variables, config, force=args.force)
    except (ConversionError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(v.size for v in jax.tree.leaves(variables))
    print(f"wrote {out}: EDVR({', '.join(f'{k}={v}' for k, v in config.items())}), {n:,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
