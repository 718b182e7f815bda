"""Train states, optimisers and the pure train steps of both stages.

Both steps are plain functions `step(state, batch) -> (state, metrics)`; `parallel.jit_step`
compiles them (the model, optimisers and config are bound with `functools.partial` first). What
stage 2 reads and never trains (autoencoder, feature statistics, adapter) rides in its state as a
`model.Frozen`, so one checkpointed pytree holds everything a resumed step needs. The per-step RNG
is `fold_in(state.rng, state.step)`, so a resumed run draws exactly what an uninterrupted one
would.
"""

from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from flig_jax.model import Frozen
from flig_jax.training import augment as augment_lib
from flig_jax.training import losses, validation


@flax.struct.dataclass
class Stage1State:
  step: jax.Array            # steps done in this stage
  params: Any                # autoencoder parameters
  opt_state: Any
  rng: jax.Array             # base key; step keys are fold_in(rng, step)
  nonfinite_step: jax.Array  # first step with NaN/Inf in loss, gradients or new params, or -1


@flax.struct.dataclass
class Stage2State:
  step: jax.Array
  flow_params: Any
  disc_params: Any           # {'forward': ..., 'inverse': ...}
  flow_opt_state: Any
  disc_opt_state: Any
  rng: jax.Array
  nonfinite_step: jax.Array
  frozen: Frozen             # never updated
  best_flow_params: Any      # the flow kept by model selection on the validation split
  best_score: jax.Array      # (G,) validation score of each kept group (validation.GROUPS)
  best_step: jax.Array       # (G,) the step each was taken at; -1: no selection, keep the last
  ref_score: jax.Array       # (G,) each group's score at the first validated step (step 0)
  ref_replicates: jax.Array  # (G, M) its jackknife replicates over the M validation stimuli
  #                            (M = 1, unused, without a validation split: orbax saves no
  #                            zero-size array)

  @staticmethod
  def no_selection(flow_params: Any, groups: int, val_size: int) -> dict[str, Any]:
    """The model-selection fields of a state that has not been validated yet (`val_size` 0:
    no validation split)."""
    return {'best_flow_params': flow_params,
            'best_score': jnp.full((groups,), -jnp.inf, jnp.float32),
            'best_step': jnp.full((groups,), -1, jnp.int32),
            'ref_score': jnp.zeros((groups,), jnp.float32),
            'ref_replicates': jnp.zeros((groups, max(val_size, 1)), jnp.float32)}

  def selected_flow_params(self) -> Any:
    """The flow that the model uses: the kept one, or the current one when nothing was kept."""
    keep = jnp.all(self.best_step >= 0)
    return jax.tree.map(lambda b, c: jnp.where(keep, b, c), self.best_flow_params,
                        self.flow_params)

  def selected_steps(self) -> jax.Array:
    """(G,) the step of each group of `selected_flow_params`."""
    return jnp.where(jnp.all(self.best_step >= 0), self.best_step, self.step)

  def model_variables(self) -> dict[str, Any]:
    """The FLIG variables of this state: the frozen parts and the selected flow."""
    return self.frozen.variables(self.selected_flow_params())


def optimizer(learning_rate: float, weight_decay: float,
              steps: int) -> optax.GradientTransformation:
  """AdamW with a short warm-up and cosine decay, gradients clipped at norm 1."""
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, warmup_steps=max(1, min(100, steps // 10)), decay_steps=max(steps, 2),
      end_value=learning_rate * 0.05)
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(schedule, weight_decay=weight_decay))


def _track_nonfinite(nonfinite_step: jax.Array, step: jax.Array, *trees: Any) -> jax.Array:
  """`step` if no earlier step was marked and any leaf of `trees` (the loss, the gradients, the
  updated parameters) holds a NaN or Inf: an update that breaks the parameters is caught at the
  step that made it, before the loop can save its result."""
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trees)]))
  return jnp.where(jnp.logical_and(nonfinite_step < 0, ~finite), step, nonfinite_step)


def stage1_step(state: Stage1State, batch: dict[str, jax.Array], *, model: Any,
                tx: optax.GradientTransformation,
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
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
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


def stage2_step(state: Stage2State, batch: dict[str, jax.Array], *,
                model: Any, discriminator: Any, flow_tx: optax.GradientTransformation,
                disc_tx: optax.GradientTransformation,
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

  # Discriminator: real adapted responses vs f(h) (and features vs f^-1(a)), flow held fixed.
  out = jax.lax.stop_gradient(
      losses.flow_terms(state.flow_params, model, batch, noise, feature_noise))
  real, fake = {'forward': out['a_padded']}, {'forward': out['sample']}
  if cfg.adversarial_inverse:
    real['inverse'], fake['inverse'] = batch['features'], out['h_back']
  disc_grad_fn = jax.value_and_grad(losses.discriminator_loss, has_aux=True)
  (_, disc_terms), disc_grads = disc_grad_fn(state.disc_params, discriminator, real, fake, cfg)
  disc_updates, disc_opt_state = disc_tx.update(disc_grads, state.disc_opt_state,
                                                state.disc_params)
  disc_params = optax.apply_updates(state.disc_params, disc_updates)

  # Flow: all constraints against the updated discriminator.
  flow_grad_fn = jax.value_and_grad(losses.flow_loss, has_aux=True)
  (loss, terms), grads = flow_grad_fn(state.flow_params, disc_params, state.frozen, model,
                                      discriminator, batch, noise, feature_noise, cfg)
  updates, flow_opt_state = flow_tx.update(grads, state.flow_opt_state, state.flow_params)
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


def flow_optimizer(cfg: ml_collections.ConfigDict, augmented: bool) -> optax.GradientTransformation:
  """The flow's optimiser. For the augmented flow the linear pair's fitted maps (kernels and
  biases, the closed-form start) stay fixed; its noise scales train with `weight_decay`, the
  couplings with `coupling_weight_decay`, which pulls them back toward the identity, i.e. each
  direction toward its ridge start."""
  train = optimizer(cfg.learning_rate, cfg.weight_decay, cfg.steps)
  if not augmented:
    return train
  coupling = optimizer(cfg.learning_rate, cfg.get('coupling_weight_decay', cfg.weight_decay),
                       cfg.steps)

  def label(path, _):
    names = [getattr(key, 'key', '') for key in path]
    if names[0] == 'linear_pair' and not names[-1].endswith('log_scale'):
      return 'fixed'
    return 'coupling' if names[0].endswith('coupling') else 'train'

  def labels(params):
    return jax.tree_util.tree_map_with_path(label, params)
  return optax.multi_transform({'train': train, 'coupling': coupling,
                                'fixed': optax.set_to_zero()}, labels)
