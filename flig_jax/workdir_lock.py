"""One training run per workdir: `<workdir>/run.lock` names the run that holds it.

A second run into the same workdir is refused while the first is alive; a lock left behind by a
run that was killed (its process is gone) is taken over with a note.
"""

import datetime
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

from typing_extensions import Self

LOCK_NAME = 'run.lock'


class WorkdirBusy(RuntimeError):
  """Another live run holds the workdir."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's process
    return True
  return True


class WorkdirLock:
  """A context manager holding `<workdir>/run.lock` (pid, host, start time) for its duration.

  Args:
    workdir: the run's working directory (created if missing).
    active: False on the processes of a multi-host run other than process 0: they take no lock.
    note: prints a line, e.g. that a stale lock was taken over.
  """

  def __init__(self, workdir: str | os.PathLike, active: bool = True,
               note: Callable[[str], None] = print):
    self.path = Path(workdir) / LOCK_NAME
    self.active = active
    self._note = note
    self._held = False

  def _holder(self) -> dict | None:
    """The lock's content; {} if unreadable (a run killed while writing it), None if absent."""
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}

  def _stale(self, holder: dict) -> bool:
    """Whether the run named in the lock is certainly gone (same host, no such process)."""
    if not holder:
      return True
    return holder.get('host') == socket.gethostname() and not _alive(int(holder.get('pid', -1)))

  def acquire(self) -> None:
    """Takes the lock.

    Raises:
      WorkdirBusy: a live run (or one on another host) holds it.
    """
    if not self.active:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    mine = json.dumps({'pid': os.getpid(), 'host': socket.gethostname(),
                       'started': datetime.datetime.now().astimezone().isoformat(
                           timespec='seconds')})
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._holder()
        if holder is None:
          continue  # released meanwhile
        if not self._stale(holder):
          raise WorkdirBusy(
              f'{self.path.parent} is in use by another training run (pid {holder.get("pid")} '
              f'on {holder.get("host")}, started {holder.get("started")}); wait for it to end or '
              f'use another --workdir. If that run is gone, delete {self.path}') from None
        self._note(f'note: taking over {self.path} left by a run that is gone '
                   f'(pid {holder.get("pid")} on {holder.get("host")}, started '
                   f'{holder.get("started")})')
        self.path.unlink(missing_ok=True)
        continue
      with os.fdopen(fd, 'w') as f:
        f.write(mine)
      self._held = True
      return
    raise WorkdirBusy(f'could not take {self.path}: other runs keep starting in {self.path.parent}')

  def release(self) -> None:
    if self._held:
      self.path.unlink(missing_ok=True)
      self._held = False

  def __enter__(self) -> Self:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
