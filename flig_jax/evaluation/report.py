"""The metrics.json of an evaluation: checks its shape (docs/design.md), writes it, prints its
tables."""

import json
import math
import os
from typing import Any

DECODING_KEYS = ('mse', 'pcc', 'ssim', 'identification')
ENCODING_KEYS = ('pcc_mean', 'pcc_median', 'mse')
TOP_KEYS = ('dataset', 'split', 'n', 'decoding', 'encoding', 'roundtrip_max_abs_err')


def _is_float(v: Any) -> bool:
  """A finite real number (int allowed, bool not): JSON has no NaN or Inf."""
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_metrics(metrics: dict[str, Any]) -> None:
  """Raises TypeError or ValueError, naming the fault, if `metrics` is not of the shape that
  docs/design.md gives.

  The shape: `dataset` and `split` strings, `n` an int, `decoding` model -> {mse, pcc, ssim,
  identification}, `encoding` model -> {pcc_mean, pcc_median, mse}, `roundtrip_max_abs_err` a
  number; every metric a finite number. Extra top-level keys are allowed.
  """
  if not isinstance(metrics, dict):
    raise TypeError(f'metrics must be a dict; got {type(metrics).__name__}.')
  missing = [k for k in TOP_KEYS if k not in metrics]
  if missing:
    raise ValueError(f'metrics lack the keys {missing}.')
  for key in ('dataset', 'split'):
    if not isinstance(metrics[key], str):
      raise TypeError(f'metrics[{key!r}] must be a string; got {metrics[key]!r}.')
  n = metrics['n']
  if not isinstance(n, int) or isinstance(n, bool) or n < 0:
    raise ValueError(f"metrics['n'] must be a non-negative int; got {n!r}.")
  if not _is_float(metrics['roundtrip_max_abs_err']):
    raise ValueError("metrics['roundtrip_max_abs_err'] must be a finite number; got "
                     f"{metrics['roundtrip_max_abs_err']!r}.")
  for section, keys in (('decoding', DECODING_KEYS), ('encoding', ENCODING_KEYS)):
    table = metrics[section]
    if not isinstance(table, dict):
      raise TypeError(f'metrics[{section!r}] must map model names to metrics.')
    for model, row in table.items():
      if not isinstance(model, str) or not isinstance(row, dict):
        raise TypeError(f'metrics[{section!r}][{model!r}] must be a dict of metrics.')
      if set(row) != set(keys):
        raise ValueError(f'metrics[{section!r}][{model!r}] has keys {sorted(row)}; '
                         f'expected {list(keys)}.')
      for k, v in row.items():
        if not _is_float(v):
          raise ValueError(f'metrics[{section!r}][{model!r}][{k!r}] must be a finite '
                           f'number; got {v!r}.')


def _normalise(metrics: dict[str, Any]) -> dict[str, Any]:
  """A copy with metric values as python floats (numpy scalars and ints included)."""
  out = dict(metrics)
  out['n'] = int(metrics['n'])
  out['roundtrip_max_abs_err'] = float(metrics['roundtrip_max_abs_err'])
  for section in ('decoding', 'encoding'):
    out[section] = {m: {k: float(v) for k, v in row.items()}
                    for m, row in metrics[section].items()}
  return out


def _coerce_scalars(metrics: dict[str, Any]) -> dict[str, Any]:
  """Turns numpy/JAX scalars into python numbers so validation sees plain types."""
  def coerce(v: Any) -> Any:
    if isinstance(v, dict):
      return {k: coerce(x) for k, x in v.items()}
    if hasattr(v, 'item') and getattr(v, 'shape', None) == ():
      return v.item()
    return v
  return coerce(metrics)


def write_metrics(path: str, metrics: dict[str, Any]) -> str:
  """Validates `metrics` (see `validate_metrics`) and writes it as JSON to `path`.

  Numpy and JAX scalars are accepted and written as python numbers.

  Returns:
    path.

  Raises:
    TypeError: if a part of the metrics has the wrong type (nothing is written).
    ValueError: if keys are missing or extra, or a number is not finite (nothing is written).
  """
  metrics = _coerce_scalars(metrics)
  validate_metrics(metrics)
  metrics = _normalise(metrics)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(metrics, f, indent=2, allow_nan=False)
    f.write('\n')
  return path


def _table(title: str, rows: dict[str, dict[str, float]], keys: tuple[str, ...]) -> str:
  name_w = max([len('model')] + [len(m) for m in rows])
  col_w = [max(len(k), 8) for k in keys]
  head = '  '.join([f'{"model":<{name_w}}'] + [f'{k:>{w}}' for k, w in zip(keys, col_w)])
  lines = [title, head, '-' * len(head)]
  for model, row in rows.items():
    cells = [f'{float(row[k]):>{w}.3f}' if k in row else f'{"-":>{w}}'
             for k, w in zip(keys, col_w)]
    lines.append('  '.join([f'{model:<{name_w}}'] + cells))
  return '\n'.join(lines)


def format_table(metrics: dict[str, Any]) -> str:
  """The decoding and encoding tables (model rows, metric columns, 3 decimals) as text.

  Args:
    metrics: a metrics.json dict; missing sections are skipped.

  Returns:
    the tables, preceded by a line naming the dataset, split and n when given.
  """
  parts = []
  if 'dataset' in metrics:
    head = f"{metrics['dataset']} / {metrics.get('split', '?')} (n = {metrics.get('n', '?')})"
    if 'checkpoint_step' in metrics:
      head += f"; checkpoint step {metrics['checkpoint_step']}"
    if 'roundtrip_max_abs_err' in metrics:
      head += f"; round-trip max |err| = {float(metrics['roundtrip_max_abs_err']):.2e}"
    parts.append(head)
  if metrics.get('decoding'):
    parts.append(_table('decoding (response -> image)', metrics['decoding'], DECODING_KEYS))
  if metrics.get('encoding'):
    parts.append(_table('encoding (image -> response)', metrics['encoding'], ENCODING_KEYS))
  return '\n\n'.join(parts)
