"""Training metrics to TensorBoard and ``metrics.jsonl`` through one clu ``MetricWriter``.

``create_writer(workdir)`` on the lead process returns a ``MultiWriter`` of clu's TensorBoard
``SummaryWriter`` and ``JsonlWriter`` (one JSON object per ``write_scalars`` call: ``{"step":
..., name: value, ...}``, the names being the TensorBoard tags); other processes get a writer
that writes nothing. After a resume, ``JsonlWriter`` first drops the rows of steps after the
restored one, which the interrupted run wrote after its last checkpoint and the resumed run
writes again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from clu import metric_writers


class JsonlWriter(metric_writers.MetricWriter):
    """Scalars as JSON lines; other kinds of summaries are not kept."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None):
        self.path = Path(path)
        if resume_step is not None and self.path.is_file():
            rows = self.path.read_text().splitlines()
            kept = [r for r in rows if r.strip() and json.loads(r).get("step", 0) <= resume_step]
            if len(kept) != len(rows):
                tmp = self.path.with_name(self.path.name + ".tmp")
                tmp.write_text("".join(r + "\n" for r in kept))
                tmp.replace(self.path)
        self._file = self.path.open("a")

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        row = {"step": int(step), **{k: float(np.asarray(v)) for k, v in scalars.items()}}
        self._file.write(json.dumps(row) + "\n")

    def write_summaries(self, step, values, metadata=None):
        pass

    def write_images(self, step, images):
        pass

    def write_videos(self, step, videos):
        pass

    def write_audios(self, step, audios, *, sample_rate):
        pass

    def write_texts(self, step, texts):
        pass

    def write_histograms(self, step, arrays, num_buckets=None):
        pass

    def write_hparams(self, hparams):
        pass

    def flush(self):
        self._file.flush()

    def close(self):
        self._file.close()


def create_writer(workdir: str | os.PathLike, lead: bool, resume_step: int | None = None) -> metric_writers.MetricWriter:
    """TensorBoard events in ``workdir/tensorboard`` and ``workdir/metrics.jsonl`` (lead process only)."""
    if not lead:
        return metric_writers.MultiWriter([])
    workdir = Path(workdir)
    return metric_writers.MultiWriter([metric_writers.SummaryWriter(str(workdir / "tensorboard")),
                                       JsonlWriter(workdir / "metrics.jsonl", resume_step)])


def read_jsonl(path: str | os.PathLike) -> list[dict[str, float]]:
    """The rows of a ``metrics.jsonl``."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
