"""What is at a weights path, and the model and parameters in it: the one reader of every kind.

``kind_of(path)`` tells three kinds apart:

* ``"state_dict"``: a BasicSR ``.pth`` / ``.pt`` / ``.ckpt`` or ``.safetensors`` file. The EDVR
  config comes from ``<stem>.json`` beside it when there is one (``edvr_jax.export --format
  safetensors`` writes it), else it is inferred from the keys and shapes.
* ``"weights"``: an edvr-jax weights directory (``python -m edvr_jax.convert``, ``export
  --format params``): the header ``config.json`` and ``params/``, an Orbax checkpoint of
  ``{'params': tree}``.
* ``"train_run"``: a ``train.py`` workdir: the header and ``checkpoints/<step>/state``
  (Orbax; see ``edvr_jax.checkpointing``). Its parameters are the newest step's (the EMA
  ones when the run kept them).

The header, ``config.json``, is the same in both directories: ``{"model": "EDVR" |
"TwoStageEDVR", "config": {constructor arguments}}``; a train run adds ``"train_config"`` (the
whole training config, which a resumed run must match). Train runs written before the header
existed (the training config at the top level, ``"model"`` a dict of EDVR arguments) read the
same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from edvr_jax import convert
from edvr_jax.convert import ConversionError
from edvr_jax.models.edvr import EDVR, TwoStageEDVR

MODELS = {"EDVR": EDVR, "TwoStageEDVR": TwoStageEDVR}
HEADER = "config.json"
RUN_CHECKPOINTS, RUN_STATE = "checkpoints", "state"  # a train run's Orbax steps: WORKDIR/checkpoints/<step>/state
_EDVR_ARGS = tuple(EDVR().config())


@dataclasses.dataclass(frozen=True)
class Header:
    """What ``config.json`` says: the model class name, its constructor arguments and, for a
    train run, the training config."""

    model: str
    config: dict[str, Any]
    train_config: dict[str, Any] | None = None

    def build(self) -> EDVR | TwoStageEDVR:
        return MODELS[self.model](**self.config)


def model_header(model: EDVR | TwoStageEDVR) -> tuple[str, dict[str, Any]]:
    """``(class name, JSON-serialisable constructor arguments)`` of a model."""
    if isinstance(model, TwoStageEDVR):
        return "TwoStageEDVR", {"stage1": dict(model.stage1), "stage2": dict(model.stage2)}
    if isinstance(model, EDVR):
        return "EDVR", model.config()
    raise TypeError(f"expected an EDVR or TwoStageEDVR, got {type(model).__name__}")


def write_header(directory: str | os.PathLike, model: EDVR | TwoStageEDVR,
                 train_config: Mapping[str, Any] | None = None) -> Path:
    """Writes ``directory/config.json`` (atomically: a reader never sees half a header)."""
    name, config = model_header(model)
    header = {"model": name, "config": config}
    if train_config is not None:
        plain = train_config.to_dict() if hasattr(train_config, "to_dict") else dict(train_config)
        header["train_config"] = json.loads(json.dumps(plain, default=list))  # tuples as lists
    path = Path(directory) / HEADER
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(header, indent=2) + "\n")
    tmp.replace(path)
    return path


def _check_edvr_args(config: Any, source: str) -> dict[str, Any]:
    if not isinstance(config, Mapping):
        raise ConversionError(f"{source}: the EDVR config must be a JSON object, got {json.dumps(config)[:100]}")
    unknown = sorted(set(config) - set(_EDVR_ARGS))
    if unknown:
        raise ConversionError(f"{source}: unknown EDVR argument(s) {unknown}; known: {list(_EDVR_ARGS)}")
    defaults = EDVR().config()
    for name, value in config.items():
        want = type(defaults[name]) if defaults[name] is not None else int
        ok = isinstance(value, want) and (want is bool or not isinstance(value, bool))
        if not ok and not (name == "center_frame_idx" and value is None):
            raise ConversionError(f"{source}: EDVR argument {name}={json.dumps(value)} should be "
                                  f"{want.__name__}{' or null' if name == 'center_frame_idx' else ''}")
    return dict(config)


def _parse_header(meta: Any, source: str) -> Header:
    if not isinstance(meta, Mapping):
        raise ConversionError(f"{source}: expected a JSON object, got {type(meta).__name__}")
    if isinstance(meta.get("model"), Mapping):  # a train run written before the header existed
        return Header("EDVR", _check_edvr_args(meta["model"], f"{source} 'model'"), dict(meta))
    if meta.get("model") not in MODELS or "config" not in meta:
        raise ConversionError(f"{source}: expected {{\"model\": \"EDVR\" or \"TwoStageEDVR\", \"config\": {{...}}}}, "
                              f"got {json.dumps(meta)[:200]}")
    config = meta["config"]
    if meta["model"] == "TwoStageEDVR":
        if not isinstance(config, Mapping) or set(config) != {"stage1", "stage2"}:
            raise ConversionError(f"{source}: a TwoStageEDVR config holds exactly 'stage1' and 'stage2'")
        config = {k: _check_edvr_args(v, f"{source} {k}") for k, v in config.items()}
    else:
        config = _check_edvr_args(config, source)
    return Header(meta["model"], config, meta.get("train_config"))


def read_header(directory: str | os.PathLike) -> Header:
    """The header of a weights directory or train run; a missing or malformed one is an error
    naming the file and what is wrong."""
    path = Path(directory) / HEADER
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: {directory} is not an edvr-jax weights directory or train.py run")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: invalid JSON ({e})") from None
    return _parse_header(meta, str(path))


def kind_of(path: str | os.PathLike) -> str:
    """``"state_dict"``, ``"weights"`` or ``"train_run"`` (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; expected a train.py workdir, an edvr-jax weights "
                                f"directory or a BasicSR {'/'.join(convert.STATE_DICT_SUFFIXES)} file")
    if path.is_file():
        if path.suffix not in convert.STATE_DICT_SUFFIXES:
            raise ConversionError(f"{path}: unknown checkpoint type {path.suffix!r}; expected "
                                  f"{', '.join(convert.STATE_DICT_SUFFIXES)} or a directory")
        return "state_dict"
    if (path / "params").is_dir():
        return "weights"
    if (path / "checkpoints").is_dir():
        return "train_run"
    raise FileNotFoundError(f"{path} holds neither params/ (an edvr-jax weights directory) nor checkpoints/ "
                            f"(a train.py run)")


# --------------------------------------------------------------------------------- weights directories


def save_weights(out_dir: str | os.PathLike, model: EDVR | TwoStageEDVR, params: Mapping[str, Any], *,
                 force: bool = False) -> Path:
    """Writes an edvr-jax weights directory: the header and Orbax ``params``."""
    import orbax.checkpoint as ocp

    out = Path(out_dir).absolute()
    if out.exists() and (out.is_file() or any(out.iterdir())):
        if not force:
            raise FileExistsError(f"{out} exists and is not empty; pass --force to overwrite")
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    out.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(out / "params", {"params": jax.tree.map(np.asarray, dict(params))})
    write_header(out, model)
    return out


def abstract_params(model: EDVR | TwoStageEDVR) -> dict[str, Any]:
    """The parameter tree of ``model`` as shapes and dtypes, computed without running it."""
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(model.input_shape(1, 16, 16)))["params"]


def load_weights(path: str | os.PathLike) -> tuple[EDVR | TwoStageEDVR, dict[str, Any]]:
    """``(model, params)`` of a weights directory; parameters that do not fit the header's model
    are an error naming them."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    header = read_header(path)
    model = header.build()
    target = {"params": abstract_params(model)}
    with ocp.StandardCheckpointer() as ckptr:
        saved = ckptr.metadata(path / "params").item_metadata.tree
        want = traverse_util.flatten_dict(dict(target), sep="/")
        have = traverse_util.flatten_dict(dict(saved), sep="/")
        problems = [f"{k}: saved {tuple(have[k].shape)}, config wants {tuple(v.shape)}"
                    for k, v in want.items() if k in have and tuple(have[k].shape) != tuple(v.shape)]
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        if problems or missing or extra:
            raise ConversionError(f"{path}: the parameters do not fit {HEADER}'s {header.model}({header.config}): "
                                  + "; ".join(problems[:5] + [f"missing {m}" for m in missing[:5]]
                                              + [f"unexpected {e}" for e in extra[:5]]))
        variables = ckptr.restore(path / "params", target)
    return model, variables["params"]


def run_steps(workdir: str | os.PathLike) -> list[int]:
    """The committed checkpoint steps of a train run, oldest first (Orbax writes a step into a
    temporary directory and renames it to the bare step number when it is complete)."""
    ckpts = Path(workdir) / RUN_CHECKPOINTS
    return sorted(int(p.name) for p in ckpts.iterdir() if p.is_dir() and p.name.isdigit()) if ckpts.is_dir() else []


def _run_state(workdir: str | os.PathLike, step: int) -> Path:
    """A train run's Orbax state item at ``step``, as an absolute path (Orbax reads no item
    metadata through a relative one)."""
    return (Path(workdir) / RUN_CHECKPOINTS / str(step) / RUN_STATE).absolute()


def read_run_params(workdir: str | os.PathLike, ema: bool | None = None, step: int | None = None) -> dict[str, Any]:
    """A train run's parameters (numpy, on the host, whatever mesh saved them) at ``step``
    (default: the newest). ``ema``: the EMA parameters (None: them when the run kept them)."""
    import orbax.checkpoint as ocp

    steps = run_steps(workdir)
    if not steps:
        raise FileNotFoundError(f"{workdir}: no complete checkpoint in {Path(workdir) / RUN_CHECKPOINTS}")
    step = steps[-1] if step is None else step
    item = _run_state(workdir, step)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    try:
        with _orbax_quiet(), ocp.PyTreeCheckpointer() as ckptr:
            saved = ckptr.metadata(item).item_metadata.tree
            use_ema = "ema_params" in saved if ema is None else ema
            if use_ema and "ema_params" not in saved:
                raise ConversionError(f"{workdir}: the run kept no EMA parameters (its ema_decay is 0)")
            key = "ema_params" if use_ema else "params"
            target = {key: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved[key])}
            state = ckptr.restore(item, args=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
    except ConversionError:
        raise
    except Exception as e:  # Orbax/TensorStore errors on damaged files are not specific; name what failed
        raise ConversionError(f"{workdir}: checkpoint step {step} ({item}) cannot be read, it may be damaged: "
                              f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}. Earlier "
                              f"steps: {[s for s in steps if s < step] or 'none'}") from e
    return jax.tree.map(np.asarray, state[key])


@contextlib.contextmanager
def _orbax_quiet():
    """Orbax warns through absl that a run's step item has no step metadata of its own (it is one
    level up); nothing is wrong, so read without that line."""
    from absl import logging as absl_logging

    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(level)


# ----------------------------------------------------------------------------------- any kind of path


def load_model(path: str | os.PathLike) -> tuple[EDVR | TwoStageEDVR, dict[str, Any]]:
    """``(model, params)`` from any kind of path (see ``kind_of``)."""
    path = Path(path)
    kind = kind_of(path)
    if kind == "state_dict":
        sd = convert.read_state_dict(path)
        side = path.with_suffix(".json")
        if side.is_file():
            try:
                meta = json.loads(side.read_text())
            except json.JSONDecodeError as e:
                raise ConversionError(f"{side}: invalid JSON ({e})") from None
            model = _parse_header(meta, str(side)).build()
        else:
            model = EDVR(**convert.infer_config(sd))
        if isinstance(model, TwoStageEDVR):  # export --format safetensors: keys prefixed stage1. / stage2.
            return model, {name: convert.from_basicsr(_prefixed(sd, f"{name}.", path), stage)["params"]
                           for name, stage in zip(("stage1", "stage2"), model.stages())}
        return model, convert.from_basicsr(sd, model)["params"]
    if kind == "weights":
        return load_weights(path)
    return read_header(path).build(), read_run_params(path)


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """What ``load_model(path)`` reads, for a report: the kind, and for a train run the step and
    whether the parameters are the EMA ones."""
    path = Path(path)
    kind = kind_of(path)
    info: dict[str, Any] = {"path": str(path), "kind": kind}
    if kind == "train_run":
        import orbax.checkpoint as ocp

        step = run_steps(path)[-1]
        with _orbax_quiet(), ocp.PyTreeCheckpointer() as ckptr:
            saved = ckptr.metadata(_run_state(path, step)).item_metadata.tree
        info.update(step=step, params="ema_params" if "ema_params" in saved else "params")
    return info


def _prefixed(state_dict: Mapping[str, Any], prefix: str, source: Path) -> dict[str, Any]:
    out = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not out:
        raise ConversionError(f"{source}: its header says TwoStageEDVR but no key starts with {prefix!r}")
    return out


def read_params(path: str | os.PathLike, ema: bool | None = None) -> dict[str, Any]:
    """The parameters (Flax layout, numpy) at any kind of path; ``ema`` as ``read_run_params``."""
    if kind_of(path) == "train_run":
        return read_run_params(path, ema)
    return jax.tree.map(np.asarray, load_model(path)[1])


def load_params_non_strict(path: str | os.PathLike, target: Mapping[str, Any], strict: bool = False):
    """``(params, report)``: ``target`` (freshly initialised parameters) with every entry of the
    source whose name and shape match copied in, as BasicSR's ``strict_load_g: false``.
    ``strict`` makes any missing, unexpected or mis-shaped entry an error. A BasicSR file is
    matched by key, so its architecture need not be ``target``'s."""
    target_flat = traverse_util.flatten_dict(dict(target))
    if kind_of(path) == "state_dict":
        src_flat, unexpected = convert.state_dict_to_flax(convert.read_state_dict(path), target_flat)
    else:
        src_flat = traverse_util.flatten_dict(dict(read_params(path)))
        unexpected = sorted("/".join(p) for p in src_flat if p not in target_flat)
    out, missing, mismatched = {}, [], []
    for p, value in target_flat.items():
        if p in src_flat and np.shape(src_flat[p]) == np.shape(value):
            out[p] = np.asarray(src_flat[p], np.float32)
        else:
            (mismatched if p in src_flat else missing).append("/".join(p))
            out[p] = np.asarray(value)
    report = {"loaded": len(target_flat) - len(missing) - len(mismatched), "missing": missing,
              "unexpected": unexpected, "shape_mismatch": mismatched}
    if strict and (missing or unexpected or mismatched):
        raise ConversionError(f"{path} does not fit the model strictly: {report}")
    return traverse_util.unflatten_dict(out), report
