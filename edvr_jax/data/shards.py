"""A built dataset's ``array_record`` shards: written with our options and recorded, checked when
opened, read at random, verified on demand.

* Writing (``RecordingWriter``, TFDS's ``ExampleWriter`` hook): ``layout.WRITER_OPTIONS``, and each
  shard's size and SHA-256 kept for the dataset's metadata (``shards``).
* Opening (``open_split``): every shard of the split exists, has its recorded size and holds the
  records TFDS counted; otherwise a ``DatasetError`` naming the file and how to rebuild it. Sizes
  and record counts cost milliseconds; checksums cost a read of the whole dataset (SHA-256 at
  ~0.65 GB/s here: two minutes for REDS's 80 GB of tiles), so they are checked by ``verify``
  (``python -m edvr_jax.data.convert --verify``), not at every start.
* Reading (``Records``): records by index within the split; a record that does not read back
  (riegeli checks a hash of every chunk: bit rot inside a shard is caught there) is a one-line
  ``DatasetError`` naming the dataset, the shard file and the record.
"""

from __future__ import annotations

import bisect
import hashlib
import os
from pathlib import Path
from typing import Iterable, Sequence

from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from tensorflow_datasets.core import writer as tfds_writer

from edvr_jax.data.frames import DatasetError
from edvr_jax.data.layout import WRITER_OPTIONS

READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"  # random reads: no readahead, no threads


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


class RecordingWriter(tfds_writer.ExampleWriter):
    """Writes each shard with ``WRITER_OPTIONS`` and records ``{file name: [bytes, sha256]}`` in ``shards``."""

    def __init__(self, file_format, shards: dict):
        super().__init__(file_format)
        self.shards = shards

    def write(self, path, examples: Iterable) -> None:
        writer = ArrayRecordWriter(os.fspath(path), WRITER_OPTIONS)
        for _, serialized in examples:
            writer.write(serialized)
        writer.close()
        self.shards[Path(path).name] = [os.path.getsize(path), sha256(path)]


def rebuild_hint(builder_dir: str | os.PathLike, metadata) -> str:
    """How to remake a damaged build: its PNG twin converted again, or a build from its source."""
    d = Path(builder_dir)
    root, name, config = d.parents[2], d.parents[1].name, d.parent.name
    twin = metadata.get("converted_from")
    if twin:
        return (f"rebuild it: rm -r {d} && python -m edvr_jax.data.convert --data_dir {root} --dataset {name} "
                f"--config {twin}")
    source = metadata.get("source")
    return (f"rebuild it: rm -r {d}, then run again" + (f" with data.manual_dir={source}" if source else "")
            + f" (a missing dataset is built; {name}/{config})")


def open_split(builder, split: str) -> Records:
    """The split's ``Records`` once every shard is found whole (see the module docstring)."""
    info, name = builder.info, f"{builder.name}/{builder.builder_config.name}"
    paths = [Path(p) for p in info.splits[split].filepaths]
    lengths = list(info.splits[split].shard_lengths)
    recorded = info.metadata.get("shards", {})
    for path, count in zip(paths, lengths):
        def bad(what: str):
            return DatasetError(f"dataset {name}: shard {path} {what}; {rebuild_hint(builder.data_dir, info.metadata)}")

        if not path.is_file():
            raise bad("is missing")
        size = path.stat().st_size
        if path.name in recorded and size != recorded[path.name][0]:
            raise bad(f"is {size} bytes, but the build wrote {recorded[path.name][0]} (truncated or damaged)")
        try:
            found = ArrayRecordReader(str(path), READER_OPTIONS).num_records()
        except Exception as e:  # noqa: BLE001  array_record raises RuntimeError/ValueError on unreadable files
            raise bad(f"cannot be read ({_first_line(e)})") from None
        if found != count:
            raise bad(f"holds {found} records, but the build wrote {count} (truncated or damaged)")
    return Records(name, [str(p) for p in paths], lengths, rebuild_hint(builder.data_dir, info.metadata))


def verify(builder) -> list[str]:
    """Every shard of every split against its recorded size and SHA-256: the problems found, one
    line each (empty: all match). A build that recorded no checksums (made before they were) is
    reported as such."""
    recorded = builder.info.metadata.get("shards")
    if not recorded:
        return [f"{builder.data_dir} records no shard checksums (built before they were recorded)"]
    problems = []
    for split in builder.info.splits.values():
        for path in map(Path, split.filepaths):
            if path.name not in recorded:
                problems.append(f"{path}: not in the build's record")
            elif not path.is_file():
                problems.append(f"{path}: missing")
            elif path.stat().st_size != recorded[path.name][0]:
                problems.append(f"{path}: {path.stat().st_size} bytes, the build wrote {recorded[path.name][0]}")
            elif sha256(path) != recorded[path.name][1]:
                problems.append(f"{path}: SHA-256 differs from the build's")
    return problems


class Records:
    """Records of one split by index (shards in order), read at random; picklable (readers reopen)."""

    def __init__(self, name: str, paths: Sequence[str], lengths: Sequence[int], hint: str):
        self.name, self.paths, self.hint = name, list(paths), hint
        self._ends = [sum(lengths[:i + 1]) for i in range(len(lengths))]
        self._readers: dict[int, ArrayRecordReader] = {}

    def __getstate__(self):
        return {**self.__dict__, "_readers": {}}

    def __len__(self):
        return self._ends[-1] if self._ends else 0

    def _reader(self, shard: int) -> ArrayRecordReader:
        if shard not in self._readers:
            self._readers[shard] = ArrayRecordReader(self.paths[shard], READER_OPTIONS)
        return self._readers[shard]

    def read(self, indices: Sequence[int]) -> list[bytes]:
        """The serialized records at ``indices`` (in that order), read one by one in this thread:
        array_record's list read fans out to its thread pool and costs twice the CPU time per
        record (benchmarks/README.md), which worker processes would pay over and over."""
        return [self._read_one(i) for i in indices]

    def _read_one(self, index: int) -> bytes:
        shard = bisect.bisect_right(self._ends, index)
        local = index - (self._ends[shard - 1] if shard else 0)
        try:
            return self._reader(shard).read([local])[0]
        except Exception as e:  # noqa: BLE001  riegeli: RuntimeError "Corrupted ... hash mismatch", ...
            raise DatasetError(f"dataset {self.name}: record {index} (record {local} of shard "
                               f"{self.paths[shard]}) cannot be read: {_first_line(e)}; {self.hint}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]
