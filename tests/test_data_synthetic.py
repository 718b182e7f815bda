"""Tests for the synthetic dataset: shapes, seeding, and responses that carry the images."""

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


@pytest.mark.parametrize('options, fault', [
    ({'synthetic_mode': 'eeg'}, 'synthetic_mode must be one of'),
    ({'num_units': 0}, 'num_units must be an integer >= 1'),
    ({'num_test': 0}, 'num_test must be'),
    ({'nonlinearity': 'relu'}, 'nonlinearity must be one of'),
    ({'synthetic_mode': 'patterns', 'image_size': 8}, 'patterns need image_size >= 10'),
    ({'num_voxels': 3}, r"unknown data option\(s\) \['num_voxels'\]"),
])
def test_bad_options(options, fault):
  with pytest.raises(data.DataError, match=fault):
    data.load('synthetic', **options)


def test_patterns_are_binary_cells():
  ds = data.load('synthetic', synthetic_mode='patterns', image_size=20, num_train=30, num_test=5,
                 num_units=12)
  x = ds.train.images
  assert x.shape == (30, 20, 20, 1) and ds.test.images.shape == (5, 20, 20, 1)
  assert ds.train.responses.shape == (30, 12) and ds.meta['response_kind'] == 'fmri'
  assert set(np.unique(x)) == {0.0, 1.0}
  cells = x[:, ::2, ::2, 0]  # 10x10 cells of 2x2 pixels each
  np.testing.assert_array_equal(np.repeat(np.repeat(cells, 2, 1), 2, 2), x[..., 0])
  assert 0.4 < cells.mean() < 0.6
  # Independent cells: neighbouring cells agree about half the time (not smooth images).
  assert 0.35 < (cells[:, :, 1:] == cells[:, :, :-1]).mean() < 0.65


def test_patterns_seeded():
  a, b, c = (data.load('synthetic', synthetic_mode='patterns', image_size=12, num_train=8,
                       num_test=4, num_units=6, seed=s) for s in (3, 3, 4))
  np.testing.assert_array_equal(a.train.images, b.train.images)
  np.testing.assert_array_equal(a.test.responses, b.test.responses)
  assert not np.array_equal(a.train.images, c.train.images)
  assert not np.array_equal(a.train.responses, c.train.responses)


def ridge_test_pcc(train_r, train_x, test_r, test_x, penalty=10.0):
  """Mean per-image PCC of a ridge map from responses to pixels (fitted on train) on test."""
  x, y = train_r, train_x.reshape(len(train_x), -1)
  mx, my = x.mean(0), y.mean(0)
  w = np.linalg.solve((x - mx).T @ (x - mx) + penalty * np.eye(x.shape[1]), (x - mx).T @ (y - my))
  pred = (test_r - mx) @ w + my
  truth = test_x.reshape(len(test_x), -1)
  return float(np.mean([np.corrcoef(p, t)[0, 1] for p, t in zip(pred, truth)]))


def test_pixel_ridge_decodes_patterns():
  ds = data.load('synthetic', synthetic_mode='patterns', image_size=20, num_train=600,
                 num_test=100, num_units=200)
  tr, te = ds.train, ds.test
  pcc = ridge_test_pcc(tr.responses, tr.images, te.responses, te.images)
  shuffled = ridge_test_pcc(tr.responses, tr.images, te.responses[::-1], te.images)
  assert pcc > 0.55 and abs(shuffled) < 0.1, (pcc, shuffled)
