"""Tests for the synthetic dataset: shapes, seeding, speed, and responses that carry the images."""

import time

import numpy as np
import pytest

from flig_jax import data


def ridge_test_mse(ds, penalty=10.0):
  """Test MSE of a ridge map from z-scored responses to pixels, fitted on train."""
  x, y = ds.train.responses, ds.train.images.reshape(len(ds.train), -1)
  mx, sx, my = x.mean(0), x.std(0) + 1e-6, y.mean(0)
  xs = (x - mx) / sx
  w = np.linalg.solve(xs.T @ xs + penalty * np.eye(x.shape[1]), xs.T @ (y - my))
  pred = (ds.test.responses - mx) / sx @ w + my
  truth = ds.test.images.reshape(len(ds.test), -1)
  return float(((pred - truth) ** 2).mean()), float(((my - truth) ** 2).mean())


@pytest.mark.parametrize('mode, nonlinearity', [('fmri', 'softplus'), ('spikes', 'softplus'),
                                                ('spikes', 'exp')])
def test_responses_carry_the_images(mode, nonlinearity):
  ds = data.load('synthetic', synthetic_mode=mode, nonlinearity=nonlinearity, image_size=16)
  ridge, mean_image = ridge_test_mse(ds)
  assert ridge < 0.9 * mean_image, (ridge, mean_image)


def test_shapes_types_and_defaults():
  ds = data.load('synthetic', val_fraction=0.25)
  assert (len(ds.train), len(ds.val), len(ds.test)) == (192, 64, 64)
  assert ds.image_shape == (16, 16, 1) and ds.num_units == 48
  assert ds.train.images.dtype == np.float32 and ds.train.responses.dtype == np.float32
  assert 0.0 <= ds.train.images.min() and ds.train.images.max() <= 1.0
  assert ds.train.images.max(axis=(1, 2, 3)).min() > 0.3  # no blank images
  assert ds.meta['source'] == 'embedded' and ds.meta['response_kind'] == 'fmri'


def test_spikes_are_counts():
  ds = data.load('synthetic', synthetic_mode='spikes', num_train=40, num_test=8, num_units=5,
                 image_size=8)
  r = ds.train.responses
  assert r.shape == (40, 5) and r.dtype == np.float32
  assert r.min() >= 0 and np.array_equal(r, np.round(r)) and r.mean() > 0.5


def test_seeded_and_split_sizes_independent():
  a = data.load('synthetic', seed=1, num_train=32, num_test=8)
  b = data.load('synthetic', seed=1, num_train=32, num_test=16)
  c = data.load('synthetic', seed=2, num_train=32, num_test=8)
  np.testing.assert_array_equal(a.train.images, b.train.images)
  np.testing.assert_array_equal(a.train.responses, b.train.responses)
  assert not np.array_equal(a.train.images, c.train.images)


def test_fast():
  data.load('synthetic', image_size=32)  # warm up imports
  start = time.perf_counter()
  data.load('synthetic', image_size=32, num_train=256, num_test=64)
  assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize('options, fault', [
    ({'synthetic_mode': 'eeg'}, 'synthetic_mode must be one of'),
    ({'num_units': 0}, 'num_units must be an integer >= 1'),
    ({'num_test': 0}, 'num_test must be'),
    ({'nonlinearity': 'relu'}, 'nonlinearity must be one of'),
    ({'num_voxels': 3}, r"unknown data option\(s\) \['num_voxels'\]"),
])
def test_bad_options(options, fault):
  with pytest.raises(data.DataError, match=fault):
    data.load('synthetic', **options)
