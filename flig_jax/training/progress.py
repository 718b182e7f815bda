"""Progress bar and metric logs of a training run; only process 0 prints or writes."""

import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import tqdm

from flig_jax.training import metrics_file, tensorboard


def note(message: str) -> None:
  """Prints a line for the user to stderr (process 0 only), around any progress bar."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(message, file=sys.stderr)


class RunLog:
  """Appends metrics as JSON lines to `<workdir>/metrics.jsonl`, writes them as TensorBoard scalars
  to `<workdir>/tensorboard`, and drives a tqdm progress bar.

  Args:
    workdir: the run's working directory.
    stage1_steps: stage 1's length; TensorBoard numbers stage-2 steps after it.
    resume_step: the checkpoint step the run resumes from, 0 for a fresh start (TensorBoard hides
      what an interrupted earlier run logged after it, as `metrics_file.trim` drops it; the
      scalars at the checkpoint step itself stay, as that file's rows do).
  """

  def __init__(self, workdir: Path, stage1_steps: int = 0, resume_step: int = 0):
    self.active = jax.process_index() == 0
    self.path = Path(workdir) / metrics_file.NAME
    self._bar = None
    self._stage1_steps = int(stage1_steps)
    self.events = tensorboard.ScalarWriter(
        workdir, purge_step=int(resume_step) + 1 if resume_step else 0)

  def start(self, stage: int, first_step: int, total_steps: int) -> None:
    if self.active:
      self._bar = tqdm.tqdm(total=total_steps, initial=first_step, desc=f'stage {stage}',
                            dynamic_ncols=True, mininterval=1.0)
    self._stage, self._time, self._last = stage, time.perf_counter(), first_step

  def advance(self) -> None:
    if self._bar is not None:
      self._bar.update(1)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    """Logs metrics (already averaged since the last call) at `step` (steps done in the stage),
    with the training speed since the last row that advanced (none on a row at the same step,
    such as the validation scores)."""
    record = {'stage': self._stage, 'step': step}
    if step > self._last:
      now = time.perf_counter()
      record['steps_per_s'] = round((step - self._last) / max(now - self._time, 1e-9), 3)
      self._time, self._last = now, step
    record.update({k: float(np.asarray(v)) for k, v in metrics.items()})
    if not self.active:
      return
    with self.path.open('a') as f:
      f.write(json.dumps(record) + '\n')
    offset = self._stage1_steps if self._stage == 2 else 0
    self.events.write(step + offset, {f'stage{self._stage}/{k}': v for k, v in record.items()
                                      if k not in ('stage', 'step')})
    if self._bar is not None:
      shown = {k: f'{v:.4g}' for k, v in record.items() if k not in ('stage', 'step')}
      self._bar.set_postfix(shown, refresh=False)

  def record(self, stage: int, step: int, metrics: dict[str, Any]) -> None:
    """Appends metrics that no training step produced (such as cross-validated scores) at
    `step` of `stage` to metrics.jsonl: no speed, no TensorBoard scalar, no progress bar."""
    if self.active:
      record = {'stage': stage, 'step': step, **{k: float(np.asarray(v))
                                                 for k, v in metrics.items()}}
      with self.path.open('a') as f:
        f.write(json.dumps(record) + '\n')

  def record_times(self, stage: int, step: int, seconds: dict[str, float]) -> None:
    """Appends the run's time breakdown (`timing.Breakdown.seconds`) at `step` of `stage` to
    metrics.jsonl, as {'stage', 'step', 'time_s': {part: seconds, ..., 'total': seconds}}."""
    if self.active:
      with self.path.open('a') as f:
        f.write(json.dumps({'stage': stage, 'step': step, 'time_s': seconds}) + '\n')

  def info(self, message: str) -> None:
    if self.active:
      tqdm.tqdm.write(message)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    self.events.close()
