"""Validation during training: BasicSR's test protocol (``edvr_jax.scoring``) on the validation
clips, run on the training mesh, with a few input | output | GT panels for TensorBoard."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from edvr_jax.models.edvr import EDVR
from edvr_jax.training.step import to_float


@dataclasses.dataclass
class Validator:
    """BasicSR's test protocol on the validation clips, on the training mesh."""

    model: EDVR
    reader: Any
    mesh: Any
    cfg: Any
    baseline_cache: dict = dataclasses.field(default_factory=dict)  # the baseline never changes

    def __post_init__(self):
        model, replicated = self.model, NamedSharding(self.mesh, P())
        # Windows go to the device as uint8 and become float there, as training batches do.
        self._apply = jax.jit(lambda params, x: model.apply({"params": params}, to_float(x)), out_shardings=replicated)

    def _apply_on_mesh(self, params, x):
        if jax.process_count() > 1:
            x = multihost_utils.host_local_array_to_global_array(x, self.mesh, P())
        else:
            x = jax.device_put(x, NamedSharding(self.mesh, P()))
        return self._apply(params, x)

    def __call__(self, params) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """``(summary, {name: input | output | GT panel})``."""
        # Imported here, not with the module: they bring TFDS and TensorFlow, which importing
        # edvr_jax.training for train_step (benchmarks, tools) does not need.
        from edvr_jax import data, scoring
        from edvr_jax.inference import StageRunner

        dc = self.cfg.data
        runner = StageRunner(self.model, params, self.cfg.val_batch_size, apply_fn=self._apply_on_mesh)
        panels = {}

        def keep(clip, f, out, lq, gt):
            if len(panels) < self.cfg.num_val_images and f == clip.count // 2:
                panels[f"val/{clip.name} (input | output | GT)"] = np.concatenate(
                    [scoring.baseline(lq, self.reader.scale), out, gt], axis=1)

        results = scoring.evaluate(lambda lq: runner.frames((f.astype(np.float32) / 255.0 for f in lq), dc.val_padding),
                                   data.eval_clips(self.reader, dc.val_clips), self.reader.scale,
                                   dc.val_crop_border, on_frame=keep, baseline_cache=self.baseline_cache)
        return scoring.summarize(results), panels
