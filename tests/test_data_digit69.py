"""Tests for the digit69 reader: shapes, upright digits, pixel range, location, fetch, errors."""

import pathlib

import numpy as np
import pytest
import scipy.io
from conftest import require_data

from flig_jax import data
from flig_jax.data import digit69, locate


@pytest.fixture(scope='module')
def mat_dir(data_root):
  folder = data_root / 'digit69'
  require_data(folder / digit69.FILE_NAME, 'digit69')
  return folder


@pytest.fixture(scope='module')
def raw(mat_dir):
  return scipy.io.loadmat(mat_dir / digit69.FILE_NAME)


def test_shapes_range_and_labels(mat_dir):
  ds = data.load('digit69', dir=str(mat_dir))
  assert ds.train.images.shape == (90, 28, 28, 1) and ds.train.responses.shape == (90, 3092)
  assert ds.test.images.shape == (10, 28, 28, 1) and ds.test.responses.shape == (10, 3092)
  assert ds.val.images.shape == (0, 28, 28, 1) and ds.val.responses.shape == (0, 3092)
  for split in (ds.train, ds.test):
    assert split.images.dtype == np.float32 and split.responses.dtype == np.float32
    assert split.images.min() == 0.0 and split.images.max() == 1.0
  assert set(np.unique(ds.train.labels)) == {1, 2} and ds.test.labels.dtype == np.int32
  assert ds.num_units == 3092 and ds.image_shape == (28, 28, 1)
  assert ds.meta['name'] == 'digit69' and ds.meta['source'].endswith(digit69.FILE_NAME)


def test_images_are_upright(mat_dir, raw):
  ds = data.load('digit69', dir=str(mat_dir))
  want = raw['stimTrn'].reshape(-1, 28, 28, order='F') / 255.0
  np.testing.assert_allclose(ds.train.images[..., 0], want, atol=1e-7)
  # A six carries its loop low, a nine high: sixes have far more ink in the lower half. Lying on
  # their side (the untransposed reshape) the difference flips sign.
  def lower_minus_upper(images):
    return images[:, 14:].sum(axis=(1, 2, 3)) - images[:, :14].sum(axis=(1, 2, 3))
  sixes = ds.train.images[ds.train.labels == 1]
  nines = ds.train.images[ds.train.labels == 2]
  assert lower_minus_upper(sixes).mean() - lower_minus_upper(nines).mean() > 10.0


def test_val_split_is_seeded_and_disjoint(mat_dir):
  a = data.load('digit69', dir=str(mat_dir), val_fraction=0.1, seed=3)
  b = data.load('digit69', dir=str(mat_dir), val_fraction=0.1, seed=3)
  c = data.load('digit69', dir=str(mat_dir), val_fraction=0.1, seed=4)
  full = data.load('digit69', dir=str(mat_dir))
  assert len(a.train) == 81 and len(a.val) == 9 and len(a.test) == 10
  np.testing.assert_array_equal(a.val.responses, b.val.responses)
  assert not np.array_equal(a.val.responses, c.val.responses)
  rows = {r.tobytes() for r in np.concatenate([a.train.responses, a.val.responses])}
  assert rows == {r.tobytes() for r in full.train.responses}
  np.testing.assert_array_equal(a.test.images, full.test.images)


def test_found_through_data_dir_env(mat_dir, monkeypatch):
  monkeypatch.setenv('FLIG_DATA_DIR', str(mat_dir.parent))
  assert data.load('digit69').meta['source'] == str(mat_dir / digit69.FILE_NAME)


def test_missing_dir_names_the_path(tmp_path):
  with pytest.raises(data.DataError, match=str(tmp_path / 'nowhere')) as error:
    data.load('digit69', dir=str(tmp_path / 'nowhere'))
  # ... and how to point each entry point at the data.
  assert all(flag in str(error.value) for flag in ('--config.data.dir=', '--data_dir='))


def test_fetch_into_cache_once(mat_dir, tmp_path, monkeypatch):
  monkeypatch.delenv('FLIG_DATA_DIR', raising=False)
  monkeypatch.setenv('FLIG_CACHE_DIR', str(tmp_path / 'cache'))
  good = (mat_dir / digit69.FILE_NAME).resolve().as_uri()
  monkeypatch.setattr(digit69, 'URLS', [(tmp_path / 'absent.mat').as_uri(), good])
  ds = data.load('digit69')
  cached = tmp_path / 'cache' / 'digit69' / digit69.FILE_NAME
  assert ds.meta['source'] == str(cached) and cached.is_file()
  monkeypatch.setattr(digit69, 'URLS', [])  # The second load must not download again.
  assert len(data.load('digit69').train) == 90


def test_fetch_rejects_wrong_checksum(mat_dir, tmp_path, monkeypatch):
  monkeypatch.delenv('FLIG_DATA_DIR', raising=False)
  monkeypatch.setenv('FLIG_CACHE_DIR', str(tmp_path / 'cache'))
  bad = tmp_path / 'bad.mat'
  bad.write_bytes((mat_dir / digit69.FILE_NAME).read_bytes()[:-1] + b'x')
  monkeypatch.setattr(digit69, 'URLS', [bad.as_uri()])
  with pytest.raises(data.DataError, match='sha256'):
    data.load('digit69')
  assert not list((tmp_path / 'cache' / 'digit69').iterdir())  # no partial file left behind


def test_no_network_says_where_to_put_the_file(tmp_path, monkeypatch):
  monkeypatch.delenv('FLIG_DATA_DIR', raising=False)
  monkeypatch.setenv('FLIG_CACHE_DIR', str(tmp_path))
  monkeypatch.setattr(digit69, 'URLS', ['http://127.0.0.1:9/digit69_28x28.mat'])
  target = tmp_path / 'digit69' / digit69.FILE_NAME
  with pytest.raises(data.DataError, match=f'put it at {target}'):
    data.load('digit69')


def _corrupt(raw, tmp_path: pathlib.Path, **changes) -> str:
  mat = {k: v for k, v in raw.items() if not k.startswith('__')}
  for key, value in changes.items():
    if value is None:
      del mat[key]
    else:
      mat[key] = value
  folder = tmp_path / 'digit69'
  folder.mkdir()
  scipy.io.savemat(folder / digit69.FILE_NAME, mat)
  return str(folder)


def _nan_fmri(raw):
  fmri = raw['fmriTrn'].copy()
  fmri[3, 7] = np.nan
  return fmri


@pytest.mark.parametrize('changes, fault', [
    (lambda r: {'fmriTest': None}, "missing key.*fmriTest"),
    (lambda r: {'stimTrn': r['stimTrn'][:, :700]}, r"'stimTrn' has shape \(90, 700\)"),
    (lambda r: {'fmriTrn': r['fmriTrn'][:80]}, '90 stimuli but .* 80 responses'),
    (lambda r: {'fmriTrn': _nan_fmri(r)}, 'NaN or Inf'),
    (lambda r: {'stimTest': r['stimTest'][:0], 'fmriTest': r['fmriTest'][:0]},
     'test split .*empty'),
    (lambda r: {'fmriTest': r['fmriTest'][:, :100]}, 'train has 3092 units but test has 100'),
    (lambda r: {'stimTrn': r['stimTrn'] * 2.0}, 'want 0-1'),
])
def test_corrupt_files_raise_clear_errors(raw, tmp_path, changes, fault):
  folder = _corrupt(raw, tmp_path, **changes(raw))
  with pytest.raises(data.DataError, match=fault) as info:
    data.load('digit69', dir=folder)
  assert digit69.FILE_NAME in str(info.value)


def test_unreadable_file(tmp_path):
  (tmp_path / digit69.FILE_NAME).write_bytes(b'not a mat file')
  with pytest.raises(data.DataError, match='cannot read as a MATLAB'):
    data.load('digit69', dir=str(tmp_path))


def test_shared_copy_is_the_published_file(mat_dir):
  assert locate.sha256_of(mat_dir / digit69.FILE_NAME) == digit69.SHA256
