"""Progress bar and metric logs of a training run; only process 0 prints or writes."""

import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import tqdm


class RunLog:
  """Appends metrics as JSON lines to `<workdir>/metrics.jsonl` and drives a tqdm progress bar."""

  def __init__(self, workdir: Path):
    self.active = jax.process_index() == 0
    self.path = Path(workdir) / 'metrics.jsonl'
    self._bar = None

  def start(self, stage: int, first_step: int, total_steps: int) -> None:
    if self.active:
      self._bar = tqdm.tqdm(total=total_steps, initial=first_step, desc=f'stage {stage}',
                            dynamic_ncols=True, mininterval=1.0)
    self._stage, self._time, self._last = stage, time.perf_counter(), first_step

  def advance(self) -> None:
    if self._bar is not None:
      self._bar.update(1)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    """Logs metrics (already averaged since the last call) at `step` (steps done in the stage)."""
    now = time.perf_counter()
    rate = (step - self._last) / max(now - self._time, 1e-9)
    self._time, self._last = now, step
    record = {'stage': self._stage, 'step': step, 'steps_per_s': round(rate, 3)}
    record.update({k: float(np.asarray(v)) for k, v in metrics.items()})
    if not self.active:
      return
    with self.path.open('a') as f:
      f.write(json.dumps(record) + '\n')
    if self._bar is not None:
      shown = {k: f'{v:.4g}' for k, v in record.items() if k not in ('stage', 'step')}
      self._bar.set_postfix(shown, refresh=False)

  def info(self, message: str) -> None:
    if self.active:
      tqdm.tqdm.write(message)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
