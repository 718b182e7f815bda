"""Batches built ahead by a background thread are exactly the stream's batches, in order."""

import numpy as np
import pytest

from flig_jax import data
from flig_jax.training import parallel, prefetch


def _stream():
  arrays = {'x': np.arange(40, dtype=np.float32).reshape(20, 2), 'y': np.arange(20)}
  return data.BatchStream(arrays, 8, seed=3)


@pytest.mark.parametrize('depth', [0, 1, 2])
def test_device_batches_are_the_stream_batches_from_the_first_step(depth):
  stream, mesh = _stream(), parallel.make_mesh()
  with prefetch.DeviceBatches(stream, 5, mesh, depth=depth) as batches:
    got = [next(batches) for _ in range(7)]
  for i, batch in enumerate(got):
    want = stream.batch(5 + i)
    assert set(batch) == set(want)
    for k in want:
      np.testing.assert_array_equal(np.asarray(batch[k]), want[k])


def test_close_stops_the_thread():
  batches = prefetch.DeviceBatches(_stream(), 0, parallel.make_mesh(), depth=1)
  next(batches)
  batches.close()
  assert not batches._thread.is_alive()  # pylint: disable=protected-access


def test_an_error_while_building_is_raised_at_that_batch():
  stream = _stream()
  original = stream.batch

  def batch(step):
    if step >= 2:
      raise ValueError(f'cannot build batch {step}')
    return original(step)

  stream.batch = batch
  with prefetch.DeviceBatches(stream, 0, parallel.make_mesh()) as batches:
    next(batches), next(batches)
    with pytest.raises(ValueError, match='cannot build batch 2'):
      next(batches)
