"""The closed-form start of the augmented flow: ridge maps both ways, written into its `LinearPair`.

At step 0 the augmented flow's blocks are the identity, so FLIG's encoder and decoder are exactly
the ridge maps fitted here (`fit_maps`): the `cae_ridge` ablation of `evaluate.py` (same features,
adapter, regularisers chosen by the same cross-validation folds, or on the same validation split).
Training can then only add to it, and the stage-2 step kept is chosen on held-out scores, step 0
included.

The maps are fitted on the responses' principal-component scores (the adapter's signal
coordinates times their spread, `sqrt_eig`), not on its whitened coordinates, as the ridge
baselines fit the z-scored responses themselves: the decoder's penalty shrinks a component by how
little of the responses it carries, where on whitened coordinates a component of noise would
weigh like the first. The encoder's map at a given penalty is the same either way; the penalty is
chosen by the z-scored responses' own error or, with `stage2.start_encoder_error = 'whitened'`,
by each whitened coordinate's alike (docs/stage2.md, "The closed-form start's coordinates").
"""

from typing import Any, NamedTuple

import numpy as np

from flig_jax import ridge

_MIN_STD = 1e-3  # floor of the residual spreads that set the noise scales

# config.stage2.start_encoder_error: what chooses the start encoder's penalty (`fit_maps`).
ENCODER_ERRORS = ('responses', 'whitened')


def _affine(fit: ridge.Ridge) -> tuple[np.ndarray, np.ndarray]:
  """A fitted ridge map as y = x W + b on the raw inputs."""
  w = fit.coef / fit.x_std[:, None]
  return w, fit.y_mean - (fit.x_mean / fit.x_std) @ fit.coef


def config_encoder_error(config: Any) -> str:
  """The run's `stage2.start_encoder_error` ('responses' in a config saved before it existed)."""
  return str(config.stage2.get('start_encoder_error', 'responses'))


class Maps(NamedTuple):
  """The ridge encoder and decoder between raw features E(x) and the principal-component scores
  of the responses (`fit_maps`)."""
  encoder: ridge.Ridge  # E(x) -> scores
  decoder: ridge.Ridge  # scores -> E(x)


def fit_maps(features: np.ndarray, signal: np.ndarray, sqrt_eig: np.ndarray,
             val_features: np.ndarray | None = None, val_signal: np.ndarray | None = None,
             fold_ids: np.ndarray | None = None, encoder_error: str = 'responses') -> Maps:
  """The ridge maps of the closed-form start (and of `cae_ridge`), both on the component scores
  `signal * sqrt_eig`, each penalty chosen on the validation pairs when given, else by
  cross-validation over `fold_ids` (None: random folds). The decoder reads the scores
  unstandardised. The encoder's penalty is chosen by `encoder_error` (`ENCODER_ERRORS`):
  'responses', the scores' summed squared error (that of the z-scored responses); 'whitened', each
  of the k whitened coordinates' error alike, which weighs the small components up and chooses a
  heavier penalty."""
  if encoder_error not in ENCODER_ERRORS:
    raise ValueError(f'unknown stage2.start_encoder_error {encoder_error!r}; use one of '
                     f'{ENCODER_ERRORS}')
  spread = np.asarray(sqrt_eig, np.float64)
  scores = np.asarray(signal, np.float64) * spread
  val_scores = None if val_signal is None else np.asarray(val_signal, np.float64) * spread
  return Maps(
      encoder=ridge.fit_ridge(features, scores, val_features, val_scores, refit_on_val=False,
                              fold_ids=fold_ids,
                              target_scale=1.0 if encoder_error == 'responses' else spread),
      decoder=ridge.fit_ridge(scores, features, val_scores, val_features, refit_on_val=False,
                              fold_ids=fold_ids, scale_inputs=False))


def linear_pair_params(features: np.ndarray, signal: np.ndarray, sqrt_eig: np.ndarray,
                       val_features: np.ndarray | None, val_signal: np.ndarray | None,
                       feature_mean: np.ndarray, feature_std: np.ndarray, dim: int,
                       fold_ids: np.ndarray | None = None,
                       encoder_error: str = 'responses') -> dict[str, np.ndarray]:
  """`LinearPair` parameters that make the augmented flow start as the ridge encoder and decoder.

  The ridge maps are `fit_maps`' (the ones `cae_ridge` fits), rewritten for the flow's
  coordinates: standardised features h = (E(x) - mean) / std, and A(r) whose first k coordinates
  are the whitened signal and whose D - k padding coordinates the encoder leaves to the noise and
  the decoder ignores.

  Args:
    features: (N, D) raw training features E(x).
    signal: (N, k) the adapter's signal coordinates of the training responses.
    sqrt_eig: (k,) the adapter's spread of each signal coordinate.
    val_features: (M, D) raw validation features, or None (alpha by cross-validation).
    val_signal: (M, k) their responses' signal coordinates, or None.
    feature_mean: (D,) the standardisation's mean.
    feature_std: (D,) its std.
    dim: D.
    fold_ids: (N,) the cross-validation fold of each training pair (used without a validation
      split; None: random folds).
    encoder_error: how the encoder's penalty is chosen (`fit_maps`).

  Returns:
    the `linear_pair` parameter dict (float32).
  """
  d, k = dim, signal.shape[1]
  m, s = np.asarray(feature_mean, np.float64), np.asarray(feature_std, np.float64)
  spread = np.asarray(sqrt_eig, np.float64)
  maps = fit_maps(features, signal, spread, val_features, val_signal, fold_ids, encoder_error)
  w_e, b_e = _affine(maps.encoder)                # raw h -> scores
  w_e, b_e = w_e / spread, b_e / spread           # raw h -> a_k
  w_d, b_d = _affine(maps.decoder)                # scores -> raw h
  w_d = spread[:, None] * w_d                     # a_k -> raw h
  h = (np.asarray(features, np.float64) - m) / s  # standardised training features

  enc_kernel = np.zeros((d, d))
  enc_bias = np.zeros(d)
  enc_log_scale = np.zeros(d)
  enc_kernel[:, :k] = s[:, None] * w_e
  enc_bias[:k] = m @ w_e + b_e
  residual = signal - (h @ enc_kernel[:, :k] + enc_bias[:k])
  enc_log_scale[:k] = np.log(np.maximum(residual.std(axis=0), _MIN_STD))

  dec_kernel = np.zeros((d, d))
  dec_kernel[:k] = w_d / s[None, :]
  dec_bias = (b_d - m) / s
  residual = h - (signal @ dec_kernel[:k] + dec_bias)
  dec_log_scale = -np.log(np.maximum(residual.std(axis=0), _MIN_STD))

  params: dict[str, Any] = {'enc_kernel': enc_kernel, 'enc_bias': enc_bias,
                            'enc_log_scale': enc_log_scale, 'dec_kernel': dec_kernel,
                            'dec_bias': dec_bias, 'dec_log_scale': dec_log_scale}
  return {name: value.astype(np.float32) for name, value in params.items()}
