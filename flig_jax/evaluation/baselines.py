"""Baselines that FLIG is compared with: closed-form ridge regression (`flig_jax.ridge`) and small
MLPs.

Each is fitted on training data only; hyper-parameters (ridge alpha, MLP early stopping) are chosen
by K-fold cross-validation over the training pairs (`fit_ridge(fold_ids=...)`, `fit_mlp_cv`), and
the final map is refitted on every training pair; or, without folds, on a validation split carved
from the training set. Never on test. A model that predicts images
(the target given to `fit_*` was (N, H, W, C)) returns images clipped to [0, 1]; one that predicts
responses returns (N, U).
"""

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flig_jax import ridge
from flig_jax.nn import compiled
from flig_jax.ridge import DEFAULT_ALPHAS, Ridge, fit_ridge  # noqa: F401  (the ridge baselines)

# ---------------------------------------------------------------------------------------------
# MLP.


class MLPNet(nn.Module):
  """Dense layers with GELU between them; a sigmoid on the output when `sigmoid`.

  Decoder (Zhang et al. 2020's spike-image decoder): responses -> hidden -> pixels in (0, 1).
  Encoder: pixels -> hidden -> z-scored responses.
  """
  hidden: Sequence[int]
  out_dim: int
  sigmoid: bool = False
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for width in self.hidden:
      x = nn.gelu(nn.Dense(width)(x))
      if self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.out_dim)(x)
    return nn.sigmoid(x) if self.sigmoid else x


@dataclasses.dataclass
class MLP:
  """A fitted MLP baseline.

  Attributes:
    kind: 'decoder' (responses -> images) or 'encoder' (images -> responses).
    net: the Flax module.
    params: its parameters at the best validation step.
    x_mean, x_std: input standardisation (training statistics).
    y_mean, y_std: output de-standardisation (encoder: training statistics; decoder: 0 and 1).
    output_shape: (H, W, C) for a decoder, None for an encoder.
    best_step: step of the kept parameters; best_val: its validation MSE.
  """
  kind: str
  net: MLPNet
  params: Any
  x_mean: np.ndarray
  x_std: np.ndarray
  y_mean: np.ndarray
  y_std: np.ndarray
  output_shape: tuple[int, ...] | None
  best_step: int
  best_val: float

  def predict(self, x: Any) -> np.ndarray:
    """Predicts (N, H, W, C) images in [0, 1] (decoder) or (N, U) responses (encoder)."""
    x = ridge.as_matrix(x, 'x')
    if x.shape[1] != self.x_mean.shape[0]:
      raise ValueError(f'the MLP was fitted on {self.x_mean.shape[0]} input '
                       f'features; got {x.shape[1]}.')
    xs = jnp.asarray((x - self.x_mean) / self.x_std, jnp.float32)
    y = np.asarray(compiled.apply(self.net)({'params': self.params}, xs), np.float64)
    return ridge.finish(y * self.y_std + self.y_mean, self.output_shape)


def _start_at_mean(params: Any, y_mean: jax.Array, kind: str) -> Any:
  """Zeroes the last layer's kernel and sets its bias so the untrained net predicts the training
  mean (through the sigmoid for a decoder): early stopping then never keeps worse than the mean."""
  last = f'Dense_{len(params) - 1}'
  bias = y_mean
  if kind == 'decoder':
    p = jnp.clip(y_mean, 1e-3, 1 - 1e-3)
    bias = jnp.log(p) - jnp.log1p(-p)
  params = dict(params)
  params[last] = {'kernel': jnp.zeros_like(params[last]['kernel']), 'bias': bias}
  return params


def _checked_pair(x_train: Any, y_train: Any, kind: str, steps: int, eval_every: int,
                  patience: int) -> tuple[np.ndarray, np.ndarray]:
  """An MLP recipe's arguments checked; the training pairs as matrices (N, in) and (N, out)."""
  if steps < 1 or eval_every < 1 or patience < 1:
    raise ValueError('steps, eval_every and patience must be positive.')
  if kind not in ('decoder', 'encoder'):
    raise ValueError(f"kind must be 'decoder' or 'encoder'; got {kind!r}.")
  x, y = ridge.as_matrix(x_train, 'x_train'), ridge.as_matrix(y_train, 'y_train')
  ridge.check_pair(x, y, 'x_train and y_train')
  return x, y


def _train_steps(net: 'MLPNet', tx: optax.GradientTransformation, params: Any, opt_state: Any,
                 xs: jax.Array, ys: jax.Array, idx: jax.Array, steps: jax.Array,
                 key: jax.Array) -> tuple[Any, Any]:
  """len(idx) AdamW steps on the MSE of `net` (one `lax.scan`): step i trains on rows idx[i] of
  (xs, ys), with dropout drawn from fold_in(key, steps[i])."""
  def train_step(carry, inputs):
    params, opt_state = carry
    rows, step = inputs

    def loss_fn(p):
      out = net.apply({'params': p}, xs[rows], train=True,
                      rngs={'dropout': jax.random.fold_in(key, step)})
      return jnp.mean((out - ys[rows]) ** 2)
    updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None
  return jax.lax.scan(train_step, (params, opt_state), (idx, steps))[0]


def fit_mlp(x_train: Any, y_train: Any, x_val: Any = None, y_val: Any = None,
            kind: str = 'decoder', output_shape: tuple[int, ...] | None = None,
            hidden: Sequence[int] = (256,), steps: int = 400, batch_size: int = 128,
            learning_rate: float = 3e-4, weight_decay: float = 1e-2, dropout: float = 0.1,
            eval_every: int = 10, patience: int = 10, seed: int = 0) -> MLP:
  """Trains an MLP decoder or encoder with AdamW and early stopping on the validation split.

  Inputs are standardised with training statistics. The decoder ends in a sigmoid and is trained
  on pixel MSE; the encoder is trained on MSE of the responses z-scored with training statistics.
  Every `eval_every` steps the validation MSE is measured and the best parameters kept; training
  stops after `patience` evaluations without improvement, or at `steps`. With no validation split,
  a seeded 10% of the training set (at least one sample) is held out for early stopping.

  Args:
    x_train: inputs (N, ...): responses (N, U) for a decoder, images (N, H, W, C) for an encoder.
    y_train: targets (N, ...): images for a decoder, responses (N, U) for an encoder.
    x_val: validation inputs, or None.
    y_val: validation targets, or None.
    kind: 'decoder' or 'encoder'.
    output_shape: image shape (H, W, C) of a decoder; taken from y_train when it is (N, H, W, C).
    hidden: widths of the hidden layers.
    steps: most optimisation steps (rounded up to a multiple of `eval_every`).
    batch_size: minibatch size (the full set when larger than it).
    learning_rate: AdamW learning rate.
    weight_decay: AdamW decoupled weight decay.
    dropout: dropout rate after each hidden layer (training only).
    eval_every: steps between validation checks (run as one compiled `lax.scan`).
    patience: validation checks without improvement before stopping.
    seed: seed of initialisation, minibatches, dropout and any held-out split.

  Returns:
    the fitted `MLP`.
  """
  x, y = _checked_pair(x_train, y_train, kind, steps, eval_every, patience)
  if kind == 'decoder':
    output_shape = (tuple(output_shape) if output_shape is not None
                    else ridge.output_shape_of(y_train))
    if output_shape is None or int(np.prod(output_shape)) != y.shape[1]:
      raise ValueError(f'a decoder needs image targets (N, H, W, C) or an '
                       f'output_shape matching {y.shape[1]} values; got {output_shape}.')
  else:
    output_shape = None
  rng = np.random.default_rng(seed)
  if ridge.has_rows(x_val) and ridge.has_rows(y_val):
    xv, yv = ridge.as_matrix(x_val, 'x_val'), ridge.as_matrix(y_val, 'y_val')
    ridge.check_pair(xv, yv, 'x_val and y_val')
    if xv.shape[1] != x.shape[1] or yv.shape[1] != y.shape[1]:
      raise ValueError('validation and training data differ in feature sizes.')
  else:
    if x.shape[0] < 2:
      raise ValueError('the MLP needs a validation split or at least 2 samples.')
    perm = rng.permutation(x.shape[0])
    n_val = max(1, x.shape[0] // 10)
    xv, yv, x, y = x[perm[:n_val]], y[perm[:n_val]], x[perm[n_val:]], y[perm[n_val:]]

  x_mean, x_std = ridge.standardizer(x)
  if kind == 'encoder':
    y_mean, y_std = ridge.standardizer(y)
  else:
    y_mean, y_std = np.zeros(y.shape[1]), np.ones(y.shape[1])
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  xs, ys = f32((x - x_mean) / x_std), f32((y - y_mean) / y_std)
  xvs, yvs = f32((xv - x_mean) / x_std), f32((yv - y_mean) / y_std)

  net = MLPNet(hidden=tuple(hidden), out_dim=y.shape[1], sigmoid=kind == 'decoder',
               dropout=dropout)
  key = jax.random.PRNGKey(seed)
  params = _start_at_mean(net.init(key, xs[:1])['params'], ys.mean(axis=0), kind)
  tx = optax.adamw(learning_rate, weight_decay=weight_decay)
  opt_state = tx.init(params)
  batch = min(batch_size, x.shape[0])

  train_chunk = jax.jit(functools.partial(_train_steps, net, tx, key=key))

  @jax.jit
  def val_loss(params, xvs, yvs):
    return jnp.mean((net.apply({'params': params}, xvs) - yvs) ** 2)

  def epoch_batches():
    """Minibatch indices, reshuffled each pass over the data (a partial last batch is dropped)."""
    while True:
      order = rng.permutation(x.shape[0])
      for pos in range(0, x.shape[0] - batch + 1, batch):
        yield order[pos:pos + batch]

  batches = epoch_batches()
  best_params, best_val, best_step, stale = params, float(val_loss(params, xvs, yvs)), 0, 0
  for chunk in range(-(-steps // eval_every)):
    idx = np.stack([next(batches) for _ in range(eval_every)])
    step_ids = np.arange(chunk * eval_every, (chunk + 1) * eval_every) + 1
    params, opt_state = train_chunk(params, opt_state, xs, ys, idx, step_ids)
    v = float(val_loss(params, xvs, yvs))
    if v < best_val:
      best_params, best_val, best_step, stale = params, v, int(step_ids[-1]), 0
    else:
      stale += 1
      if stale >= patience:
        break
  return MLP(kind=kind, net=net, params=best_params, x_mean=x_mean, x_std=x_std, y_mean=y_mean,
             y_std=y_std, output_shape=output_shape, best_step=best_step, best_val=best_val)


# ---------------------------------------------------------------------------------------------
# MLP with its early stopping chosen by cross-validation.


@functools.lru_cache(maxsize=32)
def _programs(net: MLPNet, kind: str, learning_rate: float, weight_decay: float):
  """The optimiser and the compiled start, training chunk and per-row errors of one MLP recipe,
  each over a leading axis of models trained side by side (the folds, or the one final fit)."""
  tx = optax.adamw(learning_rate, weight_decay=weight_decay)

  def start(key, x_probe, y_mean):
    params = _start_at_mean(net.init(key, x_probe)['params'], y_mean, kind)
    return params, tx.init(params)

  chunk = functools.partial(_train_steps, net, tx)

  def row_errors(params, xs, ys):
    return jnp.mean((net.apply({'params': params}, xs) - ys) ** 2, axis=1)

  return (tx, jax.jit(jax.vmap(start, in_axes=(None, None, 0))),
          jax.jit(jax.vmap(chunk, in_axes=(0, 0, 0, 0, 0, None, None))),
          jax.jit(jax.vmap(row_errors)))


class _SideBySide:
  """MLPs of one recipe trained side by side, model m on rows `rows[m]` of (x, y) with their own
  standardisation; every `eval_every` steps is one compiled call for all of them."""

  def __init__(self, x: np.ndarray, y: np.ndarray, rows: list[np.ndarray], kind: str,
               net: MLPNet, *, batch_size: int, learning_rate: float, weight_decay: float,
               eval_every: int, seed: int):
    self.stats, xs, ys = [], [], []
    for r in rows:
      x_mean, x_std = ridge.standardizer(x[r])
      if kind == 'encoder':
        y_mean, y_std = ridge.standardizer(y[r])
      else:
        y_mean, y_std = np.zeros(y.shape[1]), np.ones(y.shape[1])
      self.stats.append((x_mean, x_std, y_mean, y_std))
      xs.append((x - x_mean) / x_std)
      ys.append((y - y_mean) / y_std)
    self.xs = jnp.asarray(np.stack(xs), jnp.float32)
    self.ys = jnp.asarray(np.stack(ys), jnp.float32)
    _, start, self._chunk, self._errors = _programs(net, kind, float(learning_rate),
                                                    float(weight_decay))
    self.key = jax.random.PRNGKey(seed)
    y_means = jnp.stack([self.ys[m][r].mean(axis=0) for m, r in enumerate(rows)])
    self.params, self.opt_state = start(self.key, self.xs[0, :1], y_means)
    self.rows, self.eval_every, self.done = rows, eval_every, 0
    self.batch = min([batch_size] + [len(r) for r in rows])
    self.rng = np.random.default_rng(seed)
    self._orders = [iter(()) for _ in rows]

  def _next_rows(self, m: int) -> np.ndarray:
    """The next minibatch of model m: its rows reshuffled each pass (a partial batch dropped)."""
    while True:
      got = next(self._orders[m], None)
      if got is not None:
        return got
      r = self.rows[m][self.rng.permutation(len(self.rows[m]))]
      self._orders[m] = iter([r[p:p + self.batch]
                              for p in range(0, len(r) - self.batch + 1, self.batch)])

  def train(self) -> None:
    """`eval_every` more steps for every model."""
    idx = np.stack([np.stack([self._next_rows(m) for _ in range(self.eval_every)])
                    for m in range(len(self.rows))])
    step_ids = np.arange(self.done, self.done + self.eval_every) + 1
    self.params, self.opt_state = self._chunk(self.params, self.opt_state, self.xs, self.ys, idx,
                                              step_ids, self.key)
    self.done += self.eval_every

  def errors(self) -> np.ndarray:
    """(models, N) each model's mean squared error on every row (its own standardisation)."""
    return np.asarray(self._errors(self.params, self.xs, self.ys))


def fit_mlp_cv(x_train: Any, y_train: Any, fold_ids: Any, kind: str = 'decoder',
               output_shape: tuple[int, ...] | None = None, hidden: Sequence[int] = (256,),
               steps: int = 400, batch_size: int = 128, learning_rate: float = 3e-4,
               weight_decay: float = 1e-2, dropout: float = 0.1, eval_every: int = 10,
               patience: int = 10, seed: int = 0) -> MLP:
  """`fit_mlp`'s recipe with its early stopping chosen by cross-validation over `fold_ids`.

  One MLP per fold trains on the other folds (all of them side by side, one compiled call per
  `eval_every` steps); their held-out MSE (z-scored targets for an encoder, pixels for a decoder),
  summed over every held-out row, is measured at step 0 and every `eval_every` steps, until
  `steps` or `patience` checks without a new low. The step with the lowest held-out MSE (step 0,
  the training mean, included; the earliest on a tie) is where the final MLP, trained on every
  row, stops.

  Args:
    x_train, y_train, kind, output_shape, hidden, batch_size, learning_rate, weight_decay,
      dropout, eval_every, seed: as in `fit_mlp`.
    fold_ids: (N,) the fold of each training row (at least two distinct).
    steps: most optimisation steps (rounded up to a multiple of `eval_every`).
    patience: held-out checks without improvement before the folds stop.

  Returns:
    the fitted `MLP`; `best_step` is the chosen step, `best_val` its pooled held-out MSE.
  """
  x, y = _checked_pair(x_train, y_train, kind, steps, eval_every, patience)
  fold_ids = np.asarray(fold_ids)
  if fold_ids.shape != (x.shape[0],) or len(np.unique(fold_ids)) < 2:
    raise ValueError(f'fold_ids must be ({x.shape[0]},) with at least two folds; got '
                     f'shape {fold_ids.shape}')
  if kind == 'decoder':
    if output_shape is None:
      output_shape = ridge.output_shape_of(y_train)
    output_shape = None if output_shape is None else tuple(output_shape)
    if output_shape is None or int(np.prod(output_shape)) != y.shape[1]:
      raise ValueError(f'a decoder needs image targets (N, H, W, C) or an '
                       f'output_shape matching {y.shape[1]} values; got {output_shape}.')
  else:
    output_shape = None
  net = MLPNet(hidden=tuple(hidden), out_dim=y.shape[1], sigmoid=kind == 'decoder',
               dropout=dropout)
  recipe = {'batch_size': batch_size, 'learning_rate': learning_rate,
            'weight_decay': weight_decay, 'eval_every': eval_every, 'seed': seed}
  folds = np.unique(fold_ids)
  held = np.stack([fold_ids == f for f in folds])                 # (K, N)
  side = _SideBySide(x, y, [np.nonzero(~h)[0] for h in held], kind, net, **recipe)
  pooled = [float(np.sum(side.errors() * held)) / x.shape[0]]
  stale = 0
  while side.done < steps and stale < patience:
    side.train()
    pooled.append(float(np.sum(side.errors() * held)) / x.shape[0])
    stale = 0 if pooled[-1] < min(pooled[:-1]) else stale + 1
  best = int(np.argmin(pooled))
  final = _SideBySide(x, y, [np.arange(x.shape[0])], kind, net, **recipe)
  for _ in range(best):
    final.train()
  params = jax.tree.map(lambda a: a[0], final.params)
  x_mean, x_std, y_mean, y_std = final.stats[0]
  return MLP(kind=kind, net=net, params=params, x_mean=x_mean, x_std=x_std, y_mean=y_mean,
             y_std=y_std, output_shape=output_shape, best_step=best * eval_every,
             best_val=float(pooled[best]))
