"""Tests for results over runs: flig_jax.evaluation.aggregate (on metrics written here),
`evaluate.py` with several checkpoints (real evaluations of the smoke run), and scripts/results.py's
aggregation (on metrics written here, no training)."""

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, subprocess_env

from flig_jax import cli, model
from flig_jax.evaluation import aggregate, report

MODELS = ('flig', 'ridge', 'mlp', 'cae_ridge')


def fake_metrics(dataset='synthetic', offset=0.0, session='', models=MODELS):
  """A metrics.json dict whose every metric is model index / 10 + offset (flig lowest)."""
  dec = {m: {k: i / 10 + offset for k in report.DECODING_KEYS} for i, m in enumerate(models)}
  enc = {m: {k: i / 10 + offset for k in report.ENCODING_KEYS} for i, m in enumerate(models)}
  return {'dataset': dataset, 'split': 'test', 'n': 4, 'decoding': dec, 'encoding': enc,
          'roundtrip_max_abs_err': 1e-6, 'session': session}


def test_mean_and_sd_over_runs():
  s = aggregate.aggregate([fake_metrics(offset=o) for o in (0.0, 0.02, 0.07)])
  pcc = s['decoding']['ridge']['pcc']
  assert pcc['mean'] == pytest.approx(0.13) and pcc['values'] == pytest.approx([0.1, 0.12, 0.17])
  assert pcc['sd'] == pytest.approx(0.036055513, rel=1e-6)  # sample sd, ddof 1
  assert s['runs'] == 3 and s['dataset'] == 'synthetic' and set(s['encoding']) == set(MODELS)
  one = aggregate.aggregate([fake_metrics()])
  assert one['encoding']['mlp']['pcc_mean'] == {'mean': 0.2, 'sd': 0.0, 'values': [0.2]}


def test_models_missing_from_a_run_are_dropped():
  s = aggregate.aggregate([fake_metrics(), fake_metrics(models=('flig', 'ridge'))])
  assert set(s['decoding']) == {'flig', 'ridge'}


@pytest.mark.parametrize('other', [fake_metrics('digit69'), fake_metrics(session='190927'),
                                   {**fake_metrics(), 'split': 'val'}])
def test_runs_of_different_datasets_do_not_mix(other):
  with pytest.raises(ValueError, match='mix datasets'):
    aggregate.aggregate([fake_metrics(), other])
  with pytest.raises(ValueError, match='no runs'):
    aggregate.aggregate([])


def test_flig_minus_best_is_paired_against_the_best_mean():
  a, b = fake_metrics(), fake_metrics(offset=0.1)
  a['decoding']['mlp']['pcc'] = 0.9  # mlp best on average, though not in run b
  b['decoding']['mlp']['pcc'] = 0.2
  b['decoding']['flig']['pcc'] = 0.5
  d = aggregate.flig_minus_best(aggregate.aggregate([a, b]))
  assert set(d) == set(aggregate.HEADLINE_KEYS)
  assert d['decoding/pcc']['baseline'] == 'mlp'
  assert d['decoding/pcc']['values'] == pytest.approx([0.0 - 0.9, 0.5 - 0.2])
  assert d['encoding/pcc_mean']['baseline'] == 'cae_ridge'
  assert d['encoding/pcc_mean']['mean'] == pytest.approx(-0.3)


def test_tables():
  s = aggregate.aggregate([fake_metrics(offset=o) for o in (0.0, 0.1)])
  text = aggregate.format_table(s)
  assert 'mean ± sd over 2 run(s)' in text and '0.350 ± 0.071' in text
  md = aggregate.markdown_table({'syn': s}).splitlines()
  assert len(md) == 2 + len(MODELS)
  assert md[-1].startswith('| syn | cae_ridge | 2 | **0.350 ± 0.071** |')


def test_differences_table_counts_datasets_where_flig_wins_everywhere():
  lose = aggregate.aggregate([fake_metrics()])              # flig lowest everywhere
  win = fake_metrics()
  for section in ('decoding', 'encoding'):
    for key in win[section]['flig']:
      win[section]['flig'][key] = 0.3 - 1e-7                  # cae_ridge's value: a tie counts
  md = aggregate.differences_table({'a': lose, 'b': aggregate.aggregate([win])}).splitlines()
  assert md[2].startswith('| a - cae_ridge | -0.300 ± 0.000 |')
  assert md[3].startswith('| a - best | -0.300 ± 0.000 (cae_ridge) |')
  assert md[5].startswith('| b - best | -0.000 ± 0.000 (cae_ridge) |')
  assert md[-2] == ('FLIG >= cae_ridge, datasets of 2: dec pcc 1, dec ssim 1, '
                    'dec identification 1, enc pcc_mean 1; on every metric 1.')
  assert md[-1].startswith('FLIG >= the best baseline, datasets of 2: dec pcc 1,')
  # The cells are mean ± standard error of the paired differences: sd / sqrt(runs).
  two = aggregate.aggregate([fake_metrics(), {**fake_metrics(), 'decoding': {
      **fake_metrics()['decoding'], 'flig': {k: 0.1 for k in report.DECODING_KEYS}}}])
  pcc = aggregate.flig_minus_best(two, 'cae_ridge')['decoding/pcc']
  assert pcc['se'] == pytest.approx(pcc['sd'] / 2 ** 0.5) and pcc['se'] > 0
  assert f'{pcc["mean"]:+.3f} ± {pcc["se"]:.3f}' in aggregate.differences_table({'t': two})
  only_ridge = aggregate.flig_minus_best(lose, 'ridge')
  assert {d['baseline'] for d in only_ridge.values()} == {'ridge'}


def test_read_metrics_names_a_bad_file(tmp_path):
  (tmp_path / 'metrics.json').write_text('{"dataset": "x"}')
  with pytest.raises(ValueError, match=r'metrics.json: .*lack the keys'):
    aggregate.read_metrics(tmp_path)
  (tmp_path / 'metrics.json').write_text('{')
  with pytest.raises(ValueError, match='not JSON'):
    aggregate.read_metrics(tmp_path / 'metrics.json')


def test_evaluate_several_checkpoints_prints_mean_and_sd(smoke_workdir, tmp_path, capsys):
  """Two real evaluations: the smoke run, and its weights saved with another seed (the MLP
  baselines then differ); the table printed after them is mean ± sd of their metrics.json."""
  first, second = tmp_path / 'a', tmp_path / 'b'
  shutil.copytree(smoke_workdir, first)
  m = model.load(smoke_workdir)
  config = m.config.copy_and_resolve_references()
  config.seed = int(config.seed) + 1
  model.save(second, config, m.variables, m.meta, step=m.meta.step)
  assert cli.run_evaluations([str(first), str(second)], split='test') == 0
  runs = [aggregate.read_metrics(run / 'eval_test') for run in (first, second)]
  summary = aggregate.aggregate(runs)
  assert summary['runs'] == 2
  out = capsys.readouterr().out
  assert aggregate.format_table(summary) in out
  mlp = summary['decoding']['mlp']['pcc']
  assert mlp['values'] == [runs[0]['decoding']['mlp']['pcc'], runs[1]['decoding']['mlp']['pcc']]
  assert mlp['sd'] > 0 and f"{mlp['mean']:.3f} ± {mlp['sd']:.3f}" in out


def test_evaluate_several_checkpoints_stops_at_a_failure(smoke_workdir, tmp_path, capsys):
  good = tmp_path / 'good'
  shutil.copytree(smoke_workdir, good)
  assert cli.run_evaluations([str(tmp_path / 'nowhere'), str(good)]) == 1
  assert 'no checkpoint' in capsys.readouterr().err
  assert not (good / 'eval_test').exists()     # the second run is not evaluated


@pytest.mark.slow   # scripts/results.py in a child process
def test_results_script_aggregates_finished_runs(tmp_path):
  root = tmp_path / 'runs'
  for name, dataset in (('synthetic', 'synthetic'), ('digit69', 'digit69')):
    for seed in (0, 1):
      report.write_metrics(str(root / name / f'seed{seed}' / 'eval_test' / 'metrics.json'),
                           fake_metrics(dataset, offset=0.01 * seed))
  out, figure = tmp_path / 'out', tmp_path / 'fig.png'
  proc = subprocess.run(
      [sys.executable, str(ROOT / 'scripts' / 'results.py'), '--smoke', f'--root={root}',
       f'--out={out}', f'--figure={figure}'],
      env=subprocess_env(), cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.count('done before') == 4
  summary = json.loads((out / 'summary.json').read_text())
  assert list(summary) == ['synthetic', 'digit69']
  assert summary['digit69']['decoding']['flig']['pcc']['values'] == pytest.approx([0.0, 0.01])
  assert summary['synthetic']['flig_minus_best']['decoding/ssim']['mean'] == pytest.approx(-0.3)
  assert '| digit69 | flig | 2 |' in (out / 'summary.md').read_text()
  assert figure.stat().st_size > 1000


@pytest.mark.slow   # scripts/results.py in a child process
def test_results_script_rejects_an_unknown_dataset(tmp_path):
  proc = subprocess.run(
      [sys.executable, str(ROOT / 'scripts' / 'results.py'), '--datasets=mnist',
       f'--root={tmp_path}'], env=subprocess_env(), cwd=ROOT, capture_output=True, text=True,
      timeout=120, check=False)
  assert proc.returncode == 1 and 'error: unknown dataset(s)' in proc.stderr


def _results_script():
  spec = importlib.util.spec_from_file_location('results_script', ROOT / 'scripts' / 'results.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_results_script_counts_what_selection_kept(smoke_workdir, tmp_path):
  results = _results_script()
  m = model.load(smoke_workdir)
  kept = results.kept(smoke_workdir)
  assert (kept['encoder'], kept['decoder']) == tuple(m.meta.selected_steps)
  paths = m.variables.get('pixel_path', {})
  assert kept['pixel_weight'] == float(paths.get('weight', 0.0))
  assert kept['encoder_pixel_weight'] == float(paths.get('enc_weight', 0.0))
  assert results.kept(tmp_path) is None                      # metrics alone, no checkpoint
  table = results.kept_table({
      'a': [{'encoder': 100, 'decoder': 0, 'pixel_weight': 0.0, 'encoder_pixel_weight': 0.25},
            {'encoder': 0, 'decoder': 0, 'pixel_weight': 0.5, 'encoder_pixel_weight': 0.0}],
      'b': [{'encoder': 300, 'decoder': 200, 'pixel_weight': 0.0, 'encoder_pixel_weight': 1.0}]})
  assert '| a | 2 | 1 | 0 | 1 | 1 |' in table and '| b | 1 | 1 | 1 | 1 | 0 |' in table
  assert table.endswith('| all | 3 | 2 | 1 | 2 | 1 |')
