"""Ridge regression in closed form, its penalty chosen on a validation split: the `ridge` and
`cae_ridge` baselines of `evaluate.py`, and the closed-form start of the augmented flow."""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

DEFAULT_ALPHAS = np.logspace(-2, 6, 17)


def as_matrix(x: Any, name: str) -> np.ndarray:
  """(N, ...) -> float64 (N, P), checking that it is finite and non-empty."""
  x = np.asarray(x, dtype=np.float64)
  if x.ndim < 2:
    raise ValueError(f'{name} must be (N, ...) with N samples; got shape {x.shape}.')
  if not np.all(np.isfinite(x)):
    raise ValueError(f'{name} contains NaN or Inf.')
  return x.reshape(x.shape[0], -1)


def check_pair(x: np.ndarray, y: np.ndarray, names: str) -> None:
  if x.shape[0] != y.shape[0]:
    raise ValueError(f'{names} disagree in the number of samples: '
                     f'{x.shape[0]} vs {y.shape[0]}.')


def standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-column mean and std of the training data (constant columns get std 1)."""
  mean, std = x.mean(axis=0), x.std(axis=0)
  return mean, np.where(std > 1e-12, std, 1.0)


def has_rows(x: Any) -> bool:
  return x is not None and np.asarray(x).size > 0


def finish(y: np.ndarray, output_shape: tuple[int, ...] | None) -> np.ndarray:
  """Flat predictions -> images clipped to [0, 1] (image targets), or (N, U) as they are."""
  if output_shape is None:
    return y.astype(np.float32)
  return np.clip(y.reshape((y.shape[0],) + output_shape), 0.0, 1.0).astype(np.float32)


def output_shape_of(y: Any) -> tuple[int, ...] | None:
  shape = np.shape(y)
  return tuple(shape[1:]) if len(shape) == 4 else None



@dataclasses.dataclass
class Ridge:
  """A fitted ridge map `y = ((x - x_mean) / x_std) @ coef + y_mean`.

  Attributes:
    alpha: the chosen L2 penalty (on standardised inputs).
    coef: (P, Q) weights on standardised inputs.
    x_mean, x_std: (P,) training statistics of the inputs.
    y_mean: (Q,) intercept (the training mean of the targets).
    output_shape: (H, W, C) when the targets were images, else None.
    val_scores: alpha -> validation error it scored (z-scored MSE), for the record.
  """
  alpha: float
  coef: np.ndarray
  x_mean: np.ndarray
  x_std: np.ndarray
  y_mean: np.ndarray
  output_shape: tuple[int, ...] | None = None
  val_scores: dict[float, float] = dataclasses.field(default_factory=dict)

  def predict(self, x: Any) -> np.ndarray:
    """Predicts (N, U) responses, or (N, H, W, C) images in [0, 1]."""
    x = as_matrix(x, 'x')
    if x.shape[1] != self.coef.shape[0]:
      raise ValueError(f'ridge was fitted on {self.coef.shape[0]} input features; '
                       f'got {x.shape[1]}.')
    return finish(((x - self.x_mean) / self.x_std) @ self.coef + self.y_mean, self.output_shape)


def _ridge_path(x: np.ndarray, y: np.ndarray) -> Callable[[float], np.ndarray]:
  """Returns alpha -> ridge weights for centred x (n, p) and y (n, q), one eigendecomposition.

  Primal form when p <= n: W = (X'X + aI)^-1 X'Y through eigh of the p x p covariance. Dual
  (kernel) form when p > n, e.g. 3092 voxels x 80 samples: W = X'(XX' + aI)^-1 Y through eigh of
  the n x n Gram matrix. Both give the same W; the smaller matrix is decomposed.
  """
  n, p = x.shape
  if p <= n:
    lam, v = np.linalg.eigh(x.T @ x)
    vxy = v.T @ (x.T @ y)
    return lambda a: v @ (vxy / (np.maximum(lam, 0.0) + a)[:, None])
  lam, u = np.linalg.eigh(x @ x.T)
  xu, uy = x.T @ u, u.T @ y
  return lambda a: xu @ (uy / (np.maximum(lam, 0.0) + a)[:, None])


def _fit_fixed(x: np.ndarray, y: np.ndarray,
               scale: bool = True) -> tuple[Callable[[float], np.ndarray], tuple]:
  """Standardises x (centres it only when not `scale`), centres y with their own stats; returns
  the alpha path and the stats."""
  x_mean, x_std = standardizer(x)
  if not scale:
    x_std = np.ones_like(x_std)
  y_mean = y.mean(axis=0)
  return _ridge_path((x - x_mean) / x_std, y - y_mean), (x_mean, x_std, y_mean)


def _val_errors(x_tr, y_tr, x_va, y_va, alphas, y_scale, scale=True) -> np.ndarray:
  """Validation MSE (targets z-scored by `y_scale`) of each alpha, fitted on (x_tr, y_tr)."""
  path, (x_mean, x_std, y_mean) = _fit_fixed(x_tr, y_tr, scale)
  xs = (x_va - x_mean) / x_std
  errs = []
  for a in alphas:
    err = (xs @ path(a) + y_mean - y_va) / y_scale
    errs.append(np.mean(err ** 2))
  return np.asarray(errs)


def fit_ridge(x_train: Any, y_train: Any, x_val: Any = None, y_val: Any = None,
              alphas: Sequence[float] = DEFAULT_ALPHAS, refit_on_val: bool = True,
              folds: int = 5, seed: int = 0, fold_ids: Any = None,
              scale_inputs: bool = True, target_scale: Any = None) -> Ridge:
  """Fits ridge regression from x to y, choosing alpha on the validation split.

  Inputs are standardised and targets centred with training statistics (an unpenalised
  intercept). Alpha minimises the validation MSE of the targets z-scored by the training std, so
  every output unit (or pixel) weighs alike. When the validation split is empty or None, alpha is
  chosen by cross-validation on the training set: over the folds `fold_ids` when given (the
  stimulus-carved folds of `data.fold_ids`), else `folds` random folds drawn with `seed`. The
  final map is refitted with the chosen alpha on train + validation (both are training data; test
  is never seen), or on train alone with `refit_on_val=False`.

  Args:
    x_train: inputs (N, ...), e.g. responses (N, U) to decode or images (N, H, W, C) to encode.
    y_train: targets (N, ...); images (N, H, W, C) make a decoder whose output is clipped to [0, 1].
    x_val: validation inputs, or None.
    y_val: validation targets, or None.
    alphas: candidate penalties.
    refit_on_val: refit on train + validation after choosing alpha.
    folds: number of cross-validation folds when there is no validation split.
    seed: seed of the cross-validation folds.
    fold_ids: (N,) fold of each training row, or None (random folds).
    scale_inputs: standardise the inputs (else centre them only: the penalty then weighs each
      input direction by the inputs' own scale; `coef` is on the centred inputs, `x_std` ones).
    target_scale: what the validation error divides each target by (default: its training std,
      so that each weighs alike): e.g. 1 for principal component scores of z-scored responses,
      whose summed squared error is then the z-scored responses' own.

  Returns:
    the fitted `Ridge`.
  """
  output_shape = output_shape_of(y_train)
  x, y = as_matrix(x_train, 'x_train'), as_matrix(y_train, 'y_train')
  check_pair(x, y, 'x_train and y_train')
  alphas = np.asarray(alphas, dtype=np.float64)
  if alphas.ndim != 1 or alphas.size == 0 or np.any(alphas <= 0):
    raise ValueError('alphas must be a non-empty list of positive numbers.')
  y_scale = standardizer(y)[1] if target_scale is None else np.broadcast_to(
      np.asarray(target_scale, np.float64), (y.shape[1],))
  if has_rows(x_val) and has_rows(y_val):
    xv, yv = as_matrix(x_val, 'x_val'), as_matrix(y_val, 'y_val')
    check_pair(xv, yv, 'x_val and y_val')
    if xv.shape[1] != x.shape[1] or yv.shape[1] != y.shape[1]:
      raise ValueError('validation and training data differ in feature sizes.')
    errs = _val_errors(x, y, xv, yv, alphas, y_scale, scale_inputs)
    if refit_on_val:
      x, y = np.concatenate([x, xv]), np.concatenate([y, yv])
  else:
    if fold_ids is not None:
      fold = np.asarray(fold_ids)
      if fold.shape != (x.shape[0],):
        raise ValueError(f'fold_ids has shape {fold.shape}, want ({x.shape[0]},).')
    else:
      fold = np.random.default_rng(seed).permutation(x.shape[0]) % min(folds, x.shape[0])
    held = np.unique(fold)
    if len(held) < 2:
      raise ValueError('ridge needs a validation split or at least 2 training '
                       'samples for cross-validation.')
    # Each fold's error weighs by its size: the mean over every held-out row.
    errs = sum(np.sum(fold == f) * _val_errors(x[fold != f], y[fold != f], x[fold == f],
                                               y[fold == f], alphas, y_scale, scale_inputs)
               for f in held) / x.shape[0]
  best = float(alphas[int(np.argmin(errs))])
  path, (x_mean, x_std, y_mean) = _fit_fixed(x, y, scale_inputs)
  return Ridge(alpha=best, coef=path(best), x_mean=x_mean, x_std=x_std, y_mean=y_mean,
               output_shape=output_shape,
               val_scores={float(a): float(e) for a, e in zip(alphas, errs)})
