"""Stage-2 model selection: the flow's decoding and encoding scores on the validation split, and
the step whose flow is kept (the test split is never seen in training).

The score is the sum of the two correlations that `evaluate.py` reports: decoding PCC (per image,
pixels of G(f^-1(A(r))) against the stimulus, averaged) and encoding mean PCC (per unit, over the
validation stimuli, of A^-1(f(E(x))) against the measured responses).
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

SELECT_BY = ('val_pcc', 'last')
_EPS = 1e-12


@flax.struct.dataclass
class ValidationSet:
  """The validation pairs, ready for the flow: standardised features and adapted responses, with
  the images and responses they are scored against (raw features only on the host, for the
  closed-form start)."""
  raw_features: Any     # (M, D) E(x), or None
  features: jax.Array   # (M, D) standardised E(x)
  adapted: jax.Array    # (M, D) A(r), zero on the padding
  images: jax.Array     # (M, H, W, C)
  responses: jax.Array  # (M, U)


def _pearson(a: jax.Array, b: jax.Array, axis: int) -> jax.Array:
  """Pearson r between `a` and `b` along `axis`; 0 where either side is constant."""
  a = a - a.mean(axis=axis, keepdims=True)
  b = b - b.mean(axis=axis, keepdims=True)
  num = jnp.sum(a * b, axis=axis)
  den = jnp.sqrt(jnp.sum(a * a, axis=axis) * jnp.sum(b * b, axis=axis))
  return jnp.where(den > _EPS, num / jnp.maximum(den, _EPS), 0.0)


def scores(module: Any, variables: Any, val: ValidationSet) -> dict[str, jax.Array]:
  """'val_dec_pcc', 'val_enc_pcc' and their sum 'val_score' for the FLIG `variables`."""
  decoded = module.apply(variables, val.adapted, method=lambda m, a: m.decode_features(
      m.unstandardise(m.decode_adapted(a))))
  encoded = module.apply(variables, val.features,
                         method=lambda m, h: m.adapter().inverse(m.encode_standardised(h)))
  n = val.images.shape[0]
  dec = jnp.mean(_pearson(decoded.reshape(n, -1), val.images.reshape(n, -1), axis=1))
  enc = jnp.mean(_pearson(encoded, val.responses, axis=0))
  return {'val_dec_pcc': dec, 'val_enc_pcc': enc, 'val_score': dec + enc}


def keep_best(state: Any, score: jax.Array) -> Any:
  """The stage-2 state with its kept flow replaced by the current one when `score` beats it
  (strictly: on a tie the earlier step stays)."""
  better = score > state.best_score
  pick = lambda new, old: jnp.where(better, new, old)
  return state.replace(best_flow_params=jax.tree.map(pick, state.flow_params,
                                                     state.best_flow_params),
                       best_score=pick(score, state.best_score),
                       best_step=pick(state.step, state.best_step))
