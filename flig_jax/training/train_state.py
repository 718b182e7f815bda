"""The train state of each stage and the one function that creates it with its optimiser.

`create_stage1_state` and `create_stage2_state` initialise the parameters and build the optimisers
(and stage 2's discriminator) in one place; the states carry them as static fields, so the steps
(`steps.stage1_step`, `steps.stage2_step`) read them from the state and never build their own. The
optimisers are memoised by their settings: states made from equal configs hold the very same
optimiser, so they share one tree structure (one compiled step; `seeds.stack` stacks them).
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from flig_jax.nn import precision
from flig_jax.nn.discriminator import Discriminator
from flig_jax.nn.flig import FLIG, Frozen
from flig_jax.training import validation


@flax.struct.dataclass
class Stage1State:
  step: jax.Array            # steps done in this stage
  params: Any                # autoencoder parameters
  opt_state: Any
  rng: jax.Array             # base key; step keys are fold_in(rng, step)
  nonfinite_step: jax.Array  # first step with NaN/Inf in loss, gradients or new params, or -1
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


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
  discriminator: Discriminator = flax.struct.field(pytree_node=False)
  flow_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  disc_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

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


@functools.cache
def optimizer(learning_rate: float, weight_decay: float,
              steps: int) -> optax.GradientTransformation:
  """AdamW with a short warm-up and cosine decay, gradients clipped at norm 1."""
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, warmup_steps=max(1, min(100, steps // 10)), decay_steps=max(steps, 2),
      end_value=learning_rate * 0.05)
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(schedule, weight_decay=weight_decay))


@functools.cache
def _flow_optimizer(learning_rate: float, weight_decay: float, coupling_weight_decay: float,
                    steps: int, augmented: bool) -> optax.GradientTransformation:
  train = optimizer(learning_rate, weight_decay, steps)
  if not augmented:
    return train
  coupling = optimizer(learning_rate, coupling_weight_decay, steps)

  def label(path, _):
    names = [getattr(key, 'key', '') for key in path]
    if names[0] == 'linear_pair' and not names[-1].endswith('log_scale'):
      return 'fixed'
    return 'coupling' if names[0].endswith('coupling') else 'train'

  def labels(params):
    return jax.tree_util.tree_map_with_path(label, params)
  return optax.multi_transform({'train': train, 'coupling': coupling,
                                'fixed': optax.set_to_zero()}, labels)


def flow_optimizer(cfg: ml_collections.ConfigDict, augmented: bool) -> optax.GradientTransformation:
  """The flow's optimiser (`optimizer` with `config.stage2`'s settings). For the augmented flow
  the linear pair's fitted maps (kernels and biases, the closed-form start) stay fixed; its noise
  scales train with `weight_decay`, the couplings with `coupling_weight_decay`, which pulls them
  back toward the identity, i.e. each direction toward its ridge start."""
  return _flow_optimizer(float(cfg.learning_rate), float(cfg.weight_decay),
                         float(cfg.get('coupling_weight_decay', cfg.weight_decay)),
                         int(cfg.steps), bool(augmented))


def create_stage1_state(rng: jax.Array, config: ml_collections.ConfigDict, module: FLIG,
                        images: jax.Array) -> Stage1State:
  """A fresh stage-1 state: new autoencoder parameters (for images shaped like `images`,
  (N, H, W, C)) and `optimizer` with `config.stage1`'s settings.

  Args:
    rng: the stage's key (the parameters are drawn from it, the step keys from a key folded out of
      it).
    config: the run's config.
    module: the FLIG module.
    images: a few training images (only their shape matters).
  """
  cfg = config.stage1
  tx = optimizer(float(cfg.learning_rate), float(cfg.weight_decay), int(cfg.steps))
  params = module.init_autoencoder(rng, images)
  return Stage1State(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=jax.random.fold_in(rng, 1), nonfinite_step=jnp.full((), -1, jnp.int32),
                     tx=tx)


def initial_flow_params(module: FLIG, rng: jax.Array, features: jax.Array,
                        linear_pair: Any = None) -> Any:
  """Where the flow starts. Plain: ActNorm set from `features` (standardised, (N, D), N >= 2),
  every coupling at the identity. Augmented: every block at the identity and the `LinearPair` at
  `linear_pair`, the closed-form ridge start (`closed_form`)."""
  params = module.init_flow(rng, features)
  if linear_pair is not None:
    params = {**params, 'linear_pair': jax.tree.map(jnp.asarray, linear_pair)}
  return params


@functools.cache
def compiled_initial_flow_params(module: FLIG) -> Callable[..., Any]:
  """`initial_flow_params` of `module`, jitted: one compile, where outside a jitted step every
  operation of the flow's initialisation would compile on its own."""
  return jax.jit(functools.partial(initial_flow_params, module))


def create_stage2_state(rng: jax.Array, config: ml_collections.ConfigDict, module: FLIG,
                        frozen: Frozen, first_batch: dict[str, jax.Array], linear_pair: Any = None,
                        val_size: int = 0) -> Stage2State:
  """A fresh stage-2 state: the flow at its start (`initial_flow_params`), a new discriminator
  (`config.model.disc_hidden`, computing in `config.model.dtype`) for each direction, the flow's
  optimiser (`flow_optimizer`) and the discriminator's (`optimizer` at
  `config.stage2.disc_learning_rate`, no weight decay), and no flow kept by model selection yet.

  Args:
    rng: the stage's key.
    config: the run's config.
    module: the FLIG module.
    frozen: the stage-1 parts stage 2 reads and never trains.
    first_batch: the first global batch's 'features' (standardised, (B, D)), which the plain
      flow's ActNorm starts from.
    linear_pair: the augmented flow's closed-form start (`closed_form.linear_pair_params`), or None.
    val_size: the number of validation stimuli model selection scores (0: none).
  """
  cfg = config.stage2
  discriminator = Discriminator(config.model.disc_hidden,
                                dtype=precision.compute_dtype(config.model.get('dtype', 'float32')))
  flow_tx = flow_optimizer(cfg, module.flow_type == 'augmented')
  disc_tx = optimizer(float(cfg.disc_learning_rate), 0.0, int(cfg.steps))
  k_flow, k_fwd, k_inv, k_state = jax.random.split(rng, 4)
  flow_params = initial_flow_params(module, k_flow, first_batch['features'], linear_pair)
  probe = jnp.zeros((1, module.feature_dim))
  disc_params = {'forward': discriminator.init(k_fwd, probe)['params'],
                 'inverse': discriminator.init(k_inv, probe)['params']}
  groups = len(validation.GROUPS[module.flow_type])
  return Stage2State(
      step=jnp.zeros((), jnp.int32), flow_params=flow_params, disc_params=disc_params,
      flow_opt_state=flow_tx.init(flow_params), disc_opt_state=disc_tx.init(disc_params),
      rng=k_state, nonfinite_step=jnp.full((), -1, jnp.int32), frozen=frozen,
      discriminator=discriminator, flow_tx=flow_tx, disc_tx=disc_tx,
      **Stage2State.no_selection(flow_params, groups, val_size))
