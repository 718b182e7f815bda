"""Tests of flig_jax.evaluation.metrics: SSIM against scikit-image, hand-checkable cases."""

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from flig_jax.evaluation import metrics


def _skimage_ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> np.ndarray:
  return np.array([structural_similarity(
      a[i], b[i], gaussian_weights=True, sigma=sigma, use_sample_covariance=False, data_range=1,
      channel_axis=-1) for i in range(a.shape[0])])


def _structured(n: int, size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
  """Blobs and bars: smooth images with edges, unlike uniform noise."""
  yy, xx = np.mgrid[0:size, 0:size] / size
  out = np.zeros((n, size, size, channels), np.float32)
  for i in range(n):
    for c in range(channels):
      cx, cy, s = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.2)
      blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
      bar = (np.abs(xx - rng.uniform(0.2, 0.8)) < 0.08).astype(np.float64)
      out[i, :, :, c] = np.clip(0.7 * blob + 0.4 * bar, 0, 1)
  return out


@pytest.mark.parametrize('size', [28, 32])
@pytest.mark.parametrize('channels', [1, 3])
@pytest.mark.parametrize('kind', ['random', 'structured'])
def test_ssim_matches_skimage(size, channels, kind):
  rng = np.random.default_rng(size * 10 + channels)
  if kind == 'random':
    a = rng.random((3, size, size, channels)).astype(np.float32)
  else:
    a = _structured(3, size, channels, rng)
  b = np.clip(a + 0.15 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
  b[0] = _structured(1, size, channels, rng)[0]  # an unrelated image too
  ours = metrics.per_image_ssim(b, a)
  ref = _skimage_ssim(b, a)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  assert ours.shape == (3,)
  assert abs(metrics.decoding_metrics(b, a)['ssim'] - ref.mean()) < 1e-5


@pytest.mark.parametrize('size, sigma', [(10, 8 / 7), (7, 6 / 7), (3, 2 / 7), (11, 1.5)])
def test_ssim_of_small_images_takes_the_largest_window_that_fits(size, sigma):
  """10x10 binary patterns (as in some fMRI sets) are scored, not refused: with the Gaussian
  window of the largest radius that fits, as scikit-image scores them with that sigma."""
  rng = np.random.default_rng(size)
  a = (rng.random((4, size, size, 1)) < 0.5).astype(np.float32)
  b = np.clip(a + 0.3 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
  np.testing.assert_allclose(metrics.per_image_ssim(b, a), _skimage_ssim(b, a, sigma),
                             rtol=1e-4, atol=1e-4)  # a 3x3 image's SSIM is one float32 pixel
  assert metrics.per_image_ssim(a, a) == pytest.approx(np.ones(4), abs=1e-5)


def test_ssim_rejects_images_smaller_than_the_smallest_window():
  x = np.zeros((2, 2, 5, 1), np.float32)
  with pytest.raises(ValueError, match='3x3 pixels; got 2x5'):
    metrics.per_image_ssim(x, x)


def test_identical_images_score_perfectly():
  rng = np.random.default_rng(0)
  x = _structured(6, 28, 1, rng)
  m = metrics.decoding_metrics(x, x)
  assert m['mse'] == pytest.approx(0.0, abs=1e-12)
  assert m['pcc'] == pytest.approx(1.0, abs=1e-5)
  assert m['ssim'] == pytest.approx(1.0, abs=1e-5)
  assert m['identification'] == pytest.approx(1.0)
  assert all(isinstance(v, float) for v in m.values())


def test_shuffled_reconstructions_score_lower():
  rng = np.random.default_rng(1)
  x = _structured(8, 28, 1, rng)
  noisy = np.clip(x + 0.05 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
  shuffled = noisy[np.roll(np.arange(8), 1)]
  good, bad = metrics.decoding_metrics(noisy, x), metrics.decoding_metrics(shuffled, x)
  assert bad['mse'] > good['mse']
  assert bad['pcc'] < good['pcc']
  assert bad['ssim'] < good['ssim']
  assert bad['identification'] < good['identification']
  assert good['identification'] == pytest.approx(1.0)


def test_hand_checked_values():
  # Image 0: recon is the negative of a ramp -> pcc -1; image 1: recon is 0.8 x + 0.1 -> pcc 1.
  ramp = np.linspace(0, 1, 12 * 12).reshape(12, 12, 1).astype(np.float32)
  target = np.stack([ramp, ramp.transpose(1, 0, 2)])
  recon = np.stack([1.0 - target[0], target[1] * 0.8 + 0.1])
  per = metrics.decoding_metrics(recon, target, per_image=True)
  assert per['pcc'] == pytest.approx([-1.0, 1.0], abs=1e-5)
  assert per['mse'][0] == pytest.approx(np.mean((1.0 - 2.0 * ramp) ** 2), rel=1e-5)
  assert per['mse'][1] == pytest.approx(np.mean((0.1 - 0.2 * ramp) ** 2), rel=1e-4)
  # recon 0 correlates -1 with its own stimulus, more with the other: 0 of 1 beaten.
  assert per['identification'] == pytest.approx([0.0, 1.0])


def test_identification_counts_fraction_of_others():
  # Three nearly uncorrelated noise images; recon 0 is closer to stimulus 1 than to its own.
  rng = np.random.default_rng(2)
  s = rng.random((3, 28, 28, 1)).astype(np.float32)
  recon = s.copy()
  recon[0] = (0.5 * s[0] + s[1]) / 1.5  # r ~ 0.45 with its own, ~0.9 with s[1], ~0 with s[2]
  ident = metrics.per_image_identification(recon, s)
  assert ident[0] == pytest.approx(0.5)  # beats stimulus 2, loses to stimulus 1
  assert ident[1] == pytest.approx(1.0) and ident[2] == pytest.approx(1.0)
  with pytest.raises(ValueError, match='at least 2'):
    metrics.per_image_identification(s[:1], s[:1])


def test_constant_image_gives_zero_pcc_not_nan():
  x = np.full((2, 12, 12, 1), 0.5, np.float32)
  y = np.random.default_rng(3).random((2, 12, 12, 1)).astype(np.float32)
  assert np.all(metrics.per_image_pcc(x, y) == 0.0)


def test_decoding_rejects_bad_input():
  x = np.zeros((2, 12, 12, 1), np.float32)
  with pytest.raises(ValueError, match='differ in shape'):
    metrics.decoding_metrics(x, np.zeros((2, 12, 12, 3), np.float32))
  with pytest.raises(ValueError, match=r'\(N, H, W, C\)'):
    metrics.decoding_metrics(x[..., 0], x[..., 0])
  bad = x.copy()
  bad[0, 0, 0, 0] = np.nan
  with pytest.raises(ValueError, match='NaN'):
    metrics.decoding_metrics(bad, x)


def test_per_unit_pcc_and_encoding_metrics():
  rng = np.random.default_rng(4)
  target = rng.standard_normal((50, 5)) * np.array([1, 2, 3, 4, 5]) + 10
  pred = target.copy()
  pred[:, 1] = -target[:, 1]           # r = -1
  pred[:, 2] = 7.0                     # constant prediction: r defined as 0
  pred[:, 3] = 2 * target[:, 3] + 1    # r = 1 though the scale is off
  r = metrics.per_unit_pcc(pred, target)
  np.testing.assert_allclose(r, [1, -1, 0, 1, 1], atol=1e-5)
  m = metrics.encoding_metrics(pred, target)
  assert m['pcc_mean'] == pytest.approx(np.mean([1, -1, 0, 1, 1]), abs=1e-5)
  assert m['pcc_median'] == pytest.approx(1.0, abs=1e-5)
  # Perfect predictions: zero z-scored MSE; the mean predictor: z-scored MSE of 1.
  assert metrics.encoding_metrics(target, target)['mse'] == pytest.approx(0.0, abs=1e-6)
  mean_pred = np.broadcast_to(target.mean(0), target.shape)
  assert metrics.encoding_metrics(mean_pred, target)['mse'] == pytest.approx(1.0, abs=1e-4)


def test_encoding_mse_uses_training_statistics():
  target = np.array([[0.0, 0.0], [2.0, 4.0]])
  pred = np.array([[1.0, 0.0], [1.0, 4.0]])
  # With train std (1, 2): errors (1, -1)/1 on unit 0, 0 on unit 1 -> mse = (1 + 1) / 4.
  m = metrics.encoding_metrics(pred, target, train_mean=[5.0, 5.0], train_std=[1.0, 2.0])
  assert m['mse'] == pytest.approx(0.5)
  # With the target's own std (1, 2) as well: the same here; with std 2 on unit 0: quartered.
  m2 = metrics.encoding_metrics(pred, target, train_mean=[0.0, 0.0], train_std=[2.0, 2.0])
  assert m2['mse'] == pytest.approx(0.125)
  with pytest.raises(ValueError, match='train_std'):
    metrics.encoding_metrics(pred, target, train_mean=[0.0, 0.0], train_std=[1.0])
