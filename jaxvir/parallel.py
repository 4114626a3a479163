"""Devices: the data-parallel mesh, shardings, and multi-host start-up.

Every step runs on a `Mesh` of all devices with one axis, "data": batches are split along it,
parameters and optimizer state are replicated. The same code runs on one device, on N local
devices, and on several hosts once `initialize` has called `jax.distributed.initialize`.
"""

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def initialize(config: ml_collections.ConfigDict) -> None:
  """Starts multi-host JAX when `config.distributed` is set (before any other JAX call).

  With `coordinator_address`, `num_processes` and `process_id` unset, JAX detects them on
  Cloud TPU, SLURM and Open MPI clusters; otherwise set all three on every host.
  """
  if not config.distributed:
    return
  jax.distributed.initialize(
    coordinator_address=config.coordinator_address,
    num_processes=config.num_processes,
    process_id=config.process_id,
  )


def make_mesh() -> Mesh:
  """A one-axis ("data") mesh over all devices of all processes."""
  return Mesh(np.asarray(jax.devices()), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of arrays held whole on every device."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The sharding of arrays split along their first (batch) axis."""
  return NamedSharding(mesh, PartitionSpec("data"))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles this process's part of a global batch into arrays sharded over the mesh."""
  sharding = batch_sharding(mesh)
  return {
    name: jax.make_array_from_process_local_data(sharding, value) for name, value in batch.items()
  }
