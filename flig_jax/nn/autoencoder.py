"""The convolutional autoencoder (CAE) of stage 1: encoder E to a feature vector h of size D and
decoder G back to pixels in [0, 1], for images of any (H, W, C).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flig_jax.nn import precision

Array = jax.Array


def _check_images(x: Array, image_shape: tuple[int, int, int], where: str) -> None:
  if x.ndim != 4 or tuple(x.shape[1:]) != tuple(image_shape):
    raise ValueError(
        f'{where} expects images of shape (N, '
        f'{", ".join(map(str, image_shape))}), got {tuple(x.shape)}')


class Encoder(nn.Module):
  """E: (N, H, W, C) -> (N, D). One stride-2 3x3 conv stage (halving H and W, rounding up) per
  entry of `widths`, each followed by a stride-1 conv, GELU activations, then a Dense to D.
  Computes in `dtype` (None: that of the inputs and parameters); the features come back in the
  dtype they would have without it (`precision.result_dtype`)."""
  feature_dim: int
  widths: tuple[int, ...]
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out_dtype = precision.result_dtype(x, self.param_dtype)
    layer = {'dtype': self.dtype, 'param_dtype': self.param_dtype}
    for w in self.widths:
      x = nn.gelu(nn.Conv(w, (3, 3), strides=(2, 2), padding='SAME', **layer)(x))
      x = nn.gelu(nn.Conv(w, (3, 3), padding='SAME', **layer)(x))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.feature_dim, **layer)(x).astype(out_dtype)


def _upsample(x: Array, features: int, **layer: Any) -> Array:
  """Doubles H and W: a 3x3 conv to 4 * features channels, then depth-to-space (sub-pixel conv).

  It spans what a stride-2 transposed conv does, and its gradients avoid the dilated convolutions
  that XLA's CPU backend runs slowly (stage 1 about 2x faster).
  """
  y = nn.Conv(4 * features, (3, 3), padding='SAME', **layer)(x)
  n, h, w, _ = y.shape
  y = y.reshape(n, h, w, 2, 2, features).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(n, 2 * h, 2 * w, features)


class Decoder(nn.Module):
  """G: (N, D) -> (N, H, W, C) in [0, 1]. A Dense to a (ceil(H/2^L), ceil(W/2^L), widths[-1])
  grid, one sub-pixel (x2) upsampling stage per width (in reverse), a 3x3 conv to C channels, a crop
  back to (H, W). Returns logits; `Autoencoder.decode` applies the sigmoid. Computes in `dtype`
  as the Encoder does; the logits come back in the dtype they would have without it."""
  image_shape: tuple[int, int, int]
  widths: tuple[int, ...]
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: Array) -> Array:
    out_dtype = precision.result_dtype(h, self.param_dtype)
    layer = {'dtype': self.dtype, 'param_dtype': self.param_dtype}
    height, width, channels = self.image_shape
    factor = 2 ** len(self.widths)
    gh, gw = math.ceil(height / factor), math.ceil(width / factor)
    x = nn.gelu(nn.Dense(gh * gw * self.widths[-1], **layer)(h))
    x = x.reshape(h.shape[0], gh, gw, self.widths[-1])
    for w in reversed(self.widths):
      x = nn.gelu(_upsample(x, w, **layer))
      x = nn.gelu(nn.Conv(w, (3, 3), padding='SAME', **layer)(x))
    x = nn.Conv(channels, (3, 3), padding='SAME', **layer)(x)
    return x[:, :height, :width, :].astype(out_dtype)


class Autoencoder(nn.Module):
  """The CAE: `encode(x) -> h (N, D)`, `decode(h) -> (N, H, W, C)` in [0, 1], `__call__` = both.

  `dtype` is the compute dtype of its layers (e.g. bfloat16; None: that of the inputs and
  parameters) and `param_dtype` that of its parameters; features and images come back in the
  dtype they would have without a compute dtype (float32 for float32 images).
  """
  image_shape: tuple[int, int, int]
  feature_dim: int
  widths: tuple[int, ...] = (32, 64)
  dtype: Any = None
  param_dtype: Any = jnp.float32

  def setup(self):
    if len(self.image_shape) != 3 or min(self.image_shape) < 1:
      raise ValueError(
          f'image_shape must be (H, W, C), got {self.image_shape}')
    if not self.widths:
      raise ValueError('widths must name at least one conv stage')
    self.encoder = Encoder(self.feature_dim, tuple(self.widths), self.dtype, self.param_dtype)
    self.decoder = Decoder(tuple(self.image_shape), tuple(self.widths), self.dtype,
                           self.param_dtype)

  def encode(self, x: Array) -> Array:
    """E(x): images (N, H, W, C) -> features (N, D)."""
    _check_images(x, self.image_shape, 'encode')
    return self.encoder(x)

  def decode_logits(self, h: Array) -> Array:
    """G(h) before its sigmoid: features (N, D) -> logits (N, H, W, C)."""
    if h.ndim != 2 or h.shape[1] != self.feature_dim:
      raise ValueError(
          f'decode expects features of shape (N, '
          f'{self.feature_dim}), got {tuple(h.shape)}')
    return self.decoder(h)

  def decode(self, h: Array) -> Array:
    """G(h): features (N, D) -> images (N, H, W, C) in [0, 1]."""
    return nn.sigmoid(self.decode_logits(h))

  def reconstruct_logits(self, x: Array) -> Array:
    """G(E(x)) before its sigmoid (stage 1 trains on these: the loss stays alive where the
    sigmoid saturates)."""
    return self.decode_logits(self.encode(x))

  def __call__(self, x: Array) -> Array:
    """G(E(x))."""
    return self.decode(self.encode(x))
