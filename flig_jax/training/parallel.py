"""Devices and shardings of training, and the jit of its init and step: data parallel on a mesh
axis `data`.

Parameters and optimiser state are replicated; every batch is split along its batch axis (the first,
or the second for the stacked batches of several models run as one program, `seeds` and
`stacked_folds`) across all devices of all processes. Each process holds its own rows of the global
batch and builds the global array with `jax.make_array_from_process_local_data`.
"""

import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'


def maybe_initialize_distributed(requested: bool) -> None:
  """Calls `jax.distributed.initialize()` when asked by the config or by FLIG_DISTRIBUTED=1.

  The coordinator address, process count and process id come from JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID when set, else from the cluster JAX detects (SLURM, TPU pods,
  ...). Must run before anything touches a JAX device.
  """
  if not (requested or os.environ.get('FLIG_DISTRIBUTED') == '1'):
    return
  if jax.distributed.is_initialized():
    return
  env = os.environ
  kwargs = {}
  if 'JAX_COORDINATOR_ADDRESS' in env:
    kwargs['coordinator_address'] = env['JAX_COORDINATOR_ADDRESS']
  if 'JAX_NUM_PROCESSES' in env:
    kwargs['num_processes'] = int(env['JAX_NUM_PROCESSES'])
  if 'JAX_PROCESS_ID' in env:
    kwargs['process_id'] = int(env['JAX_PROCESS_ID'])
  jax.distributed.initialize(**kwargs)


def make_mesh() -> Mesh:
  """A 1-D mesh over every device of every process."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh, axis: int = 0) -> NamedSharding:
  """Batches split over the devices along `axis` (1: stacked batches (S, B, ...), the leading axis
  whole on every device)."""
  return NamedSharding(mesh, PartitionSpec(*(None,) * axis, DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh, what: str) -> None:
  """Stops with a clear message when a global batch cannot be split evenly over the devices."""
  if global_batch_size % mesh.size:
    raise ValueError(
        f'{what}.batch_size={global_batch_size} must be a multiple of the number of devices '
        f'({mesh.size}); set --config.{what}.batch_size to a multiple of {mesh.size}.')


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree of host values (identical on every process) on every device."""
  sharding = replicated(mesh)

  def put(x):
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
      return x
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def placed(tree: Any, sharding: NamedSharding) -> Any:
  """Abstract values (`jax.ShapeDtypeStruct`) of `tree` placed with `sharding`: the arguments a
  compile ahead lowers for, arriving as the real call's arguments will."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding,
                                                     weak_type=x.weak_type), tree)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, sharding: NamedSharding | None = None,
                 axis: int = 0) -> dict[str, jax.Array]:
  """Builds the global batch from this process's rows (its contiguous shard, in process order)
  along `axis`, placed with `sharding` (default `batch_sharded` along `axis`)."""
  sharding = sharding or batch_sharded(mesh, axis)
  count = jax.process_count()

  def put(x):
    shape = x.shape[:axis] + (x.shape[axis] * count,) + x.shape[axis + 1:]
    return jax.make_array_from_process_local_data(sharding, x, shape)

  return {k: put(np.asarray(v)) for k, v in local.items()}


def jit_init(init_fn: Callable[..., Any], mesh: Mesh) -> Callable[..., Any]:
  """Jits an initialiser so its output is created already replicated."""
  return jax.jit(init_fn, out_shardings=replicated(mesh))


def jit_replicated(fn: Callable[..., Any], mesh: Mesh) -> Callable[..., Any]:
  """Jits `fn(state, **replicated_inputs) -> (state, outputs)`, everything replicated, the state
  donated (stage 2's validation and model selection)."""
  repl = replicated(mesh)
  return jax.jit(fn, out_shardings=(repl, repl), donate_argnums=(0,))


def jit_apply(fn: Callable[..., Any], mesh: Mesh) -> Callable[..., Any]:
  """Jits `fn(*replicated_inputs) -> outputs`, its outputs replicated and nothing donated (the
  held-out predictions of cross-validation)."""
  return jax.jit(fn, out_shardings=replicated(mesh))


def jit_step(step_fn: Callable[..., Any], mesh: Mesh, batch_axis: int = 0) -> Callable[..., Any]:
  """Jits `step_fn(state, batch) -> (state, metrics)` for data parallelism.

  The state is replicated and donated: its buffers are reused for the new state, so a step holds
  one copy of the parameters and optimiser state. The batch is split over the devices along
  `batch_axis` (1 for a step of several models stacked on a leading axis).
  """
  repl, data = replicated(mesh), batch_sharded(mesh, batch_axis)
  return jax.jit(step_fn, in_shardings=(repl, data), out_shardings=(repl, repl),
                 donate_argnums=(0,))
