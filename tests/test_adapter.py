"""The neural adapter A: fitted on training responses only, whitening, exact inverse on its range,
padding, guards and serialisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flig_jax.nn import adapter as adapter_lib
from flig_jax.nn.adapter import Adapter


def _responses(n: int, u: int, seed: int = 0, rank: int | None = None) -> np.ndarray:
  rng = np.random.default_rng(seed)
  rank = rank or u
  latent = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, u))
  return (latent * rng.uniform(0.5, 3.0, size=u) + rng.normal(size=u) * 5).astype(np.float32)


def test_fit_uses_only_the_given_responses_and_whitens_them():
  train, test = _responses(60, 12, seed=0), _responses(20, 12, seed=1) + 100.0
  ad = Adapter.fit(train, dim=8)
  assert (ad.k, ad.dim, ad.num_units) == (8, 8, 12)
  np.testing.assert_allclose(ad.mean, train.mean(axis=0), rtol=1e-5, atol=1e-4)
  a = np.asarray(ad.forward(train))
  assert a.shape == (60, 8) and a.dtype == np.float32
  np.testing.assert_allclose(a.mean(axis=0), 0.0, atol=1e-4)
  np.testing.assert_allclose(np.cov(a, rowvar=False), np.eye(8), atol=1e-4)
  # The test responses are far from the training mean: whitened by train statistics only.
  assert np.linalg.norm(np.asarray(ad.forward(test)).mean(axis=0)) > 1.0


def test_inverse_is_exact_on_the_range_with_k_equal_d():
  ad = Adapter.fit(_responses(40, 12), dim=8)
  a = np.random.default_rng(2).normal(size=(5, 8)).astype(np.float32)
  r = ad.inverse(a)
  assert r.shape == (5, 12)
  np.testing.assert_allclose(ad.forward(r), a, atol=1e-4)
  np.testing.assert_allclose(np.asarray(ad.signal_mask), np.ones(8))


def test_fewer_units_than_dim_pads_and_inverts_exactly():
  train = _responses(50, 5)
  ad = Adapter.fit(train, dim=8)
  assert ad.k == 5
  np.testing.assert_allclose(np.asarray(ad.signal_mask), [1, 1, 1, 1, 1, 0, 0, 0])
  a = np.asarray(ad.forward(train))
  assert a.shape == (50, 8)
  np.testing.assert_array_equal(a[:, 5:], 0.0)
  np.testing.assert_allclose(ad.inverse(a), train, rtol=1e-4, atol=1e-3)
  noisy = np.asarray(ad.forward(train, pad='noise', rng=jax.random.key(0)))
  np.testing.assert_allclose(noisy[:, :5], a[:, :5])
  assert np.std(noisy[:, 5:]) > 0.5
  np.testing.assert_allclose(ad.inverse(noisy), train, rtol=1e-4, atol=1e-3)
  with pytest.raises(ValueError, match='rng'):
    ad.forward(train, pad='noise')
  with pytest.raises(ValueError, match='pad'):
    ad.forward(train, pad='ones')


def test_rank_deficient_and_constant_units_are_guarded():
  train = _responses(30, 10, rank=3)
  train[:, 4] = 7.0                                   # a dead unit
  ad = Adapter.fit(train, dim=8)
  assert ad.k == 3
  assert np.all(np.isfinite(np.asarray(ad.components)))
  assert float(ad.scale[4]) == 1.0
  a = np.asarray(ad.forward(train))
  assert np.all(np.isfinite(a))
  np.testing.assert_allclose(np.cov(a[:, :3], rowvar=False), np.eye(3), atol=1e-3)
  np.testing.assert_allclose(ad.inverse(a), train, rtol=1e-4, atol=1e-3)
  few = _responses(4, 10)                            # N < U: rank N - 1 after centring
  assert Adapter.fit(few, dim=8).k == 3


def test_bad_input_raises_clear_errors():
  with pytest.raises(ValueError, match='Adapter.fit expects.*shape'):
    Adapter.fit(np.zeros(10), dim=4)
  bad = _responses(10, 4)
  bad[0, 0] = np.nan
  with pytest.raises(ValueError, match='NaN'):
    Adapter.fit(bad, dim=4)
  with pytest.raises(ValueError, match='no variance'):
    Adapter.fit(np.ones((10, 4)), dim=4)
  ad = Adapter.fit(_responses(10, 4), dim=4)
  with pytest.raises(ValueError, match=r'\(N, 4\)'):
    ad.forward(np.zeros((3, 5)))


def test_arrays_round_trip_and_pytree():
  ad = Adapter.fit(_responses(30, 6), dim=8)
  back = Adapter.from_arrays(ad.arrays(), dim=8)
  assert (back.dim, back.k) == (ad.dim, ad.k)
  r = _responses(3, 6, seed=5)
  np.testing.assert_array_equal(back.forward(r), ad.forward(r))
  assert len(jax.tree.leaves(ad)) == 4           # dim and k are static
  out = jax.jit(lambda a, x: a.forward(x))(ad, r)
  np.testing.assert_allclose(out, ad.forward(r), atol=1e-6)


def test_max_components_caps_k_and_pads_the_rest():
  rng = np.random.default_rng(3)
  responses = rng.normal(size=(40, 12)).astype(np.float32)
  adapter = Adapter.fit(responses, dim=8, max_components=3)
  assert (adapter.k, adapter.dim) == (3, 8)
  np.testing.assert_array_equal(np.asarray(adapter.signal_mask), [1, 1, 1, 0, 0, 0, 0, 0])
  a = np.asarray(adapter.forward(jnp.asarray(responses)))
  np.testing.assert_array_equal(a[:, 3:], 0.0)
  assert Adapter.fit(responses, dim=8).k == 8


def _fit_by_covariance(responses: np.ndarray, dim: int, max_components: int = 0,
                      rank: int | None = None):
  """The textbook PCA the adapter stands for, computed another way than its fit: the z-scored
  responses' covariance matrix (np.cov) and its eigendecomposition (np.linalg.eigh), keeping the
  top k = min(dim, rank, max_components) axes; `rank` is the rank the data were made with."""
  r = np.asarray(responses, np.float64)
  n, u = r.shape
  mean, std = r.mean(axis=0), r.std(axis=0, ddof=1)
  eigvals, eigvecs = np.linalg.eigh(np.cov((r - mean) / std, rowvar=False))
  order = np.argsort(eigvals)[::-1]
  k = min(dim, rank or u, n - 1, max_components or dim)
  return mean, std, eigvecs[:, order[:k]], np.sqrt(eigvals[order[:k]])


def _assert_same_fit(adapter: Adapter, reference, atol: float) -> None:
  mean, scale, components, sqrt_eig = reference
  assert adapter.k == sqrt_eig.size
  np.testing.assert_allclose(adapter.mean, mean, rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(adapter.scale, scale, rtol=1e-6)
  np.testing.assert_allclose(adapter.sqrt_eig, sqrt_eig, rtol=atol)
  got = np.asarray(adapter.components, np.float64)
  signs = np.sign(np.sum(got * components, axis=0))   # each axis is defined up to its sign
  np.testing.assert_allclose(got * signs, components, atol=atol)


@pytest.mark.parametrize('n, u, rank, dim, cap', [
    (60, 12, None, 8, 0),     # more pairs than units: Gram of the units
    (9, 40, None, 16, 0),     # fewer pairs than units: Gram of the pairs, k = N - 1 = 8
    (30, 10, 3, 8, 0),        # rank deficient
    (50, 20, None, 8, 5),     # capped
])
def test_fit_equals_the_covariance_eigendecomposition(n, u, rank, dim, cap):
  responses = _responses(n, u, seed=4, rank=rank)
  reference = _fit_by_covariance(responses, dim, cap, rank)
  _assert_same_fit(Adapter.fit(responses, dim, cap), reference, 1e-5)


def _decaying(n: int, u: int, seed: int = 0) -> np.ndarray:
  """(n, u) with singular values 0.8^i (distinct, so every axis is defined up to its sign)."""
  rng = np.random.default_rng(seed)
  m = min(n, u)
  left, _ = np.linalg.qr(rng.normal(size=(n, m)))
  right, _ = np.linalg.qr(rng.normal(size=(u, m)))
  return (left * 0.8 ** np.arange(m)) @ right.T


@pytest.mark.parametrize('method', ['gram', 'randomized'])
@pytest.mark.parametrize('n, u', [(200, 70), (70, 200)])
def test_principal_axes_match_the_svd(method, n, u):
  z = _decaying(n, u)
  _, s_ref, vt_ref = np.linalg.svd(z, full_matrices=False)
  s, vt = adapter_lib.principal_axes(z, 12, method=method)
  assert vt.shape == (12, u) and s.size >= 12
  np.testing.assert_allclose(s[:12], s_ref[:12], rtol=1e-4)
  signs = np.sign(np.sum(vt * vt_ref[:12], axis=1, keepdims=True))
  np.testing.assert_allclose(vt * signs, vt_ref[:12], atol=1e-3)
  with pytest.raises(ValueError, match='method'):
    adapter_lib.principal_axes(z, 12, method='svd')


def test_large_fits_take_the_randomized_path_and_agree(monkeypatch):
  responses = (_decaying(300, 120, seed=1) * 50 + 3).astype(np.float32)
  reference = _fit_by_covariance(responses, 8)
  calls = []
  randomized = adapter_lib._randomized_axes
  monkeypatch.setattr(adapter_lib, '_randomized_axes', lambda *a: calls.append(1) or randomized(*a))
  monkeypatch.setattr(adapter_lib, 'EXACT_MAX_SIDE', 0)
  _assert_same_fit(Adapter.fit(responses, 8), reference, 1e-3)
  assert calls, 'the randomized path was not taken'
