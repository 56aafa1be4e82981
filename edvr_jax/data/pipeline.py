"""The input pipeline: random training windows and full test clips, read at random from a
built dataset (``ClipReader``) and assembled by Grain.

Training batches are a pure function of ``(seed, batch index)``: each epoch is a
permutation of the samples drawn from ``(seed, epoch)`` and cut into global batches,
every sample gets its own RNG from ``(seed, epoch, position)``, and each process reads
only its rows of a batch. So the batches do not depend on the worker or process count,
nor on the dataset's layout, and the iterator's state (the next batch index) is saved and
restored with Orbax (``grain.PyGrainCheckpointSave``) beside the model. Batches are uint8;
the training step makes them float on the device (``edvr_jax.training.step.batch_to_float``).
"""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import functools
import json
import os
from typing import Callable, Iterator, Sequence

import grain.python as grain
import jax
import numpy as np

from edvr_jax.data.frames import DatasetError
from edvr_jax.data import handoff
from edvr_jax.data.grain_compat import allow_worker_processes
from edvr_jax.data.reader import ClipReader
from edvr_jax.errors import check_arguments


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    """How training windows are drawn, with BasicSR's option names; checked when made."""

    num_frame: int = 5
    gt_size: int = 256  # GT patch side; the LQ patch is gt_size / scale
    interval_list: tuple[int, ...] = (1,)
    random_reverse: bool = False
    use_hflip: bool = True
    use_rot: bool = True
    # 'all': every frame of every clip is a sample, a centre whose window does not fit is
    # re-drawn (BasicSR's REDS); 'fitting': only centres whose window fits (BasicSR's Vimeo).
    centers: str = "all"

    def __post_init__(self):
        check_arguments([
            ("num_frame", self.num_frame, self.num_frame >= 1 and self.num_frame % 2 == 1,
             "odd (a window centred on its frame)"),
            ("gt_size", self.gt_size, self.gt_size >= 1, "a positive integer"),
            ("interval_list", self.interval_list,
             len(self.interval_list) > 0 and all(i >= 1 for i in self.interval_list),
             "a non-empty tuple of positive integers"),
            ("centers", self.centers, self.centers in ("all", "fitting"), "'all' or 'fitting'"),
        ])

    def lq_patch(self, scale: int, size_multiple: int = 1) -> int:
        """The LQ patch side, ``gt_size / scale``, for data of that scale and a model whose input
        sides are multiples of ``size_multiple``; an ``ArgumentError`` when it cannot be."""
        multiple = scale * size_multiple
        why = f"the LQ patch, gt_size / {scale}, must be a multiple of {size_multiple}" if size_multiple > 1 else \
            f"x{scale} data"
        check_arguments([("gt_size", self.gt_size, self.gt_size % multiple == 0,
                          f"a positive multiple of {multiple} ({why})")])
        return self.gt_size // scale


def _check_windows(reader: ClipReader, spec: WindowSpec):
    """Every clip of the split holds a whole window, and the patch fits the data's scale."""
    spec.lq_patch(reader.scale)
    span = (spec.num_frame - 1) * max(spec.interval_list) + 1
    for name, _, count in reader.clips:
        if count < span:
            raise DatasetError(f"{reader.name}/{reader.split}: clip {name} has {count} frames, fewer than the "
                               f"{span} that a {spec.num_frame}-frame window with interval "
                               f"{max(spec.interval_list)} spans")


def _centers(reader: ClipReader, spec: WindowSpec) -> np.ndarray:
    """The samples of an epoch as ``[n, 2]`` ``(clip, centre frame)`` rows."""
    half = (spec.num_frame - 1) // 2 * min(spec.interval_list)
    rows = []
    for c, (_, _, count) in enumerate(reader.clips):
        lo, hi = (0, count) if spec.centers == "all" else (half, count - half)
        rows.extend((c, f) for f in range(lo, hi))
    return np.array(rows, np.int64)


class _BatchPlan(grain.RandomAccessDataSource):
    """Record ``i`` is this process's share of global batch ``i``: ``[b, 4]`` rows of
    ``(clip, centre, epoch, position in the epoch)``.

    Each epoch is a permutation of all samples drawn from ``(seed, epoch)``, cut into
    global batches; process ``p`` takes rows ``[p * b, (p + 1) * b)`` of each. A batch is
    therefore fixed by the seed alone, whatever the worker or process count.
    """

    def __init__(self, what: str, centers: np.ndarray, global_batch: int, seed: int, num_epochs: int | None,
                 start: int = 0):
        self._what, self.start = what, start
        self._centers, self._global, self._seed = centers, global_batch, seed
        self.batches_per_epoch = len(centers) // global_batch
        if self.batches_per_epoch == 0:
            raise DatasetError(f"the split has {len(centers)} samples, fewer than one global batch of {global_batch}")
        procs, p = jax.process_count(), jax.process_index()
        self._local = global_batch // procs
        self._offset = p * self._local
        self._len = self.batches_per_epoch * (num_epochs if num_epochs is not None else 10 ** 9)
        self._perm = (-1, None)

    @property
    def local_batch(self) -> int:
        """This process's rows of a global batch."""
        return self._local

    def from_batch(self, start: int) -> _BatchPlan:
        """The same plan, its record 0 being batch ``start``."""
        plan = copy.copy(self)
        plan.start = start
        return plan

    def __len__(self):
        return max(0, self._len - self.start)

    def __repr__(self):  # Grain compares it with the checkpointed one on restore
        return (f"_BatchPlan({self._what}, samples={len(self._centers)}, global_batch={self._global}, "
                f"seed={self._seed}, share={self._offset}+{self._local})")

    def __getitem__(self, i):
        epoch, b = divmod(self.start + int(i), self.batches_per_epoch)
        if self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self._seed, epoch]).permutation(len(self._centers)))
        pos = self._perm[1][b * self._global + self._offset:][:self._local]
        return np.concatenate([self._centers[pos], np.full((len(pos), 1), epoch), pos[:, None]], axis=1)


class _LoadBatch(grain.MapTransform):
    """Rows of ``(clip, centre, epoch, position)`` -> ``{'lq': uint8 [b, T, p, p, 3],
    'gt': uint8 [b, sp, sp, 3]}``: BasicSR's REDS/Vimeo training sample per row
    (interval, re-drawn centre, reverse, aligned crop, flips), each from its own
    RNG seeded by ``(seed, epoch, position)``. Only the crops are read."""

    def __init__(self, reader: ClipReader, spec: WindowSpec, seed: int, ring: handoff.RingSpec | None = None):
        self.reader, self.spec, self.seed, self.ring = reader, spec, seed, ring

    def shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        p = self.spec.gt_size // self.reader.scale
        return {"lq": (batch, self.spec.num_frame, p, p, 3), "gt": (batch, self.spec.gt_size, self.spec.gt_size, 3)}

    def map(self, rows):
        """The batch of ``rows``; in a worker process it is written into the worker's ring of shared
        memory and only ``{'worker', 'slot'}`` is returned (``handoff``)."""
        if self.ring is None:
            return self._fill({k: np.empty(s, np.uint8) for k, s in self.shapes(len(rows)).items()}, rows)
        ring = _worker_ring(self.ring)
        slot, out = ring.next_slot()
        self._fill(out, rows)
        return {"worker": np.int64(ring.worker), "slot": np.int64(slot)}

    def _fill(self, out: dict[str, np.ndarray], rows) -> dict[str, np.ndarray]:
        for i, (c, f, e, k) in enumerate(rows):
            sample = self.sample(int(c), int(f), np.random.default_rng([self.seed, int(e), int(k), 1]))
            for key in ("lq", "gt"):
                np.copyto(_pixels(out[key][i]), _pixels(sample[key]))
        return out

    def sample(self, clip: int, center: int, rng: np.random.Generator) -> dict:
        """One training sample, ``lq`` and ``gt`` as views: flips and the transpose are applied
        when it is copied into the batch."""
        spec, reader = self.spec, self.reader
        count = reader.clips[clip][2]
        interval = int(rng.choice(spec.interval_list))
        half = spec.num_frame // 2 * interval
        while center - half < 0 or center + half > count - 1:
            center = int(rng.integers(count))
        frames = list(range(center - half, center + half + 1, interval))
        if spec.random_reverse and rng.random() < 0.5:
            frames.reverse()
        s = reader.scale
        p = spec.gt_size // s
        h, w = reader.lq_size(clip)
        if h < p or w < p:
            raise DatasetError(f"{reader.name}: clip {reader.clips[clip][0]} has {h}x{w} LQ frames, smaller "
                               f"than the {p}x{p} training patch (gt_size {spec.gt_size} / scale {s})")
        top, left = int(rng.integers(h - p + 1)), int(rng.integers(w - p + 1))
        lq, gt = reader.crops(clip, frames, top, left, p, center)
        if spec.use_hflip and rng.random() < 0.5:
            lq, gt = lq[:, :, ::-1], gt[:, ::-1]
        if spec.use_rot:
            if rng.random() < 0.5:
                lq, gt = lq[:, ::-1], gt[::-1]
            if rng.random() < 0.5:
                lq, gt = lq.transpose(0, 2, 1, 3), gt.transpose(1, 0, 2)
        return {"lq": lq, "gt": gt}


def _pixels(a: np.ndarray) -> np.ndarray:
    """``[..., 3]`` uint8 as ``[...]`` 3-byte items (a view): NumPy then moves whole pixels when it
    flips or transposes, twice as fast as moving their bytes one by one (benchmarks/README.md)."""
    return a.view("V3")[..., 0]


# This process's index among Grain's worker processes (set by ``_in_worker_process``), and its ring.
_worker = {"index": None, "ring": None}


def _in_worker_process(index: int, count: int) -> None:
    _worker["index"] = index
    _keep_freed_memory()


def _keep_freed_memory() -> None:
    """glibc's malloc in a worker: serve the 100-200 KB records from the heap and keep what is
    freed, instead of mapping fresh pages for each record and unmapping them (82,000 page faults
    a second per worker; +16-19 % clips/s without them: benchmarks/README.md). glibc adapts its
    thresholds like this only after large frees, which a training process has had and a new
    worker has not. Elsewhere (no glibc) nothing is changed."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 128 << 20)


def _worker_ring(spec: handoff.RingSpec) -> handoff.WorkerRing:
    if _worker["ring"] is None:
        if _worker["index"] is None:
            raise RuntimeError("a batch ring is only written from a Grain worker process")
        _worker["ring"] = handoff.WorkerRing(spec, _worker["index"])
    return _worker["ring"]


def auto_worker_count() -> int:
    """``worker_count=-1``: one worker process per core this process may use, less one for the
    training loop, at most 4 per local device (what an H200 step of EDVR-M needs from the tile
    layout, with room: benchmarks/README.md), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores - 1, 4 * jax.local_device_count()))


class TrainBatches:
    """The iterator of ``train_loader``: batches from a batch index on. Its state is that index
    (and the plan it indexes), so a position saved with one worker count restores with any other;
    a Grain ``DataLoader`` state (what runs saved before) is read as the index it stands for."""

    def __init__(self, plan: _BatchPlan, load: _LoadBatch, worker_count: int, worker_buffer_size: int):
        self._plan, self._load = plan, load
        self._workers, self._buffer = worker_count, worker_buffer_size
        self._next, self._it, self._rings = 0, None, None

    def _start(self) -> grain.DatasetIterator:
        """Grain's dataset pipeline from batch ``self._next``: the plan's rows, loaded, in
        ``self._workers`` processes (each makes every n-th batch; Grain keeps their order)."""
        load = self._load
        if self._workers:
            # A batch can wait in Grain's queue (buffer) and in its interleave (buffer) while the
            # worker writes the next one: 2 * buffer + 2 slots keep a worker from waiting on them.
            self._rings = handoff.Rings(self._workers, 2 * self._buffer + 2, load.shapes(self._plan.local_batch))
            load = copy.copy(load)
            load.ring = self._rings.spec
        # One thread hands out the rows (cheap); the default 16 would only compete with the loading.
        ds = grain.MapDataset.source(self._plan.from_batch(self._next)).to_iter_dataset(
            grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)).map(load)
        if self._workers:
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._workers,
                                                             per_worker_buffer_size=self._buffer),
                                worker_init_fn=_in_worker_process)
        return iter(ds)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._it = self._start()
        try:
            batch = next(self._it)
            if self._rings is not None:
                batch = self._rings.take(batch)
        except BaseException:
            self.close()  # the workers now, not at interpreter exit (where Grain 0.2.18's finalizer may fail)
            raise
        self._next += 1
        return batch

    def get_state(self) -> bytes:
        return json.dumps({"next_batch": self._next, "plan": repr(self._plan)}).encode()

    def set_state(self, state: bytes) -> None:
        saved = json.loads(state)
        if "next_batch" in saved:
            if saved["plan"] != repr(self._plan):
                raise ValueError(f"the saved data position is in another batch plan: {saved['plan']}, "
                                 f"not {self._plan!r}")
            start = int(saved["next_batch"])
        else:
            start = grain_state_position(saved)
        self.close()
        self._next = start

    def start_prefetch(self) -> None:
        """Starts the workers now (Grain's checkpoint handler calls it after ``set_state``)."""
        if self._it is None:
            self._it = self._start()
        self._it.start_prefetch()

    def close(self) -> None:
        """Ends the worker processes (a later ``next`` starts them again)."""
        if self._rings is not None:
            self._rings.wake_workers()
        if self._it is not None:
            self._it.close()
            self._it = None
        if self._rings is not None:
            self._rings.close()
            self._rings = None

    def __del__(self):
        self.close()


def grain_state_position(state: dict) -> int:
    """The next batch index that a Grain 0.2.18 ``DataLoader`` state (no sharding) stands for: worker
    ``i`` of ``n`` had produced ``(last_seen[i] + n - i) / n`` of the records ``i, i + n, ...``."""
    last_seen, n = state["last_seen_indices"], int(state["worker_count"])
    if n == 0:
        return int(last_seen["0"]) + 1
    return sum((int(last_seen[str(i)]) + n - i) // n for i in range(n))


class _Loader:
    """What ``train_loader`` returns: each ``iter()`` is a fresh ``TrainBatches`` from batch 0."""

    def __init__(self, *args):
        self._args = args

    def __iter__(self) -> TrainBatches:
        return TrainBatches(*self._args)


def train_loader(reader: ClipReader, spec: WindowSpec, global_batch_size: int, seed: int,
                 worker_count: int = 0, num_epochs: int | None = None,
                 worker_buffer_size: int = 2) -> _Loader:
    """Training batches: ``{'lq': [b, T, p, p, 3], 'gt': [b, sp, sp, 3]}`` uint8,
    ``b = global_batch_size / jax.process_count()``, this process's share of the global batch
    (``p = gt_size / scale``).

    ``iter(loader)`` gives a ``TrainBatches`` with ``get_state``/``set_state`` (Orbax:
    ``grain.PyGrainCheckpointSave``/``Restore``). The batches depend on ``seed`` only;
    ``worker_count`` processes (-1: ``auto_worker_count()``) prepare ``worker_buffer_size``
    batches each ahead of the training step; 0 loads them in this process.
    """
    _check_windows(reader, spec)
    if worker_count < 0:
        worker_count = auto_worker_count()
    if worker_count:
        allow_worker_processes()
    procs = jax.process_count()
    if global_batch_size % procs:
        raise ValueError(f"global batch {global_batch_size} is not divisible by the {procs} processes")
    plan = _BatchPlan(f"{reader.dataset}/{reader.split}, {spec}", _centers(reader, spec), global_batch_size, seed,
                      num_epochs)
    return _Loader(plan, _LoadBatch(reader, spec, seed), worker_count, worker_buffer_size)


@dataclasses.dataclass
class EvalClip:
    """One test clip of ``count`` frames, read a frame at a time: ``pairs()`` yields
    ``(lq uint8 [h, w, 3], gt uint8 [H, W, 3])`` in order, each read once per pass.
    ``lq`` / ``gt``: the whole clip as arrays (small clips, figures, tests), read on first use."""

    name: str
    count: int
    read: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]

    def pairs(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.read()

    @functools.cached_property
    def _whole(self) -> tuple[np.ndarray, np.ndarray]:
        lq, gt = zip(*self.pairs())
        return np.stack(lq), np.stack(gt)

    @property
    def lq(self) -> np.ndarray:
        return self._whole[0]

    @property
    def gt(self) -> np.ndarray:
        return self._whole[1]


def eval_clips(reader: ClipReader, clips: Sequence[str] | None = None) -> Iterator[EvalClip]:
    """Every clip of the split (or the named ones), in order, read a frame at a time."""
    names = [c[0] for c in reader.clips]
    for name in clips or names:
        if name not in names:
            raise DatasetError(f"{reader.name}/{reader.split} has no clip {name!r}")
        c = names.index(name)
        count = reader.clips[c][2]
        yield EvalClip(name, count, functools.partial(_clip_pairs, reader, c, count))


def _clip_pairs(reader: ClipReader, clip: int, count: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for f in range(count):
        yield reader.lq(clip, [f])[0], reader.gt(clip, f)
