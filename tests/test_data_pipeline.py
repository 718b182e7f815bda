"""Tests for `BatchStream`: determinism, per-epoch reshuffles, process shards, and resuming."""

import numpy as np
import pytest

from flig_jax.data import BatchStream


def arrays(n=23):
  return {'x': np.arange(n) * 10, 'y': np.arange(n * 2, dtype=np.float32).reshape(n, 2)}


def test_batch_is_a_pure_function_of_seed_and_step():
  a, b = BatchStream(arrays(), 4, seed=7), BatchStream(arrays(), 4, seed=7)
  for step in (0, 3, 17, 10**6):
    for k in ('x', 'y'):
      np.testing.assert_array_equal(a.batch(step)[k], b.batch(step)[k])
  assert not np.array_equal(a.batch(0)['x'], BatchStream(arrays(), 4, seed=8).batch(0)['x'])
  batch = a.batch(2)
  np.testing.assert_array_equal(batch['y'][:, 0], batch['x'] / 5)  # rows stay paired
  assert batch['x'].shape == (4,) and batch['y'].shape == (4, 2)


def test_every_example_once_per_epoch_and_reshuffled():
  stream = BatchStream(arrays(24), 4, seed=0)
  assert stream.steps_per_epoch == 6
  epochs = []
  for epoch in range(3):
    rows = np.concatenate([stream.global_rows(epoch * 6 + j) for j in range(6)])
    assert sorted(rows.tolist()) == list(range(24))
    epochs.append(rows)
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])


def test_drop_remainder_never_repeats_within_an_epoch():
  stream = BatchStream(arrays(23), 5, seed=1)
  assert stream.steps_per_epoch == 4
  rows = np.concatenate([stream.global_rows(4 + j) for j in range(4)])
  assert len(set(rows.tolist())) == 20


def test_split_smaller_than_batch_samples_with_repetition():
  stream = BatchStream(arrays(3), 8, seed=0)
  assert stream.steps_per_epoch == 1
  rows = stream.global_rows(5)
  assert rows.shape == (8,) and set(rows.tolist()) == {0, 1, 2}
  counts = np.bincount(rows, minlength=3)
  assert counts.min() >= 2 and counts.max() <= 4


@pytest.mark.parametrize('count', [2, 4])
def test_process_shards_concatenate_to_the_global_batch(count):
  full = BatchStream(arrays(), 8, seed=3)
  shards = [BatchStream(arrays(), 8, seed=3, process_index=p, process_count=count)
            for p in range(count)]
  for step in (0, 5, 9):
    joined = np.concatenate([s.batch(step)['x'] for s in shards])
    np.testing.assert_array_equal(joined, full.batch(step)['x'])
    assert shards[0].batch(step)['x'].shape == (8 // count,)


def test_a_resumed_stream_serves_the_tail_of_an_uninterrupted_one():
  stream = BatchStream(arrays(), 4, seed=2)
  straight = [stream.batch(step) for step in range(12)]       # crosses two epochs of 5 steps
  resumed = BatchStream(arrays(), 4, seed=2)                  # fresh: no epoch memoised yet
  for step in range(7, 12):
    np.testing.assert_array_equal(resumed.batch(step)['x'], straight[step]['x'])


@pytest.mark.parametrize('kwargs, fault', [
    ({'arrays': {'x': np.zeros(3), 'y': np.zeros(4)}}, 'differ in length'),
    ({'arrays': {'x': np.zeros(0)}}, 'empty'),
    ({'global_batch_size': 6, 'process_count': 4}, 'does not divide'),
    ({'process_index': 2, 'process_count': 2}, 'not valid'),
    ({'global_batch_size': 0}, 'must be >= 1'),
])
def test_bad_arguments(kwargs, fault):
  args = {'arrays': arrays(), 'global_batch_size': 4, 'seed': 0} | kwargs
  with pytest.raises(ValueError, match=fault):
    BatchStream(**args)
