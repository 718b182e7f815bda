"""The pure train steps of both stages, and stage 2's validation step.

Both steps are plain functions `step(state, batch) -> (state, metrics)`; `parallel.jit_step`
compiles them (the model and the stage's config are bound with `functools.partial` first). The
optimisers (and stage 2's discriminator) come with the state (`train_state`). What stage 2 reads and
never trains (autoencoder, feature statistics, adapter) rides in its state as an `nn.flig.Frozen`,
so one checkpointed pytree holds everything a resumed step needs. The per-step RNG is
`fold_in(state.rng, state.step)`, so a resumed run draws exactly what an uninterrupted one would.
"""

from typing import Any

import chex
import jax
import jax.numpy as jnp
import ml_collections
import optax

from flig_jax.training import augment as augment_lib
from flig_jax.training import losses, validation
from flig_jax.training.train_state import Stage1State, Stage2State


def _track_nonfinite(nonfinite_step: jax.Array, step: jax.Array, *trees: Any) -> jax.Array:
  """`step` if no earlier step was marked and any leaf of `trees` (the loss, the gradients, the
  updated parameters) holds a NaN or Inf: an update that breaks the parameters is caught at the
  step that made it, before the loop can save its result."""
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trees)]))
  return jnp.where(jnp.logical_and(nonfinite_step < 0, ~finite), step, nonfinite_step)


def stage1_step(state: Stage1State, batch: dict[str, jax.Array], *, model: Any,
                cfg: ml_collections.ConfigDict) -> tuple[Stage1State, dict[str, jax.Array]]:
  """One autoencoder update on a batch of stimuli (augmented when cfg.augment)."""
  images = batch['images']
  chex.assert_rank(images, 4)
  rng = jax.random.fold_in(state.rng, state.step)
  if cfg.augment:
    images = augment_lib.augment(rng, images, max_shift=cfg.max_shift,
                                 max_rotation=cfg.max_rotation,
                                 elastic_strength=cfg.elastic_strength)
  grad_fn = jax.value_and_grad(losses.stage1_loss, has_aux=True)
  (loss, terms), grads = grad_fn(state.params, model, images, images, cfg)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(
      step=state.step + 1, params=params, opt_state=opt_state,
      nonfinite_step=_track_nonfinite(state.nonfinite_step, state.step, loss, grads, params))
  return new_state, {'loss': loss, **terms}


def _mixup(rng: jax.Array, batch: dict[str, jax.Array], alpha: float) -> dict[str, jax.Array]:
  """Replaces each pair by a convex combination with another pair of the batch (same weight for
  image, features and responses), the weight drawn from Beta(alpha, alpha)."""
  k_perm, k_lam = jax.random.split(rng)
  n = batch['features'].shape[0]
  perm = jax.random.permutation(k_perm, n)
  lam = augment_lib.symmetric_beta(k_lam, alpha, (n,))

  def mix(x):
    w = lam.reshape((n,) + (1,) * (x.ndim - 1))
    return w * x + (1.0 - w) * x[perm]

  return {k: mix(v) for k, v in batch.items()}


def stage2_step(state: Stage2State, batch: dict[str, jax.Array], *, model: Any,
                cfg: ml_collections.ConfigDict) -> tuple[Stage2State, dict[str, jax.Array]]:
  """One discriminator update, then one flow update, on the same batch."""
  d = state.frozen.feature_mean.shape[0]
  chex.assert_shape([batch['features'], batch['adapted']], (None, d))
  if cfg.pixel:  # the images travel only when the pixel term reads them
    chex.assert_rank(batch['images'], 4)
  rng, mix_rng, feature_rng = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)
  if cfg.mixup:
    batch = _mixup(mix_rng, batch, cfg.mixup)
  # N(0, 1) on the padding coordinates, N(0, response_noise^2) on the signal ones.
  mask = state.frozen.signal_mask
  noise = jax.random.normal(rng, batch['adapted'].shape, batch['adapted'].dtype)
  noise = noise * (1.0 - mask + cfg.response_noise * mask)
  feature_noise = jax.random.normal(feature_rng, batch['features'].shape, batch['features'].dtype)
  # The conditioners' dropout (model.flow_dropout) draws from its own key, so a run without it
  # draws exactly what it drew before the option existed.
  dropout_rng = (jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 1)
                 if model.flow_dropout else None)

  # Discriminator: real adapted responses vs f(h) (and features vs f^-1(a)), flow held fixed.
  out = jax.lax.stop_gradient(
      losses.flow_terms(state.flow_params, state.frozen, model, batch, noise, feature_noise,
                        dropout_rng))
  real, fake = {'forward': out['a_padded']}, {'forward': out['sample']}
  if cfg.adversarial_inverse:
    real['inverse'], fake['inverse'] = batch['features'], out['h_back']
  disc_grad_fn = jax.value_and_grad(losses.discriminator_loss, has_aux=True)
  (_, disc_terms), disc_grads = disc_grad_fn(state.disc_params, state.discriminator, real, fake,
                                             cfg)
  disc_updates, disc_opt_state = state.disc_tx.update(disc_grads, state.disc_opt_state,
                                                      state.disc_params)
  disc_params = optax.apply_updates(state.disc_params, disc_updates)

  # Flow: all constraints against the updated discriminator.
  flow_grad_fn = jax.value_and_grad(losses.flow_loss, has_aux=True)
  (loss, terms), grads = flow_grad_fn(state.flow_params, disc_params, state.frozen, model,
                                      state.discriminator, batch, noise, feature_noise, cfg,
                                      dropout_rng)
  updates, flow_opt_state = state.flow_tx.update(grads, state.flow_opt_state, state.flow_params)
  flow_params = optax.apply_updates(state.flow_params, updates)
  new_state = state.replace(
      step=state.step + 1, flow_params=flow_params, disc_params=disc_params,
      flow_opt_state=flow_opt_state, disc_opt_state=disc_opt_state,
      nonfinite_step=_track_nonfinite(state.nonfinite_step, state.step, loss, grads, disc_grads,
                                      flow_params, disc_params))
  return new_state, {'loss': loss, **terms, **disc_terms}


def stage2_validate(state: Stage2State, val: validation.ValidationSet, *, model: Any,
                    margin: float) -> tuple[Stage2State, dict[str, jax.Array]]:
  """Scores the current flow on the validation split; keeps each part that beats the kept one
  by a clear gain over step 0 (validation.keep_best). Returns the state and what to log: the
  scores and the standard errors of their gains."""
  scores, replicates = validation.scores(model, state.frozen.variables(state.flow_params), val)
  state, gain_se = validation.keep_best(state, scores, replicates,
                                        validation.GROUPS[model.flow_type], margin)
  return state, {**scores, **gain_se}
