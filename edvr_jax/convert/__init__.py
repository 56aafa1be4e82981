"""BasicSR <-> edvr-jax weight conversion.

BasicSR names parameters ``pcd_align.dcn_pack.l1.conv_offset.weight``; the Flax
tree names the same one ``params/pcd_align/dcn_pack_l1/conv_offset/kernel``:
``ModuleDict`` keys and ``Sequential`` indices are joined to their parent with
``_``, ``weight`` is ``kernel`` and conv weights go from torch's ``[O, I, kh, kw]``
to Flax's ``[kh, kw, I, O]``. Nothing else differs, so the mapping is derived
from the model's own parameter tree and every key is checked both ways.

``python -m edvr_jax.convert`` (``__main__.py``) writes a BasicSR ``.pth`` (read by ``edvr_jax.pth``: no
torch needed) or ``.safetensors`` file as an edvr-jax weights directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from edvr_jax import pth
from edvr_jax.errors import UserError
from edvr_jax.models.edvr import EDVR

# Flax path (dot-joined) -> BasicSR key, applied in order to the module part of the path.
_FLAX_TO_TORCH = [
    (re.compile(r"^(feature_extraction|reconstruction)_(\d+)\."), r"\1.\2."),
    (re.compile(r"^pcd_align\.(offset_conv[123]|dcn_pack|feat_conv)_(l[123])\."), r"pcd_align.\1.\2."),
    (re.compile(r"^predeblur\.resblock_l1_(\d+)\."), r"predeblur.resblock_l1.\1."),
]


class ConversionError(UserError, ValueError):
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


def checked_float32(key: str, value: Any) -> np.ndarray:
    """A state-dict value as float32, refusing what would silently make garbage: non-float
    dtypes (integer, bool, complex) and non-finite values, each named with its key."""
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.floating) and str(arr.dtype) != "bfloat16":
        raise ConversionError(f"{key}: dtype {arr.dtype}; EDVR weights must be floating point")
    arr = arr.astype(np.float32)
    bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise ConversionError(f"{key}: {bad} of {arr.size} values are not finite (NaN or inf)")
    return arr


def state_dict_to_flax(state_dict: Mapping[str, Any], paths) -> tuple[dict[tuple[str, ...], np.ndarray], list[str]]:
    """``(flat, unexpected)``: the entries of a BasicSR state dict whose key names one of the Flax
    ``paths``, converted to that path's layout (checked by ``checked_float32``), and the keys
    that name none. Shapes are not checked here."""
    by_key = {torch_key(tuple(p)): tuple(p) for p in paths}
    flat, unexpected = {}, []
    for key, value in strip_module_prefix(state_dict).items():
        if key in by_key:
            flat[by_key[key]] = _to_flax(checked_float32(key, value))
        else:
            unexpected.append(key)
    return flat, sorted(unexpected)


def from_basicsr(state_dict: Mapping[str, Any], model: EDVR | None = None) -> dict[str, Any]:
    """BasicSR EDVR state dict (key -> array) to the variables ``model.apply`` takes.

    ``model`` defaults to the EDVR ``infer_config`` finds. Every key must be used
    and every parameter given, with matching shapes and finite floating-point values;
    otherwise ConversionError names the keys. Values are returned as float32 numpy arrays.
    """
    state_dict = strip_module_prefix(state_dict)
    if model is None:
        model = EDVR(**infer_config(state_dict))
    expected = param_shapes(model)
    missing = sorted(torch_key(p) for p in expected if torch_key(p) not in state_dict)
    unknown = sorted(set(state_dict) - {torch_key(p) for p in expected})
    if unknown or missing:
        raise ConversionError(
            f"state dict does not fit EDVR({model.config()}): "
            + (f"unexpected keys {unknown[:8]}{' ...' if len(unknown) > 8 else ''} " if unknown else "")
            + (f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}" if missing else ""))
    for path, shape in expected.items():
        have = tuple(np.shape(state_dict[torch_key(path)]))
        if have != _torch_shape(shape):
            raise ConversionError(f"{torch_key(path)}: shape {have} does not match the model's {_torch_shape(shape)}")
    flat, _ = state_dict_to_flax(state_dict, expected)
    return {"params": traverse_util.unflatten_dict(flat)}


def to_basicsr(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Inverse of ``from_basicsr``: ``{'params': ...}`` (or the params tree) to a BasicSR state dict."""
    params = variables.get("params", variables)
    flat = traverse_util.flatten_dict(jax.device_get(dict(params)))
    return {torch_key(path): np.ascontiguousarray(_to_torch(np.asarray(v, np.float32))) for path, v in flat.items()}


# ---------------------------------------------------------------------------------------------- files


STATE_DICT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")


def read_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, np.ndarray]:
    """Reads a BasicSR ``.pth`` (``edvr_jax.pth``: no torch; tensors and plain containers only,
    nothing in the file runs) or ``.safetensors`` file. A missing, truncated or refused file
    raises FileNotFoundError / ConversionError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
        try:
            obj: Mapping[str, Any] = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ConversionError(f"{path}: not a readable safetensors file ({e})") from e
    elif path.suffix in (".pth", ".pt", ".ckpt"):
        try:
            obj = pth.read_pth(path)
        except pth.PthError as e:
            raise ConversionError(str(e)) from e
    else:
        raise ConversionError(f"{path}: unknown checkpoint type {path.suffix!r}; expected "
                              f"{', '.join(STATE_DICT_SUFFIXES)}")
    sd = unwrap_checkpoint(obj, key, source=str(path))
    return {k: np.asarray(v) for k, v in sd.items()}
