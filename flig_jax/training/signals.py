"""Signals during training: SIGTERM (what SLURM and Kubernetes send) and Ctrl-C (SIGINT).

`TerminateRaises` covers a whole run: SIGTERM raises `Preempted` at once, as Ctrl-C raises
KeyboardInterrupt. `InterruptRequest` covers the training steps: either signal only asks the loop
to save and stop at the next step boundary. (`flig_jax.interrupts` makes Ctrl-C stop a
command-line run at any other moment.)
"""

import signal
import threading
from collections.abc import Callable

from flig_jax import interrupts
from flig_jax.training import Preempted


def _raise_preempted(signum, frame):
  del signum, frame
  raise Preempted('terminated (SIGTERM) outside the training steps')


class TerminateRaises:
  """While active, SIGTERM raises `Preempted` at once, as Ctrl-C raises KeyboardInterrupt, so that
  `finally` blocks finish the checkpoint writes under way."""

  def __enter__(self):
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, _raise_preempted)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class InterruptRequest:
  """While active, Ctrl-C (SIGINT) or SIGTERM only sets `requested` (to the signal); the loop stops
  at the next step boundary, where the state is whole and no checkpoint is being written. A second
  signal of the same kind interrupts at once."""

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.requested = None
    self._previous = {}

  def __enter__(self):
    interrupts.check()  # a Ctrl-C before the stage that JAX swallowed
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def _handle(self, signum, frame):
    del frame
    self.requested = signum
    signal.signal(signum, self._previous[signum])

  def __exit__(self, *exc):
    for s, previous in self._previous.items():
      signal.signal(s, previous)

  def stop(self, saved_at: str, note: Callable[[str], None]) -> None:
    """Ends the run after the save at the step boundary a signal asked for: raises `Preempted` for
    SIGTERM; for Ctrl-C notes `interrupted: <saved_at>` and raises KeyboardInterrupt."""
    if self.requested == signal.SIGTERM:
      raise Preempted(f'terminated (SIGTERM): {saved_at}')
    note(f'interrupted: {saved_at}')
    raise KeyboardInterrupt
