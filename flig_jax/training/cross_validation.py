"""Model selection by K-fold cross-validation over the training pairs (`data.folds`).

The folds are carved by stimulus (`data.fold_ids`). For each fold a model is fitted on the other
folds and predicts the held-out one for every candidate (for stage 2: the step 0 closed-form start
and each validated step); stage 2's K folds train together as one program (`stacked_folds`), each
as it would alone. Each candidate's score is the mean over folds, weighted by their sizes, of
its score on each held-out fold (decoding PCC: the mean per-image PCC; encoding: the mean over units
of the per-unit PCC across the fold's stimuli). Its N jackknife replicates leave out one stimulus
at a time: stimulus j of fold f changes fold f's score only. Per-unit correlations are taken within
a fold and not over the pooled predictions of all folds: each fold's model has its own offsets
(its adapter's mean is the other folds' mean), which correlate negatively with the held-out
responses across folds and would bias the pooled score against any map that keeps them.
`choose` then keeps, per direction, the best candidate among those whose gain over the first (the
simple model) exceeds `margin` jackknife standard errors of that gain, and the first one
otherwise: the rule `validation.keep_best` applies on a single validation split. With the pixel
paths, the encoder's blend weight is then chosen at the encoder's kept step (`encoder_weight`).
The final model is refitted on every training pair with the chosen settings.
"""

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np

from flig_jax import pixel_path
from flig_jax.training import parallel, prefetch, stacked_folds, stage2_data, validation

# (candidate, decoded images (M, H, W, C), encoded responses (M, U)) of one fold's held-out pairs.
Prediction = tuple[int, np.ndarray, np.ndarray]


def cv_name(name: str) -> str:
  """The name a validation score ('val_enc_pcc') takes when cross-validated ('cv_enc_pcc')."""
  return 'cv_' + name.removeprefix('val_')


def choose(scores: np.ndarray, replicates: np.ndarray, margin: float) -> tuple[int, np.ndarray]:
  """The index of the candidate kept, and each candidate's jackknife SE of its gain over the first.

  Args:
    scores: (C,) each candidate's score (higher is better); candidate 0 is the reference.
    replicates: (C, N) its jackknife replicates over the N stimuli.
    margin: a candidate other than the first is eligible only when its gain over the first
      exceeds `margin` standard errors of that gain.

  Returns:
    (index, (C,) gain SEs, 0 for the first). Among eligible candidates the highest score wins; on
    a tie, or where none is eligible, the earlier one (the first).
  """
  scores = np.asarray(scores, np.float64)
  replicates = np.asarray(replicates, np.float64)
  se = np.asarray(validation.jackknife_se(replicates - replicates[:1]), np.float64)
  se[0] = 0.0
  kept = 0
  for c in range(1, len(scores)):
    if scores[c] - scores[0] > margin * se[c] and scores[c] > scores[kept]:
      kept = c
  return kept, se


@dataclasses.dataclass(frozen=True)
class Selection:
  """Cross-validated scores of every candidate step and the step kept for each parameter group.

  Attributes:
    folds: K.
    steps: the validated stage-2 steps (the candidates), 0 first.
    scores: score name ('cv_enc_pcc', ...) -> pooled score per step.
    gain_se: score name -> jackknife SE of each step's gain over step 0.
    chosen: score name of each parameter group (validation.GROUPS) -> the step kept.
    encoder_weight: the encoder's pixel-path blend weight (`encoder_weight`), or None.
    encoder_weight_scores: the pooled held-out encoding score of each of `pixel_path.WEIGHTS`
      at the encoder's kept step, or None.
  """
  folds: int
  steps: list[int]
  scores: dict[str, list[float]]
  gain_se: dict[str, list[float]]
  chosen: dict[str, int]
  encoder_weight: float | None = None
  encoder_weight_scores: list[float] | None = None

  def to_meta(self) -> dict[str, Any]:
    """A JSON-ready dict (the checkpoint meta's 'cross_validation')."""
    return dataclasses.asdict(self)

  @classmethod
  def from_meta(cls, meta: Mapping[str, Any]) -> 'Selection':
    return cls(folds=int(meta['folds']), steps=[int(s) for s in meta['steps']],
               scores={k: [float(v) for v in vs] for k, vs in meta['scores'].items()},
               gain_se={k: [float(v) for v in vs] for k, vs in meta['gain_se'].items()},
               chosen={k: int(v) for k, v in meta['chosen'].items()},
               encoder_weight=meta.get('encoder_weight'),
               encoder_weight_scores=meta.get('encoder_weight_scores'))

  def chosen_steps(self, groups: validation.Groups) -> np.ndarray:
    """(G,) the step kept for each of `groups`, in their order."""
    return np.array([self.chosen[cv_name(name)] for name, _ in groups], np.int32)

  def rows(self) -> list[tuple[int, dict[str, float]]]:
    """(step, {score: value, score_gain_se: value}) per validated step, for metrics.jsonl."""
    return [(s, {**{k: v[i] for k, v in self.scores.items()},
                 **{f'{k}_gain_se': v[i] for k, v in self.gain_se.items()}})
            for i, s in enumerate(self.steps)]

  def explain(self, margin: float) -> list[str]:
    """One line per parameter group: the step kept and why."""
    lines = []
    for name, step in self.chosen.items():
      score, se = np.asarray(self.scores[name]), np.asarray(self.gain_se[name])
      best = int(np.argmax(score))
      gain = score - score[0]
      if step:
        i = self.steps.index(step)
        why = (f'gain {gain[i]:+.4f} over step 0 ({score[0]:.4f}) is '
               f'{gain[i] / max(se[i], 1e-12):.1f} SE > {margin:g}')
      elif best == 0:
        why = f'no later step scored above step 0 ({score[0]:.4f})'
      else:
        why = (f'the best later step, {self.steps[best]}, gained {gain[best]:+.4f} '
               f'({gain[best] / max(se[best], 1e-12):.1f} SE, not > {margin:g}); no step cleared '
               'the margin')
      lines.append(f'{name}: step {step} kept ({self.folds}-fold CV score '
                   f'{score[self.steps.index(step)]:.4f}); {why}')
    return lines


def select(fold_ids: np.ndarray, images: np.ndarray, responses: np.ndarray,
           run_fold: Callable[[np.ndarray, np.ndarray], Iterable[Prediction]],
           groups: validation.Groups, margin: float) -> Selection:
  """Runs every fold, scores each held-out fold, and chooses a step per parameter group.

  Args:
    fold_ids: (N,) the fold of each training pair.
    images: (N, H, W, C) the training stimuli.
    responses: (N, U) their responses.
    run_fold: (train rows, held-out rows) -> (step, decoded, encoded) of the held-out rows at
      each validated step; every fold must validate the same steps.
    groups: the parameter groups and the score each is chosen on (validation.GROUPS).
    margin: `choose`'s margin.

  Returns:
    the `Selection`.
  """
  n = len(fold_ids)
  steps, totals, replicates = None, None, None
  for f in np.unique(fold_ids):
    held, rest = np.nonzero(fold_ids == f)[0], np.nonzero(fold_ids != f)[0]
    results = list(run_fold(rest, held))
    fold_steps = [int(s) for s, _, _ in results]
    if steps is None:
      steps = fold_steps
      totals = {name: np.zeros(len(steps)) for name, _ in groups}
      replicates = {name: np.zeros((len(steps), n)) for name, _ in groups}
    elif fold_steps != steps:
      raise ValueError(f'fold {f} validated steps {fold_steps}, the first fold {steps}')
    weight = len(held) / n
    for i, (_, dec, enc) in enumerate(results):
      score, loo = validation.scores_of(dec, enc, images[held], responses[held])
      for name, _ in groups:
        s = float(score[name])
        totals[name][i] += weight * s
        # Until every fold is in, a replicate holds its own fold's change only.
        replicates[name][i, held] = weight * (np.asarray(loo[name], np.float64) - s)
  scores, gain_se, chosen = {}, {}, {}
  for name, _ in groups:
    kept, se = choose(totals[name], totals[name][:, None] + replicates[name], margin)
    scores[cv_name(name)], gain_se[cv_name(name)] = totals[name].tolist(), se.tolist()
    chosen[cv_name(name)] = steps[kept]
  return Selection(folds=len(np.unique(fold_ids)), steps=steps, scores=scores, gain_se=gain_se,
                   chosen=chosen)


@dataclasses.dataclass(frozen=True)
class _Fold:
  """One fold's stage 2, set up: fitted on the other folds' pairs and at its initial state.

  Attributes:
    held: the held-out rows.
    rest: the rows it trains on.
    state: its initial `Stage2State`.
    arrays: what its batches are drawn from (`stage2_data.arrays`).
    features: (M, D) the held-out pairs' standardised features, zero-padded to M rows (the
      largest fold).
    adapted: (M, D) their adapted responses, padded the same way.
  """
  held: np.ndarray
  rest: np.ndarray
  state: Any
  arrays: dict[str, np.ndarray]
  features: np.ndarray
  adapted: np.ndarray


def stage2(ctx: Any, autoencoder: Any, raw_features: np.ndarray, folds: np.ndarray,
           programs: Any, check_finite: Callable[[Any], None],
           pixel_weight: float | None = None, together: bool = True,
           fits: list[stage2_data.Fit] | None = None) -> Selection:
  """Stage 2 on each fold's other folds, validated on the held-out fold at step 0, every
  `eval_every_steps` and at the end; the pooled held-out scores choose each group's step.

  The K folds run together as one program (`stacked_folds`): their states stacked on a leading
  fold axis, each step and each held-out prediction one call for all K. Where their states differ
  in shape (adapters of different k), or with `together` False, they run one after another with
  the single stage-2 step instead; each fold evolves the same either way (its own init, batch
  stream and RNG). The held-out pairs are padded to the largest fold.

  Args:
    ctx: the run's `context.Context`.
    autoencoder: the trained stage-1 parameters.
    raw_features: (N, D) E(x) of the training images.
    folds: (N,) the fold of each training pair.
    programs: the run's `loop.Stage2Programs` (its `init`, `stack`, `folds_step`,
      `folds_predict`, and `step_fn` and `predict` for one fold at a time); a compile it started
      ahead is waited for before the program's first call.
    check_finite: raises when a state (one fold's, or the stacked folds') has diverged.
    pixel_weight: the decoder's pixel-path blend weight (`stage2_data.pixel_weight`), or None
      (no pixel paths). The folds' programs run the flow alone; each fold's held-out decodings
      are blended with its pixel map's on the host, and the encoder's weight is chosen after
      the steps (`encoder_weight`).
    together: run the folds as one program where their shapes allow.
    fits: each fold's frozen parts fitted on the other folds (`stage2_data.fold_fits`, with the
      pixel map when `pixel_weight` is given), as `stage2_data.pixel_weight` read them; fitted
      here when None.
  """
  train, size = ctx.dataset.train, int(np.bincount(folds).max())
  start_time = time.perf_counter()
  if fits is None:
    fits = stage2_data.fold_fits(ctx, autoencoder, raw_features, folds, pixel_weight is not None)
  programs.wait('folds')  # compiled ahead (stage 1's time), before the first call below
  runs = [_set_up(ctx, fitted, folds, f, size, programs.init)
          for fitted, f in zip(fits, np.unique(folds), strict=True)]
  if together and stacked_folds.stackable([run.state for run in runs]):
    results = _together(ctx, runs, programs, check_finite)
    ctx.log.info(f'cross-validation: stage 2 of the {len(runs)} folds run together, each on the '
                 f'other folds ({", ".join(str(len(run.rest)) for run in runs)} pairs; '
                 f'{", ".join(str(len(run.held)) for run in runs)} held out) '
                 f'({time.perf_counter() - start_time:.0f} s)')
  else:
    if together:
      ks = ', '.join(str(run.state.frozen.adapter.k) for run in runs)
      ctx.log.info(f'cross-validation: the folds\' adapters keep different numbers of components '
                   f'(k {ks}), so their stage 2 runs one fold at a time')
    programs.wait()
    results = []
    for i, run in enumerate(runs):
      results.append(_alone(ctx, run, programs, check_finite))
      ctx.log.info(f'cross-validation fold {i + 1}/{len(runs)}: stage 2 on {len(run.rest)} pairs, '
                   f'{len(run.held)} held out ({time.perf_counter() - start_time:.0f} s)')
      start_time = time.perf_counter()
  if pixel_weight is not None:
    results = [_with_pixel_decodings(result, fitted.held_pixels, pixel_weight)
               for result, fitted in zip(results, fits)]
  by_held = {run.held.tobytes(): result for run, result in zip(runs, results)}
  groups = validation.GROUPS[ctx.module.flow_type]
  selection = select(folds, train.images, train.responses, lambda _, held: by_held[held.tobytes()],
                     groups, ctx.config.stage2.select_margin)
  if pixel_weight is None:
    return selection
  step = selection.chosen[cv_name(groups[0][0])]  # the encoder's group comes first
  weight, scores = encoder_weight(folds, train.images, train.responses, fits, results, step)
  return dataclasses.replace(selection, encoder_weight=weight, encoder_weight_scores=scores)


def _with_pixel_decodings(result: list[Prediction], pixels: np.ndarray,
                          weight: float) -> list[Prediction]:
  """One fold's predictions with each step's decoded images blended with the pixel map's."""
  return [(step, pixel_path.blend(decoded, pixels, weight), encoded)
          for step, decoded, encoded in result]


def encoder_weight(folds: np.ndarray, images: np.ndarray, responses: np.ndarray,
                   fits: list[stage2_data.Fit], results: list[list[Prediction]],
                   step: int) -> tuple[float, list[float]]:
  """The encoder's pixel-path blend weight, from `pixel_path.WEIGHTS`: each fold's flow encoding
  at `step` blended with its own pixel map's (`stage2_data.Fit.pixel_map`), scored on the held-out
  fold by the mean per-unit PCC and pooled over folds by their sizes as `select` pools them.

  Returns:
    (the best weight, the smallest on a tie; each weight's pooled score).
  """
  totals = np.zeros(len(pixel_path.WEIGHTS))
  for fitted, f, result in zip(fits, np.unique(folds), results, strict=True):
    held = folds == f
    flow = next(enc for s, _, enc in result if s == step)
    pixels = fitted.pixel_map.encode(images[held])
    totals += held.mean() * pixel_path.encoder_scores(flow, pixels, responses[held])
  return pixel_path.choose(totals[:, None]), totals.tolist()


def _set_up(ctx: Any, fitted: stage2_data.Fit, folds: np.ndarray, fold: int, size: int,
            init: Callable) -> _Fold:
  """Fold `fold`'s stage 2 from its frozen parts `fitted` on the other folds: its initial state
  and held-out inputs."""
  config, train = ctx.config, ctx.dataset.train
  held, rest = np.nonzero(folds == fold)[0], np.nonzero(folds != fold)[0]
  arrays = stage2_data.arrays(config, fitted.pairs, train.images[rest])
  state = init(fitted.frozen, stage2_data.first_batch(config, arrays),
               fitted.linear_pair)
  pad = ((0, size - len(held)), (0, 0))
  return _Fold(held, rest, state, arrays, *(np.pad(fitted.held[k], pad)
                                            for k in ('features', 'adapted')))


def _run(ctx: Any, state: Any, stream: Any, step_fn: Callable, held_out: Callable[[Any, int], None],
         check_finite: Callable[[Any], None], axis: int = 0) -> None:
  """`config.stage2.steps` steps of `step_fn` on `stream`'s batches (the batch axis `axis`),
  calling `held_out(state, step)` at step 0, every `eval_every_steps` and at the end."""
  cfg, total = ctx.config.stage2, ctx.config.stage2.steps
  held_out(state, 0)
  depth = 2 if jax.process_count() == 1 else 0
  with prefetch.DeviceBatches(stream, 0, ctx.mesh, depth, axis=axis) as batches:
    for step in range(total):
      state, _ = step_fn(state, next(batches))
      done = step + 1
      if done % cfg.eval_every_steps == 0 or done == total:
        check_finite(state)
        held_out(state, done)


def _together(ctx: Any, fits: list[_Fold], programs: Any,
              check_finite: Callable[[Any], None]) -> list[list[Prediction]]:
  """Every fold's held-out predictions at each validated step, the K folds run as one program."""
  config, mesh = ctx.config, ctx.mesh
  state = programs.stack([fit.state for fit in fits])
  features, adapted = parallel.replicate(
      [np.stack([fit.features for fit in fits]), np.stack([fit.adapted for fit in fits])], mesh)
  out: list[list[Prediction]] = [[] for _ in fits]

  def held_out(s, done):
    decoded, encoded = jax.device_get(programs.folds_predict(s, features, adapted))
    for f, fit in enumerate(fits):
      out[f].append((done, decoded[f, :len(fit.held)], encoded[f, :len(fit.held)]))

  streams = stacked_folds.Streams([stage2_data.stream(config, fit.arrays) for fit in fits])
  _run(ctx, state, streams, programs.folds_step, held_out, check_finite, axis=1)
  return out


def _alone(ctx: Any, fit: _Fold, programs: Any,
           check_finite: Callable[[Any], None]) -> list[Prediction]:
  """One fold's held-out predictions at each validated step, its stage 2 run on its own."""
  config, mesh = ctx.config, ctx.mesh
  features, adapted = parallel.replicate([fit.features, fit.adapted], mesh)
  out: list[Prediction] = []

  def held_out(s, done):
    decoded, encoded = jax.device_get(programs.predict(s, features, adapted))
    out.append((done, decoded[:len(fit.held)], encoded[:len(fit.held)]))

  _run(ctx, fit.state, stage2_data.stream(config, fit.arrays), programs.step_fn, held_out,
       check_finite)
  return out


def report(selection: Selection, log: Any, flow_type: str, margin: float,
           resumed_at: int | None, pixel_weight: float | None = None) -> None:
  """Logs the cross-validation's rows to `log` (a `progress.RunLog`; a resumed run's log keeps
  those up to its checkpoint, `metrics_file.trim`) and the steps it chose (`pixel_weight`: the
  decoder's pixel-path blend weight, said in the note when stage 2 keeps its start)."""
  for step, scores in selection.rows():
    if resumed_at is None or step > resumed_at:
      log.record(2, step, scores)
  for line in selection.explain(margin):
    log.info(f'stage 2 keeps {line}')
  if selection.encoder_weight is not None:
    log.info(f'encoder pixel path: blend weight {selection.encoder_weight:g}, chosen by the '
             'pooled held-out encoding PCC at the encoder\'s kept step: ' + ', '.join(
                 f'{w:g}: {v:.4f}' for w, v in zip(pixel_path.WEIGHTS,
                                                   selection.encoder_weight_scores)))
  note = validation.kept_start_note(
      flow_type, selection.chosen_steps(validation.GROUPS[flow_type]), margin,
      f'{selection.folds}-fold cross-validation over the training pairs', pixel_weight,
      selection.encoder_weight)
  if note:
    log.info(note)
