"""Keeps orbax's own log lines off the user's screen: it logs every save and restore, warns that a
directory opened to read is "read only", and, when a write fails, logs a traceback from each of its
threads before raising the error that flig_jax reports in one line."""

import logging
import os
import re
import sys

_ORBAX_DIR = os.sep + 'orbax' + os.sep


class _BelowLevelFromOrbax(logging.Filter):
  def __init__(self, level: int):
    super().__init__()
    self.level = level

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= self.level or _ORBAX_DIR not in record.pathname


def quiet(level: int = logging.ERROR) -> None:
  """Drops orbax's log records below `level` (CRITICAL + 1: all of them); the highest level asked
  for holds."""
  logger = logging.getLogger('absl')  # orbax logs through absl.logging
  for f in logger.filters:
    if isinstance(f, _BelowLevelFromOrbax):
      f.level = max(f.level, level)
      return
  logger.addFilter(_BelowLevelFromOrbax(level))


def _drop_closed_loop(unraisable, previous=sys.unraisablehook) -> None:
  error = unraisable.exc_value
  if isinstance(error, RuntimeError) and str(error) == 'Event loop is closed':
    return
  previous(unraisable)


class _NeverRetrieved(logging.Filter):
  # asyncio names the class: Future, Task, _GatheringFuture, ...
  _MESSAGE = re.compile(r'\w+ exception was never retrieved')

  def filter(self, record: logging.LogRecord) -> bool:
    return not self._MESSAGE.match(str(record.msg))


def quiet_failed_writes() -> None:
  """Drops what a failed orbax write leaves behind once its error is raised: tensorstore's reads
  and writes still pending report 'Event loop is closed' (as unraisable exceptions), and asyncio
  logs each future or task whose error nobody awaited."""
  if sys.unraisablehook is not _drop_closed_loop:
    sys.unraisablehook = _drop_closed_loop
  asyncio_logger = logging.getLogger('asyncio')
  if not any(isinstance(f, _NeverRetrieved) for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_NeverRetrieved())
