"""Tests of flig_jax.evaluation.report: metrics.json validation, writing and the text tables."""

import json

import numpy as np
import pytest

from flig_jax.evaluation import report


def _metrics():
  return {
      'dataset': 'digit69', 'split': 'test', 'n': 10,
      'decoding': {
          'flig': {'mse': 0.05, 'pcc': 0.71234, 'ssim': 0.4, 'identification': 0.9},
          'ridge': {'mse': np.float32(0.07), 'pcc': 0.5, 'ssim': 0.3, 'identification': 0.8},
      },
      'encoding': {'flig': {'pcc_mean': 0.2, 'pcc_median': 0.18, 'mse': 0.95}},
      'roundtrip_max_abs_err': 1e-6,
  }


def test_write_metrics_round_trips(tmp_path):
  path = report.write_metrics(str(tmp_path / 'out' / 'metrics.json'), _metrics())
  with open(path) as f:
    loaded = json.load(f)
  assert loaded['n'] == 10 and loaded['dataset'] == 'digit69'
  assert isinstance(loaded['decoding']['ridge']['mse'], float)
  assert loaded['decoding']['ridge']['mse'] == pytest.approx(0.07)
  assert loaded['encoding']['flig']['pcc_median'] == 0.18


@pytest.mark.parametrize('break_it, message', [
    (lambda m: m.pop('roundtrip_max_abs_err'), 'lack the keys'),
    (lambda m: m.update(n=10.0), "'n'"),
    (lambda m: m['decoding']['flig'].pop('ssim'), 'expected'),
    (lambda m: m['encoding']['flig'].update(extra=1.0), 'expected'),
    (lambda m: m['decoding']['flig'].update(pcc=float('nan')), 'finite'),
    (lambda m: m['encoding']['flig'].update(mse='0.9'), 'finite'),
    (lambda m: m.update(dataset=3), 'string'),
    (lambda m: m.update(encoding=[]), 'map model names'),
])
def test_write_metrics_rejects_bad_shapes(tmp_path, break_it, message):
  m = _metrics()
  break_it(m)
  path = tmp_path / 'metrics.json'
  with pytest.raises((TypeError, ValueError), match=message):
    report.write_metrics(str(path), m)
  assert not path.exists()


def test_format_table_has_rows_columns_and_three_decimals():
  text = report.format_table(_metrics())
  assert 'digit69 / test (n = 10)' in text
  lines = text.splitlines()
  header = next(line for line in lines if line.startswith('model') and 'identification' in line)
  for col in ('mse', 'pcc', 'ssim', 'identification'):
    assert col in header
  flig_rows = [line for line in lines if line.startswith('flig')]
  assert len(flig_rows) == 2  # one decoding, one encoding row
  assert '0.712' in flig_rows[0] and '0.71234' not in flig_rows[0]
  assert 'pcc_median' in text and '0.950' in flig_rows[1]
  assert 'ridge' in text
