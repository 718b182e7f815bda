"""Compiles run in a background thread ahead of the call that needs them: stage 2's step is
lowered and compiled for its abstract shapes while stage 1 trains (`loop.Stage2Programs`).

The thread fills the jitted function's own caches (trace, lowering, executable), so the first real
call with arrays of those shapes runs at once. A compile ahead is only a head start: when it fails,
or the real shapes turn out different, the first call compiles (and raises) as it would anyway.
"""

import threading
from collections.abc import Callable
from typing import Any

from flig_jax.training import timing


class Ahead:
  """Runs `compile_fn()` (e.g. `jax.jit(f).lower(*shapes).compile()`) in a daemon thread.

  `wait` joins it; the time spent waiting counts as 'compile' in the run's time breakdown.
  """

  def __init__(self, compile_fn: Callable[[], Any]):
    self.error: BaseException | None = None
    self._thread = threading.Thread(target=self._run, args=(compile_fn,), daemon=True,
                                    name='flig_jax-compile-ahead')
    self._thread.start()

  def _run(self, compile_fn: Callable[[], Any]) -> None:
    try:
      compile_fn()
    except Exception as e:  # noqa: BLE001 -- the real call compiles and reports for itself
      self.error = e

  def done(self) -> bool:
    return not self._thread.is_alive()

  def wait(self) -> None:
    """Blocks until the compile has finished (or failed)."""
    if self._thread.is_alive():
      with timing.section('compile'):
        self._thread.join()
