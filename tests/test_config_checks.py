"""Config validation: configs/default.py names the fields and their types, config_checks.RULES only
ranges, choices and resume rules; bad values and unknown variants or fields are refused in one line
before any work."""

import subprocess
import sys

import pytest
from conftest import ROOT, subprocess_env

from configs import default, fmri, spikes, synthetic
from flig_jax import config_checks


@pytest.mark.parametrize('config', [
    default.get_config(), fmri.get_config(), fmri.get_config('smoke'), spikes.get_config('smoke'),
    synthetic.get_config('spikes,smoke'),
    synthetic.get_config('patterns')])
def test_shipped_configs_pass_and_have_the_fields_of_the_default(config):
  assert config_checks.faults(config) == []
  assert {name for name, _ in config_checks.flatten(config)} == set(config_checks.schema())


def test_every_number_field_has_a_range_and_rules_name_only_default_fields():
  fields = config_checks.schema()
  assert set(config_checks.RULES) <= set(fields)
  for name, default_value in fields.items():
    rule = config_checks.rule(name)
    if isinstance(default_value, (bool, str)):  # free by type unless a rule limits them
      continue
    assert isinstance(default_value, (int, float, tuple)), name
    assert rule.allowed is not None, f'{name}: a number field needs a range in RULES'


def test_a_number_field_without_a_range_fails_the_rule_test(monkeypatch):
  # A copy without the rule (deleting from RULES itself would move the key to the end when
  # monkeypatch puts it back, and the table's order is what resume.may_change lists).
  monkeypatch.setattr(config_checks, 'RULES',
                      {k: v for k, v in config_checks.RULES.items() if k != 'stage1.steps'})
  with pytest.raises(AssertionError, match='stage1.steps: a number field needs a range'):
    test_every_number_field_has_a_range_and_rules_name_only_default_fields()


def test_choices_come_from_the_code_that_implements_them(monkeypatch):
  from flig_jax.data import loading
  from flig_jax.nn import flow, precision
  from flig_jax.training import validation
  config = default.get_config().unlock()
  for field, registry in [('data.name', loading.LOADERS), ('model.flow_type', flow.FLOW_TYPES),
                          ('model.coupling', flow.COUPLINGS), ('model.dtype', precision.DTYPES),
                          ('stage2.select_by', validation.SELECT_BY)]:
    section, _, name = field.rpartition('.')
    for value in registry:
      config[section][name] = value
      assert not [f for f in config_checks.faults(config) if f.startswith(f'config.{field} ')]
    config[section][name] = default.get_config()[section][name]
  monkeypatch.setitem(loading.LOADERS, 'my_recording', loading.LOADERS['npz'])
  config.data.name = 'my_recording'
  assert config_checks.faults(config) == []


@pytest.mark.parametrize('field, value, message', [
    ('stage1.steps', -5, 'config.stage1.steps = -5: must be an integer >= 1'),
    ('stage2.steps', 0, 'config.stage2.steps = 0: must be an integer >= 1'),
    ('data.image_size', 0, 'config.data.image_size = 0: must be an integer >= 4'),
    ('stage2.batch_size', 0, 'config.stage2.batch_size = 0: must be an integer >= 1'),
    ('stage2.adversarial', -0.5, 'config.stage2.adversarial = -0.5: must be a number >= 0'),
    ('stage1.learning_rate', 0.0, 'config.stage1.learning_rate = 0.0: must be a number > 0'),
    ('stage1.learning_rate', float('nan'),
     'config.stage1.learning_rate = nan: must be a number > 0'),
    ('data.val_fraction', 1.0,
     'config.data.val_fraction = 1.0: must be a number >= 0 and < 1'),
    ('model.coupling', 'splin',
     "config.model.coupling = 'splin': must be one of 'affine', 'spline'"),
    ('data.name', 'mnist', ("config.data.name = 'mnist': must be one of 'digit69', 'cowley_v4', "
     "'npz', 'synthetic'")),
    ('model.cae_widths', (), ('config.model.cae_widths = (): must be a non-empty tuple of integers '
     '>= 1')),
    ('model.adapter_components', 40, ('config.model.adapter_components = 40: must be at most '
     'model.feature_dim (32), or 0 for min(feature_dim, rank)')),
    ('data.folds', -1, 'config.data.folds = -1: must be an integer >= 0'),
    ('data.val_fraction', 0.1, ('config.data.val_fraction = 0.1: must be 0 when data.folds = 5 '
     '(cross-validation uses every training pair); set data.folds=0 to select on a validation '
     'split instead')),
])
def test_bad_value_gives_one_line_naming_field_value_and_range(field, value, message):
  config = default.get_config().unlock()
  section, _, name = field.rpartition('.')
  (config[section] if section else config)[name] = value
  with pytest.raises(config_checks.ConfigError) as raised:
    config_checks.validate(config)
  assert raised.value.faults == [message]


def test_unknown_field_in_a_config_file_is_refused():
  config = default.get_config()
  config.stage1.stepz = 3
  assert config_checks.faults(config) == [
      ('config.stage1.stepz = 3: unknown field (the fields are in configs/default.py, their '
       'ranges in flig_jax/config_checks.py)')]


def test_unknown_variant_is_refused():
  with pytest.raises(ValueError, match="fmri.py: unknown variant 'smok'; choose from smoke"):
    fmri.get_config('smok')
  assert synthetic.get_config('smoke,spikes').data.synthetic_mode == 'spikes'
  with pytest.raises(ValueError, match=("unknown variant 'spikes:smoke'; choose from smoke, "
                                        'spikes, patterns \\(or none, several joined by commas\\), '
                                        'e.g. --config configs/synthetic.py:smoke,spikes')):
    synthetic.get_config('spikes:smoke')


def _train_stderr(*args: str) -> str:
  proc = subprocess.run([sys.executable, str(ROOT / 'train.py'), '--workdir=/nonexistent/run',
                         *args], env=subprocess_env(), cwd=ROOT, capture_output=True, text=True,
                        timeout=120, check=False)
  assert proc.returncode == 1, proc.stderr[-2000:]
  return proc.stderr


@pytest.mark.parametrize('args, message', [
    (['--config=configs/synthetic.py:smoke', '--config.stage1.steps=-5'],
     'error: config.stage1.steps = -5: must be an integer >= 1'),
    (['--config=configs/fmri.py:smok'],
     ("error: configs/fmri.py: unknown variant 'smok'; choose from smoke (or none), e.g. "
     '--config configs/fmri.py:smoke')),
    (['--config=configs/synthetic.py', '--config.data.image_size=0'],
     'error: config.data.image_size = 0: must be an integer >= 4'),
    (['--config=configs/synthetic.py', '--config.stage1.stepz=3'],
     ("error: --config.stage1.stepz=3: unknown field 'stepz' in config.stage1; did you mean "
     "'steps'?")),
    (['--config=configs/nonexistent.py'],
     "error: --config: [Errno 2] No such file or directory: 'configs/nonexistent.py'"),
])
@pytest.mark.slow   # one train.py process per case
def test_train_refuses_bad_config_in_one_line_before_any_work(args, message):
  # The workdir cannot be created: a run that went past the checks would fail differently.
  assert _train_stderr(*args).strip() == message
