"""FLIG as a Linen module (autoencoder + flow, with the adapter and the feature statistics read
from their own variable collections) and `Frozen`, every variable of it except the flow.

  encode: r_hat = A^-1(f((E(x) - mean) / std))
          (with the pixel paths: (1 - v) times that + v P^-1(x Q + c), `pixel_path`)
  decode: x_hat = G(f^-1(A(r)) * std + mean)
          (with the pixel paths: (1 - w) times that + w clip(P(r) K + b, 0, 1))

With the augmented flow (the default) f acts on [h, e_h] -> [a, e_a] and the noise coordinates are
zero at inference: encode reads the first D outputs of f([h, 0]), decode the first D of
f^-1([A(r), 0]). The module is a pure function of its variables; `model.Model` wraps a trained one
for numpy users.
"""

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

from flig_jax import pixel_path
from flig_jax.nn import precision
from flig_jax.nn.adapter import ARRAY_NAMES, Adapter
from flig_jax.nn.autoencoder import Autoencoder
from flig_jax.nn.flow import FLOW_TYPES

Array = jax.Array
Variables = dict[str, Any]
_STD_FLOOR = 1e-6

# config.model.decoder_input: what the augmented flow's decoder coupling reads
# (`FLIG.decoder_input_scale`).
DECODER_INPUTS = ('spread', 'whitened')


def component_spread(sqrt_eig: Array, dim: int) -> Array:
  """(dim,) the adapter's standard deviation along each of its k principal components, scaled
  to a root mean square of 1, then 0 on the dim - k padding coordinates."""
  spread = sqrt_eig / jnp.sqrt(jnp.mean(sqrt_eig ** 2))
  return jnp.pad(spread, (0, dim - spread.shape[0]))


class FLIG(nn.Module):
  """FLIG as a Linen module; a pure function of (variables, inputs).

  Variables: `params` {'autoencoder', 'flow'}; `stats` {'feature_mean', 'feature_std'} (D,), the
  standardisation of the features (h = (E(x) - mean) / std) set from training features after
  stage 1; `adapter` {'mean', 'scale', 'components', 'sqrt_eig'}, the Adapter's arrays (k comes
  from their shapes); optionally `pixel_path` {'kernel' (D, H*W*C), 'bias', 'weight' ()}, the
  decoder's blend with a linear pixel map (`flig_jax.pixel_path`; decoding uses it when present),
  and in it {'enc_kernel' (H*W*C, m), 'enc_bias', 'enc_weight' ()}, the encoder's, with
  `pixel_adapter` (the Adapter's arrays for the m components the maps read; the kernel is then
  (m, H*W*C)). A model without `pixel_adapter` (an older checkpoint) has the decoder's map on
  A(r) and no encoder map.
  Build them with `Frozen.variables`. With `decoder_input` 'spread' the augmented flow reads the
  adapter too (`decoder_input_scale`), so every flow call needs that collection.

  `dtype` is the compute dtype of the autoencoder's layers and the couplings' conditioners (e.g.
  bfloat16, `config.model.dtype`; None: that of the inputs and parameters). Parameters are float32
  and every output (features, images, flow vectors, log-dets) has the dtype of the inputs.

  `flow_dropout` is the rate at which the couplings' conditioners drop hidden units when `apply`
  is given a 'dropout' RNG (stage 2's training step); without one nothing is dropped.
  """
  image_shape: tuple[int, int, int]
  feature_dim: int
  cae_widths: tuple[int, ...] = (32, 64)
  flow_blocks: int = 4
  flow_hidden: int = 128
  coupling: str = 'affine'
  spline_bins: int = 8
  spline_range: float = 4.0
  flow_type: str = 'augmented'
  decoder_input: str = 'whitened'
  flow_dropout: float = 0.0
  dtype: Any = None

  @classmethod
  def from_config(cls, model_config: ml_collections.ConfigDict,
                  image_shape: tuple[int, int, int]) -> 'FLIG':
    """The module for `config.model` and images of shape (H, W, C)."""
    c = model_config
    return cls(image_shape=tuple(int(s) for s in image_shape),
               feature_dim=int(c.feature_dim), cae_widths=tuple(int(w) for w in c.cae_widths),
               flow_blocks=int(c.flow_blocks), flow_hidden=int(c.flow_hidden),
               coupling=str(c.coupling), spline_bins=int(c.spline_bins),
               spline_range=float(c.spline_range),
               flow_type=str(c.get('flow_type', 'plain')),  # runs saved before the option: plain
               decoder_input=str(c.get('decoder_input', 'whitened')),  # likewise
               flow_dropout=float(c.get('flow_dropout', 0.0)),
               dtype=precision.compute_dtype(str(c.get('dtype', 'float32'))))

  def setup(self):
    self.autoencoder = Autoencoder(tuple(self.image_shape), self.feature_dim,
                                   tuple(self.cae_widths), dtype=self.dtype)
    if self.decoder_input not in DECODER_INPUTS:
      raise ValueError(f'unknown model.decoder_input {self.decoder_input!r}; use one of '
                       f'{DECODER_INPUTS}')
    if self.flow_type not in FLOW_TYPES:
      raise ValueError(f'unknown model.flow_type {self.flow_type!r}; use one of '
                       f'{tuple(FLOW_TYPES)}')
    self.flow = FLOW_TYPES[self.flow_type](self.feature_dim, self.flow_blocks, self.flow_hidden,
                                           self.coupling, self.spline_bins, self.spline_range,
                                           dropout=self.flow_dropout, dtype=self.dtype)

  # --- the fixed parts, read from the `stats` and `adapter` collections ---

  def _get(self, collection: str, name: str) -> Array:
    value = self.get_variable(collection, name)
    if value is None:
      raise ValueError(f"the FLIG variables lack '{collection}/{name}'; build them with "
                       'Frozen.variables')
    return value

  def adapter(self) -> Adapter:
    """The Adapter held in the `adapter` collection."""
    return Adapter.from_arrays({n: self._get('adapter', n) for n in ARRAY_NAMES},
                               dim=self.feature_dim)

  def standardise(self, h_raw: Array) -> Array:
    """(E(x) - mean) / std."""
    return (h_raw - self._get('stats', 'feature_mean')) / self._get('stats', 'feature_std')

  def unstandardise(self, h: Array) -> Array:
    """h * std + mean, back to the autoencoder's feature space."""
    return h * self._get('stats', 'feature_std') + self._get('stats', 'feature_mean')

  # --- the pieces ---

  def features(self, x: Array) -> Array:
    """E(x), raw features (N, D)."""
    return self.autoencoder.encode(x)

  def decode_features(self, h_raw: Array) -> Array:
    """G(h) for raw features (N, D) -> images (N, H, W, C)."""
    return self.autoencoder.decode(h_raw)

  def reconstruct(self, x: Array) -> Array:
    """G(E(x))."""
    return self.autoencoder(x)

  def decoder_input_scale(self) -> Array | None:
    """(D,) what the augmented flow's decoder coupling multiplies A(r) by before its MLP reads
    it, or None (it reads A(r) itself: `decoder_input` 'whitened', or the plain flow).

    'spread': the adapter's standard deviation along each principal component, scaled to a root
    mean square of 1 over the k signal coordinates, and 0 on the padding. The MLP then reads the
    principal-component scores of the z-scored responses, as the MLP baseline reads them, instead
    of whitened coordinates in which a component carrying 0.1% of the variance (mostly noise)
    weighs as much as the first.
    """
    if self.flow_type != 'augmented' or self.decoder_input == 'whitened':
      return None
    if self.is_initializing() and not self.has_variable('adapter', 'sqrt_eig'):
      return None  # parameter shapes do not depend on the scale
    return component_spread(self._get('adapter', 'sqrt_eig'), self.feature_dim)

  def flow_forward(self, x: Array) -> tuple[Array, Array]:
    """f(x) and log|det df/dx|: (N, S) and (N,), S = D (plain) or 2D (augmented)."""
    return self.flow.forward(x, self.decoder_input_scale())

  def flow_inverse(self, y: Array) -> tuple[Array, Array]:
    """f^-1(y) and log|det df^-1/dy|: (N, S) and (N,)."""
    return self.flow.inverse(y, self.decoder_input_scale())

  def augment(self, v: Array, noise: Array | None = None) -> Array:
    """[v, noise] (zeros when None) for the augmented flow; v itself for the plain one."""
    if self.flow_type != 'augmented':
      return v
    return jnp.concatenate([v, jnp.zeros_like(v) if noise is None else noise], axis=-1)

  def head(self, y: Array) -> Array:
    """The first D coordinates of an (augmented) flow vector: features or adapted responses."""
    return y[..., :self.feature_dim]

  def encode_standardised(self, h: Array) -> Array:
    """f([h, 0]) read on the response side: standardised features -> adapted responses (N, D)."""
    return self.head(self.flow_forward(self.augment(h))[0])

  def decode_adapted(self, a: Array) -> Array:
    """f^-1([a, 0]) read on the feature side: adapted responses -> standardised features."""
    return self.head(self.flow_inverse(self.augment(a))[0])

  def latent(self, x: Array) -> Array:
    """The flow's encoding in the adapter's space, images -> (N, D)."""
    return self.encode_standardised(self.standardise(self.features(x)))

  # --- the pixel paths (`flig_jax.pixel_path`), read from the `pixel_path` and `pixel_adapter`
  # collections ---

  def pixel_adapter(self) -> Adapter | None:
    """The pixel paths' own principal components of the responses (the `pixel_adapter`
    collection, m of them, unpadded), or None: a model whose decoder's pixel path reads A(r)."""
    if not self.has_variable('pixel_adapter', 'sqrt_eig'):
      return None
    arrays = {n: self._get('pixel_adapter', n) for n in ARRAY_NAMES}
    return Adapter.from_arrays(arrays, dim=arrays['sqrt_eig'].shape[0])

  def pixel_decode(self, a: Array, r: Array | None = None) -> Array:
    """The decoder's pixel map: clip(P(r) K + b, 0, 1), responses -> images, P the pixel adapter
    (or, where the model has none, clip(a K + b) of the adapted responses a)."""
    p = self.pixel_adapter()
    if p is not None and r is None:
      raise ValueError("this model's pixel path reads the responses: pass them as r")
    pixels = ((a if p is None else p.forward(r)) @ self._get('pixel_path', 'kernel')
              + self._get('pixel_path', 'bias'))
    return jnp.clip(pixels, 0.0, 1.0).reshape((a.shape[0],) + tuple(self.image_shape))

  def pixel_encode(self, x: Array) -> Array:
    """The encoder's pixel map: P^-1(x Q + c), images -> responses (N, U)."""
    scores = (x.reshape(x.shape[0], -1) @ self._get('pixel_path', 'enc_kernel')
              + self._get('pixel_path', 'enc_bias'))
    return self.pixel_adapter().inverse(scores)

  # --- the two directions ---

  def encode(self, x: Array) -> Array:
    """A^-1(f(standardise(E(x)))), blended with the encoder's pixel map by its weight when the
    model has one: images (N, H, W, C) -> responses (N, U)."""
    return self.encode_features(self.standardise(self.features(x)), x)

  def encode_features(self, h: Array, x: Array | None = None) -> Array:
    """Standardised features h (N, D) -> responses A^-1(f(h)), blended with the encoder's pixel
    map of their images x by its weight when the model has one and x is given."""
    r = self.adapter().inverse(self.encode_standardised(h))
    if x is None or not self.has_variable('pixel_path', 'enc_weight'):
      return r
    return pixel_path.blend(r, self.pixel_encode(x).astype(r.dtype),
                            self._get('pixel_path', 'enc_weight').astype(r.dtype))

  def decode_images(self, a: Array, r: Array | None = None) -> Array:
    """Adapted responses a = A(r) (N, D) -> images: G(unstandardise(f^-1(a))), blended with the
    pixel path's map by its weight when the model has one (which reads the responses r)."""
    images = self.decode_features(self.unstandardise(self.decode_adapted(a)))
    if not self.has_variable('pixel_path', 'weight'):
      return images
    return pixel_path.blend(images, self.pixel_decode(a, r).astype(images.dtype),
                            self._get('pixel_path', 'weight').astype(images.dtype))

  def decode(self, r: Array, pad: str = 'zeros', rng: Array | None = None) -> Array:
    """G(unstandardise(f^-1(A(r)))) (blended with the pixel path when there is one): responses
    (N, U) -> images (N, H, W, C) in [0, 1]."""
    return self.decode_images(self.adapter().forward(r, pad=pad, rng=rng), r)

  def roundtrip(self, x: Array) -> Array:
    """G(unstandardise(f^-1(f(standardise(E(x)))))) on the whole (augmented) vector, which must
    equal G(E(x))."""
    y = self.flow_forward(self.augment(self.standardise(self.features(x))))[0]
    return self.decode_features(self.unstandardise(self.head(self.flow_inverse(y)[0])))

  def __call__(self, x: Array) -> Array:
    return self.encode(x)

  @nn.nowrap
  def init_autoencoder(self, rng: Array, images: Array) -> Any:
    """Fresh autoencoder parameters for images (N, H, W, C)."""
    return self.init(rng, images, method=FLIG.reconstruct)['params']['autoencoder']

  @nn.nowrap
  def init_flow(self, rng: Array, h: Array) -> Any:
    """Fresh flow parameters; ActNorm's data-dependent start sees standardised features h (N, D),
    N >= 2. Each coupling starts as the identity."""
    return self.init(rng, h, method=FLIG.encode_standardised)['params']['flow']


@flax.struct.dataclass
class Frozen:
  """Every FLIG variable except the flow: what stage 2 reads and never trains.

  Attributes:
    autoencoder: the trained stage-1 parameters of E and G.
    feature_mean: (D,) mean of the raw training features E(x).
    feature_std: (D,) their standard deviation (floored at 1e-6).
    adapter: the Adapter fitted on the training responses.
    pixel_kernel: (m, H * W * C) the decoder's pixel map (`flig_jax.pixel_path`), or None.
    pixel_bias: (H * W * C,) its bias, or None.
    pixel_weight: () the blend's weight w, or None.
    pixel_enc_kernel: (H * W * C, m) the encoder's pixel map (`pixel_path.fit_encoder`), or None.
    pixel_enc_bias: (m,) its bias, or None.
    pixel_enc_weight: () the encoder's blend weight v, or None.
    pixel_adapter: the m principal components both maps read (an Adapter of dim m), or None.
  """
  autoencoder: Any
  feature_mean: Array
  feature_std: Array
  adapter: Adapter
  pixel_kernel: Array | None = None
  pixel_bias: Array | None = None
  pixel_weight: Array | None = None
  pixel_enc_kernel: Array | None = None
  pixel_enc_bias: Array | None = None
  pixel_enc_weight: Array | None = None
  pixel_adapter: Adapter | None = None

  @classmethod
  def fit(cls, autoencoder: Any, features: Any, adapter: Adapter) -> 'Frozen':
    """The frozen parts for trained autoencoder parameters, their raw training features (N, D)
    and a fitted adapter."""
    h = jnp.asarray(features, jnp.float32)
    if adapter.dim != h.shape[-1]:
      raise ValueError(f'the adapter maps to {adapter.dim} dimensions but the features have '
                       f'{h.shape[-1]}')
    return cls(autoencoder=autoencoder, feature_mean=h.mean(axis=0),
               feature_std=jnp.maximum(h.std(axis=0), _STD_FLOOR), adapter=adapter)

  def without_pixel_paths(self) -> 'Frozen':
    """These frozen parts with no pixel path."""
    return self.replace(pixel_kernel=None, pixel_bias=None, pixel_weight=None,
                        pixel_enc_kernel=None, pixel_enc_bias=None, pixel_enc_weight=None,
                        pixel_adapter=None)

  @property
  def signal_mask(self) -> Array:
    """(D,) 1 on the adapter's k signal coordinates, 0 on its padding."""
    return self.adapter.signal_mask

  def variables(self, flow: Any) -> Variables:
    """The FLIG variables with these frozen parts and the flow parameters `flow`."""
    variables = {'params': {'autoencoder': self.autoencoder, 'flow': flow},
                 'stats': {'feature_mean': self.feature_mean, 'feature_std': self.feature_std},
                 'adapter': self.adapter.arrays()}
    if self.pixel_kernel is not None:
      variables['pixel_path'] = {'kernel': self.pixel_kernel, 'bias': self.pixel_bias,
                                 'weight': self.pixel_weight}
      if self.pixel_enc_kernel is not None:
        variables['pixel_path'].update(enc_kernel=self.pixel_enc_kernel,
                                       enc_bias=self.pixel_enc_bias,
                                       enc_weight=self.pixel_enc_weight)
      if self.pixel_adapter is not None:
        variables['pixel_adapter'] = self.pixel_adapter.arrays()
    return variables
