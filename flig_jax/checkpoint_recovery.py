"""Trust a checkpoint only once it reads back: find the newest step whose every item restores.

A step can be damaged after orbax committed it (a full disk, a copy cut short, a bad sector): each
of its items (`meta`, `config`, `state`, `model`) is read here into host memory, so a damaged step
is named and skipped instead of failing deep inside a restore.
"""

import contextlib
import gc
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
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


def _json_problem(item_dir: Path) -> str | None:
  files = sorted(p for p in item_dir.iterdir() if p.name != 'commit_success.txt') if (
      item_dir.is_dir()) else []
  if not files:
    return f'{item_dir} holds no file'
  for path in files:
    try:
      json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
      return f'{path} is not valid JSON ({_short(e)})'
  return None


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


def _array_problem(item_dir: Path) -> str | None:
  """Reads every array of the item into numpy (no sharding needed); the error if one fails."""
  try:
    tree = ocp.StandardCheckpointHandler().metadata(epath.Path(item_dir)).tree
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree)
    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())  # synchronous
    with _quiet_stderr(grace_s=0.5):
      try:
        checkpointer.restore(epath.Path(item_dir), args=ocp.args.StandardRestore(target))
      finally:
        checkpointer.close()
  except Exception as e:  # noqa: BLE001 -- orbax and tensorstore raise many kinds
    return f'{item_dir.name}: {_short(e)}'
  return None


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
  """Why the checkpoint step at `step_dir` does not restore, in a line, or None if it does."""
  step_dir = Path(step_dir)
  if not step_dir.is_dir():
    return f'{step_dir} is missing'
  for name in JSON_ITEMS:
    if not (step_dir / name).is_dir():
      return f'{step_dir} has no {name!r} item'
    if reason := _json_problem(step_dir / name):
      return reason
  for name in ARRAY_ITEMS:
    if (step_dir / name).exists() and (reason := _array_problem(step_dir / name)):
      return reason
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


def set_aside(directory: str | os.PathLike, step: int, workdir: str | os.PathLike) -> Path:
  """Moves the damaged step out of the manager's way, to `<workdir>/damaged_checkpoints/<step>`
  (kept for inspection; delete it at will), so training can save that step again."""
  target = Path(workdir) / 'damaged_checkpoints' / str(step)
  if target.exists():
    shutil.rmtree(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  shutil.move(os.fspath(Path(directory) / str(step)), os.fspath(target))
  return target
