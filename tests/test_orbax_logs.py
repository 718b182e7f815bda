"""What a failed orbax write leaves behind is dropped; other asyncio errors still reach the log."""

import asyncio
import gc
import logging

import pytest

from flig_jax import orbax_logs


class _Records(logging.Handler):
  def __init__(self):
    super().__init__()
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@pytest.fixture
def asyncio_records():
  orbax_logs.quiet_failed_writes()
  logger = logging.getLogger('asyncio')
  handler = _Records()
  logger.addHandler(handler)
  try:
    yield handler.messages
  finally:
    logger.removeHandler(handler)


async def _fail():
  raise OSError(28, 'No space left on device')


def _leave_unretrieved(make) -> None:
  """Runs what `make` returns to completion on a fresh loop and drops it without reading its
  error, as orbax's writer threads do when one write fails."""
  loop = asyncio.new_event_loop()
  try:
    future = make(loop)
    loop.run_until_complete(asyncio.wait([future]))
    del future
    gc.collect()
  finally:
    loop.close()


@pytest.mark.parametrize('make', [
    lambda loop: loop.create_task(_fail()),
    lambda loop: asyncio.gather(loop.create_task(_fail())),  # a _GatheringFuture
], ids=['task', 'gather'])
def test_unretrieved_write_errors_are_dropped(asyncio_records, make):
  _leave_unretrieved(make)
  assert not [m for m in asyncio_records if 'never retrieved' in m], asyncio_records


def test_other_asyncio_errors_still_logged(asyncio_records):
  logging.getLogger('asyncio').error('Unclosed client session')
  assert asyncio_records == ['Unclosed client session']
