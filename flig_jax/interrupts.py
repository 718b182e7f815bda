"""Ctrl-C at any moment of a command-line run stops it, with one line and exit status 130.

Python turns Ctrl-C into a KeyboardInterrupt in whatever code runs at that moment. During start-up
that is often an import of a compiled extension (jaxlib, numpy), which then fails with an
ImportError, prints a traceback or crashes, or one of JAX's garbage-collection callbacks, where
Python prints "Exception ignored in ..." and carries on: the run would train to the end.

After `install`, Ctrl-C during an import, or one that a callback swallowed, is raised again a
moment later (`_RETRY_SECONDS`, by SIGALRM), once the import is done; the training loop and
`cli.guarded` `check` as well, in case some code swallowed it for good.
"""

import os
import signal
import sys
import threading

_RETRY_SECONDS = 0.05
_requested = False
_default_unraisablehook = sys.unraisablehook
_default_excepthook = sys.excepthook


def _importing(frame) -> bool:
  """Whether `frame` runs inside an import (its stack holds importlib's own frames)."""
  while frame is not None:
    if frame.f_code.co_filename.startswith('<frozen importlib'):
      return True
    frame = frame.f_back
  return False


def _retry_later() -> None:
  signal.setitimer(signal.ITIMER_REAL, _RETRY_SECONDS)


def _interrupt(frame) -> None:
  if _importing(frame):
    _retry_later()
    return
  raise KeyboardInterrupt


def _on_sigint(signum, frame):
  del signum
  global _requested
  _requested = True
  _interrupt(frame)


def _on_retry(signum, frame):
  del signum
  if _requested:
    _interrupt(frame)


def _unraisable(info) -> None:
  """A KeyboardInterrupt that Python could not raise (e.g. in a callback of the garbage collector)
  is raised again a moment later, without Python's report of it; other errors are reported."""
  if _requested and info.exc_type is KeyboardInterrupt:
    _retry_later()
    return
  _default_unraisablehook(info)


def _excepthook(exc_type, exc, tb) -> None:
  """A KeyboardInterrupt that no code caught (or an error it caused) ends the process with one
  line and status 130."""
  if not (_requested or issubclass(exc_type, KeyboardInterrupt)):
    _default_excepthook(exc_type, exc, tb)
    return
  print('interrupted', file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(130)


def install() -> None:
  """Makes Ctrl-C stop the run wherever it lands (main thread only; uses SIGALRM)."""
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, _on_sigint)
    signal.signal(signal.SIGALRM, _on_retry)
    sys.unraisablehook = _unraisable
    sys.excepthook = _excepthook


def requested() -> bool:
  """Whether Ctrl-C was pressed since `install`."""
  return _requested


def check() -> None:
  """Raises KeyboardInterrupt if Ctrl-C was pressed since `install` (some code swallowed it)."""
  if _requested:
    signal.setitimer(signal.ITIMER_REAL, 0)
    raise KeyboardInterrupt
