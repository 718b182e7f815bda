"""`metrics.jsonl`, the run's metric log (one JSON object per line with its 'stage' and 'step'),
kept valid across crashes: a resumed run first drops what the crash left past its checkpoint."""

import json
import os
from pathlib import Path

NAME = 'metrics.jsonl'


def trim(path: str | os.PathLike, stage: int, step: int) -> str:
  """Keeps the rows of `path` up to (`stage`, `step`) and drops later ones and any line that is not
  a JSON object (a line cut short by a crash or a full disk). Rewrites the file atomically.

  Args:
    path: the metrics file (nothing happens if it is absent).
    stage: the stage of the checkpoint the run resumes from (0: a fresh start, drop every row).
    step: its step within that stage.

  Returns:
    What was dropped, e.g. '3 rows past the checkpoint and 1 unreadable line', or ''.
  """
  path = Path(path)
  if not path.exists():
    return ''
  kept, later, broken = [], 0, 0
  for line in path.read_text(errors='replace').splitlines():
    try:
      row = json.loads(line)
      position = (int(row['stage']), int(row['step']))
    except (ValueError, TypeError, KeyError):
      broken += 1
      continue
    if position <= (stage, step):
      kept.append(line)
    else:
      later += 1
  if not (later or broken):
    return ''
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(''.join(line + '\n' for line in kept))
  os.replace(tmp, path)
  parts = [f'{later} row{"s" * (later != 1)} past the checkpoint'] * bool(later) + [
      f'{broken} unreadable line{"s" * (broken != 1)}'] * bool(broken)
  return ' and '.join(parts)
