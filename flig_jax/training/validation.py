"""Stage-2 model selection: the flow's decoding and encoding scores on the validation split, and
the steps whose parameters are kept (the test split is never seen in training).

The scores are the two correlations that `evaluate.py` reports: decoding PCC (per image, pixels of
G(f^-1(A(r))) against the stimulus, averaged) and encoding mean PCC (per unit, over the validation
stimuli, of A^-1(f(E(x))) against the measured responses).

The augmented flow's two directions have parameters of their own (the encoder coupling with the
linear pair's encoder half, the decoder coupling with its decoder half), so each part is kept at
the step where its own direction scored best; the flow so assembled scores exactly those two bests.
The plain flow shares every parameter between the directions and is kept where their sum is best.
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import traverse_util

_EPS = 1e-12

# (score, the flow parameters it selects as '/'-joined path prefixes; None: all), per flow type.
Groups = tuple[tuple[str, tuple[str, ...] | None], ...]
_PAIR_HALF = ('kernel', 'bias', 'log_scale')
GROUPS: dict[str, Groups] = {
    'augmented': (('val_enc_pcc', ('enc_coupling', *(f'linear_pair/enc_{n}' for n in _PAIR_HALF))),
                  ('val_dec_pcc', ('dec_coupling', *(f'linear_pair/dec_{n}' for n in _PAIR_HALF)))),
    'plain': (('val_score', None),),
}


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


def keep_best(state: Any, scores: dict[str, jax.Array], groups: Groups) -> Any:
  """The stage-2 state with each kept parameter group replaced by the current one where its score
  beats the kept one (strictly: on a tie, or a NaN, the earlier step stays).

  `state.best_score` and `state.best_step` hold one entry per group.
  """
  best = traverse_util.flatten_dict(state.best_flow_params, sep='/')
  current = traverse_util.flatten_dict(state.flow_params, sep='/')
  best_score, best_step = state.best_score, state.best_step
  for i, (name, prefixes) in enumerate(groups):
    better = scores[name] > best_score[i]
    for path in best:
      if prefixes is None or any(path == p or path.startswith(p + '/') for p in prefixes):
        best[path] = jnp.where(better, current[path], best[path])
    best_score = best_score.at[i].set(jnp.where(better, scores[name], best_score[i]))
    best_step = best_step.at[i].set(jnp.where(better, state.step, best_step[i]))
  return state.replace(best_flow_params=traverse_util.unflatten_dict(best, sep='/'),
                       best_score=best_score, best_step=best_step)
