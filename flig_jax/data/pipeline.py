"""Seeded, random-access training batches of a split: batch number `step` is a pure function of
(seed, step), so a resumed run restores its input position from the step alone (the checkpoint
needs no iterator state)."""

from __future__ import annotations

import functools

import numpy as np


def _mixed_seed(seed: int) -> int:
  """A 32-bit shuffle seed from any non-negative `seed`, so nearby user seeds share no epochs."""
  if seed < 0:
    raise ValueError(f'seed must be >= 0, got {seed}')
  return int(np.random.SeedSequence(seed).generate_state(1)[0])


class BatchStream:
  """Global batches of a split, reshuffled every epoch, each process reading its own shard.

  Epoch e visits the rows in a fresh permutation seeded by (seed, e) and is cut into
  `steps_per_epoch = N // global_batch_size` batches; the remainder of each epoch is dropped, so
  every row appears at most once per epoch and a different remainder is dropped each epoch.

  When the split holds fewer rows than one global batch (N < global_batch_size), batches are cut
  from the endless sequence of per-epoch permutations instead, so rows repeat within a batch (every
  row appears floor or ceil of B / N times per batch) and `steps_per_epoch` is 1. The batch shape
  stays fixed either way, which jitted, sharded steps need; clamping the batch would change it.

  Process `p` of `P` gets rows [p * B / P, (p + 1) * B / P) of each global batch, and gathers only
  those rows. The permutations are numpy's, one per epoch and memoised; the training loop calls
  `batch(step)` for each step it runs.
  """

  def __init__(self, arrays: dict[str, np.ndarray], global_batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    """Builds the stream.

    Args:
      arrays: equal-length arrays of one split, indexed by row (axis 0).
      global_batch_size: rows per global batch, summed over processes.
      seed: shuffle seed (>= 0).
      process_index: this process, in [0, process_count).
      process_count: number of processes; must divide global_batch_size.

    Raises:
      ValueError: empty or unequal arrays, or batch sizes and process counts that do not fit.
    """
    if not arrays:
      raise ValueError('BatchStream needs at least one array')
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f'arrays differ in length: {lengths}')
    self.num_rows = next(iter(lengths.values()))
    if self.num_rows == 0:
      raise ValueError('the split is empty')
    if global_batch_size < 1:
      raise ValueError(f'global_batch_size must be >= 1, got {global_batch_size}')
    if process_count < 1 or not 0 <= process_index < process_count:
      raise ValueError(f'process {process_index} of {process_count} is not valid')
    if global_batch_size % process_count:
      raise ValueError(f'global_batch_size {global_batch_size} does not divide among '
                       f'{process_count} processes')
    self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
    self.global_batch_size = global_batch_size
    self.seed = seed
    self.process_index, self.process_count = process_index, process_count
    self.local_batch_size = global_batch_size // process_count
    self.steps_per_epoch = max(1, self.num_rows // global_batch_size)
    self._seed = _mixed_seed(seed)
    self._permutation = functools.lru_cache(maxsize=4)(self._epoch_order)

  def global_positions(self, step: int) -> np.ndarray:
    """Positions in the endless per-epoch-permutation sequence that global batch `step` takes."""
    if step < 0:
      raise ValueError(f'step must be >= 0, got {step}')
    b, n = self.global_batch_size, self.num_rows
    if n < b:
      start = step * b
    else:
      epoch, within = divmod(step, self.steps_per_epoch)
      start = epoch * n + within * b
    return np.arange(start, start + b, dtype=np.int64)

  def global_rows(self, step: int) -> np.ndarray:
    """Row indices of global batch `step`, shape (global_batch_size,)."""
    return self._rows(self.global_positions(step))

  def local_rows(self, step: int) -> np.ndarray:
    """Row indices of this process's shard of global batch `step`."""
    lo = self.process_index * self.local_batch_size
    return self._rows(self.global_positions(step)[lo:lo + self.local_batch_size])

  def _epoch_order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self._seed, epoch]).permutation(self.num_rows)

  def _rows(self, positions: np.ndarray) -> np.ndarray:
    """Rows at positions of the endless sequence (position e * N + i: row i of epoch e's order)."""
    epochs, within = np.divmod(positions, self.num_rows)
    rows = np.empty_like(positions)
    for epoch in np.unique(epochs):
      here = epochs == epoch
      rows[here] = self._permutation(int(epoch))[within[here]]
    return rows

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's contiguous shard (global_batch_size // process_count rows) of batch `step`."""
    rows = self.local_rows(int(step))
    return {k: v[rows] for k, v in self.arrays.items()}
