"""Mean ± sd of evaluation metrics over runs (seeds), and FLIG minus the best baseline.

`evaluate.py --ckpt a --ckpt b ...` and `scripts/results.py` share it. The input is a list of
metrics.json dicts (`report.validate_metrics`' shape) of one dataset and split; the output maps
section -> model -> metric -> {'mean', 'sd', 'values'}, sd being the sample standard deviation
(ddof 1; 0 for a single run).
"""

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from flig_jax.evaluation import report

SECTIONS = {'decoding': report.DECODING_KEYS, 'encoding': report.ENCODING_KEYS}
# The metrics of the results table and figure (every one higher-is-better).
HEADLINE = (('decoding', 'pcc'), ('decoding', 'ssim'), ('decoding', 'identification'),
            ('encoding', 'pcc_mean'))
HEADLINE_KEYS = tuple(f'{s}/{k}' for s, k in HEADLINE)  # the keys of `flig_minus_best`
FLIG = 'flig'
# Diagnostic baselines: tabulated, but not among those FLIG is measured against ("the best
# baseline" is the best of the others).
DIAGNOSTIC = ('cae_mlp',)
# A difference this close to zero is a tie: the table's three decimals show it as +-0.000, and FLIG
# kept at its start equals cae_ridge up to float rounding. Ties count as wins.
TIE = 5e-4

Summary = dict[str, Any]


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
  """Reads and checks one metrics.json (a run directory's `eval_test/metrics.json`, or the file).

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file is not JSON of the metrics.json shape (the message names it).
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, 'metrics.json')
  with open(path) as f:
    try:
      metrics = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: not JSON ({e})') from None
  try:
    report.validate_metrics(metrics)
  except (TypeError, ValueError) as e:
    raise ValueError(f'{path}: {e}') from None
  return metrics


def _mean_sd(values: Sequence[float]) -> dict[str, Any]:
  n = len(values)
  mean = math.fsum(values) / n
  sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
  return {'mean': mean, 'sd': sd, 'values': [float(v) for v in values]}


def aggregate(runs: Sequence[Mapping[str, Any]]) -> Summary:
  """Mean ± sd over runs of every model and metric.

  Args:
    runs: metrics.json dicts of one dataset and split (e.g. one per seed).

  Returns:
    {'dataset', 'split', 'n' (of the split), 'runs' (their number), 'decoding' and 'encoding':
    model -> metric -> {'mean', 'sd', 'values'}}. Only models present in every run are kept.

  Raises:
    ValueError: no runs, or runs of different datasets, sessions or splits.
  """
  if not runs:
    raise ValueError('aggregate: no runs to aggregate')
  keys = {(r['dataset'], r.get('session', ''), r['split']) for r in runs}
  if len(keys) > 1:
    raise ValueError(f'aggregate: the runs mix datasets / sessions / splits: {sorted(keys)}')
  first = runs[0]
  out: Summary = {'dataset': first['dataset'], 'session': first.get('session', ''),
                  'split': first['split'], 'n': first['n'], 'runs': len(runs)}
  for section, metric_names in SECTIONS.items():
    models = [m for m in first[section] if all(m in r[section] for r in runs)]
    out[section] = {m: {k: _mean_sd([float(r[section][m][k]) for r in runs])
                        for k in metric_names} for m in models}
  return out


def flig_minus_best(summary: Summary, baseline: str | None = None) -> dict[str, dict[str, Any]]:
  """FLIG minus the best baseline (or the named `baseline`) on each headline metric.

  The best baseline is the one with the highest mean over runs, diagnostic ones (`DIAGNOSTIC`)
  left out; the difference is taken run by
  run (same seed, same split) against that baseline, then averaged.

  Returns:
    'section/metric' -> {'baseline', 'mean', 'sd', 'values', 'se'} ('se': the standard error of
    the mean paired difference, sd / sqrt(runs)); metrics without FLIG or without the baseline are
    left out.
  """
  out = {}
  for section, metric in HEADLINE:
    table = summary.get(section, {})
    baselines = [m for m in table if m != FLIG and (m == baseline if baseline
                                                    else m not in DIAGNOSTIC)]
    if FLIG not in table or not baselines:
      continue
    best = max(baselines, key=lambda m: table[m][metric]['mean'])
    diffs = [f - b for f, b in zip(table[FLIG][metric]['values'], table[best][metric]['values'])]
    stat = _mean_sd(diffs)
    out[f'{section}/{metric}'] = {'baseline': best, **stat,
                                  'se': stat['sd'] / math.sqrt(len(diffs))}
  return out


def _cell(stat: Mapping[str, Any], bold: bool = False) -> str:
  text = f'{stat["mean"]:.3f} ± {stat["sd"]:.3f}'
  return f'**{text}**' if bold else text


def format_table(summary: Summary) -> str:
  """The decoding and encoding tables of one summary as text, mean ± sd (3 decimals)."""
  head = (f'{summary["dataset"]}{" " + summary["session"] if summary.get("session") else ""} / '
          f'{summary["split"]} (n = {summary["n"]}), mean ± sd over {summary["runs"]} run(s)')
  parts = [head]
  for section, metric_names in SECTIONS.items():
    rows = summary.get(section, {})
    if not rows:
      continue
    cells = {m: [_cell(rows[m][k]) for k in metric_names] for m in rows}
    name_w = max([len('model')] + [len(m) for m in rows])
    widths = [max([len(k)] + [len(c[i]) for c in cells.values()])
              for i, k in enumerate(metric_names)]
    line = '  '.join([f'{"model":<{name_w}}'] + [f'{k:>{w}}' for k, w in zip(metric_names, widths)])
    lines = [section, line, '-' * len(line)]
    lines += ['  '.join([f'{m:<{name_w}}'] + [f'{c:>{w}}' for c, w in zip(cells[m], widths)])
              for m in rows]
    parts.append('\n'.join(lines))
  return '\n\n'.join(parts)


def markdown_table(summaries: Mapping[str, Summary]) -> str:
  """One markdown table: a row per dataset and model, a column per headline metric (mean ± sd);
  the best mean of each dataset and metric in bold."""
  header = ['dataset', 'model', 'runs'] + [f'{s[:3]} {k}' for s, k in HEADLINE]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for name, summary in summaries.items():
    models = list(summary['decoding'])
    models += [m for m in summary['encoding'] if m not in models]
    best = {}
    for section, metric in HEADLINE:
      table = summary[section]
      best[section, metric] = max(table, key=lambda m: table[m][metric]['mean']) if table else None
    for model in models:
      cells = [_cell(summary[s][model][k], bold=best[s, k] == model) if model in summary[s]
               else '' for s, k in HEADLINE]
      lines.append('| ' + ' | '.join([name, model, str(summary['runs'])] + cells) + ' |')
  return '\n'.join(lines)


def differences_table(summaries: Mapping[str, Summary], ablation: str = 'cae_ridge') -> str:
  """One markdown table: per dataset and headline metric, FLIG minus `ablation` and FLIG minus the
  best baseline (named), mean ± standard error of the paired differences (by seed); below, per
  metric and on every metric at once, on how many datasets FLIG is at least as good (a mean
  difference within `TIE` counts)."""
  header = ['dataset'] + [f'{s[:3]} {k}' for s, k in HEADLINE]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  wins = {label: {key: 0 for key in HEADLINE_KEYS + ('every',)} for label in (ablation, 'best')}
  for name, summary in summaries.items():
    for label, diff in ((ablation, flig_minus_best(summary, ablation)),
                        ('best', flig_minus_best(summary))):
      cells = [_signed(diff[k], label == 'best') if k in diff else '' for k in HEADLINE_KEYS]
      lines.append('| ' + ' | '.join([f'{name} - {label}'] + cells) + ' |')
      for key in HEADLINE_KEYS:
        wins[label][key] += key in diff and diff[key]['mean'] >= -TIE
      if len(diff) == len(HEADLINE_KEYS) and all(d['mean'] >= -TIE for d in diff.values()):
        wins[label]['every'] += 1
  n = len(summaries)
  lines.append('')
  for label, what in ((ablation, ablation), ('best', 'the best baseline')):
    per_metric = ', '.join(f'{s[:3]} {k} {wins[label][f"{s}/{k}"]}' for s, k in HEADLINE)
    lines.append(f'FLIG >= {what}, datasets of {n}: {per_metric}; on every metric '
                 f'{wins[label]["every"]}.')
  return '\n'.join(lines)


def _signed(stat: Mapping[str, Any], named: bool) -> str:
  text = f'{stat["mean"]:+.3f} ± {stat["se"]:.3f}'
  return f'{text} ({stat["baseline"]})' if named else text


def to_json(summaries: Mapping[str, Summary]) -> dict[str, Any]:
  """The summaries with each dataset's FLIG-minus-best differences added, ready for json.dump."""
  return {name: {**s, 'flig_minus_best': flig_minus_best(s)} for name, s in summaries.items()}
