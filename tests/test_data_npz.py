"""Tests for the .npz reader: pixel scaling, stored and seeded splits, labels, and bad files."""

import numpy as np
import pytest

from flig_jax import data


def write(tmp_path, **arrays):
  path = tmp_path / 'pairs.npz'
  np.savez(path, **arrays)
  return str(path)


def pairs(n=20, h=5, w=4, units=3, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, h, w), dtype=np.uint8), rng.normal(size=(n, units))


def test_uint8_grey_with_stored_split_and_labels(tmp_path):
  stimuli, responses = pairs()
  split = np.array(['train', 'test'] * 10)
  labels = np.arange(20)
  ds = data.load('npz', path=write(tmp_path, stimuli=stimuli, responses=responses, split=split,
                                   labels=labels))
  assert ds.train.images.shape == (10, 5, 4, 1) and ds.test.responses.shape == (10, 3)
  np.testing.assert_allclose(ds.test.images[..., 0], stimuli[1::2] / 255.0, atol=1e-7)
  np.testing.assert_array_equal(ds.train.labels, labels[::2])
  assert ds.train.responses.dtype == np.float32 and ds.meta['split_from'] == 'file'


def test_float_colour_with_seeded_split(tmp_path):
  rng = np.random.default_rng(1)
  stimuli = rng.random((30, 6, 6, 3)).astype(np.float32)
  path = write(tmp_path, stimuli=stimuli, responses=rng.normal(size=(30, 2)))
  a, b = data.load('npz', path=path, split_seed=5), data.load('npz', path=path, split_seed=5)
  c = data.load('npz', path=path, split_seed=6)
  assert (len(a.train), len(a.test)) == (24, 6) and a.image_shape == (6, 6, 3)
  np.testing.assert_array_equal(a.test.images, b.test.images)
  assert not np.array_equal(a.test.images, c.test.images)
  joined = np.concatenate([a.train.images, a.test.images])
  assert sorted(map(bytes, joined)) == sorted(map(bytes, stimuli))


def test_test_split_does_not_move_with_the_training_seed(tmp_path):
  """Runs of several seeds are scored on one test split, and a notebook's `data.load` finds the
  test split the run was trained without."""
  from configs import default  # pylint: disable=g-import-not-at-top
  stimuli, responses = pairs(n=50)
  path = write(tmp_path, stimuli=stimuli, responses=responses)
  notebook = data.load('npz', path=path)
  config = default.get_config()
  config.data.name, config.data.path = 'npz', path
  for seed in (0, 1, 2):
    config.seed = seed
    run = data.from_config(config)
    np.testing.assert_array_equal(run.test.images, notebook.test.images)
    np.testing.assert_array_equal(run.test.responses, notebook.test.responses)
  config.data.split_seed = 3
  other = data.from_config(config)
  assert not np.array_equal(other.test.responses, notebook.test.responses)
  np.testing.assert_array_equal(
      other.test.responses, data.load('npz', path=path, split_seed=3).test.responses)


def test_config_saved_without_split_seed_gets_its_old_split_back(tmp_path):
  """Such a config drew its npz test split with config.seed; evaluating it must find that one."""
  from configs import default  # pylint: disable=g-import-not-at-top
  stimuli, responses = pairs(n=50)
  path = write(tmp_path, stimuli=stimuli, responses=responses)
  config = default.get_config().unlock()
  config.data.name, config.data.path, config.seed = 'npz', path, 4
  del config.data['split_seed']
  np.testing.assert_array_equal(data.from_config(config).test.responses,
                                data.load('npz', path=path, split_seed=4).test.responses)


def test_a_path_with_another_dataset_is_refused(tmp_path):
  stimuli, responses = pairs()
  path = write(tmp_path, stimuli=stimuli, responses=responses)
  with pytest.raises(data.DataError, match='add --config.data.name=npz'):
    data.load('synthetic', path=path)


def test_resized_when_asked(tmp_path):
  stimuli, responses = pairs(h=8, w=8)
  ds = data.load('npz', path=write(tmp_path, stimuli=stimuli, responses=responses), image_size=4)
  assert ds.image_shape == (4, 4, 1) and ds.meta['image_size'] == 4


def _pairs_with(**extra):
  return lambda s, r: {'stimuli': s, 'responses': r, **extra}


def _with_nan(responses):
  responses = responses.copy()
  responses[2, 1] = np.nan
  return responses


@pytest.mark.parametrize('make, fault', [
    (lambda s, r: {'stimuli': s}, r"missing key\(s\) \['responses'\]"),
    (lambda s, r: {'stimuli': s[:, 0], 'responses': r}, r'"stimuli" has shape \(20, 4\)'),
    (lambda s, r: {'stimuli': s, 'responses': r[:, 0]}, r'"responses" has shape \(20,\)'),
    (lambda s, r: {'stimuli': np.stack([s] * 3, 1), 'responses': r},
     r'"stimuli" has shape \(20, 3, 5, 4\): the last axis holds the channels'),
    (lambda s, r: {'stimuli': s, 'responses': r[:15]}, '20 stimuli but 15 responses'),
    (lambda s, r: {'stimuli': s, 'responses': _with_nan(r)}, 'NaN or Inf'),
    (lambda s, r: {'stimuli': s * 2.0, 'responses': r}, 'want 0-1'),
    (_pairs_with(split=np.array(['train'] * 20)), 'test split .*empty'),
    (_pairs_with(split=np.array(['val'] * 20)), '"train" or "test"'),
    (_pairs_with(labels=np.arange(3)), r'"labels" has shape \(3,\)'),
])
def test_bad_files_raise_clear_errors(tmp_path, make, fault):
  path = write(tmp_path, **make(*pairs()))
  with pytest.raises(data.DataError, match=fault) as info:
    data.load('npz', path=path)
  assert 'pairs.npz' in str(info.value)


def test_missing_path(tmp_path):
  with pytest.raises(data.DataError, match='no file given'):
    data.load('npz')
  with pytest.raises(data.DataError, match='absent.npz: no such file'):
    data.load('npz', path=str(tmp_path / 'absent.npz'))
  (tmp_path / 'junk.npz').write_bytes(b'junk')
  with pytest.raises(data.DataError, match='junk.npz: cannot read'):
    data.load('npz', path=str(tmp_path / 'junk.npz'))


def test_near_copies_beyond_the_duplicate_grouping_earn_a_note(tmp_path, capsys):
  """Each training image has a copy 8% RMS away (more than the carve's 5%): validation then sits
  far closer to train than test does, and make_context says so."""
  from configs import default  # pylint: disable=g-import-not-at-top
  from flig_jax.training import context  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(2)
  base = rng.random((30, 8, 8)).astype(np.float32) * 0.9
  stimuli = np.concatenate([base[:20], base[:20] + 0.08, base[20:]])
  split = np.array(['train'] * 40 + ['test'] * 10)
  path = write(tmp_path, stimuli=stimuli, responses=rng.normal(size=(50, 3)), split=split)
  ds = data.load('npz', path=path, val_fraction=0.2)
  assert ds.meta['val_to_train_rms'] == pytest.approx(0.08, abs=1e-4)
  assert ds.meta['test_to_train_rms'] > 0.2
  config = default.get_config()
  config.data.name, config.data.path, config.data.val_fraction = 'npz', path, 0.2
  config.data.folds = 0
  ctx = context.make_context(config, tmp_path / 'run')
  ctx.mgr.close()
  ctx.log.close()
  assert 'note: validation images sit much closer to training images' in capsys.readouterr().out


def test_too_few_stimuli_for_the_folds_stop_the_run_before_stage_1(tmp_path):
  """make_context, which runs before stage 1 trains, refuses more folds than training stimuli."""
  from configs import default  # pylint: disable=g-import-not-at-top
  from flig_jax.training import context  # pylint: disable=g-import-not-at-top
  stimuli, responses = pairs(n=5)
  config = default.get_config()
  config.data.name, config.data.folds = 'npz', 5
  config.data.path = write(tmp_path, stimuli=stimuli, responses=responses)
  with pytest.raises(data.DataError, match='4 distinct stimuli, fewer than the folds'):
    context.make_context(config, tmp_path / 'run')
