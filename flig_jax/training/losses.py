"""The training objectives of both stages, as pure functions of parameters and a batch.

Stage 1 trains the autoencoder on pixels. Stage 2 trains the flow f between standardised features
h = E(x) and adapted responses a = A(r) (docs/design.md): local constraints pair by pair, a global
likelihood term, an adversarial term against the discriminator, and an optional pixel term.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from flig_jax import ops
from flig_jax.nn import discriminator as disc_lib
from flig_jax.nn.flig import FLIG, Frozen

_LOG_2PI = math.log(2.0 * math.pi)


def stage1_loss(ae_params: Any, model: Any, images: jax.Array, targets: jax.Array,
                cfg: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Pixel cross-entropy of G(E(images)) against `targets` in [0, 1] (plus an optional 1 - SSIM).

  Cross-entropy on the decoder's logits keeps a gradient where the output sigmoid saturates; with
  a pixel MSE through the sigmoid, the autoencoder sometimes settled on the mean image for good
  (the loss stuck at 0.10 on digit69). The MSE is reported beside it.
  """
  logits = model.apply({'params': {'autoencoder': ae_params}}, images,
                       method=lambda m, x: m.autoencoder.reconstruct_logits(x))
  recon = jax.nn.sigmoid(logits)
  loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets))
  terms = {'bce': loss, 'mse': jnp.mean((recon - targets) ** 2)}
  if cfg.ssim_weight:
    ssim = jnp.mean(ops.ssim(recon, targets))
    loss = loss + cfg.ssim_weight * (1.0 - ssim)
    terms['ssim'] = ssim
  return loss, terms


def _bce(logits: jax.Array, label: float) -> jax.Array:
  """Mean logistic loss of `logits` against one label (1: real, 0: generated)."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, label)))


def flow_terms(flow_params: Any, frozen: Frozen, model: Any, batch: dict[str, jax.Array],
               noise: jax.Array, feature_noise: jax.Array,
               dropout_rng: jax.Array | None = None) -> dict[str, jax.Array]:
  """Runs f on the features and f^-1 on the adapted responses of a batch.

  Args:
    flow_params: the flow's parameters.
    frozen: the frozen parts (f reads the adapter: `FLIG.decoder_input_scale`).
    model: the FLIG module.
    batch: 'features' h (N, D) standardised, 'adapted' A(r) (N, D) zero on the padding.
    noise: (N, D) added to A(r): N(0, 1) on the padding and, where `config.stage2.response_noise`
      > 0, a perturbation of the signal coordinates.
    feature_noise: (N, D) N(0, 1) draws e_h for the augmented flow's noise coordinates (unused
      by the plain flow).
    dropout_rng: the key of the conditioners' dropout masks (`FLIG.flow_dropout`), or None: no
      unit is dropped.

  Returns:
    'encoded': the encoder's prediction, f([h, 0]) on the response side (plain: f(h));
    'sample': f([h, e_h]) on the response side, what the adversary sees (plain: f(h));
    'y', 'logdet': the whole f([h, e_h]) and its log|det|, for the likelihood;
    'h_back': the decoder's prediction f^-1([A(r) + noise, 0]) on the feature side;
    'a_padded': A(r) + noise.
  """
  variables = {'params': {'flow': flow_params}, 'adapter': frozen.adapter.arrays()}

  rngs = {} if dropout_rng is None else {'dropout': dropout_rng}

  def apply(x, method):
    return model.apply(variables, x, method=method, rngs=rngs)

  h = batch['features']
  a_padded = batch['adapted'] + noise
  y, logdet = apply(model.augment(h, feature_noise), FLIG.flow_forward)
  sample = model.head(y)
  encoded = apply(h, FLIG.encode_standardised) if model.flow_type == 'augmented' else sample
  h_back = apply(a_padded, FLIG.decode_adapted)
  return {'encoded': encoded, 'sample': sample, 'y': y, 'logdet': logdet, 'h_back': h_back,
          'a_padded': a_padded}


def forward_weight(frozen: Frozen, cfg: ml_collections.ConfigDict) -> jax.Array:
  """The local forward term's weight per coordinate of f's response side, (D,), summing to k:
  1 on the adapter's k signal coordinates and 0 on its padding (`local_forward_weighting =
  'whitened'`), or each principal component by its variance with mean 1 over the k
  ('variance'): the error in z-scored response units, as the MLP baseline measures it, not in
  whitened coordinates."""
  mask = frozen.signal_mask
  if cfg.get('local_forward_weighting', 'whitened') != 'variance':
    return mask
  eig = jnp.pad(frozen.adapter.sqrt_eig ** 2, (0, mask.shape[0] - frozen.adapter.k))
  return eig * jnp.sum(mask) / jnp.sum(eig)


def flow_loss(flow_params: Any, disc_params: Any, frozen: Frozen, model: Any,
              discriminator: Any, batch: dict[str, jax.Array], noise: jax.Array,
              feature_noise: jax.Array, cfg: ml_collections.ConfigDict,
              dropout_rng: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The flow's stage-2 objective; every weight comes from `cfg` (config.stage2).

  Local terms compare the encoder's and decoder's point predictions with their targets; the
  likelihood (per coordinate of f's space, D or 2D) and the adversary see samples.
  """
  out = flow_terms(flow_params, frozen, model, batch, noise, feature_noise, dropout_rng)
  h, a, mask = batch['features'], batch['adapted'], frozen.signal_mask
  z, h_back, y = out['encoded'], out['h_back'], out['y']
  size = y.shape[-1]
  k = jnp.sum(mask)

  local_fwd = jnp.mean(jnp.sum(forward_weight(frozen, cfg) * (z - a) ** 2, axis=-1)) / k
  local_inv = jnp.mean((h_back - h) ** 2)
  nll = jnp.mean(0.5 * jnp.sum(y ** 2, axis=-1) + 0.5 * size * _LOG_2PI - out['logdet']) / size
  # Non-saturating generator loss: f(h) should look like a real adapted response to Dis.
  fake_logits = discriminator.apply({'params': disc_params['forward']}, out['sample'])
  adv = _bce(fake_logits, 1.0)
  loss = (cfg.local_forward * local_fwd + cfg.local_inverse * local_inv
          + cfg.likelihood * nll + cfg.adversarial * adv)
  terms = {'local_fwd': local_fwd, 'local_inv': local_inv, 'nll': nll, 'adv': adv}

  if cfg.adversarial_inverse:
    inv_logits = discriminator.apply({'params': disc_params['inverse']}, h_back)
    adv_inv = _bce(inv_logits, 1.0)
    loss = loss + cfg.adversarial_inverse * adv_inv
    terms['adv_inv'] = adv_inv
  if cfg.pixel:
    pixels = model.apply(frozen.variables(flow_params), h_back,
                         method=lambda m, h: m.decode_features(m.unstandardise(h)))
    pixel = jnp.mean((pixels - batch['images']) ** 2)
    loss = loss + cfg.pixel * pixel
    terms['pixel'] = pixel
  return loss, terms


def discriminator_loss(disc_params: Any, discriminator: Any, real: dict[str, jax.Array],
                       fake: dict[str, jax.Array],
                       cfg: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Logistic loss telling real from generated vectors, plus an R1 penalty on the real ones.

  `real` and `fake` map a discriminator's name ('forward': a vs f(h); 'inverse': h vs f^-1(a))
  to a batch of vectors; only the discriminators named in both are trained.
  """
  total, terms = 0.0, {}
  for name, real_x in real.items():
    params = disc_params[name]
    apply = lambda p, x: discriminator.apply({'params': p}, x)
    real_logits = apply(params, real_x)
    fake_logits = apply(params, fake[name])
    loss = _bce(real_logits, 1.0) + _bce(fake_logits, 0.0)
    penalty = disc_lib.r1_penalty(apply, params, real_x)
    total = total + loss + cfg.gradient_penalty * penalty
    terms[f'disc_{name}'] = loss
  return total, terms
