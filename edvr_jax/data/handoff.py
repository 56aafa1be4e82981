"""Batches from Grain worker processes to the training process through reused shared memory.

Each worker owns a ring of ``slots`` batch-sized shared-memory segments made once by the training
process. A worker writes batch ``m`` into slot ``m % slots`` and hands over only the slot number;
the training process copies the batch out and gives the slot back by writing one byte into the
worker's FIFO, which the worker reads before it reuses a slot. A new segment per batch (Grain's
own hand-off) costs a page fault per 4 KiB page, ~2,100 per 8 MiB batch: 7.7-8.7 ms to make, fill
and unlink against 0.3-1.2 ms to fill memory already mapped (benchmarks/README.md).

A batch never leaves a slot uncopied, so the arrays the training process gets are its own; a
worker only blocks when all its slots are waiting in Grain's buffers, which the training process
empties in order.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from multiprocessing import resource_tracker, shared_memory

import numpy as np


@dataclasses.dataclass(frozen=True)
class RingSpec:
    """What a worker needs to find its ring (picklable): the segment names per worker, the FIFO
    per worker, and the batch's arrays as ``{key: shape}`` (uint8)."""

    segments: tuple[tuple[str, ...], ...]
    fifos: tuple[str, ...]
    shapes: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def slots(self) -> int:
        return len(self.segments[0])


def _views(buf, shapes) -> dict[str, np.ndarray]:
    out, offset = {}, 0
    for key, shape in shapes:
        out[key] = np.ndarray(shape, np.uint8, buffer=buf, offset=offset)
        offset += int(np.prod(shape))
    return out


class Rings:
    """The training process's side: makes the rings, copies batches out, gives slots back, and
    removes everything on ``close``."""

    def __init__(self, workers: int, slots: int, shapes: dict[str, tuple[int, ...]]):
        self._dir = tempfile.mkdtemp(prefix="edvr_jax_batches_")
        shapes = tuple((k, tuple(map(int, s))) for k, s in shapes.items())
        nbytes = sum(int(np.prod(s)) for _, s in shapes)
        self._segments = [[shared_memory.SharedMemory(create=True, size=nbytes) for _ in range(slots)]
                          for _ in range(workers)]
        fifos = []
        for w in range(workers):
            path = os.path.join(self._dir, f"worker{w}")
            os.mkfifo(path)
            fifos.append(path)
        # O_RDWR: opens without waiting for the reader (Linux); the writes never block: at most
        # ``slots`` bytes are ever unread, far below a pipe's buffer.
        self._fds = [os.open(p, os.O_RDWR | os.O_NONBLOCK) for p in fifos]
        self.spec = RingSpec(tuple(tuple(s.name for s in ring) for ring in self._segments), tuple(fifos), shapes)
        self._views = [[_views(s.buf, shapes) for s in ring] for ring in self._segments]

    def take(self, handle: dict) -> dict[str, np.ndarray]:
        """The batch in the slot ``handle`` names, copied out; the slot goes back to its worker."""
        w, slot = int(handle["worker"]), int(handle["slot"])
        batch = {k: v.copy() for k, v in self._views[w][slot].items()}
        os.write(self._fds[w], b"\0")
        return batch

    def wake_workers(self) -> None:
        """Gives every worker all its slots back, so none stays blocked while Grain stops them."""
        for fd in self._fds:
            try:
                os.write(fd, b"\0" * self.spec.slots)
            except BlockingIOError:
                pass

    def close(self) -> None:
        self._views = []
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        for ring in self._segments:
            for s in ring:
                s.close()
                s.unlink()
        self._segments = []
        shutil.rmtree(self._dir, ignore_errors=True)


class WorkerRing:
    """A worker's side: ``next_slot()`` -> ``(slot, {key: uint8 array in shared memory})``,
    waiting for the training process to give the slot back when the ring has gone round."""

    def __init__(self, spec: RingSpec, worker: int):
        self._spec, self.worker = spec, worker
        self._segments = [shared_memory.SharedMemory(name) for name in spec.segments[worker]]
        for s in self._segments:  # the training process owns them: not this process's tracker
            resource_tracker.unregister(s._name, "shared_memory")  # noqa: SLF001  (Python < 3.13: no track=False)
        self._views = [_views(s.buf, spec.shapes) for s in self._segments]
        self._fd = os.open(spec.fifos[worker], os.O_RDWR)
        self._made = 0

    def next_slot(self) -> tuple[int, dict[str, np.ndarray]]:
        slot = self._made % self._spec.slots
        if self._made >= self._spec.slots:
            os.read(self._fd, 1)  # blocks until the batch made ``slots`` ago has been copied out
        self._made += 1
        return slot, self._views[slot]
