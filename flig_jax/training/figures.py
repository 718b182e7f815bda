"""The two figures training writes beside its checkpoints, of the first validation pairs (training
pairs when there is no validation split: the test split stays unseen).

The arrays are computed here, in the caller's thread; `plotting` draws and writes them in one
background thread, so that matplotlib's import and drawing overlap the work that follows (stage
1's figure overlaps stage 2's set-up and steps).
"""

import concurrent.futures
from typing import Any

import jax
import numpy as np

from flig_jax.nn import compiled


class FigureWriter:
  """Queues the training figures (`stage1`, `stage2`) to one drawing thread; `wait` re-raises a
  drawing's error."""

  def __init__(self, ctx: Any):
    """`ctx`: the run's `context.Context`."""
    self._ctx = ctx
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='figures')
    self._pending: list[concurrent.futures.Future] = []

  def _submit(self, name: str, *args: Any) -> None:
    """Queues `plotting.<name>(*args)`."""
    def draw():
      from flig_jax import plotting  # pylint: disable=g-import-not-at-top
      getattr(plotting, name)(*args)
    self._pending.append(self._pool.submit(draw))

  def _pairs(self) -> tuple[np.ndarray, np.ndarray, str]:
    dataset, n = self._ctx.dataset, self._ctx.config.num_figure_images
    split, name = (dataset.val, 'val') if len(dataset.val) else (dataset.train, 'train')
    return split.images[:n], split.responses[:n], name

  def stage1(self, ae_params: Any, step: int) -> None:
    """Queues `stage1_reconstructions.png` of the autoencoder `ae_params` at `step` (process 0)."""
    if jax.process_index() != 0:
      return
    ctx, (x, _, name) = self._ctx, self._pairs()
    recon = compiled.apply(ctx.module, 'reconstruct')({'params': {'autoencoder': ae_params}}, x)
    self._submit('stage1_figure', x, np.asarray(recon), name, ctx.workdir,
                 f'{ctx.dataset.name}, {name} split: stage 1 at step {step}')

  def stage2(self, variables: Any, kept: str) -> None:
    """Queues `stage2_decoding.png` of the FLIG `variables`, the flow kept at `kept` (process
    0)."""
    if jax.process_index() != 0:
      return
    ctx, (x, r, name) = self._ctx, self._pairs()
    recon = compiled.apply(ctx.module, 'reconstruct')(variables, x)
    decoded = compiled.apply(ctx.module, 'decode')(variables, r)
    self._submit('stage2_figure', x, np.asarray(recon), np.asarray(decoded), name, ctx.workdir,
                 f'{ctx.dataset.name}, {name} split: stage 2, flow kept {kept}')

  def wait(self) -> None:
    """Waits for the queued figures; raises the first error one of them met."""
    pending, self._pending = self._pending, []
    for future in pending:
      future.result()

  def close(self) -> None:
    """Waits for the thread to end (a figure's error is left to `wait`)."""
    self._pool.shutdown(wait=True)
