"""Device mesh and parameter sharding rules (regexes over parameter paths)."""

from __future__ import annotations

import logging
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger("edvr_jax")
BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``('data', 'fsdp')`` mesh over all devices; one size may be -1 (all the rest).

    Axis types are Auto: shardings are given explicitly to ``jax.jit`` and XLA propagates
    the rest, which is what ``pjit`` did.
    """
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    sizes = [data, fsdp]
    if sizes.count(-1) > 1:
        raise ValueError(f"only one mesh axis may be -1, got data={data}, fsdp={fsdp}")
    if -1 in sizes:
        other = int(np.prod([s for s in sizes if s != -1]))
        if n % other:
            raise ValueError(f"{n} devices do not divide into a mesh axis of {other}")
        sizes[sizes.index(-1)] = n // other
    if int(np.prod(sizes)) != n:
        raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} needs {np.prod(sizes)} devices, there are {n}")
    return jax.make_mesh(tuple(sizes), BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES))


def tree_shardings(tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Sequence[str | None]]]) -> Any:
    """A ``NamedSharding`` per leaf of ``tree`` (arrays or ``ShapeDtypeStruct``s): the first rule whose
    regex matches the leaf's path (``params/pcd_align/dcn_pack_l1/kernel``, and the same
    names inside optimizer states) gives its ``PartitionSpec``; no match replicates. An axis
    whose size the mesh axis does not divide stays unsharded."""
    compiled = [(re.compile(r), tuple(spec)) for r, spec in rules]

    def one(path, leaf):
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        shape = getattr(leaf, "shape", ())
        for regex, spec in compiled:
            if regex.search(name):
                if len(spec) != len(shape):
                    continue
                fitted = tuple(ax if ax is None or shape[i] % mesh.shape[ax] == 0 else None
                               for i, ax in enumerate(spec))
                return NamedSharding(mesh, P(*fitted))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(one, tree)


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This process's rows of the global batch -> global arrays sharded over the mesh."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
