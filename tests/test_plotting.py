"""Tests of flig_jax.plotting: each figure is written as a PNG that opens and shows what it was
given (pixels of the images and colours of the curves, not a blank canvas)."""

import numpy as np
import pytest
from PIL import Image

from flig_jax import plotting


def _open_png(path) -> Image.Image:
  with Image.open(path) as im:
    im.load()
    assert im.format == 'PNG'
    assert im.size[0] > 50 and im.size[1] > 50
    return im.copy()


def _colour_share(im: Image.Image, rgb: tuple[int, int, int]) -> float:
  """The fraction of the image's pixels within a small distance of the colour `rgb`."""
  pixels = np.asarray(im.convert('RGB')).reshape(-1, 3).astype(int)
  return float(np.mean(np.abs(pixels - np.array(rgb)).sum(1) < 30))


def _has_colour(im: Image.Image, rgb: tuple[int, int, int]) -> bool:
  return _colour_share(im, rgb) > 0


def _png_text(path) -> dict[str, str]:
  """The PNG's text chunks (the figure's Title and Description)."""
  with Image.open(path) as im:
    im.load()
    return {k: v for k, v in im.text.items() if k != 'Software'}


@pytest.mark.parametrize('channels', [1, 3])
def test_reconstruction_grid_writes_png(tmp_path, channels):
  rng = np.random.default_rng(0)
  stim = rng.random((6, 12, 12, channels)).astype(np.float32)
  recons = {'flig': stim * 0.9, 'ridge': np.full_like(stim, 0.5)}
  path = plotting.reconstruction_grid(stim, recons, str(tmp_path / 'sub' / 'grid.png'), n=4)
  im = _open_png(path)
  assert im.size[0] > im.size[1]  # 4 columns, 3 rows
  # The images are drawn: ridge's row is a block of mid-grey, the random stimuli bring many levels.
  pixels = np.asarray(im.convert('RGB')).reshape(-1, 3).astype(int)
  grey = np.all(np.abs(pixels - 128) <= 2, axis=1)
  assert grey.mean() > 0.1, grey.mean()
  assert len(np.unique(pixels, axis=0)) > 100
  with pytest.raises(ValueError, match='ridge'):
    plotting.reconstruction_grid(stim, {'ridge': stim[:2]}, str(tmp_path / 'bad.png'))


def test_encoding_figure_writes_png(tmp_path):
  rng = np.random.default_rng(1)
  target = rng.standard_normal((40, 12))
  pred = target + rng.standard_normal((40, 12)) * np.linspace(0.1, 3, 12)
  pcc = {'flig': rng.uniform(-0.2, 0.9, 12), 'ridge': rng.uniform(-0.2, 0.6, 12)}
  path = plotting.encoding_figure(pcc, pred, target, str(tmp_path / 'enc.png'), n_best=3)
  im = _open_png(path)
  # Both models' curves and the scatters are drawn (matplotlib's tab:blue and tab:orange).
  blue, orange = (31, 119, 180), (255, 127, 14)
  assert _colour_share(im, blue) > 0.002 and _colour_share(im, orange) > 0.001
  with pytest.raises(ValueError, match='one shape'):
    plotting.encoding_figure(pcc, pred[:, :3], target, str(tmp_path / 'bad.png'))


@pytest.mark.parametrize('mean, colour', [(-1e-4, 'green'), (-0.01, 'red'), (0.02, 'green')])
def test_differences_figure_shows_ties_as_level(tmp_path, mean, colour):
  green, red = (44, 160, 44), (214, 39, 40)   # matplotlib's tab:green and tab:red
  diffs = {'v4_x': {'dec/pcc': {'mean': mean, 'sd': 0.001, 'values': [mean - 1e-3, mean + 1e-3]}}}
  path = plotting.differences_figure(diffs, ['dec/pcc'], str(tmp_path / 'd.png'), tie=5e-4)
  im = _open_png(path)
  assert _has_colour(im, green) == (colour == 'green')
  assert _has_colour(im, red) == (colour == 'red')


def test_a_model_that_draws_as_another_is_labelled_so_and_titles_are_kept(tmp_path):
  """FLIG at its closed-form start decodes and encodes as cae_ridge: the figures must say so
  rather than draw one over the other."""
  rng = np.random.default_rng(2)
  stim = rng.random((5, 8, 8, 1)).astype(np.float32)
  flig = stim * 0.8
  recons = {'flig': flig, 'ridge': np.full_like(stim, 0.5), 'cae_ridge': flig + 1e-4}
  path = plotting.reconstruction_grid(stim, recons, str(tmp_path / 'grid.png'), n=4,
                                      title='digits, test split: checkpoint step 9')
  assert _png_text(path) == {'Title': 'digits, test split: checkpoint step 9',
                                  'Description': 'cae_ridge draws as flig'}
  pcc = {'flig': rng.uniform(-0.2, 0.9, 12), 'ridge': rng.uniform(-0.2, 0.6, 12)}
  pcc['cae_ridge'] = pcc['flig'].copy()
  pred = rng.standard_normal((30, 12))
  path = plotting.encoding_figure(pcc, pred, pred + rng.standard_normal((30, 12)),
                                  str(tmp_path / 'enc.png'), title='encoding')
  assert _png_text(path) == {'Title': 'encoding', 'Description': 'cae_ridge draws as flig'}
  distinct = plotting.reconstruction_grid(stim, {'flig': flig, 'ridge': stim},
                                          str(tmp_path / 'distinct.png'))
  assert 'Description' not in _png_text(distinct)
