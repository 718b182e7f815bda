"""Reruns stage 2 alone, in variants, on a finished run's frozen autoencoder, and prints each
variant's validation scores as it trains: the ablations behind docs/stage2.md.

  python scripts/stage2_ablation.py runs/v4_190927 --steps 1500 \\
      stage2.coupling_weight_decay=1e-4 + stage2.coupling_weight_decay=3.0

Variants are `key=value` config overrides, separated by `+`. The run's training pairs are split
into a validation split (`--val_fraction`, carved by stimulus as `data.val_fraction` carves it;
the run's own when it has one) and the rest, on which the adapter, the feature statistics, the
closed-form start and stage 2 are fitted; the test split is never read. Each variant prints its
validation encoding and decoding PCC every `--every` steps and the steps selection keeps
(`stage2.select_margin`). With `--cv`, each variant is instead scored as train.py chooses stage 2's
steps: by `data.folds`-fold cross-validation over the run's training split (the adapter, closed-form
start, pixel path and stage 2 fitted on each fold's other folds), printing the cross-validated
scores per validated step and the steps kept; `--margins 0,1,2` also scores the selection rule
itself at each `stage2.select_margin`, cross-fitted: each fold in turn is left out of the choice,
the step is chosen on the other folds' pooled held-out scores, and the chosen step's gain over step
0 on the left-out fold is averaged over folds (weighted by size). Without `--cv`, `--baselines`
also prints, on the same split, the MLP recipe of evaluate.py on the CAE features (`cae_mlp`)
and on pixels, and pixel ridge; `--pixel_path` the validation PCC + SSIM of each pixel-path blend
weight at the closed-form start.
"""

import argparse
import ast
import functools
import sys
import tempfile
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flig_jax import data, pixel_path
from flig_jax import model as model_lib
from flig_jax.data import dataset as dataset_lib
from flig_jax.evaluation import baselines, metrics
from flig_jax.nn import compiled
from flig_jax.nn.adapter import Adapter
from flig_jax.nn.flig import FLIG, Frozen
from flig_jax.training import (
  closed_form,
  context,
  cross_validation,
  loop,
  stage2_data,
  steps,
  train_state,
  validation,
)


def prepare(workdir: str, val_fraction: float):
  """The run's model, config, the (train, val) splits, the frozen parts fitted on that train and
  both splits' stage-2 pairs."""
  m = model_lib.load(workdir)
  ds = data.from_config(m.config)
  train, val = ds.train, ds.val
  if len(val) < 2:
    train, val = dataset_lib.carve_validation(train, val_fraction, int(m.config.seed))
  raw_tr, raw_va = m.features(train.images), m.features(val.images)
  adapter = Adapter.fit(train.responses, m.module.feature_dim,
                        m.config.model.adapter_components)
  frozen = Frozen.fit(m.variables['params']['autoencoder'], raw_tr, adapter)
  pairs_tr = stage2_data.pairs(frozen, raw_tr, train.responses)
  pairs_va = stage2_data.pairs(frozen, raw_va, val.responses)
  return m, train, val, frozen, pairs_tr, pairs_va


def _config(m, overrides: dict, steps_n: int) -> ml_collections.ConfigDict:
  """The run's config with `overrides` (fields newer than the run take their default) and
  `steps_n` stage-2 steps."""
  config = ml_collections.ConfigDict(m.config.to_dict())
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  config.stage2.steps = steps_n
  return config


def run_variant_cv(m, overrides: dict, steps_n: int, every: int) -> cross_validation.Selection:
  """Stage 2 with `overrides`, cross-validated over the run's training split as train.py does
  it, on the run's autoencoder."""
  config = _config(m, overrides, steps_n)
  config.stage2.eval_every_steps = every
  autoencoder = m.variables['params']['autoencoder']
  with tempfile.TemporaryDirectory() as workdir:
    ctx = context.make_context(config, workdir)
    try:
      train = ctx.dataset.train
      raw = stage2_data.features(ctx.module, autoencoder, train.images)
      folds = data.config_fold_ids(config, train)
      if folds is None:
        raise SystemExit('error: --cv needs data.folds >= 2')
      programs = loop.Stage2Programs(ctx)  # the programs train.py's stage 2 runs
      fits = stage2_data.fold_fits(ctx, autoencoder, raw, folds, config.model.pixel_path)
      weight = (stage2_data.pixel_weight(ctx, autoencoder, raw, folds, fits)
                if config.model.pixel_path else None)
      return cross_validation.stage2(ctx, autoencoder, raw, folds, programs, lambda s: None,
                                     weight, fits=fits)
    finally:
      ctx.log.close()


def fold_curves(m, overrides: dict, steps_n: int, every: int):
  """`run_variant_cv`, and each fold's held-out curves as `cross_validation.select` scores them:
  {fold: (held rows, {score: (S,) per validated step}, {score: (S, M) jackknife replicates})}."""
  curves, select = {}, cross_validation.select

  def recording(fold_ids, images, responses, run_fold, groups, margin):
    def run_and_score(rest, held):
      results = list(run_fold(rest, held))
      scored = [validation.scores_of(dec, enc, images[held], responses[held])
                for _, dec, enc in results]
      curves[int(fold_ids[held[0]])] = (
          held, {name: np.array([float(s[name]) for s, _ in scored]) for name, _ in groups},
          {name: np.array([np.asarray(r[name], np.float64) for _, r in scored])
           for name, _ in groups})
      return results
    return select(fold_ids, images, responses, run_and_score, groups, margin)

  cross_validation.select = recording
  try:
    selection = run_variant_cv(m, overrides, steps_n, every)
  finally:
    cross_validation.select = select
  return selection, curves


def cross_fitted_margins(curves, margins: list[float]) -> dict[str, dict[float, float]]:
  """Per score, per margin: the held-out gain over step 0 of the step `cross_validation.choose`
  keeps on the other folds' pooled curves, each fold left out in turn, averaged over folds
  (weighted by their sizes)."""
  out = {}
  for name in next(iter(curves.values()))[1]:
    out[name] = dict.fromkeys(margins, 0.0)
    total = sum(len(held) for held, _, _ in curves.values())
    for left in curves:
      others = [curves[f] for f in curves if f != left]
      n = sum(len(held) for held, _, _ in others)
      pooled = sum(len(held) / n * scores[name] for held, scores, _ in others)
      replicates = pooled[:, None] + np.concatenate(
          [len(held) / n * (reps[name] - scores[name][:, None]) for held, scores, reps in others],
          axis=1)
      held, scores, _ = curves[left]
      for margin in margins:
        kept, _ = cross_validation.choose(pooled, replicates, margin)
        out[name][margin] += len(held) / total * (scores[name][kept] - scores[name][0])
  return out


def run_variant(prepared, overrides: dict, steps_n: int, every: int) -> list[tuple]:
  """Stage 2 with `overrides`; (step, val_enc_pcc, val_dec_pcc) at step 0 and every `every`
  steps, and the kept steps."""
  m, train, val, frozen, ptr, pva = prepared
  config = _config(m, overrides, steps_n)
  cfg = config.stage2
  module = FLIG.from_config(config.model, m.image_shape)
  k = frozen.adapter.k
  val_set = validation.ValidationSet(
      raw_features=None, features=jnp.asarray(pva['features']),
      adapted=jnp.asarray(pva['adapted']), images=jnp.asarray(val.images),
      responses=jnp.asarray(val.responses))
  start = closed_form.linear_pair_params(
      ptr['raw_features'], ptr['adapted'][:, :k], np.asarray(frozen.adapter.sqrt_eig),
      pva['raw_features'], pva['adapted'][:, :k],
      np.asarray(frozen.feature_mean), np.asarray(frozen.feature_std), module.feature_dim,
      encoder_error=closed_form.config_encoder_error(config))
  arrays = {'features': ptr['features'], 'adapted': ptr['adapted']}
  if cfg.pixel:
    arrays['images'] = train.images
  stream = data.BatchStream(arrays, cfg.batch_size, seed=config.seed + 1)
  first = {name: jnp.asarray(v) for name, v in stream.batch(0).items()
           if name in ('features', 'adapted')}
  state = train_state.create_stage2_state(jax.random.key(config.seed + 2), config, module,
                                          frozen, first, start, stage2_data.val_size(
                                              types.SimpleNamespace(val=val)))
  step_fn = jax.jit(functools.partial(steps.stage2_step, model=module, cfg=cfg))
  validate = jax.jit(functools.partial(steps.stage2_validate, model=module,
                                       margin=cfg.select_margin))
  state, scores = validate(state, val_set)
  trajectory = [(0, float(scores['val_enc_pcc']), float(scores['val_dec_pcc']))]
  for step in range(steps_n):
    state, _ = step_fn(state, {name: jnp.asarray(v) for name, v in stream.batch(step).items()})
    if (step + 1) % every == 0 or step + 1 == steps_n:
      state, scores = validate(state, val_set)
      trajectory.append((step + 1, float(scores['val_enc_pcc']), float(scores['val_dec_pcc'])))
  return trajectory, [int(s) for s in state.best_step]


def baseline_scores(prepared, seed: int = 0) -> dict[str, float]:
  """Validation encoding / decoding PCC of evaluate.py's MLP recipe (on CAE features and on
  pixels) and of pixel ridge, fitted on the same training pairs."""
  _, train, val, _, ptr, pva = prepared
  enc = lambda pred: float(np.mean(metrics.per_unit_pcc(pred, val.responses)))
  dec = lambda pred: float(np.mean(metrics.per_image_pcc(pred, val.images)))
  fit = functools.partial(baselines.fit_mlp, steps=300, seed=seed)
  out = {'cae_mlp_enc': enc(fit(ptr['raw_features'], train.responses, pva['raw_features'],
                                val.responses, kind='encoder').predict(pva['raw_features'])),
         'mlp_enc': enc(fit(train.images, train.responses, val.images, val.responses,
                            kind='encoder').predict(val.images)),
         'mlp_dec': dec(fit(train.responses, train.images, val.responses, val.images,
                            kind='decoder').predict(val.responses))}
  ridge = baselines.fit_ridge(train.images, train.responses, val.images, val.responses,
                              refit_on_val=False)
  out['ridge_enc'] = enc(ridge.predict(val.images))
  ridge = baselines.fit_ridge(train.responses, train.images, val.responses, val.images,
                              refit_on_val=False)
  out['ridge_dec'] = dec(ridge.predict(val.responses))
  return out


def pixel_path_scores(prepared) -> np.ndarray:
  """Mean validation PCC + SSIM of each blend weight (`pixel_path.WEIGHTS`), closed-form start."""
  m, train, val, frozen, ptr, pva = prepared
  k, d = frozen.adapter.k, m.module.feature_dim
  start = closed_form.linear_pair_params(
      ptr['raw_features'], ptr['adapted'][:, :k], np.asarray(frozen.adapter.sqrt_eig),
      pva['raw_features'], pva['adapted'][:, :k],
      np.asarray(frozen.feature_mean), np.asarray(frozen.feature_std), d,
      encoder_error=closed_form.config_encoder_error(m.config))
  maps = pixel_path.fit_maps(train.responses, train.images)
  flow = {**m.variables['params']['flow'], 'linear_pair': jax.tree.map(jnp.asarray, start)}
  variables = frozen.without_pixel_paths().variables(flow)
  autoencoded = compiled.apply(m.module, 'decode_images')(variables, pva['adapted'])
  pixels = maps.decode(val.responses, val.images.shape[1:])
  return pixel_path.candidate_scores(autoencoded, pixels, val.images).mean(axis=1)


def _value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('workdir', help='a finished run (train.py --workdir)')
  parser.add_argument('variants', nargs='*', help="key=value overrides; '+' separates variants")
  parser.add_argument('--steps', type=int, default=1500)
  parser.add_argument('--every', type=int, default=100)
  parser.add_argument('--val_fraction', type=float, default=0.1)
  parser.add_argument('--baselines', action='store_true')
  parser.add_argument('--pixel_path', action='store_true')
  parser.add_argument('--cv', action='store_true',
                      help='score each variant by cross-validation over the training split')
  parser.add_argument('--margins', default='',
                      help="with --cv: comma-separated select_margin values to cross-fit")
  args = parser.parse_intermixed_args()
  groups, current = [], []
  for item in args.variants:
    if item == '+':
      groups.append(current)
      current = []
    else:
      current.append(item)
  groups.append(current)
  variants = [{k: _value(v) for k, v in (item.split('=', 1) for item in group)}
              for group in groups]
  if args.cv:
    m = model_lib.load(args.workdir)
    margins = [float(v) for v in args.margins.split(',') if v]
    for overrides in variants:
      selection, curves = fold_curves(m, overrides, args.steps, args.every)
      print(overrides or 'the run\'s config', f'({selection.folds}-fold cross-validation; kept '
            f'steps: encoder {selection.chosen["cv_enc_pcc"]}, decoder '
            f'{selection.chosen["cv_dec_pcc"]})')
      for name in ('cv_enc_pcc', 'cv_dec_pcc'):
        print(f'  {name.split("_")[1]}', ' '.join(f'{v:.4f}' for v in selection.scores[name]),
              flush=True)
      if margins:
        for name, gains in cross_fitted_margins(curves, margins).items():
          print(f'  cross-fitted gain of the kept step, {name}:',
                ', '.join(f'margin {k:g}: {v:+.4f}' for k, v in gains.items()), flush=True)
    return
  prepared = prepare(args.workdir, args.val_fraction)
  print(f'{args.workdir}: {len(prepared[1])} training pairs, {len(prepared[2])} validation')
  if args.baselines:
    print('baselines (validation PCC):', {k: round(v, 4) for k, v in
                                          baseline_scores(prepared).items()})
  if args.pixel_path:
    scores = pixel_path_scores(prepared)
    print('pixel path (validation PCC + SSIM per weight):',
          {w: round(float(v), 4) for w, v in zip(pixel_path.WEIGHTS, scores)})
  for overrides in variants:
    trajectory, kept = run_variant(prepared, overrides, args.steps, args.every)
    print(overrides or 'the run\'s config', f'(kept steps: encoder {kept[0]}, decoder {kept[-1]})')
    print('  enc', ' '.join(f'{t[1]:.3f}' for t in trajectory))
    print('  dec', ' '.join(f'{t[2]:.3f}' for t in trajectory), flush=True)


if __name__ == '__main__':
  main()
