"""Bad inputs to the Model API and the data loaders: each is refused (or converted with
a warning) with a message naming the problem; short reprs of Model and Dataset."""

import re
import warnings

import numpy as np
import pytest

from flig_jax import data, model
from flig_jax.data import digit69, locate


@pytest.fixture(scope='module')
def trained(smoke_workdir) -> model.Model:
  return model.load(smoke_workdir)


@pytest.fixture(scope='module')
def images(trained) -> np.ndarray:
  return np.random.default_rng(0).uniform(size=(3,) + trained.image_shape).astype(np.float32)


def test_nan_or_inf_inputs_raise(trained, images):
  bad = images.copy()
  bad[1, 2, 3, 0] = np.nan
  with pytest.raises(ValueError, match=re.escape(
      'encode got images with NaN or Inf (in 1 row(s), first row 1)')):
    trained.encode(bad)
  responses = np.zeros((2, trained.num_units), np.float32)
  responses[0, 0] = np.inf
  with pytest.raises(ValueError, match=re.escape('decode got responses with NaN or Inf')):
    trained.decode(responses)
  with pytest.raises(ValueError, match=re.escape('decode_features got features with NaN or Inf')):
    trained.decode_features(np.full((1, trained.module.feature_dim), np.nan))


def test_float_images_outside_0_1_are_refused(trained, images):
  with pytest.raises(ValueError, match=re.escape(
      'encode expects float images in [0, 1], got values in [0')) as info:
    trained.encode(images * 255)
  assert 'divide by 255 or pass uint8' in str(info.value)


def test_integer_images_other_than_uint8_are_converted_with_a_warning(trained, images):
  as_uint8 = np.round(images * 255).astype(np.uint8)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    expected = trained.encode(as_uint8)  # uint8: no warning
  with pytest.warns(UserWarning, match='encode: int64 images are read as 0-255'):
    got = trained.encode(as_uint8.astype(np.int64))
  np.testing.assert_array_equal(got, expected)
  bad = as_uint8.astype(np.int64)
  bad.flat[:2] = -1, 256
  with pytest.raises(ValueError, match=re.escape('got int64 images with values in [-1, 256]')):
    trained.encode(bad)


def test_reprs_are_short(trained):
  text = repr(trained)
  assert text.startswith('Model(synthetic: images (32, 32, 1) <-> 48 units, D=8')
  assert text.endswith('checkpoint step 12, finished)') and len(text) < 150
  ds = data.load('synthetic', num_train=20, num_test=4, val_fraction=0.1)
  assert repr(ds) == ("Dataset('synthetic': train 18, val 2, test 4; 48 units, "
                      'images (16, 16, 1))')
  assert repr(ds.test) == 'Split(4 pairs, images (16, 16, 1), 48 units)'


def _npz(tmp_path, stimuli, responses) -> str:
  path = tmp_path / 'pairs.npz'
  np.savez(path, stimuli=stimuli, responses=responses)
  return str(path)


def test_npz_with_zero_size_images_names_the_file(tmp_path):
  path = _npz(tmp_path, np.zeros((10, 0, 0), np.uint8), np.ones((10, 3)))
  with pytest.raises(data.DataError, match=re.escape(
      f'{path}: "stimuli" has shape (10, 0, 0, 1): the images have zero size')):
    data.load('npz', path=path)


def test_constant_responses_are_caught_at_load_time_naming_the_file(tmp_path):
  rng = np.random.default_rng(0)
  path = _npz(tmp_path, rng.uniform(size=(10, 8, 8)), np.ones((10, 3)))
  with pytest.raises(data.DataError, match=re.escape(
      f'{path}: every response unit is constant across the 8 training pairs')):
    data.load('npz', path=path)


def test_wrong_data_dir_for_digit69_names_the_path_it_tried(tmp_path, monkeypatch):
  monkeypatch.setenv('FLIG_DATA_DIR', str(tmp_path / 'wrong'))
  monkeypatch.setenv('FLIG_CACHE_DIR', str(tmp_path / 'cache'))

  def offline(urls, target, sha256):
    raise data.DataError(f'{target}: could not fetch the public copy (offline)')

  monkeypatch.setattr(locate, 'fetch', offline)
  tried = tmp_path / 'wrong' / 'digit69' / digit69.FILE_NAME
  with pytest.raises(data.DataError, match=re.escape(f'tried: {tried}')) as info:
    data.load('digit69')
  assert 'Fetching the public copy failed too' in str(info.value)
