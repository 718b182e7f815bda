"""Tests of flig_jax.evaluation.figures: each figure is written as a PNG that opens."""

import numpy as np
import pytest
from PIL import Image

from flig_jax.evaluation import figures


def _open_png(path) -> Image.Image:
  with Image.open(path) as im:
    im.load()
    assert im.format == 'PNG'
    assert im.size[0] > 50 and im.size[1] > 50
    return im.copy()


@pytest.mark.parametrize('channels', [1, 3])
def test_reconstruction_grid_writes_png(tmp_path, channels):
  rng = np.random.default_rng(0)
  stim = rng.random((6, 12, 12, channels)).astype(np.float32)
  recons = {'flig': stim * 0.9, 'ridge': np.full_like(stim, 0.5)}
  path = figures.reconstruction_grid(stim, recons, str(tmp_path / 'sub' / 'grid.png'), n=4)
  im = _open_png(path)
  assert im.size[0] > im.size[1]  # 4 columns, 3 rows
  with pytest.raises(ValueError, match='ridge'):
    figures.reconstruction_grid(stim, {'ridge': stim[:2]}, str(tmp_path / 'bad.png'))


def test_encoding_figure_writes_png(tmp_path):
  rng = np.random.default_rng(1)
  target = rng.standard_normal((40, 12))
  pred = target + rng.standard_normal((40, 12)) * np.linspace(0.1, 3, 12)
  pcc = {'flig': rng.uniform(-0.2, 0.9, 12), 'ridge': rng.uniform(-0.2, 0.6, 12)}
  path = figures.encoding_figure(pcc, pred, target, str(tmp_path / 'enc.png'), n_best=3)
  _open_png(path)
  with pytest.raises(ValueError, match='one shape'):
    figures.encoding_figure(pcc, pred[:, :3], target, str(tmp_path / 'bad.png'))


def test_training_figure_writes_png(tmp_path):
  steps = np.arange(0, 100, 10)
  curves = {'stage1/loss': (steps, np.exp(-steps / 30.0)), 'stage2/nll': (steps, steps * 0.1)}
  _open_png(figures.training_figure(curves, str(tmp_path / 'train.png')))
  with pytest.raises(ValueError, match='no curves'):
    figures.training_figure({}, str(tmp_path / 'empty.png'))
