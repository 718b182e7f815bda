"""Figures of training and evaluation: reconstruction grids (the two that training writes beside
its checkpoints among them), per-unit encoding accuracy, and differences over runs (FLIG minus the
best baseline).

Matplotlib with the Agg backend (no display); each function writes one PNG and returns its path.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # after matplotlib.use: the backend must be chosen first
import numpy as np

# Line styles that keep a curve visible when another one lies on it.
_LINESTYLES = ('-', '--', ':', '-.')
# Reconstructions and per-unit correlations closer than these draw alike on a figure.
_SAME_PIXELS = 1.0 / 255.0
_SAME_PCC = 1e-3


def _save(fig: Any, path: str, title: str = '', notes: Sequence[str] = ()) -> str:
  """Writes `fig` to `path` with `title` on top; the PNG keeps the title and the `notes` as its
  Title and Description text."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if title:
    fig.suptitle(title, fontsize=10, y=1.0, va='bottom')
  metadata = {'Title': title} if title else {}
  if notes:
    metadata['Description'] = '; '.join(notes)
  fig.savefig(path, dpi=100, bbox_inches='tight', metadata=metadata)
  plt.close(fig)
  return path


def same_as(series: Mapping[str, Any], tolerance: float) -> dict[str, str]:
  """name -> the earlier name whose values are within `tolerance` everywhere (the two draw
  alike), for each name that has one."""
  out, seen = {}, []
  for name, values in series.items():
    values = np.asarray(values, np.float64)
    match = next((other for other, v in seen
                  if v.shape == values.shape and np.max(np.abs(v - values), initial=0.0)
                  <= tolerance), None)
    if match is not None:
      out[name] = match
    seen.append((name, values))
  return out


def _show(ax: Any, image: np.ndarray) -> None:
  """Draws one (H, W, C) image in [0, 1]: grey for one channel, colour for three."""
  image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap='gray', vmin=0.0, vmax=1.0, interpolation='nearest')
  else:
    ax.imshow(image, interpolation='nearest')
  ax.set_xticks([])
  ax.set_yticks([])


def reconstruction_grid(stimuli: Any, recons: Mapping[str, Any], path: str, n: int = 10,
                        title: str = '') -> str:
  """Writes a grid of the first `n` stimuli (top row) and each model's reconstructions below; a
  row that draws as an earlier one is labelled so (e.g. 'cae_ridge (= flig)').

  Args:
    stimuli: (N, H, W, C) images in [0, 1].
    recons: model name -> (N, H, W, C) reconstructions of the same stimuli.
    path: the PNG to write.
    n: number of columns (stimuli shown).
    title: the figure's title (say the split and the step).

  Returns:
    path.
  """
  stimuli = np.asarray(stimuli)
  if stimuli.ndim != 4:
    raise ValueError(f'stimuli must be (N, H, W, C); got shape {stimuli.shape}.')
  for name, r in recons.items():
    if np.shape(r) != stimuli.shape:
      raise ValueError(f'reconstructions of {name!r} have shape {np.shape(r)}; '
                       f'the stimuli have {stimuli.shape}.')
  n = max(1, min(n, stimuli.shape[0]))
  rows = [('stimulus', stimuli)] + [(k, np.asarray(v)) for k, v in recons.items()]
  same = same_as({k: np.clip(v[:n], 0.0, 1.0) for k, v in recons.items()}, _SAME_PIXELS)
  fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n + 1.0, 1.1 * len(rows)), squeeze=False)
  for i, (name, images) in enumerate(rows):
    for j in range(n):
      _show(axes[i, j], images[j])
    label = f'{name}\n(= {same[name]})' if name in same else name
    axes[i, 0].set_ylabel(label, rotation=0, ha='right', va='center', fontsize=10)
  fig.subplots_adjust(wspace=0.05, hspace=0.05)
  return _save(fig, path, title, [f'{k} draws as {v}' for k, v in same.items()])


def stage1_figure(stimuli: Any, reconstructions: Any, split: str, workdir: str | os.PathLike,
                  title: str = '') -> str:
  """Writes `<workdir>/stage1_reconstructions.png`: stimuli of `split` over their G(E(x))."""
  return reconstruction_grid(stimuli, {f'G(E(x)) [{split}]': np.asarray(reconstructions)},
                             os.path.join(workdir, 'stage1_reconstructions.png'), n=len(stimuli),
                             title=title)


def stage2_figure(stimuli: Any, reconstructions: Any, decoded: Any, split: str,
                  workdir: str | os.PathLike, title: str = '') -> str:
  """Writes `<workdir>/stage2_decoding.png`: stimuli of `split` over their G(E(x)) and over the
  images decoded from their responses."""
  recons = {'G(E(x))': np.asarray(reconstructions), f'decode(r) [{split}]': np.asarray(decoded)}
  return reconstruction_grid(stimuli, recons, os.path.join(workdir, 'stage2_decoding.png'),
                             n=len(stimuli), title=title)


def encoding_figure(per_unit_pcc: Mapping[str, Any], pred: Any, target: Any, path: str,
                    n_best: int = 4, model: str = 'flig', title: str = '') -> str:
  """Writes the encoding summary: per-unit test correlation of every model, and for the
  `n_best` best-predicted units of `model`, predicted against measured responses. Each model's
  curves have a line style of their own, and one that lies on an earlier model's is labelled so.

  Args:
    per_unit_pcc: model name -> (U,) per-unit Pearson r on the evaluated split (`model` among
      them).
    pred: (N, U) responses predicted by `model`.
    target: (N, U) measured responses.
    path: the PNG to write.
    n_best: number of units to scatter.
    model: the name `pred` belongs to (used in titles).
    title: the figure's title (say the split and the step).

  Returns:
    path.
  """
  pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
  if pred.ndim != 2 or pred.shape != target.shape:
    raise ValueError(f'pred and target must be (N, U) of one shape; got '
                     f'{pred.shape} and {target.shape}.')
  r_model = np.asarray(per_unit_pcc[model], np.float64)
  n_best = max(1, min(n_best, pred.shape[1]))
  best = np.argsort(-r_model)[:n_best]

  cols = max(2, n_best)
  fig = plt.figure(figsize=(3.0 * cols, 6.0))
  grid = fig.add_gridspec(2, cols)
  ax_hist = fig.add_subplot(grid[0, :cols // 2])
  ax_sort = fig.add_subplot(grid[0, cols // 2:])
  bins = np.linspace(-1.0, 1.0, 41)
  same = same_as(per_unit_pcc, _SAME_PCC)
  for i, (name, r) in enumerate(per_unit_pcc.items()):
    r = np.asarray(r, np.float64)
    style = {'linestyle': _LINESTYLES[i % len(_LINESTYLES)],
             'linewidth': 2.5 if i == 0 else 1.5}
    label = f'{name} (= {same[name]})' if name in same else name
    ax_hist.hist(r, bins=bins, histtype='step', label=f'{label} (mean {r.mean():.3f})', **style)
    ax_sort.plot(np.arange(1, r.size + 1), np.sort(r)[::-1], label=label, **style)
  ax_hist.set_xlabel('per-unit Pearson r (test)')
  ax_hist.set_ylabel('units')
  ax_hist.legend(fontsize=8)
  ax_sort.axhline(0.0, color='grey', linewidth=0.5)
  ax_sort.set_xlabel('unit rank')
  ax_sort.set_ylabel('Pearson r')
  ax_sort.legend(fontsize=8)
  for i, u in enumerate(best):
    ax = fig.add_subplot(grid[1, i])
    ax.scatter(target[:, u], pred[:, u], s=10, alpha=0.7)
    lo = min(target[:, u].min(), pred[:, u].min())
    hi = max(target[:, u].max(), pred[:, u].max())
    ax.plot([lo, hi], [lo, hi], color='grey', linewidth=0.5)
    ax.set_title(f'{model} unit {u}: r = {r_model[u]:.2f}', fontsize=9)
    ax.set_xlabel('measured')
    if i == 0:
      ax.set_ylabel('predicted')
  fig.tight_layout()
  return _save(fig, path, title, [f'{k} draws as {v}' for k, v in same.items()])


def differences_figure(differences: Mapping[str, Mapping[str, Mapping[str, Any]]],
                       metrics_shown: Sequence[str], path: str,
                       xlabel: str = 'FLIG − best baseline', tie: float = 0.0) -> str:
  """A panel per metric, a row per dataset: a difference's mean ± sd over runs (a dot with an error
  bar, green at or above -`tie`, red below) and each run's value (small grey points).

  Args:
    differences: dataset -> metric -> {'mean', 'sd', 'values'} (e.g. `aggregate.flig_minus_best`);
      a missing metric leaves its row empty.
    metrics_shown: the metric keys, one panel each, in order.
    path: the PNG to write.
    xlabel: the x-axis label of every panel.
    tie: how far below zero a mean still counts as level (`aggregate.TIE`).
  """
  names = list(differences)
  fig, axes = plt.subplots(1, len(metrics_shown), squeeze=False, sharey=True,
                           figsize=(3.0 * len(metrics_shown), 0.32 * len(names) + 1.3))
  for ax, key in zip(axes[0], metrics_shown):
    for y, name in enumerate(names):
      d = differences[name].get(key)
      if d is None:
        continue
      ax.plot(d['values'], [y] * len(d['values']), '.', color='0.6', ms=4)
      ax.errorbar(d['mean'], y, xerr=d['sd'], fmt='o', capsize=3,
                  color='tab:green' if d['mean'] >= -tie else 'tab:red')
    ax.axvline(0.0, color='k', lw=0.8)
    ax.set_title(key.replace('/', ' '), fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(labelsize=8)
  axes[0][0].set_yticks(range(len(names)), names)
  axes[0][0].set_ylim(len(names) - 0.5, -0.5)
  fig.tight_layout()
  return _save(fig, path)
