"""Many models in one program: S independent copies of a training step, `jax.vmap`ped over a
leading seed axis of the state and of the batch, and jitted as `parallel.jit_step` jits one.

Each model keeps its own parameters, optimiser state and RNG (its row of the stacked state) and
reads its own batches (its row of the stacked batch); the S models share only the program. Any pure
step `step(state, batch) -> (state, metrics)` works: `steps.stage1_step` and `steps.stage2_step`
with their model and config bound by `functools.partial`, on states from
`train_state.create_stage1_state` / `create_stage2_state`.
"""

import operator
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from flig_jax.training import parallel

T = TypeVar('T')


def seed_batch_sharded(mesh: Mesh) -> NamedSharding:
  """Stacked batches (S, B, ...): the seed axis whole on every device, the batch axis split."""
  return parallel.batch_sharded(mesh, axis=1)


def _stack_trees(*trees: T) -> T:
  """The trees' leaves stacked on a new leading axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def stack(states: Sequence[T], mesh: Mesh) -> T:
  """The S states as one, every leaf stacked on a new leading axis, replicated on `mesh`.

  The states must share their structure (the same model and optimiser settings: states created from
  configs that differ only in the seed do); static fields (e.g. the adapter's sizes, the
  optimisers) must be equal.
  """
  if not states:
    raise ValueError('seeds.stack: no states to stack')
  return parallel.jit_init(_stack_trees, mesh)(*states)


def unstack(stacked: T) -> list[T]:
  """The inverse of `stack`: the S separate states (or metrics) of a stacked one."""
  count = jax.tree.leaves(stacked)[0].shape[0]
  return [jax.tree.map(operator.itemgetter(i), stacked) for i in range(count)]


def global_batch(local: Sequence[dict[str, np.ndarray]], mesh: Mesh) -> dict[str, jax.Array]:
  """The stacked global batch of S models from this process's rows of each model's batch.

  Args:
    local: one batch per model (seed order), each holding this process's rows, as
      `parallel.global_batch` takes them.
    mesh: the device mesh.

  Returns:
    Each field as one (S, B, ...) array, B the global batch size, split over the devices along B.
  """
  stacked = {k: np.stack([np.asarray(batch[k]) for batch in local]) for k in local[0]}
  return parallel.global_batch(stacked, mesh, seed_batch_sharded(mesh), axis=1)


def over_models(step_fn: Callable[..., Any], vectorize: bool = True) -> Callable[..., Any]:
  """`step_fn` for S models: `step(states, batches) -> (states, metrics)`, all stacked.

  Args:
    step_fn: a pure `step(state, batch) -> (state, metrics)` of one model.
    vectorize: `jax.vmap` (one batched operation per operation of `step_fn`), else one copy of
      `step_fn` per model side by side in the program ("unrolled"). Under vmap a convolution with
      per-model kernels becomes a grouped convolution, and its kernel gradient one with an
      image-sized window, which XLA's CPU backend runs far slower than S plain ones
      (benchmarks/seeds.py): convolutional steps on CPU want `vectorize=False`.
  """
  if vectorize:
    return jax.vmap(step_fn)

  def each(states, batches):
    count = jax.tree.leaves(states)[0].shape[0]
    outs = [step_fn(*jax.tree.map(operator.itemgetter(i), (states, batches)))
            for i in range(count)]
    return _stack_trees(*outs)

  return each


def jit_step(step_fn: Callable[..., Any], mesh: Mesh, vectorize: bool = True) -> Callable[..., Any]:
  """Jits `step_fn(state, batch) -> (state, metrics)` for S models in one program.

  The returned `step(states, batches) -> (states, metrics)` takes a `stack`ed state and a stacked
  batch (`global_batch`) and returns the S new states and metrics stacked the same way: row s is
  what `step_fn` gives on row s alone (`over_models`; `vectorize` chooses how). As in
  `parallel.jit_step`, the states are replicated and donated and each batch is split over the
  devices (along its batch axis, the second).
  """
  return parallel.jit_step(over_models(step_fn, vectorize), mesh, batch_axis=1)
