"""What stage 2 reads, made once from the trained autoencoder: the frozen parts (the adapter and
the feature statistics, fitted on the training split only), the training pairs, the validation
pairs and the augmented flow's closed-form start.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flig_jax import data
from flig_jax.model import map_in_chunks
from flig_jax.nn import compiled
from flig_jax.nn.adapter import Adapter
from flig_jax.nn.flig import FLIG, Frozen
from flig_jax.training import closed_form, parallel, validation


@dataclasses.dataclass(frozen=True)
class Stage2Data:
  """Stage 2's inputs.

  Attributes:
    frozen: the parts stage 2 reads and never trains, replicated on the mesh.
    raw_features: (N, D) E(x) of the training images.
    arrays: the training pairs that the batches are drawn from: standardised features h
      ('features') and adapted responses A(r) ('adapted'), with the images when the pixel term
      reads them.
    val: the validation pairs, when model selection or the closed-form start needs them, else None.
  """
  frozen: Frozen
  raw_features: np.ndarray
  arrays: dict[str, np.ndarray]
  val: validation.ValidationSet | None


def val_size(dataset: data.Dataset) -> int:
  """Validation stimuli that stage 2 scores (none below 2)."""
  n = len(dataset.val)
  return n if n >= 2 else 0


def first_batch_shape(config: ml_collections.ConfigDict,
                      module: FLIG) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of the first global batch that starts the flow (`prepare`'s 'features' and
  'adapted', `config.stage2.batch_size` rows)."""
  b, d = config.stage2.batch_size, module.feature_dim
  return {k: jax.ShapeDtypeStruct((b, d), jnp.float32) for k in ('features', 'adapted')}


def _features(module: FLIG, autoencoder: Any, images: np.ndarray) -> np.ndarray:
  """Raw features E(x) of a split (computed once: the encoder is frozen in stage 2)."""
  features = compiled.apply(module, 'features')
  variables = {'params': {'autoencoder': autoencoder}}
  return map_in_chunks(lambda x: features(variables, x), images)


@jax.jit
def _pairs(frozen: Frozen, raw_features: jax.Array,
           responses: jax.Array) -> dict[str, jax.Array]:
  """Standardised features h and adapted responses A(r)."""
  return {'raw_features': raw_features,
          'features': (raw_features - frozen.feature_mean) / frozen.feature_std,
          'adapted': frozen.adapter.forward(responses)}


def prepare(config: ml_collections.ConfigDict, module: FLIG, dataset: data.Dataset,
            autoencoder: Any, mesh: Any, frozen: Frozen | None = None) -> Stage2Data:
  """Stage 2's inputs from the trained autoencoder parameters; `frozen` (of a resumed stage 2)
  or, when None, fitted here on the training split."""
  cfg, train = config.stage2, dataset.train
  raw_features = _features(module, autoencoder, train.images)
  if frozen is None:
    adapter = Adapter.fit(train.responses, config.model.feature_dim,
                          config.model.adapter_components)
    frozen = parallel.replicate(jax.jit(Frozen.fit)(autoencoder, raw_features, adapter), mesh)
  pairs = jax.device_get(_pairs(frozen, raw_features, train.responses))
  arrays = {'features': pairs['features'], 'adapted': pairs['adapted']}
  if cfg.pixel:  # only the pixel term reads the images; otherwise they are not built or sent
    arrays['images'] = train.images
  val = None
  # The validation pairs serve model selection and the closed-form start's regularisers.
  if val_size(dataset) and (cfg.select_by == 'val_pcc' or module.flow_type == 'augmented'):
    val_pairs = jax.device_get(
        _pairs(frozen, _features(module, autoencoder, dataset.val.images), dataset.val.responses))
    val = validation.ValidationSet(raw_features=val_pairs['raw_features'],
                                   features=val_pairs['features'], adapted=val_pairs['adapted'],
                                   images=dataset.val.images, responses=dataset.val.responses)
  return Stage2Data(frozen, raw_features, arrays, val)


def linear_pair(inputs: Stage2Data, module: FLIG) -> Any:
  """The augmented flow's closed-form start (`closed_form`); None for the plain flow."""
  if module.flow_type != 'augmented':
    return None
  frozen, val, k = inputs.frozen, inputs.val, inputs.frozen.adapter.k
  return closed_form.linear_pair_params(
      inputs.raw_features, inputs.arrays['adapted'][:, :k],
      None if val is None else val.raw_features, None if val is None else val.adapted[:, :k],
      np.asarray(frozen.feature_mean), np.asarray(frozen.feature_std), module.feature_dim)
