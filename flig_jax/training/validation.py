"""Stage-2 model selection: the flow's decoding and encoding scores on the validation split, and
the steps whose parameters are kept (the test split is never seen in training).

The scores are the two correlations that `evaluate.py` reports: decoding PCC (per image, pixels of
G(f^-1(A(r))) against the stimulus, averaged) and encoding mean PCC (per unit, over the validation
stimuli, of A^-1(f(E(x))) against the measured responses).

The augmented flow's two directions have parameters of their own (the encoder coupling with the
linear pair's encoder half, the decoder coupling with its decoder half), so each part is kept at
the step where its own direction scored best; the flow so assembled scores exactly those two bests.
The plain flow shares every parameter between the directions and is kept where their sum is best.

Validation splits can be small (digit69 keeps 9 pairs), and a score that rises by chance on them
falls on test. So a later step replaces the kept one only where its gain over step 0 (the
closed-form start) is clear: larger than `margin` jackknife standard errors of that gain, the
jackknife leaving out one validation stimulus at a time (the one-standard-error rule, with the
start as the simple model).
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import traverse_util

from flig_jax import ops

_EPS = ops.EPS

# config.stage2.select_by: the flow kept at the end of stage 2. 'val_pcc': each part where its
# validation score was best (`keep_best`, step 0 included); 'last': the last step's.
SELECT_BY = ('val_pcc', 'last')

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


def _leave_one_out_pearson(a: jax.Array, b: jax.Array) -> jax.Array:
  """(M, U) Pearson r per column of `a` and `b` (M, U) with row j left out, from running sums."""
  a = a - a.mean(axis=0)
  b = b - b.mean(axis=0)
  n = a.shape[0] - 1
  sa, sb = a.sum(0) - a, b.sum(0) - b
  saa, sbb, sab = (a * a).sum(0) - a * a, (b * b).sum(0) - b * b, (a * b).sum(0) - a * b
  num = sab - sa * sb / n
  den = jnp.sqrt(jnp.maximum(saa - sa * sa / n, 0.0) * jnp.maximum(sbb - sb * sb / n, 0.0))
  return jnp.where(den > _EPS, num / jnp.maximum(den, _EPS), 0.0)


def predictions(module: Any, variables: Any, features: jax.Array, adapted: jax.Array,
                responses: jax.Array | None = None,
                images: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """The flow's decoded images G(f^-1(A(r))) (M, H, W, C) and encoded responses A^-1(f(h))
  (M, U) of held-out pairs given as standardised features h and adapted responses A(r); blended
  with the pixel paths where the variables hold them, which read the pairs' responses r and
  images x."""
  decoded = module.apply(variables, adapted, responses,
                         method=lambda m, a, r: m.decode_images(a, r))
  encoded = module.apply(variables, features, images,
                         method=lambda m, h, x: m.encode_features(h, x))
  return decoded, encoded


def scores_of(decoded: jax.Array, encoded: jax.Array, images: jax.Array,
              responses: jax.Array) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """'val_dec_pcc', 'val_enc_pcc' and their sum 'val_score' of predictions against the measured
  images (M, H, W, C) and responses (M, U), and each score's (M,) jackknife replicates: the score
  with stimulus j left out."""
  n = images.shape[0]
  per_image = ops.pearson(decoded.reshape(n, -1), images.reshape(n, -1), axis=1)
  dec = jnp.mean(per_image)
  enc = jnp.mean(ops.pearson(encoded, responses, axis=0))
  dec_loo = (jnp.sum(per_image) - per_image) / max(n - 1, 1)
  enc_loo = jnp.mean(_leave_one_out_pearson(encoded, responses), axis=1)
  return ({'val_dec_pcc': dec, 'val_enc_pcc': enc, 'val_score': dec + enc},
          {'val_dec_pcc': dec_loo, 'val_enc_pcc': enc_loo, 'val_score': dec_loo + enc_loo})


def scores(module: Any, variables: Any,
           val: ValidationSet) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """'val_dec_pcc', 'val_enc_pcc' and their sum 'val_score' for the FLIG `variables`, and each
  score's (M,) jackknife replicates: the score with validation stimulus j left out."""
  decoded, encoded = predictions(module, variables, val.features, val.adapted, val.responses,
                                 val.images)
  return scores_of(decoded, encoded, val.images, val.responses)


def jackknife_se(replicates: jax.Array) -> jax.Array:
  """The jackknife standard error from (M,) leave-one-out replicates."""
  m = replicates.shape[-1]
  centred = replicates - replicates.mean(axis=-1, keepdims=True)
  return jnp.sqrt((m - 1) / m * jnp.sum(centred ** 2, axis=-1))


def keep_best(state: Any, scores: dict[str, jax.Array], replicates: dict[str, jax.Array],
              groups: Groups, margin: float) -> tuple[Any, dict[str, jax.Array]]:
  """The stage-2 state with each kept parameter group replaced by the current one where its score
  beats the kept one (strictly: on a tie, or a NaN, the earlier step stays) and its gain over the
  first validated step is more than `margin` jackknife standard errors of that gain.

  `state.best_score`, `state.best_step` and `state.ref_score` hold one entry per group,
  `state.ref_replicates` one row per group; the first validation (best_step -1) sets the
  reference and is kept. Also returns each group's standard error of the gain, as
  '<score>_gain_se' (0 at the first validation).
  """
  best = traverse_util.flatten_dict(state.best_flow_params, sep='/')
  current = traverse_util.flatten_dict(state.flow_params, sep='/')
  best_score, best_step = state.best_score, state.best_step
  ref_score, ref_replicates = state.ref_score, state.ref_replicates
  gain_se = {}
  for i, (name, prefixes) in enumerate(groups):
    first = best_step[i] < 0
    se = jnp.where(first, 0.0, jackknife_se(replicates[name] - ref_replicates[i]))
    gain_se[f'{name}_gain_se'] = se
    clear = first | (scores[name] - ref_score[i] > margin * se)
    better = (scores[name] > best_score[i]) & clear
    ref_score = ref_score.at[i].set(jnp.where(first, scores[name], ref_score[i]))
    ref_replicates = ref_replicates.at[i].set(
        jnp.where(first, replicates[name], ref_replicates[i]))
    for path in best:
      if prefixes is None or any(path == p or path.startswith(p + '/') for p in prefixes):
        best[path] = jnp.where(better, current[path], best[path])
    best_score = best_score.at[i].set(jnp.where(better, scores[name], best_score[i]))
    best_step = best_step.at[i].set(jnp.where(better, state.step, best_step[i]))
  state = state.replace(best_flow_params=traverse_util.unflatten_dict(best, sep='/'),
                        best_score=best_score, best_step=best_step, ref_score=ref_score,
                        ref_replicates=ref_replicates)
  return state, gain_se


def keep_at(state: Any, chosen: jax.Array, groups: Groups) -> tuple[Any, dict[str, jax.Array]]:
  """The stage-2 state with each parameter group kept at the step `chosen` (G,) names for it
  (chosen beforehand, by cross-validation): the current parameters replace the kept ones where
  the state is at that step, and at the first call (every group is kept at step 0 until its step
  comes). Nothing is scored; the second result is empty."""
  best = traverse_util.flatten_dict(state.best_flow_params, sep='/')
  current = traverse_util.flatten_dict(state.flow_params, sep='/')
  best_step = state.best_step
  for i, (_, prefixes) in enumerate(groups):
    take = (best_step[i] < 0) | (state.step == chosen[i])
    for path in best:
      if prefixes is None or any(path == p or path.startswith(p + '/') for p in prefixes):
        best[path] = jnp.where(take, current[path], best[path])
    best_step = best_step.at[i].set(jnp.where(take, state.step, best_step[i]))
  return state.replace(best_flow_params=traverse_util.unflatten_dict(best, sep='/'),
                       best_step=best_step), {}


def kept_start_note(flow_type: str, kept_steps: Any, margin: float,
                    scored_on: str = 'the validation split',
                    pixel_weight: float | None = None,
                    encoder_weight: float | None = None) -> str | None:
  """The plain-words line a run prints when stage 2 keeps its start (step 0) in every part, else
  None: no later step cleared the selection margin (on `scored_on`), so FLIG is the flow it
  started from. `pixel_weight` or `encoder_weight` > 0 (the pixel paths, `flig_jax.pixel_path`)
  make decoding or encoding a blend, which the note then says instead of naming the `cae_ridge`
  baseline for that direction."""
  if any(int(step) != 0 for step in kept_steps):
    return None
  why = (f'no later step of stage 2 beat step 0 on {scored_on} by more than '
         f'stage2.select_margin = {margin:g} jackknife standard errors of the gain')
  if flow_type != 'augmented':
    return f'note: FLIG is the flow it started from (step 0): {why}'
  note = (f'note: FLIG equals its closed-form ridge start on this data, in both directions: '
          f'{why}, so the flow kept is the ridge map between the autoencoder\'s features and '
          f'the responses it started from')
  blends = [f'{name} blends with its pixel path (weight {w:g})'
            for name, w in (('decoding', pixel_weight), ('encoding', encoder_weight)) if w]
  baseline = 'evaluate.py\'s cae_ridge baseline'
  if len(blends) == 2:
    return f'{note}; {" and ".join(blends)}, so {baseline} differs from FLIG'
  if blends:
    other = 'encoding' if pixel_weight else 'decoding'
    return f'{note}; {blends[0]}, so {baseline} matches FLIG in {other} only'
  return f'{note} (evaluate.py\'s cae_ridge baseline is much the same model)'


def kept_lines(flow_type: str, best_score: Any, best_step: Any, margin: float) -> list[str]:
  """What a run prints at the end of stage 2 about the flow parts model selection kept (nothing
  when it kept none): each group's score and step, and `kept_start_note`'s line."""
  if int(jnp.min(best_step)) < 0 or not bool(jnp.all(jnp.isfinite(best_score))):
    return []
  kept = ', '.join(f'{name} {float(score):.4f} at step {int(step)}'
                   for (name, _), score, step in zip(GROUPS[flow_type], best_score, best_step))
  note = kept_start_note(flow_type, best_step, margin)
  return [f'stage 2 keeps the flow parts best on the validation split: {kept}'] + (
      [note] if note else [])
