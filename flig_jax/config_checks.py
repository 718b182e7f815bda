"""Checks a run's config before any work: each field's type and range, one line per fault.

`configs/default.py` is the schema: it names every field, and each default's type is the field's
type (a new field is a line there). `RULES` here holds only what a default cannot say: a field's
allowed range or choices, and when it may change on resume. A number (or tuple of numbers) needs
a range here (a test fails until it has one); a string or boolean without a rule may take any value
of its type, and a field without a rule is FIXED on resume. Choices are read from the code that
implements them (`data.loading.LOADERS`, `nn.flow.FLOW_TYPES`, ...), never listed here.

  config_checks.validate(config)   # raises ConfigError: 'config.stage1.steps = -5: must be ...'
"""

import dataclasses
import importlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import ml_collections

# When a field may differ between a run's saved config and the config it is resumed with.
FIXED = 'fixed'          # never (the model, data or optimiser would change)
ANY_TIME = 'any time'    # always (how long, how often to save or log, where the data lies)
IN_STAGE1 = 'in stage 1'  # while the run is still in stage 1 (stage 2 has not started)


class ConfigError(ValueError):
  """A config with bad fields; `faults` holds one line per field."""

  def __init__(self, faults: list[str]):
    super().__init__('\n'.join(faults))
    self.faults = list(faults)


@dataclasses.dataclass(frozen=True)
class Range:
  """low <= value (low < value when `strict`) and value < high when `high` is given; for a tuple,
  each element."""
  low: float
  high: float | None = None
  strict: bool = False

  def allows(self, value: Any) -> bool:
    items = value if isinstance(value, (tuple, list)) else (value,)
    return all((x > self.low if self.strict else x >= self.low)
               and (self.high is None or x < self.high) for x in items)

  def describe(self, kind: str) -> str:
    """'<kind> >= low[ and < high]', e.g. 'an integer >= 1'."""
    return (f'{kind} {">" if self.strict else ">="} {self.low:g}'
            + (f' and < {self.high:g}' if self.high is not None else ''))


@dataclasses.dataclass(frozen=True)
class OneOf:
  """One of the names `names()` gives, read when the config is checked from the code that
  implements them (a new dataset or flow type is then allowed without an edit here)."""
  names: Callable[[], Iterable[str]]

  def allows(self, value: Any) -> bool:
    return value in tuple(self.names())

  def describe(self, kind: str) -> str:
    del kind
    return 'one of ' + ', '.join(repr(n) for n in self.names())


@dataclasses.dataclass(frozen=True)
class Rule:
  """What configs/default.py cannot say about a field: its allowed values (`allowed`; None: any
  value of its type) and when it may change on resume (FIXED, ANY_TIME or IN_STAGE1)."""
  allowed: Range | OneOf | None = None
  on_resume: str = FIXED


def _registry(module: str, name: str) -> Callable[[], Iterable[str]]:
  """The choices `module.name` defines (a registry next to the code implementing them), imported
  only when a config is checked."""
  return lambda: getattr(importlib.import_module(module), name)


_POSITIVE = Range(0.0, strict=True)
_WEIGHT = Rule(Range(0.0), IN_STAGE1)  # a stage-2 loss weight

RULES: dict[str, Rule] = {
    'seed': Rule(Range(0)),
    'data.name': Rule(OneOf(_registry('flig_jax.data.loading', 'LOADERS'))),
    'data.dir': Rule(on_resume=ANY_TIME),
    'data.image_size': Rule(Range(4)),
    'data.folds': Rule(Range(0)),
    'data.val_fraction': Rule(Range(0.0, 1.0)),
    'data.split_seed': Rule(Range(0)),
    'data.synthetic_mode': Rule(OneOf(_registry('flig_jax.data.synthetic', 'MODES'))),
    'data.num_train': Rule(Range(2)),
    'data.num_test': Rule(Range(2)),
    'data.num_units': Rule(Range(1)),
    'model.feature_dim': Rule(Range(2)),
    'model.cae_widths': Rule(Range(1)),
    'model.adapter_components': Rule(Range(0)),
    'model.flow_blocks': Rule(Range(1)),
    'model.flow_hidden': Rule(Range(1)),
    'model.flow_dropout': Rule(Range(0.0, 1.0), IN_STAGE1),
    'model.flow_type': Rule(OneOf(_registry('flig_jax.nn.flow', 'FLOW_TYPES'))),
    'model.coupling': Rule(OneOf(_registry('flig_jax.nn.flow', 'COUPLINGS'))),
    'model.decoder_input': Rule(OneOf(_registry('flig_jax.nn.flig', 'DECODER_INPUTS')),
                                IN_STAGE1),
    'model.spline_bins': Rule(Range(2)),
    'model.spline_range': Rule(_POSITIVE),
    'model.disc_hidden': Rule(Range(1), IN_STAGE1),
    'model.dtype': Rule(OneOf(_registry('flig_jax.nn.precision', 'DTYPES'))),
    'stage1.steps': Rule(Range(1), IN_STAGE1),
    'stage1.batch_size': Rule(Range(1)),
    'stage1.learning_rate': Rule(_POSITIVE),
    'stage1.weight_decay': Rule(Range(0.0)),
    'stage1.ssim_weight': Rule(Range(0.0)),
    'stage1.max_shift': Rule(Range(0.0)),
    'stage1.max_rotation': Rule(Range(0.0)),
    'stage1.elastic_strength': Rule(Range(0.0)),
    'stage2.steps': Rule(Range(1), ANY_TIME),
    'stage2.batch_size': Rule(Range(1), IN_STAGE1),
    'stage2.learning_rate': Rule(_POSITIVE, IN_STAGE1),
    'stage2.disc_learning_rate': Rule(_POSITIVE, IN_STAGE1),
    'stage2.weight_decay': _WEIGHT,
    'stage2.local_forward': _WEIGHT,
    'stage2.local_forward_weighting': Rule(OneOf(lambda: ('variance', 'whitened')), IN_STAGE1),
    'stage2.start_encoder_error': Rule(
        OneOf(_registry('flig_jax.training.closed_form', 'ENCODER_ERRORS')), IN_STAGE1),
    'stage2.coupling_weight_decay': _WEIGHT,
    'stage2.local_inverse': _WEIGHT,
    'stage2.likelihood': _WEIGHT,
    'stage2.adversarial': _WEIGHT,
    'stage2.adversarial_inverse': _WEIGHT,
    'stage2.mixup': _WEIGHT,
    'stage2.response_noise': _WEIGHT,
    'stage2.pixel': _WEIGHT,
    'stage2.gradient_penalty': _WEIGHT,
    'stage2.eval_every_steps': Rule(Range(1), ANY_TIME),
    'stage2.select_by': Rule(OneOf(_registry('flig_jax.training.validation', 'SELECT_BY')),
                             IN_STAGE1),
    'stage2.select_margin': Rule(Range(0.0), IN_STAGE1),
    'checkpoint.every_steps': Rule(Range(1), ANY_TIME),
    'checkpoint.keep': Rule(Range(1), ANY_TIME),
    'log_every_steps': Rule(Range(1), ANY_TIME),
    'num_figure_images': Rule(Range(1), ANY_TIME),
    'distributed': Rule(on_resume=ANY_TIME),
}
_FREE = Rule()


def rule(name: str) -> Rule:
  """The rule of field `name` ('a.b'): any value of its type and FIXED when RULES has none."""
  return RULES.get(name, _FREE)


def flatten(config: ml_collections.ConfigDict | Mapping[str, Any],
            prefix: str = '') -> Iterator[tuple[str, Any]]:
  """('a.b', value) for every leaf field."""
  for key, value in config.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      yield from flatten(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def schema() -> dict[str, Any]:
  """{'a.b': default} for every field of configs/default.py, the one list of the config's fields
  (importable from the repository root, where train.py runs)."""
  from configs import default  # pylint: disable=g-import-not-at-top
  return dict(flatten(default.get_config()))


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# A default's type -> (whether a value has that type, the type in words; plural for tuples).
_TYPES: dict[type, tuple[Callable[[Any], bool], str, str]] = {
    bool: (lambda v: isinstance(v, bool), 'True or False', 'booleans'),
    int: (_is_int, 'an integer', 'integers'),
    float: (_is_number, 'a number', 'numbers'),
    str: (lambda v: isinstance(v, str), 'a string', 'strings'),
}


def _type_of(default: Any) -> tuple[Callable[[Any], bool], str]:
  """(whether a value has the type of `default`, that type in words)."""
  if isinstance(default, (tuple, list)):
    is_item, _, plural = _TYPES[type(default[0])]
    return (lambda v: isinstance(v, (tuple, list)) and bool(v) and all(map(is_item, v)),
            f'a non-empty tuple of {plural}')
  is_type, words, _ = _TYPES[type(default)]
  return is_type, words


def _fault(name: str, value: Any, default: Any) -> str | None:
  """'must be ...' naming the allowed values when `value` is outside them, else None."""
  is_type, kind = _type_of(default)
  allowed = rule(name).allowed
  if is_type(value) and (allowed is None or allowed.allows(value)):
    return None
  return kind if allowed is None else allowed.describe(kind)


def faults(config: ml_collections.ConfigDict) -> list[str]:
  """One line per bad field: 'config.<field> = <value>: must be <allowed range>'."""
  fields = schema()
  values = dict(flatten(config))
  out = []
  for name, value in values.items():
    if name not in fields:
      out.append(f'config.{name} = {value!r}: unknown field (the fields are in configs/default.py, '
                 'their ranges in flig_jax/config_checks.py)')
      continue
    allowed = _fault(name, value, fields[name])
    if allowed:
      out.append(f'config.{name} = {value!r}: must be {allowed}')
  out.extend(f'config.{name}: missing' for name in fields if name not in values)
  if not out and values['data.path'] and values['data.name'] != 'npz':
    out.append(f"config.data.path = {values['data.path']!r}: read only by the npz dataset, and "
               f"config.data.name is {values['data.name']!r}; add --config.data.name=npz")
  if not out:
    folds, fraction = values['data.folds'], values['data.val_fraction']
    if folds >= 2 and fraction > 0:
      out.append(f'config.data.val_fraction = {fraction!r}: must be 0 when data.folds = {folds} '
                 '(cross-validation uses every training pair); set data.folds=0 to select on a '
                 'validation split instead')
    k, d = values['model.adapter_components'], values['model.feature_dim']
    if k > d:
      out.append(f'config.model.adapter_components = {k}: must be at most model.feature_dim '
                 f'({d}), or 0 for min(feature_dim, rank)')
  return out


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError (one line per fault) unless every field has a valid value."""
  found = faults(config)
  if found:
    raise ConfigError(found)
