"""Stage 2 of the augmented flow: it starts as the `cae_ridge` ablation, scores the validation
split as it trains, and keeps the best step."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import train

from configs import default
from flig_jax import checkpointing
from flig_jax.evaluation import run
from flig_jax.training import train_state, validation


@pytest.mark.slow
def test_untrained_flow_predicts_exactly_what_cae_ridge_does(tmp_path):
  """With a learning rate of 1e-30 the flow never leaves its closed-form start, so FLIG's
  decoding (without the pixel path, which the ablation lacks) and encoding on test equal the
  ablation's, fitted independently inside evaluate."""
  workdir = tmp_path / 'run'
  train(workdir, '--config.stage2.steps=2', '--config.stage2.learning_rate=1e-30',
        '--config.stage2.disc_learning_rate=1e-30', '--config.model.pixel_path=False')
  result = run.evaluate(workdir, mlp_steps=10, verbose=False)
  for section in ('decoding', 'encoding'):
    flig, ablation = result[section]['flig'], result[section]['cae_ridge']
    for key in flig:
      assert flig[key] == pytest.approx(ablation[key], rel=1e-4, abs=1e-5), (section, key)
  # ... and that is not an accident of two equal models: ridge on pixels differs.
  assert result['decoding']['ridge']['pcc'] != pytest.approx(result['decoding']['flig']['pcc'])


@pytest.mark.slow
def test_run_logs_validation_scores_and_saves_the_selected_step(tmp_path):
  """Selection on a validation split (data.folds 0) instead of cross-validation."""
  smoke_workdir = tmp_path / 'run'
  train(smoke_workdir, '--config.data.folds=0', '--config.data.val_fraction=0.1')
  rows = [json.loads(line) for line in (smoke_workdir / 'metrics.jsonl').read_text().splitlines()]
  val = [r for r in rows if 'val_score' in r]
  assert val[0]['step'] == 0            # the closed-form start is a candidate
  assert val[-1]['step'] == max(r['step'] for r in rows if r['stage'] == 2)
  for r in val:
    assert r['val_score'] == pytest.approx(r['val_dec_pcc'] + r['val_enc_pcc'], abs=1e-5)
    assert 'steps_per_s' not in r   # a validation row advances no step: no speed to report
  assert all(r['steps_per_s'] > 0 for r in rows if 'loss' in r)
  mgr = checkpointing.manager(smoke_workdir, read_only=True)
  try:
    meta = checkpointing.latest_meta(mgr)
  finally:
    mgr.close()
  # The kept steps are validated steps, the encoder's first (the rule itself: the constructed
  # curves below).
  for name in ('val_enc_pcc', 'val_dec_pcc'):
    assert val[0][f'{name}_gain_se'] == 0.0
    assert all(r[f'{name}_gain_se'] >= 0.0 for r in val[1:])
  assert len(meta.selected_steps) == 2
  assert set(meta.selected_steps) <= {r['step'] for r in val}


def _state(step, score, best_step, ref_score=(0.0, 0.0), ref_replicates=((0.0,) * 4,) * 2):
  """A Stage2State with just what model selection reads: groups 'a' and 'b' of the flow, the
  current ones all ones, the kept ones all zeros."""
  ones, zeros = {'a': jnp.ones(2), 'b': jnp.ones(3)}, {'a': jnp.zeros(2), 'b': jnp.zeros(3)}
  groups = len(score)
  return train_state.Stage2State(
      step=jnp.asarray(step), flow_params=ones, disc_params=None, flow_opt_state=None,
      disc_opt_state=None, rng=None, nonfinite_step=None, frozen=None, best_flow_params=zeros,
      best_score=jnp.asarray(score, jnp.float32), best_step=jnp.asarray(best_step, jnp.int32),
      ref_score=jnp.asarray(ref_score[:groups], jnp.float32),
      ref_replicates=jnp.asarray(ref_replicates[:groups], jnp.float32), discriminator=None,
      flow_tx=None, disc_tx=None)


def _flat(value, m=4):
  """Jackknife replicates all equal to `value`: a gain with no spread (standard error 0)."""
  return jnp.full((m,), value, jnp.float32)


def test_keep_best_takes_each_group_only_when_strictly_better():
  groups = (('enc', ('a',)), ('dec', ('b',)))
  state = _state(40, [0.5, 0.5], [0, 0])
  for enc, dec in ((0.4, 0.5), (0.5, jnp.nan)):   # worse, tie, NaN: nothing changes
    s, _ = validation.keep_best(state, {'enc': jnp.asarray(enc), 'dec': jnp.asarray(dec)},
                                {'enc': _flat(enc), 'dec': _flat(dec)}, groups, 1.0)
    assert float(jnp.sum(s.best_flow_params['a'])) == 0 == float(jnp.sum(s.best_flow_params['b']))
    assert s.best_step.tolist() == [0, 0] and s.best_score.tolist() == [0.5, 0.5]
  s, se = validation.keep_best(state, {'enc': jnp.asarray(0.6), 'dec': jnp.asarray(0.1)},
                               {'enc': _flat(0.6), 'dec': _flat(0.1)}, groups, 1.0)
  np.testing.assert_array_equal(s.best_flow_params['a'], 1.0)     # the encoder part moves on
  np.testing.assert_array_equal(s.best_flow_params['b'], 0.0)     # the decoder part stays
  assert s.best_step.tolist() == [40, 0]
  assert float(se['enc_gain_se']) == pytest.approx(0.0, abs=1e-6)
  np.testing.assert_array_equal(s.selected_flow_params()['a'], 1.0)
  # One group over every parameter (the plain flow).
  s, _ = validation.keep_best(_state(9, [0.5], [0]), {'sum': jnp.asarray(0.7)},
                              {'sum': _flat(0.7)}, (('sum', None),), 1.0)
  assert s.best_step.tolist() == [9]
  np.testing.assert_array_equal(s.best_flow_params['b'], 1.0)
  # Before any validation (best_step -1) the model uses the current flow.
  fresh = _state(7, [-np.inf, -np.inf], [-1, -1])
  np.testing.assert_array_equal(fresh.selected_flow_params()['b'], 1.0)
  assert fresh.selected_steps().tolist() == [7, 7]


# Five validations of an augmented flow, with made-up scores: step -> (encoder score, decoder
# score); a starred step's jackknife replicates of that score spread widely (a gain that is noise).
CURVES = {0: (0.20, 0.50), 10: (0.30, 0.45), 20: (0.40, '0.56*'), 30: (0.35, 0.54),
          40: ('0.45*', 0.53)}


def _select(margin: float) -> train_state.Stage2State:
  """Runs model selection over CURVES; the flow's parameters at step s are all s."""
  groups = (('enc', ('a',)), ('dec', ('b',)))
  base = jnp.asarray([-0.1, 0.1, 0.0, 0.0])      # replicates around the score
  spread = jnp.asarray([0.3, -0.3, 0.3, -0.3])   # a jackknife standard error of about 0.52
  state = _state(0, [-np.inf, -np.inf], [-1, -1])
  for step, row in CURVES.items():
    scores, replicates = {}, {}
    for name, value in zip(('enc', 'dec'), row, strict=True):
      noisy = isinstance(value, str)
      scores[name] = jnp.asarray(float(value.rstrip('*')) if noisy else value)
      replicates[name] = scores[name] + base + (spread if noisy else 0.0)
    state = state.replace(step=jnp.asarray(step), flow_params={'a': jnp.full(2, float(step)),
                                                               'b': jnp.full(3, float(step))})
    state, _ = validation.keep_best(state, scores, replicates, groups, margin)
  return state


def test_selection_over_constructed_score_curves_keeps_the_known_steps():
  """The encoder part is kept at step 20 (step 40 scores higher, but its gain is noise), the
  decoder part at step 30 (step 20 scores higher but its gain is noise; step 40 gains clearly
  but scores lower than step 30)."""
  state = _select(margin=1.0)
  assert state.best_step.tolist() == [20, 30]
  np.testing.assert_allclose(state.best_score, [0.40, 0.54], rtol=1e-6)
  kept = state.selected_flow_params()
  np.testing.assert_array_equal(kept['a'], 20.0)
  np.testing.assert_array_equal(kept['b'], 30.0)
  assert state.selected_steps().tolist() == [20, 30]
  # With no margin every higher score is taken, noise or not.
  assert _select(margin=0.0).best_step.tolist() == [40, 20]


def test_keep_best_needs_a_gain_over_the_start_beyond_its_standard_error():
  groups = (('s', None),)
  # The first validation is kept whatever it scores, and becomes the reference.
  s, se = validation.keep_best(_state(0, [-np.inf], [-1]), {'s': jnp.asarray(0.2)},
                               {'s': jnp.asarray([0.1, 0.2, 0.3, 0.2])}, groups, 1.0)
  assert s.best_step.tolist() == [0] and float(se['s_gain_se']) == 0.0
  assert float(s.ref_score[0]) == pytest.approx(0.2)
  np.testing.assert_allclose(s.ref_replicates[0], [0.1, 0.2, 0.3, 0.2])
  # A later step gains 0.05 on average, but its leave-one-out gains spread widely.
  later = s.replace(step=jnp.asarray(100))
  noisy = jnp.asarray([0.1, 0.2, 0.3, 0.2]) + jnp.asarray([0.25, -0.1, 0.15, -0.1])
  d = np.asarray([0.25, -0.1, 0.15, -0.1])
  want_se = np.sqrt(3 / 4 * np.sum((d - d.mean()) ** 2))
  for margin, moves in ((1.0, False), (0.0, True)):
    t, se = validation.keep_best(later, {'s': jnp.asarray(0.25)}, {'s': noisy}, groups, margin)
    assert float(se['s_gain_se']) == pytest.approx(want_se, rel=1e-5)
    assert t.best_step.tolist() == ([100] if moves else [0])
    assert float(t.ref_score[0]) == pytest.approx(0.2)       # the reference stays step 0's


def test_leave_one_out_replicates_match_numpy():
  rng = np.random.default_rng(1)
  a, b = rng.standard_normal((7, 5)), rng.standard_normal((7, 5))
  got = np.asarray(validation._leave_one_out_pearson(jnp.asarray(a), jnp.asarray(b)))
  for j in range(7):
    keep = np.arange(7) != j
    want = [np.corrcoef(a[keep, u], b[keep, u])[0, 1] for u in range(5)]
    np.testing.assert_allclose(got[j], want, rtol=1e-4, atol=1e-5)


def test_validation_scores_are_pearson_correlations():
  """Scores against numpy's corrcoef, with a stand-in module whose decoder and encoder are known."""

  class Known:
    def apply(self, variables, *inputs, method):
      del variables
      return method(_Parts(), *inputs)

  class _Parts:
    def decode_adapted(self, a):
      return a[:, :4]

    def unstandardise(self, h):
      return h

    def decode_features(self, h):
      return jnp.tanh(h).reshape(-1, 2, 2, 1)

    def decode_images(self, a, r=None):
      del r  # no pixel path
      return self.decode_features(self.unstandardise(self.decode_adapted(a)))

    def encode_features(self, h, x=None):
      del x  # no pixel path
      return self.inverse(2.0 * h)

    def adapter(self):
      return self

    def inverse(self, a):
      return a[:, :3] ** 3

  rng = np.random.default_rng(0)
  feats, adapted = rng.standard_normal((6, 4)), rng.standard_normal((6, 5))
  images, responses = rng.uniform(size=(6, 2, 2, 1)), rng.standard_normal((6, 3))
  val = validation.ValidationSet(raw_features=None, features=jnp.asarray(feats),
                                 adapted=jnp.asarray(adapted), images=jnp.asarray(images),
                                 responses=jnp.asarray(responses))
  got, loo = jax.jit(lambda v: validation.scores(Known(), None, v))(val)
  decoded = np.tanh(adapted[:, :4])
  dec = np.mean([np.corrcoef(decoded[i], images[i].ravel())[0, 1] for i in range(6)])
  encoded = (2.0 * feats[:, :3]) ** 3
  enc = np.mean([np.corrcoef(encoded[:, u], responses[:, u])[0, 1] for u in range(3)])
  assert float(got['val_dec_pcc']) == pytest.approx(dec, rel=1e-5)
  assert float(got['val_enc_pcc']) == pytest.approx(enc, rel=1e-5)
  # Leaving out stimulus 0: the same scores over stimuli 1-5.
  dec0 = np.mean([np.corrcoef(decoded[i], images[i].ravel())[0, 1] for i in range(1, 6)])
  enc0 = np.mean([np.corrcoef(encoded[1:, u], responses[1:, u])[0, 1] for u in range(3)])
  assert float(loo['val_dec_pcc'][0]) == pytest.approx(dec0, rel=1e-4)
  assert float(loo['val_enc_pcc'][0]) == pytest.approx(enc0, rel=1e-4)
  np.testing.assert_allclose(loo['val_score'], loo['val_dec_pcc'] + loo['val_enc_pcc'], rtol=1e-6)


def test_augmented_flow_optimizer_keeps_the_fitted_linear_maps():
  cfg = default.get_config().stage2
  params = {'linear_pair': {'enc_kernel': jnp.ones((2, 2)), 'enc_bias': jnp.ones(2),
                            'enc_log_scale': jnp.ones(2), 'dec_kernel': jnp.ones((2, 2)),
                            'dec_bias': jnp.ones(2), 'dec_log_scale': jnp.ones(2)},
            'enc_coupling': {'w': jnp.ones(3)}, 'dec_coupling': {'w': jnp.ones(3)}}
  grads = jax.tree.map(jnp.ones_like, params)
  tx = train_state.flow_optimizer(cfg, augmented=True)
  opt_state = tx.init(params)
  for _ in range(3):   # past the warm-up's zero learning rate
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  pair = params['linear_pair']
  for name in ('enc_kernel', 'enc_bias', 'dec_kernel', 'dec_bias'):
    np.testing.assert_array_equal(pair[name], 1.0)
  for moved in (pair['enc_log_scale'], pair['dec_log_scale'], params['enc_coupling']['w'],
                params['dec_coupling']['w']):
    assert float(jnp.max(jnp.abs(moved - 1.0))) > 0


def test_coupling_weight_decay_pulls_only_the_couplings_toward_zero():
  """With zero gradients only weight decay moves a parameter: the couplings shrink by the
  coupling decay, the noise scales by the general one (0 here)."""
  cfg = default.get_config().stage2
  cfg.weight_decay, cfg.coupling_weight_decay = 0.0, 5.0
  params = {'linear_pair': {'enc_kernel': jnp.ones((2, 2)), 'enc_log_scale': jnp.ones(2)},
            'enc_coupling': {'w': jnp.ones(3)},
            'dec_coupling': {'w': jnp.ones(3)}}
  tx = train_state.flow_optimizer(cfg, augmented=True)
  opt_state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  for _ in range(5):
    updates, opt_state = tx.update(zeros, opt_state, params)
    params = optax.apply_updates(params, updates)
  assert float(params['enc_coupling']['w'][0]) < 1.0
  assert float(params['dec_coupling']['w'][0]) < 1.0
  np.testing.assert_array_equal(params['linear_pair']['enc_log_scale'], 1.0)
  np.testing.assert_array_equal(params['linear_pair']['enc_kernel'], 1.0)


def test_augmented_groups_split_the_flow_by_direction():
  """Every parameter of the augmented flow is kept by exactly one direction's score, and each
  direction's group holds everything its point prediction reads: what the encoder computes from
  (h, 0) moves when only encoder-group parameters change, never when decoder-group ones do."""
  from flax import traverse_util

  from flig_jax.nn import flow
  d = 3
  module = flow.Flow(d, num_blocks=0, hidden=8, augmented=True)
  params = module.init(jax.random.key(0), jnp.zeros((2, 2 * d)), method=flow.Flow.forward)
  paths = traverse_util.flatten_dict(params['params'], sep='/')
  (_, enc), (_, dec) = validation.GROUPS['augmented']
  owner = {p: [g for g, prefixes in (('enc', enc), ('dec', dec))
               if any(p == q or p.startswith(q + '/') for q in prefixes)] for p in paths}
  assert all(len(v) == 1 for v in owner.values()), owner
  h = jax.random.normal(jax.random.key(1), (4, d))
  a = jax.random.normal(jax.random.key(2), (4, d))

  def predictions(flat):
    p = {'params': traverse_util.unflatten_dict(flat, sep='/')}
    encoded = module.apply(p, jnp.concatenate([h, 0 * h], 1), method=flow.Flow.forward)[0][:, :d]
    decoded = module.apply(p, jnp.concatenate([a, 0 * a], 1), method=flow.Flow.inverse)[0][:, :d]
    return encoded, decoded

  rng = np.random.default_rng(0)
  base = {p: v + 0.3 * rng.standard_normal(v.shape) for p, v in paths.items()}
  enc0, dec0 = predictions(base)
  for group in ('enc', 'dec'):
    moved = {p: v + (0.5 if owner[p] == [group] else 0.0) for p, v in base.items()}
    enc1, dec1 = predictions(moved)
    other = dec1 - dec0 if group == 'enc' else enc1 - enc0
    assert float(jnp.max(jnp.abs(other))) < 1e-5, group
