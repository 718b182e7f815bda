"""What stage 2 reads, made from the trained autoencoder: the frozen parts (the adapter, the
feature statistics and the decoder's pixel path, fitted on training pairs only), the training pairs
and their batches, the validation pairs and the augmented flow's closed-form start.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flig_jax import data, pixel_path
from flig_jax.model import map_in_chunks
from flig_jax.nn import compiled
from flig_jax.nn.adapter import Adapter
from flig_jax.nn.flig import FLIG, Frozen
from flig_jax.training import closed_form, context, parallel, train_state, validation


@dataclasses.dataclass(frozen=True)
class Stage2Data:
  """Stage 2's inputs.

  Attributes:
    frozen: the parts stage 2 reads and never trains, replicated on the mesh.
    pairs: the training pairs: raw features E(x) ('raw_features'), standardised features h
      ('features') and adapted responses A(r) ('adapted').
    arrays: what the batches are drawn from (`arrays`).
    val: the validation pairs, when model selection or the closed-form start needs them, else None.
  """
  frozen: Frozen
  pairs: dict[str, np.ndarray]
  arrays: dict[str, np.ndarray]
  val: validation.ValidationSet | None


def val_size(dataset: data.Dataset) -> int:
  """Validation stimuli that stage 2 scores (none below 2)."""
  n = len(dataset.val)
  return n if n >= 2 else 0


def features(module: FLIG, autoencoder: Any, images: np.ndarray) -> np.ndarray:
  """Raw features E(x) of a split (computed once: the encoder is frozen in stage 2)."""
  apply = compiled.apply(module, 'features')
  variables = {'params': {'autoencoder': autoencoder}}
  return map_in_chunks(lambda x: apply(variables, x), images)


@jax.jit
def _pairs(frozen: Frozen, raw_features: jax.Array,
           responses: jax.Array) -> dict[str, jax.Array]:
  return {'raw_features': raw_features,
          'features': (raw_features - frozen.feature_mean) / frozen.feature_std,
          'adapted': frozen.adapter.forward(responses)}


def pairs(frozen: Frozen, raw_features: np.ndarray, responses: np.ndarray) -> dict[str, np.ndarray]:
  """Raw features, standardised features h and adapted responses A(r), on the host."""
  return jax.device_get(_pairs(frozen, raw_features, responses))


def fit_frozen(config: ml_collections.ConfigDict, autoencoder: Any, raw_features: np.ndarray,
               responses: np.ndarray, mesh: Any) -> Frozen:
  """The adapter and the feature standardisation fitted on these training pairs, replicated."""
  adapter = Adapter.fit(responses, config.model.feature_dim, config.model.adapter_components)
  return parallel.replicate(_fit_frozen(autoencoder, raw_features, adapter), mesh)


# One jitted function for every fit of a run (`jax.jit(Frozen.fit)` at each call would trace
# again each time: every access to a classmethod is a new function to JAX's caches).
_fit_frozen = jax.jit(Frozen.fit)


def arrays(config: ml_collections.ConfigDict, pairs: dict[str, np.ndarray],
           images: np.ndarray) -> dict[str, Any]:
  """What stage 2's batches are drawn from: h and A(r), and the images when the pixel term reads
  them (otherwise they are not built or sent)."""
  out = {'features': pairs['features'], 'adapted': pairs['adapted']}
  if config.stage2.pixel:
    out['images'] = images
  return out


def stream(config: ml_collections.ConfigDict, arrays: dict[str, Any],
           local: bool = True) -> data.BatchStream:
  """Stage 2's seeded batches of `arrays` (this process's rows, or the whole global batch)."""
  kwargs = {'process_index': jax.process_index(),
            'process_count': jax.process_count()} if local else {}
  return data.BatchStream(arrays, config.stage2.batch_size, seed=config.seed + 1, **kwargs)


def first_batch(config: ml_collections.ConfigDict, arrays: dict[str, Any]) -> dict[str, np.ndarray]:
  """The whole first global batch (the same on every process), which starts the flow."""
  first = stream(config, arrays, local=False).batch(0)
  return {k: first[k] for k in ('features', 'adapted')}


def first_batch_shape(config: ml_collections.ConfigDict,
                      module: FLIG) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of `first_batch`."""
  b, d = config.stage2.batch_size, module.feature_dim
  return {k: jax.ShapeDtypeStruct((b, d), jnp.float32) for k in ('features', 'adapted')}


def batch_shape(config: ml_collections.ConfigDict,
                module: FLIG) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of a stage-2 step's batch (`stream(config, arrays(...)).batch(step)`)."""
  out = first_batch_shape(config, module)
  if config.stage2.pixel:
    out['images'] = jax.ShapeDtypeStruct(
        (config.stage2.batch_size,) + tuple(module.image_shape), jnp.float32)
  return out


def linear_pair(module: FLIG, frozen: Frozen, pairs: dict[str, np.ndarray],
                val: validation.ValidationSet | None, folds: np.ndarray | None) -> Any:
  """The augmented flow's closed-form start on these pairs (`closed_form`; None for the plain
  flow): ridge penalties chosen on `val`, else by cross-validation over `folds` (random folds when
  None)."""
  if module.flow_type != 'augmented':
    return None
  k = frozen.adapter.k
  folds = _cv_folds(folds)
  return closed_form.linear_pair_params(
      pairs['raw_features'], pairs['adapted'][:, :k], None if val is None else val.raw_features,
      None if val is None else val.adapted[:, :k], np.asarray(frozen.feature_mean),
      np.asarray(frozen.feature_std), module.feature_dim, fold_ids=folds)


def _cv_folds(folds: np.ndarray | None) -> np.ndarray | None:
  """`folds` when they can cross-validate a ridge penalty (two or more), else None (random
  folds)."""
  return folds if folds is not None and len(np.unique(folds)) >= 2 else None


def prepare(config: ml_collections.ConfigDict, module: FLIG, dataset: data.Dataset,
            autoencoder: Any, raw_features: np.ndarray, mesh: Any, frozen: Frozen | None = None,
            pixel_weight: float | None = None, folds: np.ndarray | None = None) -> Stage2Data:
  """Stage 2's inputs from the trained autoencoder parameters and the raw training features;
  `frozen` (of a resumed stage 2) or, when None, fitted here on every training pair (with the
  pixel path at `pixel_weight`, its penalty chosen over `folds`: `with_pixel_path`)."""
  cfg, train = config.stage2, dataset.train
  fresh = frozen is None
  if fresh:
    frozen = fit_frozen(config, autoencoder, raw_features, train.responses, mesh)
  train_pairs = pairs(frozen, raw_features, train.responses)
  if fresh:
    frozen = with_pixel_path(module, frozen, train_pairs, train.images, pixel_weight, mesh, folds)
  val = None
  # The validation pairs serve model selection and the closed-form start's regularisers.
  if val_size(dataset) and (cfg.select_by == 'val_pcc' or module.flow_type == 'augmented'):
    val_pairs = pairs(frozen, features(module, autoencoder, dataset.val.images),
                      dataset.val.responses)
    val = validation.ValidationSet(raw_features=val_pairs['raw_features'],
                                   features=val_pairs['features'], adapted=val_pairs['adapted'],
                                   images=dataset.val.images, responses=dataset.val.responses)
  return Stage2Data(frozen, train_pairs, arrays(config, train_pairs, train.images), val)


def with_pixel_path(module: FLIG, frozen: Frozen, pairs: dict[str, np.ndarray],
                    images: np.ndarray, weight: float | None, mesh: Any,
                    folds: np.ndarray | None = None) -> Frozen:
  """`frozen` with the pixel path (`flig_jax.pixel_path`) fitted on these training pairs (its
  penalty by cross-validation over `folds`, random folds when None) at blend weight `weight`; as
  it is when None."""
  if weight is None:
    return frozen
  frozen = jax.device_get(frozen)
  adapter = frozen.adapter
  folds = _cv_folds(folds)
  kernel, bias = pixel_path.fit(pairs['adapted'][:, :adapter.k], images,
                                np.asarray(adapter.sqrt_eig), module.feature_dim, folds)
  return parallel.replicate(frozen.replace(
      pixel_kernel=jnp.asarray(kernel), pixel_bias=jnp.asarray(bias),
      pixel_weight=jnp.asarray(weight, jnp.float32)), mesh)


def pixel_weight(ctx: context.Context, autoencoder: Any, raw_features: np.ndarray,
                 folds: np.ndarray | None) -> float:
  """The pixel path's blend weight, chosen from `pixel_path.WEIGHTS` on held-out pairs with the
  flow at its closed-form start: each fold of `folds` held out in turn (adapter, start and pixel
  map fitted on the others), else the validation split; 0 (the flow's decoder alone) when there
  is neither."""
  config, module, mesh, train = ctx.config, ctx.module, ctx.mesh, ctx.dataset.train
  if folds is not None and len(np.unique(folds)) >= 2:
    splits = [(folds != f, folds == f) for f in np.unique(folds)]
    held_images = [train.images[held] for _, held in splits]
    sources = [(raw_features[rest], train.responses[rest], train.images[rest], folds[rest],
                raw_features[held], train.responses[held]) for rest, held in splits]
  elif val_size(ctx.dataset):
    val = ctx.dataset.val
    held_images = [val.images]
    sources = [(raw_features, train.responses, train.images, None,
                features(module, autoencoder, val.images), val.responses)]
  else:
    return 0.0
  scores = []
  for (raw, responses, images, rest_folds, held_raw, held_r), held_x in zip(sources, held_images):
    frozen = fit_frozen(config, autoencoder, raw, responses, mesh)
    fit_pairs = pairs(frozen, raw, responses)
    frozen = with_pixel_path(module, frozen, fit_pairs, images, 0.0, mesh, rest_folds)
    held = pairs(frozen, held_raw, held_r)
    flow = train_state.initial_flow_params(
        module, jax.random.key(config.seed + 2),
        first_batch(config, arrays(config, fit_pairs, images))['features'],
        linear_pair(module, frozen, fit_pairs, None, rest_folds))
    variables = frozen.variables(flow)
    autoencoded = compiled.apply(module, 'decode_images')(variables, held['adapted'])
    pixels = compiled.apply(module, 'pixel_decode')(variables, held['adapted'])
    scores.append(pixel_path.candidate_scores(autoencoded, pixels, held_x))
  scores = np.concatenate(scores, axis=1)
  weight = pixel_path.choose(scores)
  ctx.log.info(f'pixel path: blend weight {weight:g}, chosen by mean held-out PCC + SSIM: '
               + ', '.join(f'{w:g}: {v:.4f}' for w, v in zip(pixel_path.WEIGHTS,
                                                              scores.mean(axis=1))))
  return weight
