"""The TensorBoard event files: what flig_jax writes by hand reads back as the Event protos that
TensorBoard reads, scalar for scalar, and writing them imports neither tensorboardX nor torch."""

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from flig_jax.training import tensorboard

event_pb2 = pytest.importorskip('tensorboardX.proto.event_pb2')


def _records(path: Path) -> list[bytes]:
  """The records of a TFRecord file, each checksum checked against tensorboardX's CRC-32C."""
  from tensorboardX.record_writer import masked_crc32c
  raw, i, out = path.read_bytes(), 0, []
  while i < len(raw):
    header = raw[i:i + 8]
    (n,) = struct.unpack('<Q', header)
    assert struct.unpack('<I', raw[i + 8:i + 12])[0] == masked_crc32c(header)
    data = raw[i + 12:i + 12 + n]
    assert struct.unpack('<I', raw[i + 12 + n:i + 16 + n])[0] == masked_crc32c(data)
    out.append(data)
    i += 16 + n
  assert i == len(raw)
  return out


def test_crc32c_matches_the_reference():
  from tensorboardX.crc32c import crc32c
  for data in (b'', b'a', b'123456789', os.urandom(1000)):
    assert tensorboard.crc32c(data) == crc32c(data)
  assert tensorboard.crc32c(b'123456789') == 0xE3069283  # the standard check value


def test_scalars_read_back_as_events(tmp_path):
  writer = tensorboard.ScalarWriter(tmp_path, purge_step=5)
  writer.write(5, {'stage1/loss': 0.25, 'stage1/mse': 1e-3})
  writer.write(1_000_000, {'stage2/loss': -2.5})
  writer.close()
  files = list((tmp_path / tensorboard.SUBDIR).glob('events.out.tfevents.*'))
  assert len(files) == 1
  events = [event_pb2.Event.FromString(r) for r in _records(files[0])]
  assert events[0].file_version == 'brain.Event:2'
  assert events[1].step == 5 and events[1].session_log.status == event_pb2.SessionLog.START
  scalars = [(e.step, {v.tag: v.simple_value for v in e.summary.value}) for e in events[2:]]
  assert scalars == [(5, {'stage1/loss': 0.25, 'stage1/mse': pytest.approx(1e-3)}),
                     (1_000_000, {'stage2/loss': -2.5})]
  assert all(e.wall_time > 1e9 for e in events)


def test_each_event_is_the_bytes_tensorboardx_would_write():
  from tensorboardX import summary
  expected = event_pb2.Event(wall_time=12.5, step=3, summary=summary.scalar('a/b', 0.5))
  expected.summary.value.add(tag='c', simple_value=-1.0)
  assert tensorboard._event(12.5, 3, scalars={'a/b': 0.5, 'c': -1.0}) == \
      expected.SerializeToString()
  start = event_pb2.Event(wall_time=1.0, step=7,
                          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))
  assert tensorboard._event(1.0, 7, session_start=True) == start.SerializeToString()


def test_writing_imports_neither_tensorboardx_nor_torch(tmp_path):
  code = ('import sys; from flig_jax.training import tensorboard as t; '
          f'w = t.ScalarWriter({str(tmp_path)!r}); w.write(1, {{"x": 1.0}}); w.close(); '
          'print(sorted(m for m in ("tensorboardX", "torch") if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       cwd=Path(__file__).resolve().parents[1])
  assert out.stdout.strip() == '[]'
