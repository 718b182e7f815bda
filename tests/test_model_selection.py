"""Stage 2 of the augmented flow: it starts as the `cae_ridge` ablation, scores the validation
split as it trains, and keeps the best step."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import train
from flig_jax import checkpointing
from flig_jax.evaluation import run
from flig_jax.training import steps, validation


@pytest.mark.slow
def test_untrained_flow_predicts_exactly_what_cae_ridge_does(tmp_path):
  """With a learning rate of 1e-30 the flow never leaves its closed-form start, so FLIG's
  decoding and encoding on test equal the ablation's, fitted independently inside evaluate."""
  workdir = tmp_path / 'run'
  train(workdir, '--config.stage2.steps=2', '--config.stage2.learning_rate=1e-30',
        '--config.stage2.disc_learning_rate=1e-30')
  result = run.evaluate(workdir, mlp_steps=10, verbose=False)
  for section in ('decoding', 'encoding'):
    flig, ablation = result[section]['flig'], result[section]['cae_ridge']
    for key in flig:
      assert flig[key] == pytest.approx(ablation[key], rel=1e-4, abs=1e-5), (section, key)
  # ... and that is not an accident of two equal models: ridge on pixels differs.
  assert result['decoding']['ridge']['pcc'] != pytest.approx(result['decoding']['flig']['pcc'])


def test_run_logs_validation_scores_and_saves_the_selected_step(smoke_workdir):
  rows = [json.loads(line) for line in (smoke_workdir / 'metrics.jsonl').read_text().splitlines()]
  val = [r for r in rows if 'val_score' in r]
  assert [r['step'] for r in val][0] == 0            # the closed-form start is a candidate
  assert val[-1]['step'] == max(r['step'] for r in rows if r['stage'] == 2)
  for r in val:
    assert r['val_score'] == pytest.approx(r['val_dec_pcc'] + r['val_enc_pcc'], abs=1e-5)
  mgr = checkpointing.manager(smoke_workdir, read_only=True)
  try:
    _, meta = checkpointing.latest_meta(mgr)
  finally:
    mgr.close()
  best = max(val, key=lambda r: r['val_score'])
  assert meta['selected_step'] == best['step']


def _state(flow, best, score, step):
  """A Stage2State with just what model selection reads."""
  return steps.Stage2State(step=jnp.asarray(step), flow_params=flow, disc_params=None,
                           flow_opt_state=None, disc_opt_state=None, rng=None,
                           nonfinite_step=None, frozen=None, best_flow_params=best,
                           best_score=jnp.asarray(score, jnp.float32),
                           best_step=jnp.asarray(-1 if score == -np.inf else 0))


def test_keep_best_takes_only_strictly_better_flows():
  current, kept = {'w': jnp.ones(3)}, {'w': jnp.zeros(3)}
  state = _state(current, kept, 0.5, step=40)
  worse = validation.keep_best(state, jnp.asarray(0.4))
  tie = validation.keep_best(state, jnp.asarray(0.5))
  nan = validation.keep_best(state, jnp.asarray(jnp.nan))
  better = validation.keep_best(state, jnp.asarray(0.6))
  for s in (worse, tie, nan):
    np.testing.assert_array_equal(s.best_flow_params['w'], 0.0)
    assert int(s.best_step) == 0 and float(s.best_score) == 0.5
  np.testing.assert_array_equal(better.best_flow_params['w'], 1.0)
  assert int(better.best_step) == 40 and float(better.best_score) == pytest.approx(0.6)
  np.testing.assert_array_equal(better.selected_flow_params()['w'], 1.0)
  # Before any validation (best_step -1) the model uses the current flow.
  fresh = _state(current, kept, -np.inf, step=7)
  np.testing.assert_array_equal(fresh.selected_flow_params()['w'], 1.0)
  assert int(fresh.selected_step()) == 7


def test_validation_scores_are_pearson_correlations():
  """Scores against numpy's corrcoef, with a stand-in module whose decoder and encoder are known."""

  class Known:
    def apply(self, variables, x, method):
      del variables
      return method(_Parts(), x)

  class _Parts:
    def decode_adapted(self, a):
      return a[:, :4]

    def unstandardise(self, h):
      return h

    def decode_features(self, h):
      return jnp.tanh(h).reshape(-1, 2, 2, 1)

    def encode_standardised(self, h):
      return 2.0 * h

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
  got = jax.jit(lambda v: validation.scores(Known(), None, v))(val)
  decoded = np.tanh(adapted[:, :4])
  dec = np.mean([np.corrcoef(decoded[i], images[i].ravel())[0, 1] for i in range(6)])
  encoded = (2.0 * feats[:, :3]) ** 3
  enc = np.mean([np.corrcoef(encoded[:, u], responses[:, u])[0, 1] for u in range(3)])
  assert float(got['val_dec_pcc']) == pytest.approx(dec, rel=1e-5)
  assert float(got['val_enc_pcc']) == pytest.approx(enc, rel=1e-5)
