"""What stage 2 reads, made from the trained autoencoder: the frozen parts (the adapter, the
feature statistics and the pixel paths, fitted on training pairs only), the training pairs
and their batches, the validation pairs and the augmented flow's closed-form start; for model
selection, each cross-validation fold's parts (`Fit`, `fold_fits`), fitted once and read both by
the choice of the decoder's pixel-path weight (`pixel_weight`) and by the fold's stage 2.
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


def linear_pair(config: ml_collections.ConfigDict, module: FLIG, frozen: Frozen,
                pairs: dict[str, np.ndarray], val: validation.ValidationSet | None,
                folds: np.ndarray | None) -> Any:
  """The augmented flow's closed-form start on these pairs (`closed_form`; None for the plain
  flow): ridge penalties chosen on `val`, else by cross-validation over `folds` (random folds when
  None)."""
  if module.flow_type != 'augmented':
    return None
  k = frozen.adapter.k
  folds = _cv_folds(folds)
  return closed_form.linear_pair_params(
      pairs['raw_features'], pairs['adapted'][:, :k], np.asarray(frozen.adapter.sqrt_eig),
      None if val is None else val.raw_features,
      None if val is None else val.adapted[:, :k], np.asarray(frozen.feature_mean),
      np.asarray(frozen.feature_std), module.feature_dim, fold_ids=folds,
      encoder_error=closed_form.config_encoder_error(config))


def _cv_folds(folds: np.ndarray | None) -> np.ndarray | None:
  """`folds` when they can cross-validate a ridge penalty (two or more), else None (random
  folds)."""
  return folds if folds is not None and len(np.unique(folds)) >= 2 else None


def prepare(config: ml_collections.ConfigDict, module: FLIG, dataset: data.Dataset,
            autoencoder: Any, raw_features: np.ndarray, mesh: Any, frozen: Frozen | None = None,
            pixel_weight: float | None = None, folds: np.ndarray | None = None,
            encoder_weight: float | None = None) -> Stage2Data:
  """Stage 2's inputs from the trained autoencoder parameters and the raw training features;
  `frozen` (of a resumed stage 2) or, when None, fitted here on every training pair (with the
  pixel paths at `pixel_weight` and `encoder_weight`, their penalties chosen over `folds`:
  `with_pixel_path`)."""
  cfg, train = config.stage2, dataset.train
  fresh = frozen is None
  if fresh:
    frozen = fit_frozen(config, autoencoder, raw_features, train.responses, mesh)
  train_pairs = pairs(frozen, raw_features, train.responses)
  if fresh:
    frozen = with_pixel_path(frozen, train.responses, train.images, pixel_weight, mesh, folds,
                             encoder_weight)
  val = None
  # The validation pairs serve model selection and the closed-form start's regularisers.
  if val_size(dataset) and (cfg.select_by == 'val_pcc' or module.flow_type == 'augmented'):
    val_pairs = pairs(frozen, features(module, autoencoder, dataset.val.images),
                      dataset.val.responses)
    val = validation.ValidationSet(raw_features=val_pairs['raw_features'],
                                   features=val_pairs['features'], adapted=val_pairs['adapted'],
                                   images=dataset.val.images, responses=dataset.val.responses)
  return Stage2Data(frozen, train_pairs, arrays(config, train_pairs, train.images), val)


def with_pixel_path(frozen: Frozen, responses: np.ndarray, images: np.ndarray,
                    weight: float | None, mesh: Any, folds: np.ndarray | None = None,
                    encoder_weight: float | None = None) -> Frozen:
  """`frozen` with the pixel paths (`flig_jax.pixel_path`) fitted on these training pairs (their
  penalties by cross-validation over `folds`, random folds when None) at blend weights `weight`
  (the decoder's) and `encoder_weight` (0 when None); as it is when `weight` is None."""
  if weight is None:
    return frozen
  return with_pixel_map(frozen, fit_pixel_map(responses, images, folds), weight, mesh,
                        encoder_weight or 0.0)


def fit_pixel_map(responses: np.ndarray, images: np.ndarray,
                  folds: np.ndarray | None) -> pixel_path.Maps:
  """The pixel paths' maps between these training pairs' responses and images
  (`pixel_path.fit_maps`), their penalties by cross-validation over `folds` (random folds when
  None or one fold)."""
  return pixel_path.fit_maps(responses, images, _cv_folds(folds))


def with_pixel_map(frozen: Frozen, maps: pixel_path.Maps, weight: float, mesh: Any,
                   encoder_weight: float) -> Frozen:
  """`frozen` with the pixel paths `maps` (`fit_pixel_map`) at blend weights `weight` (the
  decoder's) and `encoder_weight`, replicated."""
  f32 = lambda x: np.asarray(x, np.float32)
  # Host arrays, so that every leaf is placed alike (replicated), as compiles ahead expect.
  return parallel.replicate(jax.device_get(frozen).replace(
      pixel_kernel=f32(maps.kernel), pixel_bias=f32(maps.bias), pixel_weight=f32(weight),
      pixel_enc_kernel=f32(maps.enc_kernel), pixel_enc_bias=f32(maps.enc_bias),
      pixel_enc_weight=f32(encoder_weight), pixel_adapter=jax.device_get(maps.adapter)), mesh)


@dataclasses.dataclass(frozen=True)
class Fit:
  """The frozen parts fitted on one set of training pairs, and held-out pairs seen through them.

  A cross-validation fold's fit (on the other folds, `fold_fits`) serves both users of that fold:
  `pixel_weight` scores the blend weights with it, and the fold's stage 2
  (`cross_validation.stage2`) starts from it. Fitted once, it gives both the same adapter,
  feature statistics, pixel maps and closed-form start.

  Attributes:
    frozen: the adapter and feature standardisation (`fit_frozen`), replicated; no pixel path
      (a fold's predictions are blended with its pixel maps' on the host).
    pairs: the training pairs through them (`pairs`).
    held: the held-out pairs through them.
    pixel_map: the pixel paths' maps (`fit_pixel_map`), or None when not fitted.
    held_pixels: the decoder's pixel map of the held-out responses (M, H, W, C), or None.
    linear_pair: the augmented flow's closed-form start (`linear_pair`, its penalties chosen by
      cross-validation over the training pairs' folds); None for the plain flow.
  """
  frozen: Frozen
  pairs: dict[str, np.ndarray]
  held: dict[str, np.ndarray]
  pixel_map: pixel_path.Maps | None
  held_pixels: np.ndarray | None
  linear_pair: Any


def fit(config: ml_collections.ConfigDict, module: FLIG, autoencoder: Any, mesh: Any,
        raw_features: np.ndarray, responses: np.ndarray, images: np.ndarray,
        folds: np.ndarray | None, held_raw_features: np.ndarray, held_responses: np.ndarray,
        pixel_map: bool) -> Fit:
  """The frozen parts fitted on these training pairs: the adapter and feature standardisation,
  the pixel map when `pixel_map` (its penalty by cross-validation over `folds`) and the
  closed-form start (its penalties likewise); random folds where `folds` is None or one fold."""
  frozen = fit_frozen(config, autoencoder, raw_features, responses, mesh)
  train_pairs = pairs(frozen, raw_features, responses)
  maps = fit_pixel_map(responses, images, folds) if pixel_map else None
  return Fit(frozen=frozen, pairs=train_pairs,
             held=pairs(frozen, held_raw_features, held_responses), pixel_map=maps,
             held_pixels=None if maps is None else maps.decode(held_responses, images.shape[1:]),
             linear_pair=linear_pair(config, module, frozen, train_pairs, None, folds))


def fold_fits(ctx: context.Context, autoencoder: Any, raw_features: np.ndarray, folds: np.ndarray,
              pixel_map: bool) -> list[Fit]:
  """Each cross-validation fold's `Fit`, in the order of `np.unique(folds)`: fitted on the other
  folds' training pairs (their own fold ids choosing the penalties), the fold's pairs held out.

  `pixel_weight` and `cross_validation.stage2` both read these; the run fits them once.
  """
  train = ctx.dataset.train
  out = []
  for f in np.unique(folds):
    held, rest = np.nonzero(folds == f)[0], np.nonzero(folds != f)[0]
    out.append(fit(ctx.config, ctx.module, autoencoder, ctx.mesh, raw_features[rest],
                   train.responses[rest], train.images[rest], folds[rest], raw_features[held],
                   train.responses[held], pixel_map))
  return out


def pixel_weight(ctx: context.Context, autoencoder: Any, raw_features: np.ndarray,
                 folds: np.ndarray | None, fits: list[Fit] | None = None) -> float:
  """The decoder's pixel-path blend weight, chosen from `pixel_path.WEIGHTS` on held-out pairs
  with the flow at its closed-form start: each fold of `folds` held out in turn (adapter, start
  and pixel maps fitted on the others: `fits`, the run's `fold_fits` with the pixel maps, fitted
  here when None), else the validation split; 0 (the flow's decoder alone) when there is
  neither."""
  config, module, mesh, train = ctx.config, ctx.module, ctx.mesh, ctx.dataset.train
  if folds is not None and len(np.unique(folds)) >= 2:
    if fits is None:
      fits = fold_fits(ctx, autoencoder, raw_features, folds, pixel_map=True)
    held_images = [train.images[folds == f] for f in np.unique(folds)]
  elif val_size(ctx.dataset):
    val = ctx.dataset.val
    fits = [fit(config, module, autoencoder, mesh, raw_features, train.responses, train.images,
                None, features(module, autoencoder, val.images), val.responses, pixel_map=True)]
    held_images = [val.images]
  else:
    return 0.0
  scores = np.concatenate([_blend_scores(ctx, f, x) for f, x in zip(fits, held_images)], axis=1)
  weight = pixel_path.choose(scores)
  ctx.log.info(f'pixel path: blend weight {weight:g}, chosen by mean held-out PCC + SSIM: '
               + ', '.join(f'{w:g}: {v:.4f}' for w, v in zip(pixel_path.WEIGHTS,
                                                              scores.mean(axis=1))))
  return weight


def _blend_scores(ctx: context.Context, fitted: Fit, held_images: np.ndarray) -> np.ndarray:
  """(len(pixel_path.WEIGHTS), M) `pixel_path.candidate_scores` of `fitted`'s held-out pairs, the
  flow at its closed-form start."""
  config, module = ctx.config, ctx.module
  flow = train_state.compiled_initial_flow_params(module)(
      jax.random.key(config.seed + 2), first_batch(config, fitted.pairs)['features'],
      fitted.linear_pair)
  variables = fitted.frozen.variables(flow)
  autoencoded = compiled.apply(module, 'decode_images')(variables, fitted.held['adapted'])
  return pixel_path.candidate_scores(autoencoded, fitted.held_pixels, held_images)
