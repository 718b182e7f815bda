"""Batches built ahead of the step that consumes them: a background thread turns batches `i + 1`
and `i + 2` of a `BatchStream` into global device arrays while the device runs step `i`.

The batch of step `i` is still `stream.batch(i)`, a pure function of (seed, i), so a resumed run
feeds exactly what an uninterrupted one would.
"""

import queue
import threading
from collections.abc import Iterator
from typing import Any

import jax
from typing_extensions import Self

from flig_jax.data import BatchStream
from flig_jax.training import parallel

_POLL_S = 0.05  # how often a blocked producer checks whether it was told to stop


class DeviceBatches(Iterator[dict[str, jax.Array]]):
  """Global batches `first`, `first + 1`, ... of `stream` on `mesh`, `depth` of them built ahead.

  `stream` is a `BatchStream` or anything with its `batch(step)` (e.g. `stacked_folds.Streams`);
  each batch is split over the devices along `axis` (`parallel.global_batch`). `depth` 0 builds
  each batch when it is asked for, in the caller's thread. Use as a context manager (or call
  `close`) so the thread stops when the loop ends early. An error raised while building a batch is
  raised again by `next` at that batch.
  """

  def __init__(self, stream: BatchStream, first: int, mesh: Any, depth: int = 2, axis: int = 0):
    if depth < 0:
      raise ValueError(f'prefetch depth must be >= 0, got {depth}')
    self._stream, self._mesh, self._next_step, self._axis = stream, mesh, first, axis
    self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    self._stop = threading.Event()
    self._thread = None
    if depth:
      self._thread = threading.Thread(target=self._fill, args=(stream, first), daemon=True,
                                      name='flig_jax-prefetch')
      self._thread.start()

  def _put(self, item: tuple[bool, Any]) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=_POLL_S)
        return True
      except queue.Full:
        continue
    return False

  def _fill(self, stream: BatchStream, step: int) -> None:
    try:
      while self._put((True, self._global(stream.batch(step)))):
        step += 1
    except Exception as e:  # noqa: BLE001 -- handed to the consumer, which raises it
      self._put((False, e))

  def _global(self, local: dict[str, Any]) -> dict[str, jax.Array]:
    return parallel.global_batch(local, self._mesh, axis=self._axis)

  def __next__(self) -> dict[str, jax.Array]:
    if self._thread is None:
      self._next_step += 1
      return self._global(self._stream.batch(self._next_step - 1))
    ok, item = self._queue.get()
    if not ok:
      self.close()
      raise item
    return item

  def close(self) -> None:
    """Stops the thread and drops the batches built ahead."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()

  def __enter__(self) -> Self:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
