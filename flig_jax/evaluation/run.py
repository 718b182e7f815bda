"""`evaluate`: scores a trained FLIG checkpoint and its baselines (ridge, MLP, CAE + ridge, CAE +
MLP) on one split, and writes metrics.json, a reconstruction grid and an encoding figure."""

import concurrent.futures
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from flig_jax import data, ops, plotting
from flig_jax import model as model_lib
from flig_jax.evaluation import baselines, metrics, report
from flig_jax.nn.adapter import Adapter
from flig_jax.training import closed_form

SPLITS = ('test', 'val')
FEW_PAIRS = 10  # below this many scored pairs, evaluate notes that per-unit PCCs are noisy
MLP_STEPS = 300  # bounded so the MLP fits (the slowest phase) stay within seconds on a CPU
GRID_COLUMNS = 10
Predictor = Callable[[np.ndarray], np.ndarray]


def _progress(enabled: bool) -> Callable[[str], None]:
  """A logger that prints '[evaluate  1.2s] message' to stderr, or does nothing."""
  start = time.perf_counter()

  def log(message: str) -> None:
    if enabled:
      print(f'[evaluate {time.perf_counter() - start:5.1f}s] {message}', file=sys.stderr,
            flush=True)
  return log


def _data_config(config: ml_collections.ConfigDict,
                 data_dir: str | None) -> ml_collections.ConfigDict:
  """A copy of the run's config whose data.dir is `data_dir` when given; for an npz run, whose file
  is data.path, `data_dir` is the file, or the folder now holding a file of its saved name."""
  config = ml_collections.ConfigDict(config.to_dict())
  if data_dir and config.data.name == 'npz':
    config.data.path = (os.path.join(data_dir, os.path.basename(config.data.path))
                        if os.path.isdir(data_dir) else str(data_dir))
  elif data_dir:
    config.data.dir = str(data_dir)
  return config


def _check_match(m: model_lib.Model, ds: data.Dataset, ckpt: str) -> None:
  """Raises ValueError when the dataset is not the one the checkpoint was trained on."""
  if ds.num_units != m.num_units or ds.image_shape != m.image_shape:
    raise ValueError(
        f'the checkpoint at {ckpt} expects {m.num_units} units and '
        f'images {m.image_shape}; the dataset {ds.name!r} has {ds.num_units} units and images '
        f'{ds.image_shape} (wrong --data_dir?)')


def _hparam_split(ds: data.Dataset, split: str) -> tuple[Any, Any, str]:
  """The (responses, images) pair that picks hyper-parameters, and where it comes from.

  The validation split, unless it is empty or is the split being scored: then None, and the
  baselines fall back to cross-validation / a held-out part of the training split.
  """
  if split == 'val' or len(ds.val) == 0:
    return None, None, 'train (cross-validation / held-out part)'
  return ds.val.responses, ds.val.images, 'val'


def _signal(adapter: Adapter, responses: np.ndarray) -> np.ndarray:
  """A(r)[:, :k], the adapter's signal coordinates of responses (N, U)."""
  return np.asarray(adapter.forward(jnp.asarray(responses, jnp.float32)))[:, :adapter.k]


def _unsignal(adapter: Adapter, a: np.ndarray) -> np.ndarray:
  """A^-1 of (N, k) signal coordinates (zero padding)."""
  a = np.pad(np.asarray(a, np.float32), ((0, 0), (0, adapter.dim - a.shape[1])))
  return np.asarray(adapter.inverse(jnp.asarray(a)))


def fit_baselines(m: model_lib.Model, ds: data.Dataset, split: str,
                  mlp_steps: int = MLP_STEPS, seed: int = 0,
                  log: Callable[[str], None] = lambda _: None,
                  folds: np.ndarray | None = None
                  ) -> tuple[dict[str, Predictor], dict[str, Predictor], dict[str, Any]]:
  """Fits every baseline on the training split, choosing hyper-parameters without the split
  scored.

  With `folds` (the training pairs' cross-validation folds, `data.config_fold_ids`), ridge
  penalties and MLP early stopping are chosen by cross-validation over them and every map is
  refitted on all training pairs; else on the validation split (unless it is the one scored).

  `cae_ridge` is the ablation: FLIG's frozen autoencoder and adapter with ridge maps in place of
  the flow, those of its closed-form start (`closed_form.fit_maps`, on the responses' principal
  component scores A(r)[:, :k] * sqrt_eig): its decoder predicts raw features from the scores (to
  be decoded by G), and its encoder the scores from E(x), mapped back by A^-1. `cae_mlp`, a
  diagnostic, is `mlp`'s recipe on the same features: its encoder maps E(x) to responses, its
  decoder responses to E(x), decoded by G.

  Args:
    m: the trained FLIG (its autoencoder and adapter serve `cae_ridge` and `cae_mlp`).
    ds: the dataset; fits use `ds.train` only, hyper-parameters `folds` or `ds.val`.
    split: the split that will be scored (never used here).
    mlp_steps: most optimisation steps of each MLP.
    seed: seed of the MLPs.
    log: progress logger.
    folds: (N,) fold ids of `ds.train`, or None.

  Returns:
    (decoders, encoders, hparams): model name -> predictor (decoders: responses -> images;
    encoders: images -> responses), and the chosen hyper-parameters of each baseline.
  """
  tr = ds.train
  adapter = m.adapter
  spread = np.asarray(adapter.sqrt_eig, np.float64)
  a_tr, h_tr = _signal(adapter, tr.responses), m.features(tr.images)
  cross_validated = folds is not None and split != 'val'
  if cross_validated:
    val_r = val_x = a_va = h_va = None
    hparams: dict[str, Any] = {'chosen_on': f'train ({len(np.unique(folds))}-fold '
                                            'cross-validation, refitted on all of it)'}
  else:
    val_r, val_x, source = _hparam_split(ds, split)
    a_va, h_va = (None, None) if val_r is None else (_signal(adapter, val_r), m.features(val_x))
    hparams = {'chosen_on': source}

  def ridge_fit(x, y, x_val, y_val):
    if cross_validated:
      return baselines.fit_ridge(x, y, fold_ids=folds)
    return baselines.fit_ridge(x, y, x_val, y_val, refit_on_val=False)

  def mlp_fit(x, y, x_val, y_val, kind):
    if cross_validated:
      return baselines.fit_mlp_cv(x, y, folds, kind=kind, steps=mlp_steps, seed=seed)
    return baselines.fit_mlp(x, y, x_val, y_val, kind=kind, steps=mlp_steps, seed=seed)

  # The MLP fits are bound by XLA compilation and small kernels, which run outside the GIL:
  # they train in two threads while the ridge maps are fitted here.
  log(f'fitting mlp and cae_mlp (at most {mlp_steps} steps each) beside ridge and cae_ridge')
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    jobs = {'mlp_dec': pool.submit(mlp_fit, tr.responses, tr.images, val_r, val_x, 'decoder'),
            'mlp_enc': pool.submit(mlp_fit, tr.images, tr.responses, val_x, val_r, 'encoder'),
            # Features are real-valued targets: the encoder recipe (z-scored, linear output).
            'cae_mlp_dec': pool.submit(mlp_fit, tr.responses, h_tr, val_r, h_va, 'encoder'),
            'cae_mlp_enc': pool.submit(mlp_fit, h_tr, tr.responses, h_va, val_r, 'encoder')}
    ridge_dec = ridge_fit(tr.responses, tr.images, val_r, val_x)
    ridge_enc = ridge_fit(tr.images, tr.responses, val_x, val_r)
    cae = closed_form.fit_maps(h_tr, a_tr, spread, h_va, a_va, folds if cross_validated else None,
                               closed_form.config_encoder_error(m.config))
    fits = {k: job.result() for k, job in jobs.items()}
  hparams['ridge'] = {'decoding_alpha': ridge_dec.alpha, 'encoding_alpha': ridge_enc.alpha}
  hparams['cae_ridge'] = {'decoding_alpha': cae.decoder.alpha,
                          'encoding_alpha': cae.encoder.alpha}
  for name in ('mlp', 'cae_mlp'):
    hparams[name] = {'decoding_best_step': fits[f'{name}_dec'].best_step,
                     'encoding_best_step': fits[f'{name}_enc'].best_step}

  decoders = {'ridge': ridge_dec.predict, 'mlp': fits['mlp_dec'].predict,
              'cae_ridge': lambda r: m.decode_features(
                  cae.decoder.predict(_signal(adapter, r) * spread)),
              'cae_mlp': lambda r: m.decode_features(fits['cae_mlp_dec'].predict(r))}
  encoders = {'ridge': ridge_enc.predict, 'mlp': fits['mlp_enc'].predict,
              'cae_ridge': lambda x: _unsignal(adapter,
                                               cae.encoder.predict(m.features(x)) / spread),
              'cae_mlp': lambda x: fits['cae_mlp_enc'].predict(m.features(x))}
  return decoders, encoders, hparams


def _load(ckpt: str | os.PathLike, allow_unfinished: bool) -> model_lib.Model:
  """The newest checkpoint of `ckpt` that restores (saying which damaged ones were skipped);
  refuses a run that has not finished unless `allow_unfinished`."""

  def skipped(step: int, reason: str) -> None:
    print(f'note: checkpoint step {step} does not restore, skipped: {reason}', file=sys.stderr)

  m = model_lib.load(ckpt, skipped=skipped)
  meta = m.meta
  if not meta.finished and not allow_unfinished:
    raise ValueError(
        f'the run at {ckpt} has not finished: its newest usable checkpoint is step '
        f'{meta.step} (stage {meta.stage}, step {meta.stage_step} of the '
        'stage); finish it (train.py with the same --workdir), or pass --allow_unfinished to score '
        'it as it is')
  return m


def evaluate(ckpt: str | os.PathLike, split: str = 'test', out: str | os.PathLike | None = None,
             data_dir: str | None = None, *, mlp_steps: int = MLP_STEPS,
             verbose: bool = True, allow_unfinished: bool = False) -> dict[str, Any]:
  """Evaluates the checkpoint at `ckpt` on `split`, beside the baselines, and writes the results.

  Writes `<out>/metrics.json` (docs/design.md's shape, plus `session`, `checkpoint_step`,
  `baseline_hparams`), `<out>/reconstructions.png` and `<out>/encoding.png`, and prints the tables
  to stdout.

  Args:
    ckpt: the run's workdir (or its checkpoints/ directory).
    split: 'test' or 'val'.
    out: output directory; default `<ckpt>/eval_<split>`.
    data_dir: the dataset's own folder, overriding the checkpoint's config.data.dir (an npz run:
      its file, or the folder holding it, overriding config.data.path).
    mlp_steps: most optimisation steps of each MLP baseline.
    verbose: print a progress line per phase to stderr.
    allow_unfinished: score a run that has not finished training (else ValueError).

  Returns:
    the metrics dict written to metrics.json.

  Raises:
    ValueError: a bad split name, an empty split, data that do not fit the checkpoint, or an
      unfinished run (unless `allow_unfinished`).
    FileNotFoundError: no checkpoint at `ckpt`.
    data.DataError: the dataset cannot be read.
  """
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r}; choose one of '
                     f'{SPLITS}')
  log = _progress(verbose)
  log(f'loading the checkpoint at {ckpt}')
  m = _load(ckpt, allow_unfinished)
  log(f'scoring checkpoint step {m.meta.step}'
      + ('' if m.meta.finished else ' (an unfinished run, --allow_unfinished)'))
  ds = data.from_config(_data_config(m.config, data_dir))
  _check_match(m, ds, str(ckpt))
  scored = getattr(ds, split)
  if len(scored) < 2:
    folds = int(m.config.data.get('folds', 0))
    hint = (f' (a run with data.folds = {folds} cross-validates over the training pairs and keeps '
            'no validation split: score --split test)' if split == 'val' and folds >= 2 else '')
    raise ValueError(f'the {split} split of {ds.name!r} has '
                     f'{len(scored)} pairs; evaluation needs at least 2{hint}')
  log(f'{ds.name}: {split} split of {len(scored)} pairs; train {len(ds.train)}, '
      f'val {len(ds.val)}')
  if len(scored) < FEW_PAIRS:
    print(f'note: the {split} split holds {len(scored)} pairs: each unit\'s encoding PCC is a '
          f'correlation over {len(scored)} stimuli (always +-1 over 2), so encoding pcc_mean and '
          'pcc_median say little here', file=sys.stderr)

  decoders, encoders, hparams = fit_baselines(m, ds, split, mlp_steps=mlp_steps,
                                              seed=int(m.config.get('seed', 0)), log=log,
                                              folds=data.config_fold_ids(m.config, ds.train))

  log('flig and the baselines on the split')
  x, r = scored.images, scored.responses
  encoded = {'flig': m.encode(x), **{k: fn(x) for k, fn in encoders.items()}}
  decoded = {'flig': m.decode(r), **{k: fn(r) for k, fn in decoders.items()}}
  roundtrip_err = float(np.max(np.abs(m.roundtrip(x) - m.reconstruct(x))))

  log('scoring')
  sigma = ops.ssim_sigma(*x.shape[1:3])
  if sigma != ops.SSIM_SIGMA:
    log(f'SSIM with the largest Gaussian window that fits {x.shape[1]}x{x.shape[2]} images: '
        f'{ops.gaussian_window(sigma).size} taps, sigma {sigma:.3g} (11 taps, sigma 1.5 on '
        'images of 11x11 pixels or more)')
  train_mean = ds.train.responses.mean(axis=0)
  train_std = ds.train.responses.std(axis=0)
  result = {
      'dataset': ds.name,
      'split': split,
      'n': len(scored),
      'decoding': {k: metrics.decoding_metrics(v, scored.images) for k, v in decoded.items()},
      'encoding': {k: metrics.encoding_metrics(v, scored.responses, train_mean, train_std)
                   for k, v in encoded.items()},
      'roundtrip_max_abs_err': roundtrip_err,
      'session': str(ds.meta.get('session') or ''),
      'checkpoint_step': m.meta.step,
      'baseline_hparams': hparams,
  }

  out = os.fspath(out) if out is not None else os.path.join(os.fspath(ckpt), f'eval_{split}')
  log(f'writing {out}')
  report.write_metrics(os.path.join(out, 'metrics.json'), result)
  title = f'{ds.name}, {split} split (n = {len(scored)}): checkpoint step {m.meta.step}'
  plotting.reconstruction_grid(scored.images, decoded, os.path.join(out, 'reconstructions.png'),
                               n=GRID_COLUMNS, title=f'decoding: {title}')
  per_unit = {k: metrics.per_unit_pcc(v, scored.responses) for k, v in encoded.items()}
  plotting.encoding_figure(per_unit, encoded['flig'], scored.responses,
                           os.path.join(out, 'encoding.png'), title=f'encoding: {title}')
  print(report.format_table(result), flush=True)
  log('done')
  return result


__all__ = ['MLP_STEPS', 'SPLITS', 'evaluate', 'fit_baselines']
