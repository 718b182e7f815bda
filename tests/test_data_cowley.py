"""Tests for the cowley_v4 reader: name order, the % 5 split, resizing, colour, sessions, errors."""

import io
import pathlib
import zipfile

import numpy as np
import pytest
from conftest import require_data
from PIL import Image

from flig_jax import data
from flig_jax.data import cowley_v4


def _jpeg(value: int, size: int = 12) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format='JPEG', quality=95)
  return buf.getvalue()


def make_session(root: pathlib.Path, session: str = 's1', n: int = 10, units: int = 3,
                 prefix: str = 'images_s1/', members: dict[str, bytes] | None = None) -> np.ndarray:
  """Writes a tiny session whose image i is flat grey 20 * i, its zip in shuffled order."""
  (root / 'images').mkdir(parents=True, exist_ok=True)
  (root / 'responses_repeat_averaged').mkdir(exist_ok=True)
  if members is None:
    members = {f'image{i + 1:04d}.jpg': _jpeg(20 * i) for i in range(n)}
  with zipfile.ZipFile(root / 'images' / f'images_{session}.zip', 'w') as zf:
    for name in sorted(members, reverse=True):  # zip order is not name order
      zf.writestr(prefix + name, members[name])
    zf.writestr('__MACOSX/._image0001.jpg', b'resource fork')
  responses = np.arange(units * n, dtype=np.float64).reshape(units, n)
  np.save(root / 'responses_repeat_averaged' / f'responses_{session}.npy', responses)
  return responses


def test_name_order_split_and_transpose(tmp_path):
  responses = make_session(tmp_path)
  ds = data.load('cowley_v4', dir=str(tmp_path), session='s1', image_size=4)
  assert ds.train.images.shape == (8, 4, 4, 1) and ds.test.images.shape == (2, 4, 4, 1)
  test_index, train_index = np.array([4, 9]), np.array([0, 1, 2, 3, 5, 6, 7, 8])
  np.testing.assert_array_equal(ds.test.responses, responses.T[test_index].astype(np.float32))
  np.testing.assert_array_equal(ds.train.responses, responses.T[train_index].astype(np.float32))
  np.testing.assert_allclose(ds.test.images.mean(axis=(1, 2, 3)), 20 * test_index / 255, atol=0.02)
  assert ds.meta['session'] == 's1' and ds.meta['response_kind'] == 'spikes'
  assert ds.train.labels is None and ds.num_units == 3


def test_colour_and_default_size(tmp_path):
  make_session(tmp_path)
  ds = data.load('cowley_v4', dir=str(tmp_path), session='s1', grayscale=False)
  assert ds.image_shape == (32, 32, 3)


def test_missing_or_unknown_session_lists_available(tmp_path):
  make_session(tmp_path, 's1')
  make_session(tmp_path, 's2')
  with pytest.raises(data.DataError, match='no session .*nope.*available: s1, s2'):
    data.load('cowley_v4', dir=str(tmp_path), session='nope')
  with pytest.raises(data.DataError, match='needs a session.*available: s1, s2'):
    data.load('cowley_v4', dir=str(tmp_path))
  (tmp_path / 'responses_repeat_averaged' / 'responses_s2.npy').unlink()
  with pytest.raises(data.DataError, match='responses_s2.npy: missing'):
    data.load('cowley_v4', dir=str(tmp_path), session='s2')


def test_undecodable_member_is_named(tmp_path):
  members = {f'image{i + 1:04d}.jpg': _jpeg(10) for i in range(5)}
  members['image0003.jpg'] = b'\xff\xd8 not really a jpeg'
  make_session(tmp_path, n=5, members=members)
  fault = r"images_s1\.zip: member 'images_s1/image0003.jpg' is not a decodable image"
  with pytest.raises(data.DataError, match=fault):
    data.load('cowley_v4', dir=str(tmp_path), session='s1')


@pytest.mark.parametrize('fault, message', [
    ('count', 'holds 10 images but .*responses to 9'),
    ('ndim', r'has shape \(3, 10, 1\), want \(neurons, images\)'),
    ('nan', 'NaN or Inf'),
    ('zip', 'cannot open as a zip'),
])
def test_bad_files_raise_clear_errors(tmp_path, fault, message):
  responses = make_session(tmp_path)
  npy = tmp_path / 'responses_repeat_averaged' / 'responses_s1.npy'
  if fault == 'count':
    np.save(npy, responses[:, :9])
  elif fault == 'ndim':
    np.save(npy, responses[..., None])
  elif fault == 'nan':
    responses[1, 2] = np.inf
    np.save(npy, responses)
  else:
    (tmp_path / 'images' / 'images_s1.zip').write_bytes(b'garbage')
  with pytest.raises(data.DataError, match=message):
    data.load('cowley_v4', dir=str(tmp_path), session='s1')


def test_shared_session(data_root):
  folder = data_root / 'cowley_v4'
  require_data(folder / 'images' / 'images_190927.zip', 'cowley_v4 session 190927')
  assert set(cowley_v4.SHARED_SESSIONS) <= set(cowley_v4.available_sessions(folder))
  ds = data.load('cowley_v4', dir=str(folder), session='190927', val_fraction=0.1)
  assert (len(ds.train), len(ds.val), len(ds.test)) == (864, 96, 240)
  assert ds.image_shape == (32, 32, 1) and ds.num_units == 31
  raw = np.load(folder / 'responses_repeat_averaged' / 'responses_190927.npy')
  np.testing.assert_allclose(ds.test.responses, raw.T[4::5], rtol=1e-6)
  assert 0.0 <= ds.train.images.min() and ds.train.images.max() <= 1.0
  assert ds.train.images.std() > 0.05  # natural images, not blank
