"""Training learns: a short run on synthetic data decodes better than the mean image and encodes
with clearly positive correlations, and its trained decoder keeps the round trip exact."""

import numpy as np
import pytest

from configs import synthetic
from flig_jax import data, model
from flig_jax.evaluation import metrics
from flig_jax.training import loop

# The module's fixture trains 450 steps (a few minutes on two loaded cores).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  config = synthetic.get_config('smoke')
  config.data.image_size, config.data.num_train, config.data.num_test = 16, 128, 32
  config.stage1.augment = False
  config.stage1.steps, config.stage2.steps = 150, 300
  config.stage1.batch_size = config.stage2.batch_size = 16
  config.checkpoint.every_steps, config.log_every_steps = 1000, 50
  workdir = loop.train(config, tmp_path_factory.mktemp('learning'))
  m = model.load(workdir)
  return m, data.from_config(m.config)


def test_short_run_decodes_and_encodes_better_than_chance(trained):
  m, ds = trained
  x, r = ds.test.images, ds.test.responses
  decoded = m.decode(r)
  mean_image = np.broadcast_to(ds.train.images.mean(axis=0), x.shape)
  assert np.mean((decoded - x) ** 2) < np.mean((mean_image - x) ** 2)
  assert metrics.per_image_identification(decoded, x).mean() > 0.6     # chance: 0.5
  assert metrics.per_unit_pcc(m.encode(x), r).mean() > 0.3


def test_round_trip_through_the_trained_decoder(trained):
  m, ds = trained
  x = ds.test.images
  reconstructed = m.reconstruct(x)
  assert np.ptp(reconstructed) > 0.5          # a decoder with contrast, not a constant
  np.testing.assert_allclose(m.roundtrip(x), reconstructed, atol=1e-5)
