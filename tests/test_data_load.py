"""Tests for `data.load` / `data.from_config`: names, options, validation carving, light imports."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import require_data

from configs import default
from flig_jax import data
from flig_jax.data.dataset import Split, carve_validation, duplicate_groups


def test_from_default_config():
  config = default.get_config()
  ds = data.from_config(config)
  d = config.data
  assert ds.name == 'synthetic' and ds.image_shape == (d.image_size, d.image_size, 1)
  assert len(ds.train) + len(ds.val) == d.num_train and len(ds.test) == d.num_test
  assert len(ds.val) == round(d.val_fraction * d.num_train) and ds.num_units == d.num_units
  assert ds.meta['seed'] == config.seed


def test_from_config_spikes_and_seed():
  config = default.get_config()
  config.data.synthetic_mode = 'spikes'
  config.data.num_train, config.data.num_test, config.data.image_size = 20, 5, 8
  a = data.from_config(config)
  config.seed = 1
  b = data.from_config(config)
  assert a.meta['response_kind'] == 'spikes' and a.image_shape == (8, 8, 1)
  assert not np.array_equal(a.train.images, b.train.images)


def test_from_config_digit69_keeps_its_size(data_root):
  require_data(data_root / 'digit69', 'digit69')
  config = default.get_config()
  config.data.name, config.data.dir = 'digit69', str(data_root / 'digit69')
  ds = data.from_config(config)  # K-fold selection: every training pair stays in train
  assert ds.image_shape == (28, 28, 1) and (len(ds.train), len(ds.val)) == (90, 0)
  config.data.folds, config.data.val_fraction = 0, 0.1  # one validation split instead
  ds = data.from_config(config)
  assert (len(ds.train), len(ds.val)) == (81, 9)


def test_val_split_empty_and_carved():
  ds = data.load('synthetic', num_train=10, num_test=3, num_units=4, image_size=8)
  assert ds.val.images.shape == (0, 8, 8, 1) and ds.val.responses.shape == (0, 4)
  assert len(ds.val) == 0 and ds.meta['num_val'] == 0
  carved = data.load('synthetic', num_train=10, num_test=3, num_units=4, image_size=8,
                     val_fraction=0.3, seed=0)
  assert (len(carved.train), len(carved.val)) == (7, 3)
  both = np.concatenate([carved.train.responses, carved.val.responses])
  assert sorted(map(bytes, both)) == sorted(map(bytes, ds.train.responses))
  np.testing.assert_array_equal(carved.test.images, ds.test.images)


def _split(images):
  return Split(np.asarray(images, np.float32), np.arange(len(images), dtype=np.float32)[:, None])


def test_duplicate_groups_join_near_copies_transitively():
  rng = np.random.default_rng(0)
  base = rng.uniform(size=(4, 40, 24, 3))
  # rows 0, 4 and 5 are one stimulus (5 is near 4, 4 near 0), 2 and 6 another; JPEG-like noise.
  images = np.concatenate([base, base[:1] + 0.002, base[:1] + 0.004, base[2:3] - 0.003])
  groups = duplicate_groups(images)
  assert groups[0] == groups[4] == groups[5] and groups[2] == groups[6]
  assert len(set(groups.tolist())) == 4
  # Variants a few percent apart (V4 210305 shows images in triplets 1-5% RMS apart) are one.
  variants = base[3] + rng.normal(0.0, 0.04, size=(3, *base.shape[1:]))
  assert len(set(duplicate_groups(np.concatenate([base, variants])).tolist())) == 4
  # Different images stay apart, however close in mean brightness.
  assert len(set(duplicate_groups(base * 0.5 + 0.25).tolist())) == 4


def test_validation_never_shares_a_stimulus_with_train():
  rng = np.random.default_rng(1)
  unique = rng.uniform(size=(30, 8, 8, 1))
  images = np.concatenate([unique, unique[:15] + 0.001])   # half of them shown twice
  for seed in range(5):
    train, val = carve_validation(_split(images), 0.2, seed)
    assert len(val) == 9 and len(train) == 36
    ids = lambda s: {int(r) % 30 for r in s.responses[:, 0]}   # row k + 30 shows image k
    assert not ids(train) & ids(val)
  # Without duplicates the carve is the first rows of the seeded permutation, as it always was.
  train, val = carve_validation(_split(unique), 0.2, 3)
  want = np.sort(np.random.default_rng([3, 1]).permutation(30)[:6])
  np.testing.assert_array_equal(val.responses[:, 0], want)
  # All one stimulus: nothing can go to validation without leaving train empty.
  with pytest.raises(data.DataError, match='1 distinct stimuli'):
    carve_validation(_split(np.zeros((5, 4, 4, 1))), 0.2, 0)


@pytest.mark.parametrize('kwargs, fault', [
    ({'name': 'mnist'}, "unknown dataset 'mnist'"),
    ({'name': 'synthetic', 'val_fraction': 1.0}, r'val_fraction must be in \[0, 1\)'),
    ({'name': 'synthetic', 'num_train': 1, 'val_fraction': 0.5}, 'leaves no training data'),
    ({'name': 'npz', 'num_units': 3}, 'apply only to the synthetic dataset'),
])
def test_bad_arguments(kwargs, fault):
  with pytest.raises(data.DataError, match=fault):
    data.load(**kwargs)


def test_a_new_dataset_is_one_loader_and_one_registry_line(monkeypatch):
  """A reader of train and test `Split`s, and a line in `loading.LOADERS`: `load`, `from_config` and
  the config checks then accept the name."""
  from flig_jax import config_checks
  from flig_jax.data import loading
  rng = np.random.default_rng(0)

  def split(n):
    return Split(rng.uniform(size=(n, 8, 8, 1)).astype(np.float32),
                 rng.normal(size=(n, 5)).astype(np.float32))

  def read(request):
    assert request.dir == '/my/lab' and request.session == 'monday'
    return split(20), split(6), {'response_kind': 'spikes'}

  monkeypatch.setitem(loading.LOADERS, 'my_lab', loading.Loader(read))
  config = default.get_config()
  config.data.name, config.data.dir, config.data.session = 'my_lab', '/my/lab', 'monday'
  config.data.folds, config.data.val_fraction = 0, 0.1  # the carve applies to it too
  assert config_checks.faults(config) == []
  ds = data.from_config(config)
  assert ds.name == 'my_lab' and ds.image_shape == (8, 8, 1) and len(ds.test) == 6
  assert len(ds.train) + len(ds.val) == 20 and len(ds.val) == 2
  assert data.load('my_lab', dir='/my/lab', session='monday', image_size=4).image_shape == (4, 4, 1)


def test_data_error_is_a_value_error():
  assert issubclass(data.DataError, ValueError)


def test_split_rejects_mismatched_arrays():
  with pytest.raises(data.DataError, match='3 images but 2 responses'):
    data.Split(np.zeros((3, 2, 2, 1), np.float32), np.zeros((2, 5), np.float32))


def test_import_is_light():
  code = ('import sys, flig_jax.data; '
          'heavy = [m for m in ("tensorflow", "tensorflow_datasets", "jax") '
          'if m in sys.modules]; print(heavy); assert not heavy, heavy')
  repo = pathlib.Path(__file__).parents[1]
  subprocess.run([sys.executable, '-c', code], cwd=repo, check=True, capture_output=True)
