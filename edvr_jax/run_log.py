"""Training metrics to TensorBoard and ``metrics.jsonl``.

``create_writer(workdir)`` on the lead process returns a ``MultiWriter`` of ``TensorBoardWriter``
and ``JsonlWriter`` (one JSON object per ``write_scalars`` call: ``{"step": ..., name: value,
...}``, the names being the TensorBoard tags); other processes get a writer that writes nothing.
After a resume, ``JsonlWriter`` first drops the rows of steps after the restored one, which the
interrupted run wrote after its last checkpoint and the resumed run writes again.

The TensorBoard events are the summaries ``tf.summary.scalar`` and ``tf.summary.image`` write
(clu's ``SummaryWriter``), made with the tensorboard package's protos and record writer: a
training process does not import TensorFlow (~5 CPU-seconds at start-up), which clu's
``metric_writers`` package imports as it loads.
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np


class MultiWriter:
    """Every call goes to each of ``writers`` (none: a writer that writes nothing)."""

    def __init__(self, writers):
        self.writers = list(writers)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        for w in self.writers:
            w.write_scalars(step, scalars)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]):
        for w in self.writers:
            w.write_images(step, images)

    def flush(self):
        for w in self.writers:
            w.flush()

    def close(self):
        for w in self.writers:
            w.close()


class TensorBoardWriter:
    """Scalars (as float32) and uint8 images ``[k, H, W, C]`` (as PNG) in a TensorBoard event file in ``logdir``."""

    def __init__(self, logdir: str | os.PathLike):
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event = event_pb2.Event
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        name = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}.v2"
        self._records = RecordWriter(open(logdir / name, "wb"))
        self._write(self._event(wall_time=now, file_version="brain.Event:2"))

    def _write(self, event):
        self._records.write(event.SerializeToString())

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        from tensorboard.plugins.scalar.summary_v2 import scalar_pb

        for tag, value in scalars.items():
            self._write(self._event(wall_time=time.time(), step=int(step), summary=scalar_pb(tag, np.asarray(value))))

    def write_images(self, step: int, images: Mapping[str, np.ndarray]):
        from PIL import Image
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.plugins.image.metadata import create_summary_metadata
        from tensorboard.util.tensor_util import make_tensor_proto

        for tag, batch in images.items():
            batch = np.asarray(batch)
            if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] not in (1, 3, 4):
                raise ValueError(f"image {tag!r}: expected uint8 [k, H, W, 1|3|4], got {batch.dtype} {batch.shape}")
            pngs = []
            for img in batch:
                buf = io.BytesIO()
                Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG")
                pngs.append(buf.getvalue())
            # tf.summary.image's tensor: width, height, then the encoded images
            content = np.array([str(batch.shape[2]).encode(), str(batch.shape[1]).encode(), *pngs], object)
            summary = summary_pb2.Summary()
            summary.value.add(tag=tag, tensor=make_tensor_proto(content),
                              metadata=create_summary_metadata(display_name=None, description=None))
            self._write(self._event(wall_time=time.time(), step=int(step), summary=summary))

    def flush(self):
        self._records.flush()

    def close(self):
        self._records.close()


class JsonlWriter:
    """Scalars as JSON lines; images are not kept."""

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

    def write_images(self, step, images):
        pass

    def flush(self):
        self._file.flush()

    def close(self):
        self._file.close()


def create_writer(workdir: str | os.PathLike, lead: bool, resume_step: int | None = None) -> MultiWriter:
    """TensorBoard events in ``workdir/tensorboard`` and ``workdir/metrics.jsonl`` (lead process only)."""
    if not lead:
        return MultiWriter([])
    workdir = Path(workdir)
    return MultiWriter([TensorBoardWriter(workdir / "tensorboard"), JsonlWriter(workdir / "metrics.jsonl", resume_step)])


def read_jsonl(path: str | os.PathLike) -> list[dict[str, float]]:
    """The rows of a ``metrics.jsonl``."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
