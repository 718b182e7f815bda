"""TensorBoard event files of a run's metrics, written without TensorFlow.

  tensorboard --logdir <workdir>/tensorboard   # pip install -e ".[tensorboard]" installs it

Scalars are tagged `stage<k>/<name>` and indexed by the checkpoint numbering (stage-2 steps come
after stage 1's), so both stages share one time axis. Events are written and flushed in the
calling thread (tensorboardX's record writer and protos, without its background writer), so a
write error, e.g. a full disk, surfaces at once where it can be reported.
"""

import os
import time
from collections.abc import Mapping
from pathlib import Path

SUBDIR = 'tensorboard'


class ScalarWriter:
  """Appends scalars to an event file in `<workdir>/tensorboard`, opened on first use.

  Args:
    workdir: the run's working directory.
    purge_step: TensorBoard hides the events that earlier, interrupted runs wrote at this step or
      later (the steps a resumed run replays).
  """

  def __init__(self, workdir: str | os.PathLike, purge_step: int | None = None):
    self.logdir = Path(workdir) / SUBDIR
    self._purge_step = purge_step
    self._file = None

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    from tensorboardX import summary  # imported on use (about 0.3 s)
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto.event_pb2 import Event, SessionLog
    if self._file is None:
      self.logdir.mkdir(parents=True, exist_ok=True)
      self._file = EventsWriter(os.fspath(self.logdir / 'events'))
      if self._purge_step is not None:
        self._file.write_event(Event(step=int(self._purge_step), wall_time=time.time(),
                                     session_log=SessionLog(status=SessionLog.START)))
        self._purge_step = None
    now = time.time()
    for tag, value in scalars.items():
      self._file.write_event(Event(wall_time=now, step=int(step),
                                   summary=summary.scalar(tag, float(value))))
    self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      file, self._file = self._file, None
      file.close()
