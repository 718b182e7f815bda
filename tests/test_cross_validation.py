"""Model selection by K-fold cross-validation: folds carved by stimulus from the training split
only, steps chosen on pooled held-out scores, the final model fitted on every training pair, and
the baselines' penalties chosen without the test split."""

import json
import types

import jax.numpy as jnp
import numpy as np
import pytest

from configs import default, synthetic
from flig_jax import checkpointing, data, pixel_path, ridge
from flig_jax import model as model_lib
from flig_jax.data.dataset import Dataset, Split, duplicate_groups, fold_ids
from flig_jax.evaluation import baselines, run
from flig_jax.nn.adapter import Adapter
from flig_jax.training import (
  TrainingDiverged,
  closed_form,
  context,
  cross_validation,
  loop,
  stage2_data,
  validation,
)


def _split_with_copies(n=40, copies=(0, 1, 2, 5, 7), seed=0):
  """n random images plus a near-copy (2% RMS apart) of each of `copies`."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(0.2, 0.8, (n, 8, 8, 1)).astype(np.float32)
  twins = np.clip(images[list(copies)] + rng.normal(0, 0.02, (len(copies), 8, 8, 1)), 0, 1)
  images = np.concatenate([images, twins.astype(np.float32)])
  return Split(images, rng.standard_normal((len(images), 3)).astype(np.float32))


def test_folds_keep_each_stimulus_group_in_one_fold_and_are_balanced():
  split = _split_with_copies()
  groups = duplicate_groups(split.images)
  assert len(np.unique(groups)) == 40        # the copies were found
  for k in (2, 3, 5):
    ids = fold_ids(split, k, seed=1)
    assert ids.shape == (len(split),) and set(ids.tolist()) == set(range(k))
    for g in np.unique(groups):
      assert len(set(ids[groups == g].tolist())) == 1, g
    sizes = np.bincount(ids)
    assert sizes.max() - sizes.min() <= 2    # at most the largest group (2) apart
  assert not np.array_equal(fold_ids(split, 5, seed=1), fold_ids(split, 5, seed=2))
  np.testing.assert_array_equal(fold_ids(split, 5, seed=1), fold_ids(split, 5, seed=1))


def test_folds_come_from_the_training_split_alone():
  train = _split_with_copies()
  rng = np.random.default_rng(3)
  config = default.get_config()

  def dataset(test_images):
    test = Split(test_images, rng.standard_normal((len(test_images), 3)).astype(np.float32))
    return Dataset('x', train, data.dataset.empty_like(train), test, {})

  # A test split full of copies of training images (or of NaN) changes nothing.
  a = data.config_fold_ids(config, dataset(train.images[:10]).train)
  b = data.config_fold_ids(config, dataset(np.full((4, 8, 8, 1), np.nan, np.float32)).train)
  assert a.shape == (len(train),)
  np.testing.assert_array_equal(a, b)
  config.data.folds = 1
  assert data.config_fold_ids(config, train) is None


def test_too_few_stimuli_for_the_folds_is_a_clear_error():
  split = _split_with_copies(n=3, copies=(0, 1))
  with pytest.raises(data.DataError, match='3 distinct stimuli, fewer than the folds'):
    fold_ids(split, 5, seed=0)


def _constructed_case(n=30, u=4, steps=(0, 10, 20, 30), best=20, seed=0):
  """Images and responses, and per-step predictions whose noise is least at step `best`."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(n, 3, 3, 1)).astype(np.float32)
  responses = rng.standard_normal((n, u)).astype(np.float32)
  noise = {s: 0.2 + 0.3 * abs(s - best) / 10 for s in steps}
  noise[0] = 0.8
  dec = {s: images + noise[s] * rng.standard_normal(images.shape).astype(np.float32)
         for s in steps}
  enc = {s: responses + noise[s] * rng.standard_normal(responses.shape).astype(np.float32)
         for s in steps}
  return images, responses, dec, enc


def test_selected_step_is_the_argmax_of_the_pooled_held_out_scores():
  images, responses, dec, enc = _constructed_case()
  folds = np.arange(30) % 3
  seen = []

  def run_fold(rest, held):
    seen.append((rest, held))
    return [(s, dec[s][held], enc[s][held]) for s in dec]

  groups = validation.GROUPS['augmented']
  sel = cross_validation.select(folds, images, responses, run_fold, groups, margin=0.0)
  # Each fold trains on the others and is scored on itself; together they hold out every pair.
  for rest, held in seen:
    assert not set(rest) & set(held) and len(rest) + len(held) == 30
  assert sorted(np.concatenate([h for _, h in seen]).tolist()) == list(range(30))
  for name, key in (('val_dec_pcc', 'cv_dec_pcc'), ('val_enc_pcc', 'cv_enc_pcc')):
    # The mean over folds (equal sizes here) of each held-out fold's score.
    pooled = [np.mean([float(validation.scores_of(dec[s][folds == f], enc[s][folds == f],
                                                  images[folds == f],
                                                  responses[folds == f])[0][name])
                       for f in range(3)]) for s in dec]
    np.testing.assert_allclose(sel.scores[key], pooled, rtol=1e-5)
    assert sel.chosen[key] == sel.steps[int(np.argmax(pooled))] == 20
  np.testing.assert_array_equal(sel.chosen_steps(groups), [20, 20])
  assert cross_validation.Selection.from_meta(json.loads(json.dumps(sel.to_meta()))) == sel
  # A margin beyond every gain's standard errors keeps the start.
  strict = cross_validation.select(folds, images, responses, run_fold, groups, margin=1e6)
  assert strict.chosen == {'cv_enc_pcc': 0, 'cv_dec_pcc': 0}
  assert any('SE, not > 1e+06' in line for line in strict.explain(1e6))


def test_each_fold_is_scored_on_its_own_so_fold_offsets_do_not_count():
  """Encoders whose offsets differ by fold (each fold's adapter mean is the other folds' mean)
  score what they score within each fold; correlations over the pooled predictions would not."""
  images, responses, dec, enc = _constructed_case(steps=(0, 10))
  folds = np.arange(30) % 3
  shifted = {s: e + 3.0 * folds[:, None] for s, e in enc.items()}

  def run_fold(enc_by_step):
    return lambda rest, held: [(s, dec[s][held], enc_by_step[s][held]) for s in dec]

  groups = validation.GROUPS['augmented']
  plain = cross_validation.select(folds, images, responses, run_fold(enc), groups, 0.0)
  moved = cross_validation.select(folds, images, responses, run_fold(shifted), groups, 0.0)
  np.testing.assert_allclose(moved.scores['cv_enc_pcc'], plain.scores['cv_enc_pcc'], rtol=1e-5)
  np.testing.assert_allclose(moved.gain_se['cv_enc_pcc'], plain.gain_se['cv_enc_pcc'],
                             rtol=1e-4)


def test_choose_applies_the_margin_to_the_gain_over_the_first_candidate():
  replicates = np.array([[0.1, 0.2, 0.3, 0.2], [0.35, 0.1, 0.45, 0.1], [0.2, 0.3, 0.4, 0.3]])
  scores = np.array([0.2, 0.25, 0.3])
  kept, se = cross_validation.choose(scores, replicates, margin=1.0)
  assert se[0] == 0.0 and se[2] == pytest.approx(0.0, abs=1e-12)   # a constant gain
  assert kept == 2
  # The noisy candidate 1 only wins without a margin, and only if it scores best.
  assert cross_validation.choose(scores[:2], replicates[:2], margin=1.0)[0] == 0
  assert cross_validation.choose(scores[:2], replicates[:2], margin=0.0)[0] == 1
  assert cross_validation.choose(np.array([0.2, 0.3, 0.3]), replicates, margin=0.0)[0] == 1


def test_run_logs_cross_validated_scores_and_keeps_the_chosen_steps(smoke_workdir):
  rows = [json.loads(line) for line in (smoke_workdir / 'metrics.jsonl').read_text().splitlines()]
  cv = [r for r in rows if 'cv_enc_pcc' in r]
  assert not any('val_score' in r for r in rows)       # no validation split: CV chose
  mgr = checkpointing.manager(smoke_workdir, read_only=True)
  try:
    meta = checkpointing.latest_meta(mgr)
  finally:
    mgr.close()
  sel = meta.cross_validation
  assert [r['step'] for r in cv] == list(sel['steps']) and sel['steps'][0] == 0
  assert sel['folds'] == default.get_config().data.folds
  for name in ('cv_enc_pcc', 'cv_dec_pcc'):
    assert [r[name] for r in cv] == pytest.approx(sel['scores'][name])
    assert [r[f'{name}_gain_se'] for r in cv] == pytest.approx(sel['gain_se'][name])
  assert list(meta.selected_steps) == [sel['chosen']['cv_enc_pcc'], sel['chosen']['cv_dec_pcc']]


def test_final_model_is_fitted_on_every_training_pair(smoke_workdir):
  """The adapter, the feature statistics and the closed-form start of the saved model equal
  direct fits on all training pairs (not on some folds)."""
  m = model_lib.load(smoke_workdir)
  ds = data.from_config(m.config)
  assert len(ds.val) == 0
  train = ds.train
  cfg = m.config.model
  adapter = Adapter.fit(train.responses, cfg.feature_dim, cfg.adapter_components)
  for name, value in adapter.arrays().items():
    np.testing.assert_allclose(m.variables['adapter'][name], value, rtol=1e-5, atol=1e-6)
  features = m.features(train.images)
  np.testing.assert_allclose(m.variables['stats']['feature_mean'], features.mean(0), rtol=1e-4,
                             atol=1e-5)
  signal = np.asarray(adapter.forward(jnp.asarray(train.responses)))[:, :adapter.k]
  folds = data.config_fold_ids(m.config, train)
  pair = closed_form.linear_pair_params(features, signal, np.asarray(adapter.sqrt_eig), None,
                                        None, features.mean(0),
                                        np.maximum(features.std(0), 1e-6), cfg.feature_dim,
                                        fold_ids=folds)
  saved = m.variables['params']['flow']['linear_pair']
  for name in ('enc_kernel', 'enc_bias', 'dec_kernel', 'dec_bias'):  # fixed in training
    np.testing.assert_allclose(saved[name], pair[name], rtol=1e-3, atol=1e-4)
  # ... and not on four folds of five: those fits differ.
  rest = folds != 0
  part = Adapter.fit(train.responses[rest], cfg.feature_dim, cfg.adapter_components)
  assert not np.allclose(part.arrays()['mean'], m.variables['adapter']['mean'], atol=1e-6)


def test_baselines_choose_their_penalties_without_the_test_split(smoke_workdir):
  """The same fits whatever the test split holds: NaN there would poison any fit that read it."""
  m = model_lib.load(smoke_workdir)
  ds = data.from_config(m.config)
  folds = data.config_fold_ids(m.config, ds.train)
  poisoned = Dataset(ds.name, ds.train, ds.val,
                     Split(np.full_like(ds.test.images, np.nan),
                           np.full_like(ds.test.responses, np.nan)), ds.meta)
  fits = [run.fit_baselines(m, d, 'test', mlp_steps=20, folds=folds) for d in (ds, poisoned)]
  (dec_a, enc_a, hp_a), (dec_b, enc_b, hp_b) = fits
  assert hp_a == hp_b and hp_a['chosen_on'].startswith('train (5-fold cross-validation')
  assert set(dec_a) == {'ridge', 'mlp', 'cae_ridge', 'cae_mlp'} == set(enc_a)
  x, r = ds.test.images[:5], ds.test.responses[:5]
  for name in dec_a:
    np.testing.assert_allclose(dec_a[name](r), dec_b[name](r), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(enc_a[name](x), enc_b[name](x), rtol=1e-5, atol=1e-6)


def test_ridge_alpha_by_given_folds_matches_a_manual_search():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((60, 8))
  y = x @ rng.standard_normal((8, 3)) + rng.standard_normal((60, 3))
  folds = np.arange(60) % 4
  fit = ridge.fit_ridge(x, y, fold_ids=folds)
  errs = []
  for a in ridge.DEFAULT_ALPHAS:
    sq = 0.0
    for f in range(4):
      tr, te = folds != f, folds == f
      m = ridge.fit_ridge(x[tr], y[tr], alphas=[a], folds=2)
      sq += np.sum(((m.predict(x[te]) - y[te]) / ridge.standardizer(y)[1]) ** 2) / y.shape[1]
    errs.append(sq / 60)
  assert fit.alpha == ridge.DEFAULT_ALPHAS[int(np.argmin(errs))]
  # ... refitted on all 60 rows with that alpha.
  again = ridge.fit_ridge(x, y, alphas=[fit.alpha], folds=2)
  np.testing.assert_allclose(fit.coef, again.coef)


def test_mlp_early_stopping_by_cross_validation():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((80, 5)).astype(np.float32)
  y = np.tanh(x @ rng.standard_normal((5, 3))).astype(np.float32)
  folds = np.arange(80) % 4
  fit = baselines.fit_mlp_cv(x, y, folds, kind='encoder', steps=200, learning_rate=3e-3)
  assert fit.best_step > 0                     # a learnable map: training helps
  mse = np.mean((fit.predict(x) - y) ** 2)
  assert mse < 0.5 * np.mean((y - y.mean(0)) ** 2)
  # Targets unrelated to the inputs: nothing beats the training mean by much on held-out rows.
  noise = rng.standard_normal((80, 3)).astype(np.float32)
  flat = baselines.fit_mlp_cv(x, noise, folds, kind='encoder', steps=200, learning_rate=3e-3)
  assert flat.best_step < fit.best_step
  with pytest.raises(ValueError, match='at least two folds'):
    baselines.fit_mlp_cv(x, y, np.zeros(80), kind='encoder')


@pytest.mark.slow
def test_folds_run_together_score_as_folds_run_one_at_a_time(tmp_path):
  """The K folds' stage 2 as one stacked program (`stacked_folds`) gives each fold's held-out
  predictions as its own run does: same init, same batches of its own stream, same RNG."""
  config = synthetic.get_config('smoke')
  config.data.num_train, config.data.num_test, config.data.image_size = 40, 8, 16
  config.stage2.steps, config.stage2.eval_every_steps = 6, 2
  config.stage2.learning_rate = 1e-1   # the flow moves: the scores change from step to step
  config.stage2.mixup = 0.4            # per-fold permutations and Beta draws
  config.stage2.pixel = 0.1            # the step decodes through the shared autoencoder
  config.stage2.select_margin = 0.0
  ctx = context.make_context(config, tmp_path)
  try:
    autoencoder = loop.restore_or_init(ctx).params
    train = ctx.dataset.train
    raw = stage2_data.features(ctx.module, autoencoder, train.images)
    folds = data.config_fold_ids(config, train)
    programs = loop.Stage2Programs(ctx)
    runs = {}
    for together in (True, False):
      shapes = []
      runs[together] = cross_validation.stage2(
          ctx, autoencoder, raw, folds, programs,
          lambda s, seen=shapes: seen.append(np.shape(s.nonfinite_step)), 0.5, together=together)
      # The divergence check reads every fold's flag: (K,) stacked, () alone.
      assert set(shapes) == ({(5,)} if together else {()}), shapes
  finally:
    ctx.mgr.wait_until_finished()
    ctx.log.close()
  stacked, alone = runs[True], runs[False]
  assert stacked.steps == alone.steps == [0, 2, 4, 6]
  for name in ('cv_enc_pcc', 'cv_dec_pcc'):
    np.testing.assert_allclose(stacked.scores[name], alone.scores[name], rtol=0, atol=1e-5)
    np.testing.assert_allclose(stacked.gain_se[name], alone.gain_se[name], rtol=0, atol=1e-5)
  # Training moved the scores far beyond that tolerance, so folds fed the wrong batches would show.
  assert np.ptp(alone.scores['cv_enc_pcc']) > 1e-3
  assert stacked.chosen == alone.chosen


@pytest.mark.slow
def test_each_folds_parts_are_fitted_once_for_the_pixel_weight_and_its_stage2(tmp_path,
                                                                              monkeypatch):
  """Choosing the pixel path's weight and each fold's stage 2 read the same parts of that fold
  (`stage2_data.fold_fits`): the adapter and feature statistics, pixel map and closed-form start
  are fitted once per fold, plus once on every training pair for the final model."""
  config = synthetic.get_config('smoke')
  config.data.num_train, config.data.num_test, config.data.image_size = 40, 8, 16
  config.stage2.steps, config.stage2.eval_every_steps = 2, 2
  rows = {'frozen': [], 'pixel map': [], 'start': []}

  def counted(name, fn, arg):
    def wrapper(*args, **kwargs):
      rows[name].append(len(args[arg]))
      return fn(*args, **kwargs)
    return wrapper

  monkeypatch.setattr(stage2_data, 'fit_frozen', counted('frozen', stage2_data.fit_frozen, 2))
  monkeypatch.setattr(pixel_path, 'fit', counted('pixel map', pixel_path.fit, 0))
  monkeypatch.setattr(closed_form, 'linear_pair_params',
                      counted('start', closed_form.linear_pair_params, 0))
  ctx = context.make_context(config, tmp_path)
  try:
    folds = data.config_fold_ids(config, ctx.dataset.train)
    loop.stage2(ctx, loop.restore_or_init(ctx))
  finally:
    ctx.mgr.wait_until_finished()
    ctx.log.close()
  n = len(folds)
  expected = sorted([n - int(size) for size in np.bincount(folds)] + [n])
  for name, fitted in rows.items():
    assert sorted(fitted) == expected, (name, fitted)


def test_a_diverged_fold_of_the_stacked_folds_stops_the_run(tmp_path):
  loop._check_finite(2, types.SimpleNamespace(nonfinite_step=np.full(5, -1)), tmp_path)
  with pytest.raises(TrainingDiverged, match=r'in cross-validation fold\(s\) 2, 4 of 5 at step 4'):
    loop._check_finite(2, types.SimpleNamespace(nonfinite_step=np.array([-1, 5, -1, 3, -1])),
                       tmp_path)
  with pytest.raises(TrainingDiverged, match=r'parameters\) at step 8'):
    loop._check_finite(2, types.SimpleNamespace(nonfinite_step=np.array(7)), tmp_path)


@pytest.mark.slow
def test_folds_of_different_adapter_sizes_run_one_at_a_time(tmp_path, capsys):
  """11 pairs in 5 folds: a fold of 3 leaves 8 pairs (adapter k = 7), one of 2 leaves 9 (k = 8 =
  D); states of different shapes do not stack, so the folds run one after another."""
  config = synthetic.get_config('smoke')
  config.data.num_train, config.data.num_test, config.data.image_size = 11, 4, 8
  config.stage2.steps = 2
  ctx = context.make_context(config, tmp_path)
  try:
    autoencoder = loop.restore_or_init(ctx).params
    train = ctx.dataset.train
    folds = data.config_fold_ids(config, train)
    assert sorted(np.bincount(folds).tolist()) == [2, 2, 2, 2, 3]
    sel = cross_validation.stage2(ctx, autoencoder,
                                  stage2_data.features(ctx.module, autoencoder, train.images),
                                  folds, loop.Stage2Programs(ctx), lambda s: None)
  finally:
    ctx.mgr.wait_until_finished()
    ctx.log.close()
  out = capsys.readouterr().out
  ks = ', '.join(str(min(8, 11 - n - 1)) for n in np.bincount(folds))
  assert (f"the folds' adapters keep different numbers of components (k {ks}), so their stage 2 "
          'runs one fold at a time') in out, out
  assert out.count('cross-validation fold ') == 5
  assert sel.steps == [0, 2]
