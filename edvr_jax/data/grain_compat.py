"""Grain 0.2.18's worker processes outside ``absl.app`` (a notebook, a script).

To start worker processes (``grain.DataLoader(worker_count > 0)``), Grain 0.2.18 reads its absl
flag ``--grain_enable_multiprocess_worker_profiling`` in the parent process
(``grain._src.core.profiler.is_worker_profiling_enabled``) without the fall-back to the
flag's default that its other options have (``grain.config.get_or_default``), so the read
raises ``UnparsedFlagAccessError`` unless absl has parsed the command line. Grain's releases
after 0.2.18 fall back to the default (google/grain#1355). Here, while the flags are unparsed,
that one flag is marked as given at its default, as Grain marks its debug flags in its worker
processes (``process_prefetch._parse_debug_flags``); ``absl.app.run`` still parses it as usual.
"""

from __future__ import annotations

from absl import flags

WORKER_PROFILING_FLAG = "grain_enable_multiprocess_worker_profiling"


def allow_worker_processes() -> None:
    """Makes Grain's worker-profiling flag readable (at its default) when absl flags are unparsed."""
    if not flags.FLAGS.is_parsed() and WORKER_PROFILING_FLAG in flags.FLAGS:
        flags.FLAGS[WORKER_PROFILING_FLAG].present = True
