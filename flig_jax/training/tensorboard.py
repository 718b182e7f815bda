"""TensorBoard event files of a run's metrics, written without TensorFlow or tensorboardX.

  tensorboard --logdir <workdir>/tensorboard   # pip install -e ".[tensorboard]" installs it

Scalars are tagged `stage<k>/<name>` and indexed by the checkpoint numbering (stage-2 steps come
after stage 1's), so both stages share one time axis. Events are written, flushed and synced in the
calling thread, so a write error, e.g. a full disk, surfaces at once where it can be reported.

An event file is a TFRecord file of `Event` protocol buffers; the few fields a scalar needs are
encoded here (`_event`), which spares a run the import of tensorboardX (about 0.3 s, and over a
second where PyTorch is installed, which tensorboardX imports).
"""

import os
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path

SUBDIR = 'tensorboard'
_FILE_VERSION = 'brain.Event:2'
_SESSION_START = 1  # SessionLog.START


def _crc_table() -> tuple[int, ...]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    table.append(crc)
  return tuple(table)


_CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), the checksum of TFRecord framing."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1  # negative int64s take ten bytes, as protobuf writes them
  out = bytearray()
  while True:
    byte, value = value & 0x7F, value >> 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited field (string or message)."""
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int = 0, *, file_version: str | None = None,
           scalars: Mapping[str, float] | None = None, session_start: bool = False) -> bytes:
  """A serialised `Event`: wall_time (1), step (2), file_version (3), summary (5) of simple_value
  scalars, session_log (7) with status START."""
  out = _varint(1 << 3 | 1) + struct.pack('<d', wall_time)
  if step:
    out += _varint(2 << 3) + _varint(int(step))
  if file_version is not None:
    out += _field(3, file_version.encode())
  if scalars:
    values = b''.join(
        _field(1, _field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack('<f', value))
        for tag, value in scalars.items())
    out += _field(5, values)
  if session_start:
    out += _field(7, _varint(1 << 3) + _varint(_SESSION_START))
  return out


def _record(data: bytes) -> bytes:
  """TFRecord framing: length, its masked CRC, the data, its masked CRC."""
  header = struct.pack('<Q', len(data))
  return (header + struct.pack('<I', _masked_crc(header)) + data +
          struct.pack('<I', _masked_crc(data)))


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

  def _write(self, data: bytes) -> None:
    self._file.write(_record(data))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if self._file is None:
      self.logdir.mkdir(parents=True, exist_ok=True)
      name = f'events.out.tfevents.{str(time.time())[:10]}.{socket.gethostname()}'
      self._file = open(self.logdir / name, 'ab')  # noqa: SIM115 -- kept open across writes
      self._write(_event(time.time(), file_version=_FILE_VERSION))
      if self._purge_step is not None:
        self._write(_event(time.time(), int(self._purge_step), session_start=True))
        self._purge_step = None
    self._write(_event(time.time(), step, scalars={k: float(v) for k, v in scalars.items()}))
    self._file.flush()
    os.fsync(self._file.fileno())

  def close(self) -> None:
    if self._file is not None:
      file, self._file = self._file, None
      file.close()
