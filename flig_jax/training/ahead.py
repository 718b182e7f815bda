"""Compiles run in a background thread ahead of the call that needs them: stage 1's step while the
fresh state's initialiser compiles (`loop.compile_stage1_ahead`), and stage 2's programs (the
cross-validation folds' stacked step and predictions, their initial states and stacking, then the
step) while stage 1 trains (`loop.Stage2Programs`); each is lowered and compiled for its abstract
shapes.

The thread fills the jitted functions' own caches (trace, lowering, executable), so the first real
call with arrays of those shapes runs at once. A compile ahead is only a head start: when it fails,
or the real shapes turn out different, the first call compiles (and raises) as it would anyway.
"""

import threading
from collections.abc import Callable, Sequence
from typing import Any

from flig_jax.training import timing


class Ahead:
  """Runs named compiles (e.g. `jax.jit(f).lower(*shapes).compile()`) one after another in a
  daemon thread.

  `wait(name)` blocks until that compile (and those before it) has finished; the time spent
  waiting counts as 'compile' in the run's time breakdown.
  """

  def __init__(self, compiles: Sequence[tuple[str, Callable[[], Any]]]):
    self.errors: dict[str, BaseException] = {}
    self._done = {name: threading.Event() for name, _ in compiles}
    self._thread = threading.Thread(target=self._run, args=(list(compiles),), daemon=True,
                                    name='flig_jax-compile-ahead')
    self._thread.start()

  @property
  def error(self) -> BaseException | None:
    """The first compile's error, if any failed."""
    return next(iter(self.errors.values()), None)

  def _run(self, compiles: list[tuple[str, Callable[[], Any]]]) -> None:
    for name, compile_fn in compiles:
      try:
        compile_fn()
      except Exception as e:  # noqa: BLE001 -- the real call compiles and reports for itself
        self.errors[name] = e
      finally:
        self._done[name].set()

  def done(self) -> bool:
    return not self._thread.is_alive()

  def wait(self, name: str | None = None) -> None:
    """Blocks until compile `name` has finished (or failed); every compile when None or not one
    of them."""
    event = self._done.get(name) if name is not None else None
    if event is None:
      if self._thread.is_alive():
        with timing.section('compile'):
          self._thread.join()
    elif not event.is_set():
      with timing.section('compile'):
        event.wait()
