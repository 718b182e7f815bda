"""Trust a checkpoint only once it reads back: find the newest step whose items restore.

A step can be damaged after orbax committed it (a full disk, a copy cut short, a bad sector): the
items a reader needs (`meta`, `config`, `state`, `model`) are read here into host memory, so a
damaged step is named and skipped instead of failing deep inside a restore. `read_json` is the one
reader of the JSON items (`meta`, `config`).
"""

import contextlib
import gc
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

JSON_ITEMS = ('meta', 'config')
ARRAY_ITEMS = ('state', 'model')
_REASON_CHARS = 240


def _short(e: BaseException) -> str:
  text = ' '.join(str(e).split()) or type(e).__name__
  return text if len(text) <= _REASON_CHARS else text[:_REASON_CHARS - 3] + '...'


class Damaged(ValueError):
  """A checkpoint item that does not read back; the message says which file and why, in a line."""


def read_json(step_dir: str | os.PathLike, name: str) -> dict[str, Any]:
  """The JSON item `name` ('meta' or 'config') of the step at `step_dir`, as orbax wrote it.

  Raises:
    Damaged: the step has no such item, or its file is not valid JSON.
  """
  item_dir = Path(step_dir) / name
  if not item_dir.is_dir():
    raise Damaged(f'{Path(step_dir)} has no {name!r} item')
  files = sorted(p for p in item_dir.iterdir() if p.name != 'commit_success.txt')
  if not files:
    raise Damaged(f'{item_dir} holds no file')
  try:
    return json.loads(files[0].read_text())
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise Damaged(f'{files[0]} is not valid JSON ({_short(e)})') from e


@contextlib.contextmanager
def _quiet_stderr(grace_s: float):
  """Sends file descriptor 2 to /dev/null: when one read of a damaged item fails, orbax's and
  tensorstore's pending reads print a traceback each from their threads (dozens of them), also
  for a while after the failure (`grace_s`)."""
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  failed = False
  try:
    yield
  except BaseException:
    failed = True
    raise
  finally:
    if failed:
      time.sleep(grace_s)
      gc.collect()
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def read_arrays(step_dir: str | os.PathLike, name: str) -> None:
  """Reads every array of the item `name` ('state' or 'model') of the step at `step_dir` into
  numpy (no sharding needed), to check it.

  Raises:
    Damaged: one does not read ('<name>: <reason>').
  """
  item_dir = Path(step_dir) / name
  with reading(name):
    tree = ocp.StandardCheckpointHandler().metadata(epath.Path(item_dir)).tree
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree)
    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())  # synchronous
    with _quiet_stderr(grace_s=0.5):
      try:
        checkpointer.restore(epath.Path(item_dir), args=ocp.args.StandardRestore(target))
      finally:
        checkpointer.close()


def steps_holding(directory: str | os.PathLike, item_name: str | None = None) -> list[int]:
  """The committed steps (ascending) under a checkpoint directory that hold `item_name` (None: any
  item), from the folder names alone (orbax writes a step under a temporary name and renames it to
  its number once complete), so a damaged step is listed instead of failing the listing."""
  directory = Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir()
                and (item_name is None or (p / item_name).is_dir()))


def problem(step_dir: str | os.PathLike) -> str | None:
  """Why the checkpoint step at `step_dir` does not restore, in a line, or None if it does: its
  JSON items must parse, and the array items it holds must read in full."""
  step_dir = Path(step_dir)
  if not step_dir.is_dir():
    return f'{step_dir} is missing'
  try:
    for name in JSON_ITEMS:
      read_json(step_dir, name)
    for name in ARRAY_ITEMS:
      if (step_dir / name).exists():
        read_arrays(step_dir, name)
  except Damaged as e:
    return str(e)
  return None


def newest_good(directory: str | os.PathLike, steps: Iterable[int],
                skipped: Callable[[int, str], Any] = lambda step, reason: None) -> int | None:
  """The newest of `steps` (saved under `directory`) that restores, or None.

  Args:
    directory: the checkpoint manager's directory.
    steps: candidate steps.
    skipped: called with (step, reason) for each newer step that does not restore.
  """
  for step in sorted(steps, reverse=True):
    reason = problem(Path(directory) / str(step))
    if reason is None:
      return step
    skipped(step, reason)
  return None


def first_that_restores(steps: Iterable[int], restore: Callable[[int], Any],
                        skipped: Callable[[int, str], Any] = lambda step, reason: None) -> Any:
  """`restore(step)` for the newest of `steps` where it succeeds (the restore is the check: every
  item is read once), or None; `skipped(step, reason)` for each newer one that failed.

  `restore` reports damage by raising `Damaged` (`read_json` does; wrap array reads in
  `reading`); what it prints to stderr while failing (tracebacks from orbax's reader threads) is
  dropped. Any other exception is a fault of the caller, not of the step, and propagates.
  """
  for step in sorted(steps, reverse=True):
    try:
      with _quiet_stderr(grace_s=0.5):
        return restore(step)
    except Damaged as e:
      skipped(step, str(e))
  return None


@contextlib.contextmanager
def reading(name: str) -> Iterator[None]:
  """Turns a failure while reading the array item `name` into `Damaged('<name>: <reason>')`."""
  try:
    yield
  except Damaged:
    raise
  except Exception as e:  # orbax and tensorstore raise many kinds
    raise Damaged(f'{name}: {_short(e)}') from e


def set_aside(directory: str | os.PathLike, step: int, workdir: str | os.PathLike) -> Path:
  """Moves the damaged step out of the manager's way, to `<workdir>/damaged_checkpoints/<step>`
  (kept for inspection; delete it at will), so training can save that step again."""
  target = Path(workdir) / 'damaged_checkpoints' / str(step)
  if target.exists():
    shutil.rmtree(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  shutil.move(os.fspath(Path(directory) / str(step)), os.fspath(target))
  return target
