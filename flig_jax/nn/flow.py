"""The cross-modal normalizing flow f on R^D: distrax bijectors whose parameters and conditioners
are Flax Linen modules, and the `Flow` that chains K blocks of ActNorm -> LU linear -> coupling.

The chain is written out (`Flow.forward` / `Flow.inverse`) rather than a `distrax.Chain`: each
layer's parameters are created and owned by its Flax module, which a Chain built once could not do.

Every layer module has `__call__(x, inverse=False) -> (y, logdet)` with `x` of shape (..., D) and
`logdet` of shape (...,). Parameters are created on the first (forward) call, so `init` through the
forward direction runs ActNorm's data-dependent initialisation.
"""

import functools
from collections.abc import Callable
from typing import Any

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from flig_jax.nn import precision

Array = jax.Array

_AFFINE_SCALE_BOUND = 2.0   # log-scales of the affine coupling lie in (-c, c)
_ACTNORM_EPS = 1e-6


def _bounded(raw: Array, bound: float = _AFFINE_SCALE_BOUND) -> Array:
  """Soft clamp to (-bound, bound): bound * tanh(raw / bound); the identity near zero."""
  return bound * jnp.tanh(raw / bound)


def actnorm_bijector(shift: Array, log_scale: Array) -> distrax.Bijector:
  """Elementwise affine map on vectors (event_ndims 1).

  - forward:  y = x * exp(log_scale) + shift
  - inverse:  x = (y - shift) * exp(-log_scale)
  - log-det:  sum(log_scale) (forward); -sum(log_scale) (inverse).
  """
  return distrax.Block(distrax.ScalarAffine(shift=shift, log_scale=log_scale), ndims=1)


class ActNorm(nn.Module):
  """Activation normalisation: a per-coordinate affine bijector (see `actnorm_bijector`).

  Its parameters `shift` and `log_scale` are initialised from the first batch seen (the batch
  given to `init`) so that batch comes out with zero mean and unit variance per coordinate.
  Initialise through the forward direction with a batch of at least two rows; otherwise the
  layer starts as the identity.
  """

  @nn.compact
  def __call__(self, x: Array, inverse: bool = False) -> tuple[Array, Array]:
    flat = x.reshape(-1, x.shape[-1])

    def init_log_scale(_, shape):
      if flat.shape[0] < 2:
        return jnp.zeros(shape, x.dtype)
      std = jnp.std(flat, axis=0)
      return -jnp.log(std + _ACTNORM_EPS)

    log_scale = self.param('log_scale', init_log_scale, (x.shape[-1],))

    def init_shift(_, shape):
      if flat.shape[0] < 2:
        return jnp.zeros(shape, x.dtype)
      return -jnp.mean(flat, axis=0) * jnp.exp(log_scale)

    shift = self.param('shift', init_shift, (x.shape[-1],))
    bij = actnorm_bijector(shift, log_scale)
    return bij.inverse_and_log_det(x) if inverse else bij.forward_and_log_det(x)


def lu_bijector(packed: Array) -> distrax.Bijector:
  """Invertible linear map on vectors, W = L U (Glow's 1x1 convolution for vectors), from one
  (D, D) matrix that packs all three factors with no unused entry: its strictly lower part is L's
  (unit diagonal), its strictly upper part is U's, and its diagonal holds log(diag U), so U's
  diagonal exp(.) > 0 keeps W invertible.

  - forward:  y = L U x; inverse: two triangular solves
  - log-det:  sum(diag(packed)) (forward); its negative (inverse)
  """
  eye = jnp.eye(packed.shape[-1], dtype=bool)
  matrix = jnp.where(eye, jnp.exp(packed), packed)
  return distrax.LowerUpperTriangularAffine(matrix, jnp.zeros(packed.shape[-1], packed.dtype))


def _random_lu_init(key: Array, shape: tuple[int, int]) -> Array:
  """The packed LU factors of a random orthogonal matrix, signs fixed so diag(U) > 0."""
  d = shape[-1]
  q, _ = jnp.linalg.qr(jax.random.normal(key, (d, d)))
  _, lower, upper = jax.scipy.linalg.lu(q)          # q = p @ lower @ upper
  diag = jnp.diag(upper)
  upper = upper * jnp.sign(diag)[None, :]           # U D: W0 = p^T q D = L (U D)
  return jnp.tril(lower, -1) + jnp.triu(upper, 1) + jnp.diag(jnp.log(jnp.abs(diag)))


class LULinear(nn.Module):
  """Learned invertible linear layer (`lu_bijector`) with one (D, D) parameter `lu`.

  Initialised (from the `params` rng) at the LU factors of a random orthogonal matrix with signs
  fixed so U's diagonal is positive (there is no stored permutation), or at the identity when
  `identity_init`.
  """
  identity_init: bool = False

  @nn.compact
  def __call__(self, x: Array, inverse: bool = False) -> tuple[Array, Array]:
    d = x.shape[-1]
    init = nn.initializers.zeros if self.identity_init else _random_lu_init
    bij = lu_bijector(self.param('lu', init, (d, d)))
    return bij.inverse_and_log_det(x) if inverse else bij.forward_and_log_det(x)


class MLP(nn.Module):
  """Conditioner network: Dense-GELU layers, then a zero-initialised Dense to `out_shape`.

  With `dropout` > 0 each hidden layer drops units at that rate when the apply is given a
  'dropout' RNG (training) and never without one (inference). Computes in `dtype` (None: that of
  the inputs and parameters); its output comes back in the dtype it would have without it, so the
  coupling's transform and log-det do not change dtype.
  """
  hidden: int
  out_shape: tuple[int, ...]
  num_layers: int = 2
  dropout: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out_dtype = precision.result_dtype(x, self.param_dtype)
    layer = {'dtype': self.dtype, 'param_dtype': self.param_dtype}
    for _ in range(self.num_layers):
      x = nn.gelu(nn.Dense(self.hidden, **layer)(x))
      if self.dropout:
        x = nn.Dropout(self.dropout, deterministic=not self.has_rng('dropout'))(x)
    size = 1
    for s in self.out_shape:
      size *= s
    x = nn.Dense(size, kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros,
                 **layer)(x)
    return x.reshape(x.shape[:-1] + tuple(self.out_shape)).astype(out_dtype)


def _affine(layer: 'Coupling') -> tuple[int, Callable[[Array], distrax.Bijector]]:
  del layer
  return 2, lambda params: distrax.ScalarAffine(shift=params[..., 0],
                                                log_scale=_bounded(params[..., 1]))


def _spline(layer: 'Coupling') -> tuple[int, Callable[[Array], distrax.Bijector]]:
  return 3 * layer.num_bins + 1, lambda params: distrax.RationalQuadraticSpline(
      params, range_min=-layer.spline_range, range_max=layer.spline_range,
      boundary_slopes='identity')


# config.model.coupling -> the elementwise transform g of a `Coupling` layer: (conditioner outputs
# per transformed coordinate, params -> g), given the layer.
COUPLINGS: dict[str, Callable[['Coupling'], tuple[int, Callable[[Array], distrax.Bijector]]]] = {
    'affine': _affine,
    'spline': _spline,
}


def _or(names: Any) -> str:
  """"'a' or 'b'"."""
  return ' or '.join(repr(n) for n in names)


class Coupling(nn.Module):
  """Split coupling (`distrax.SplitCoupling`): half the coordinates condition the other half.

  With x = [x1, x2] (x1 the first D//2 coordinates; roles exchanged when `swap`), y1 = x1 and
  y2 = g(x2; c(x1)) where c is an MLP whose last layer starts at zero, so the layer starts as the
  identity. Transforms g, elementwise:

  - 'affine': g(x2) = x2 * exp(s) + t, with s = 2 tanh(raw / 2); inverse (y2 - t) * exp(-s);
    log-det sum(s) (forward), -sum(s) (inverse).
  - 'spline': rational-quadratic spline (`distrax.RationalQuadraticSpline`) on
    [-spline_range, spline_range] with `num_bins` bins, identity outside; log-det the sum of
    log g'(x2) (forward) and its negative at x2 = g^-1(y2) (inverse).

  `dtype` is the conditioner's compute dtype (e.g. bfloat16). g and its log-det are computed in
  the dtype of x, and y1 = x1 feeds the same conditioner both ways, so the round trip stays
  exact to x's precision whatever `dtype` is. `input_scale`, when given, multiplies x1
  coordinate-wise before the conditioner reads it (c(x1 * input_scale)); the layer stays a
  bijection of x2 given x1 either way. `dropout` is the conditioner's (`MLP`): with a 'dropout'
  RNG the layer is the bijection of the mask it draws, and the same RNG inverts it exactly.
  """
  hidden: int
  transform: str = 'affine'
  swap: bool = False
  num_bins: int = 8
  spline_range: float = 4.0
  dropout: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, inverse: bool = False,
               input_scale: Array | None = None) -> tuple[Array, Array]:
    d = x.shape[-1]
    if d < 2:
      raise ValueError(f'coupling needs at least 2 features, got {d}')
    split = d // 2
    transformed = split if self.swap else d - split
    if self.transform not in COUPLINGS:
      raise ValueError(f'unknown coupling {self.transform!r} (use {_or(COUPLINGS)})')
    width, inner = COUPLINGS[self.transform](self)
    conditioner = MLP(self.hidden, (transformed, width), dropout=self.dropout, dtype=self.dtype,
                      param_dtype=self.param_dtype)
    if input_scale is not None:
      mlp, scale = conditioner, jnp.asarray(input_scale, x.dtype)
      conditioner = lambda x1: mlp(x1 * scale)
    bij = distrax.SplitCoupling(
        split_index=split, event_ndims=1, conditioner=conditioner, bijector=inner,
        swap=self.swap)
    return bij.inverse_and_log_det(x) if inverse else bij.forward_and_log_det(x)


class LinearPair(nn.Module):
  """The augmented flow's linear part: a linear encoder and decoder held as one bijection.

  It acts on augmented vectors of size 2D: features with their noise coordinates `[h, e]` on the
  input side, responses with theirs `[a, e_a]` on the output side (docs/design.md, the augmented
  flow). Two shears and two diagonal scales, so any linear encoder `h -> a` and decoder `a -> h`
  pair is one bijection, with no matrix to invert:

  - forward:  a = h W_enc + b_enc + exp(s_enc) * e;   e_a = exp(s_dec) * (h - a W_dec - b_dec)
  - inverse:  h = exp(-s_dec) * e_a + a W_dec + b_dec;   e = exp(-s_enc) * (a - h W_enc - b_enc)
  - log-det:  sum(s_enc) + sum(s_dec) (forward); its negative (inverse).

  With e = 0 the forward pass is the encoder `h W_enc + b_enc`; with e_a = 0 the inverse is the
  decoder `a W_dec + b_dec`. `s_enc` is the log-std of what the encoder leaves unexplained and
  `s_dec` minus that of the decoder, so samples with e ~ N(0, I) have the spread of the data.
  Parameters start at zero (a = e, e_a = h); `closed_form.linear_pair_params` sets them from
  ridge fits before training.
  """

  @nn.compact
  def __call__(self, x: Array, inverse: bool = False) -> tuple[Array, Array]:
    if x.shape[-1] % 2:
      raise ValueError(f'LinearPair needs an even number of coordinates, got {x.shape[-1]}')
    d = x.shape[-1] // 2
    zeros = nn.initializers.zeros
    w_enc = self.param('enc_kernel', zeros, (d, d))
    b_enc = self.param('enc_bias', zeros, (d,))
    s_enc = self.param('enc_log_scale', zeros, (d,))
    w_dec = self.param('dec_kernel', zeros, (d, d))
    b_dec = self.param('dec_bias', zeros, (d,))
    s_dec = self.param('dec_log_scale', zeros, (d,))
    logdet = jnp.broadcast_to(jnp.sum(s_enc) + jnp.sum(s_dec), x.shape[:-1])
    first, second = x[..., :d], x[..., d:]
    if not inverse:
      h, e = first, second
      a = h @ w_enc + b_enc + jnp.exp(s_enc) * e
      e_a = jnp.exp(s_dec) * (h - a @ w_dec - b_dec)
      return jnp.concatenate([a, e_a], axis=-1), logdet
    a, e_a = first, second
    h = jnp.exp(-s_dec) * e_a + a @ w_dec + b_dec
    e = jnp.exp(-s_enc) * (a - h @ w_enc - b_enc)
    return jnp.concatenate([h, e], axis=-1), -logdet


# name -> builder(hidden, num_bins, spline_range, swap) -> layer module. The parametrised test in
# tests/test_flow.py checks every entry for invertibility and log-det against the Jacobian.
BIJECTORS: dict[str, Callable[..., nn.Module]] = {
    'actnorm': lambda **_: ActNorm(),
    'lu_linear': lambda **_: LULinear(),
    'lu_linear_identity': lambda **_: LULinear(identity_init=True),
    'affine_coupling': lambda hidden=16, swap=False, **_: Coupling(
        hidden, 'affine', swap=swap),
    'spline_coupling': lambda hidden=16, swap=False, num_bins=8, spline_range=4.0, **_: Coupling(
        hidden, 'spline', swap=swap, num_bins=num_bins, spline_range=spline_range),
    'linear_pair': lambda **_: LinearPair(),
}


class Flow(nn.Module):
  """The normalizing flow f.

  Plain (the paper's flow) on R^D: K blocks of ActNorm -> LU linear -> coupling, the couplings
  alternating halves. Initialise with `Flow(...).init(rng, h, method=Flow.forward)` on a batch of
  (standardised) features so ActNorm's data-dependent initialisation sees them.

  Augmented (`augmented=True`, docs/design.md) on R^2D, features with noise coordinates
  `[h, e_h]` to responses with theirs `[a, e_a]`: an encoder coupling (e_h moved by an MLP of
  h), the `LinearPair` (the linear encoder and decoder), and a decoder coupling (e_a moved by an
  MLP of a). With the noise at zero, encoding is `a = h W_enc + b_enc + exp(s_enc) t_enc(h)` and
  decoding `h = a W_dec + b_dec - exp(-s_dec) t_dec(a)`: each direction is the linear map plus a
  learned residual that the other direction never sees. The couplings start as the identity, so f
  starts as the linear pair that `closed_form.linear_pair_params` writes into it. `num_blocks` is
  unused: more couplings of the same side would compose to one. `decoder_input_scale` (D,), given
  to `forward` and `inverse`, multiplies a where the decoder coupling's MLP reads it
  (`Coupling`'s `input_scale`; FLIG passes the adapter's component spreads).

  forward(x) -> (y, log|det df/dx|) and inverse(y) -> (x, log|det df^-1/dy|), logdet (N,).
  `dtype` is the compute dtype of the couplings' conditioner MLPs (None: that of the inputs and
  parameters); ActNorm, the LU layers, the LinearPair, the transforms and every log-det stay in
  the dtype of x.
  """
  features: int
  num_blocks: int
  hidden: int
  coupling: str = 'affine'
  num_bins: int = 8
  spline_range: float = 4.0
  augmented: bool = False
  dropout: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @property
  def size(self) -> int:
    """The number of coordinates f acts on: D, or 2D when augmented."""
    return 2 * self.features if self.augmented else self.features

  def setup(self):
    if self.coupling not in COUPLINGS:
      raise ValueError(f'unknown coupling {self.coupling!r} (use {_or(COUPLINGS)})')
    coupling = functools.partial(Coupling, self.hidden, self.coupling, num_bins=self.num_bins,
                                 spline_range=self.spline_range, dropout=self.dropout,
                                 dtype=self.dtype, param_dtype=self.param_dtype)
    if self.augmented:
      # swap=False: the first half (h, then a) conditions the second (e_h, then e_a).
      self.layers = [coupling(name='enc_coupling'), LinearPair(name='linear_pair'),
                     coupling(name='dec_coupling')]
      return
    layers = []
    for k in range(self.num_blocks):
      layers.append(ActNorm(name=f'actnorm_{k}'))
      layers.append(LULinear(name=f'linear_{k}'))
      layers.append(coupling(swap=bool(k % 2), name=f'coupling_{k}'))
    self.layers = layers

  def _check(self, x: Array) -> None:
    if x.shape[-1] != self.size:
      raise ValueError(f'Flow expects (..., {self.size}), got {tuple(x.shape)}')

  def _extra(self, layer: nn.Module, decoder_input_scale: Array | None) -> dict[str, Array]:
    """The keyword arguments of `layer` beside x: the decoder coupling's input scale."""
    if decoder_input_scale is None or layer.name != 'dec_coupling':
      return {}
    return {'input_scale': decoder_input_scale}

  def forward(self, h: Array,
              decoder_input_scale: Array | None = None) -> tuple[Array, Array]:
    """z = f(h) and log|det df/dh| per row."""
    self._check(h)
    logdet = jnp.zeros(h.shape[:-1], h.dtype)
    for layer in self.layers:
      h, ld = layer(h, **self._extra(layer, decoder_input_scale))
      logdet = logdet + ld
    return h, logdet

  def inverse(self, z: Array,
              decoder_input_scale: Array | None = None) -> tuple[Array, Array]:
    """h = f^-1(z) and log|det df^-1/dz| per row."""
    self._check(z)
    logdet = jnp.zeros(z.shape[:-1], z.dtype)
    for layer in reversed(self.layers):
      z, ld = layer(z, inverse=True, **self._extra(layer, decoder_input_scale))
      logdet = logdet + ld
    return z, logdet

  def __call__(self, h: Array) -> tuple[Array, Array]:
    return self.forward(h)


# config.model.flow_type -> the flow f it builds from (features, num_blocks, hidden, coupling,
# num_bins, spline_range): augmented on [h, e_h] (R^2D, docs/design.md), plain on h (R^D).
FLOW_TYPES: dict[str, Callable[..., Flow]] = {
    'augmented': functools.partial(Flow, augmented=True),
    'plain': functools.partial(Flow, augmented=False),
}
