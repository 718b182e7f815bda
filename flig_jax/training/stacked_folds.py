"""The K cross-validation folds' stage 2 as one program: their states stacked on a leading fold
axis, the step and the held-out predictions `jax.vmap`ped over it (`cross_validation.stage2`).

Row f of the stacked state is fold f's own `Stage2State` (flow, discriminator, optimiser states,
RNG, adapter, feature statistics, pixel path); only the autoencoder, which every fold shares, is
held once and not stacked, so the decoder's convolutions see one kernel and the folds as more
images. Row f of a stacked batch is batch `step` of fold f's own stream, so each fold evolves as it
would alone. The folds stack only when their states have the same shapes (the same adapter k);
`stackable` says whether they do.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flig_jax.training import parallel, validation
from flig_jax.training.train_state import Stage2State


def _with_autoencoder(state: Stage2State, autoencoder: Any) -> Stage2State:
  return state.replace(frozen=state.frozen.replace(autoencoder=autoencoder))


def _without_autoencoder(state: Stage2State) -> Stage2State:
  return _with_autoencoder(state, None)


def fold_axes(state: Stage2State) -> Stage2State:
  """`jax.vmap`'s axes for a stacked state: 0 on every leaf but the shared autoencoder's (None)."""
  return _without_autoencoder(jax.tree.map(lambda _: 0, state))


def stack(states: Sequence[Stage2State]) -> Stage2State:
  """The K folds' states as one: every leaf stacked on a new leading axis but the autoencoder,
  taken (copied) from the first fold. Pure: jit it (`parallel.jit_init`) or `jax.eval_shape` it."""
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *map(_without_autoencoder, states))
  return _with_autoencoder(stacked, jax.tree.map(jnp.copy, states[0].frozen.autoencoder))


def stackable(states: Sequence[Stage2State]) -> bool:
  """Whether the folds' states share their structure and every leaf's shape and dtype."""
  def signature(state):
    rest = _without_autoencoder(state)
    return jax.tree.structure(rest), [(x.shape, x.dtype) for x in jax.tree.leaves(rest)]
  first = signature(states[0])
  return all(signature(s) == first for s in states[1:])


def over_folds(step_fn: Callable[..., Any]) -> Callable[..., Any]:
  """A stage-2 step `step(state, batch) -> (state, metrics)` for a `stack`ed state and a stacked
  batch (K, B, ...): row f is `step_fn` on row f alone. Pure: jit it with
  `parallel.jit_step(..., batch_axis=1)`."""

  def folds_step(state, batch):
    axes = fold_axes(state)
    return jax.vmap(step_fn, in_axes=(axes, 0), out_axes=(axes, 0))(state, batch)

  return folds_step


def predictions(module: Any, state: Stage2State, features: jax.Array,
                adapted: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`validation.predictions` of one fold's current flow: decoded images and encoded responses of
  held-out pairs (standardised features h and adapted responses A(r))."""
  return validation.predictions(module, state.frozen.variables(state.flow_params), features,
                                adapted)


def predictions_over_folds(module: Any, state: Stage2State, features: jax.Array,
                           adapted: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`predictions` of every fold of a `stack`ed state on its own held-out pairs (K, M, D) each:
  (K, M, H, W, C) decoded images and (K, M, U) encoded responses."""
  def one(s, f, a):
    return predictions(module, s, f, a)
  return jax.vmap(one, in_axes=(fold_axes(state), 0, 0))(state, features, adapted)


class Streams:
  """The K folds' batch streams as one: `batch(step)` stacks their batches `step` (this
  process's rows of each) on a leading fold axis, for `prefetch.DeviceBatches(..., axis=1)`."""

  def __init__(self, streams: Sequence[Any]):
    self.streams = list(streams)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    batches = [s.batch(step) for s in self.streams]
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def shapes(state: Stage2State, batch: dict[str, jax.ShapeDtypeStruct], folds: int,
           held_out: int, mesh: Any) -> tuple[Stage2State, dict[str, jax.ShapeDtypeStruct],
                                              dict[str, jax.ShapeDtypeStruct]]:
  """The abstract arguments of the stacked programs, placed as their calls place them.

  Args:
    state: one fold's abstract state.
    batch: one fold's abstract batch.
    folds: K.
    held_out: the rows of the held-out inputs (the largest fold).
    mesh: the device mesh.

  Returns:
    (the stacked state, the stacked batch, the held-out 'features' and 'adapted' (K, M, D)).
  """
  repl = parallel.replicated(mesh)
  stacked = jax.eval_shape(stack, [state] * folds)
  stacked_batch = {k: jax.ShapeDtypeStruct((folds,) + v.shape, v.dtype) for k, v in batch.items()}
  d = state.frozen.feature_mean.shape[-1]
  held = {k: jax.ShapeDtypeStruct((folds, held_out, d), jnp.float32)
          for k in ('features', 'adapted')}
  return (parallel.placed(stacked, repl),
          parallel.placed(stacked_batch, parallel.batch_sharded(mesh, axis=1)),
          parallel.placed(held, repl))
