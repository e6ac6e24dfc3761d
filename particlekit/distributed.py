"""Runs whose particle axis spans several processes (hosts), on JAX's own machinery.

Every process runs the same program after ``jax.distributed.initialize(...)``; a
``NamedSharding`` over a mesh of all processes' devices spreads the particles, and the
compiled steps communicate through XLA's collectives (Gloo over TCP on CPU, NCCL on GPU).
Nothing here schedules work. This module holds the host-side pieces such runs need:

- ``num_shards(sharding)``: how many pieces the particle axis is cut into;
- ``check_same_on_every_process(**values)``: a ``ValueError`` on every process, before
  tracing, when the processes were given different particle counts, keys or data (JAX
  would otherwise compute garbage or hang);
- ``to_host(tree)``: NumPy copies of result arrays, gathered across processes where a
  process holds only its own shard (``np.asarray`` refuses those).

Launch recipe (``N`` processes on one or several machines, ``HOST`` the address of
process 0)::

    # on each process i = 0 .. N-1
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU only
    jax.distributed.initialize("HOST:12345", num_processes=N, process_id=i)
    mesh = jax.make_mesh((jax.device_count(),), ("p",),
                         axis_types=(jax.sharding.AxisType.Auto,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("p"))
    res = pk.filters.bootstrap(key, ssm, ys, num_particles=M, sharding=sharding)
"""

from __future__ import annotations

import hashlib

import jax
import numpy as np

__all__ = ["num_shards", "spans_processes", "check_same_on_every_process", "to_host"]


def _check_is_sharding(sharding) -> None:
    """A ``ValueError`` for anything but ``None`` or a ``jax.sharding.Sharding`` (a string
    or a mesh counted as 1 piece, and ``spans_processes`` raised an AttributeError)."""
    if sharding is not None and not isinstance(sharding, jax.sharding.Sharding):
        raise ValueError(
            f"sharding must be None or a jax.sharding.Sharding of the particle axis, got "
            f"{sharding!r}"
        )


def num_shards(sharding) -> int:
    """The number of pieces a ``NamedSharding`` cuts the particle (leading) axis into: the
    product of the mesh sizes of the axes its first ``PartitionSpec`` entry names (1 for
    other shardings, which place whole arrays, and for an unsharded or
    ``PartitionSpec.UNCONSTRAINED`` leading axis).

    Examples
    --------
    >>> import jax
    >>> from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    >>> mesh = jax.make_mesh((1,), ("p",), axis_types=(AxisType.Auto,))
    >>> num_shards(NamedSharding(mesh, P("p"))), num_shards(NamedSharding(mesh, P()))
    (1, 1)
    """
    _check_is_sharding(sharding)
    if not isinstance(sharding, jax.sharding.NamedSharding) or len(sharding.spec) == 0:
        return 1
    first = sharding.spec[0]
    if first is None or first is jax.sharding.PartitionSpec.UNCONSTRAINED:
        # not sharded, or left to the compiler (which pads uneven pieces): no constraint
        return 1
    names = (first,) if isinstance(first, str) else tuple(first)
    return int(np.prod([sharding.mesh.shape[name] for name in names if name is not None]))


def spans_processes(sharding) -> bool:
    """Whether the sharding places data on the devices of more than one process."""
    _check_is_sharding(sharding)
    if sharding is None:
        return False
    return len({d.process_index for d in sharding.device_set}) > 1


def _fingerprint(value) -> int:
    """A 63-bit hash of a value's (a PyTree's) dtypes, shapes and bytes; PRNG keys, also
    inside a PyTree (``np.asarray`` refuses a typed key array), by their key data."""

    def key_data(leaf):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(leaf)
        return leaf

    leaves = [key_data(leaf) for leaf in jax.tree.leaves(value)]
    digest = hashlib.sha256()
    for leaf in leaves:
        arr = np.asarray(leaf)
        digest.update(str((arr.dtype, arr.shape)).encode())
        digest.update(np.ascontiguousarray(arr).tobytes())
    return int.from_bytes(digest.digest()[:8], "little") >> 1


def check_same_on_every_process(**values) -> None:
    """Raise the same ``ValueError`` on every process if the processes disagree on any of
    ``values`` (particle counts, keys, data; compared by a hash of their bytes). A no-op in
    a single-process run. It is a collective: every process must call it, in the same
    order."""
    if jax.process_count() == 1 or not values:
        return
    from jax.experimental import multihost_utils

    names = sorted(values)
    local = np.array([_fingerprint(values[name]) for name in names], dtype=np.int64)
    every = np.asarray(multihost_utils.process_allgather(local))  # (processes, values)
    differ = [name for j, name in enumerate(names) if np.any(every[:, j] != every[0, j])]
    if differ:
        raise ValueError(
            f"the {jax.process_count()} processes of this sharded run were given different "
            f"{', '.join(differ)}: every process must call the recipe with the same "
            "arguments (the same key, particle count and data)"
        )


def to_host(tree):
    """NumPy copies of the arrays of ``tree``; an array sharded over several processes is
    gathered first (a collective: call it on every process), so every process gets the
    whole array.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> to_host({"a": jnp.arange(3)})["a"].tolist()
    [0, 1, 2]
    """

    def one(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(leaf)

    return jax.tree.map(one, tree)
