"""Checks a run's config before any work: each field's type and range, one line per fault.

`FIELDS` is the table: one line per config field, with the check of its value and whether it may
change when a run resumes. A new config field is one new line here (a test fails until it has one).

  config_checks.validate(config)   # raises ConfigError: 'config.stage1.steps = -5: must be ...'
"""

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
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


Check = Callable[[Any], str | None]  # the allowed range when `value` is outside it, else None


@dataclasses.dataclass(frozen=True)
class Field:
  """A config field: `check(value)` names the allowed range when the value is outside it;
  `on_resume` says when it may change on resume (FIXED, ANY_TIME or IN_STAGE1)."""
  check: Check
  on_resume: str = FIXED


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def integer(low: int, high: int | None = None) -> Check:
  """An int in [low, high] (high: no bound when None)."""
  allowed = f'an integer >= {low}' if high is None else f'an integer in [{low}, {high}]'
  return lambda v: None if _is_int(v) and v >= low and (high is None or v <= high) else allowed


def number(low: float = 0.0, high: float | None = None, strict: bool = False) -> Check:
  """A finite float (or int) >= low (> low when `strict`), and < high when given."""
  allowed = f'a number {">" if strict else ">="} {low:g}' + (
      f' and < {high:g}' if high is not None else '')

  def check(v):
    if not (isinstance(v, (int, float)) and not isinstance(v, bool)) or not math.isfinite(v):
      return allowed
    ok = (v > low if strict else v >= low) and (high is None or v < high)
    return None if ok else allowed
  return check


def one_of(*names: str) -> Check:
  """One of `names`."""
  return lambda v: None if v in names else 'one of ' + ', '.join(repr(n) for n in names)


def boolean(v: Any) -> str | None:
  return None if isinstance(v, bool) else 'True or False'


def text(v: Any) -> str | None:
  return None if isinstance(v, str) else 'a string'


def integers(low: int) -> Check:
  """A non-empty tuple of ints >= low."""
  allowed = f'a non-empty tuple of integers >= {low}'
  return lambda v: None if (isinstance(v, (tuple, list)) and v
                            and all(_is_int(x) and x >= low for x in v)) else allowed


_WEIGHT = Field(number(0.0), IN_STAGE1)  # a stage-2 loss weight

FIELDS: dict[str, Field] = {
    'seed': Field(integer(0)),
    'data.name': Field(one_of('digit69', 'cowley_v4', 'npz', 'synthetic')),
    'data.dir': Field(text, ANY_TIME),
    'data.path': Field(text),
    'data.session': Field(text),
    'data.image_size': Field(integer(4)),
    'data.grayscale': Field(boolean),
    'data.val_fraction': Field(number(0.0, 1.0)),
    'data.split_seed': Field(integer(0)),
    'data.synthetic_mode': Field(one_of('fmri', 'spikes', 'patterns')),
    'data.num_train': Field(integer(2)),
    'data.num_test': Field(integer(2)),
    'data.num_units': Field(integer(1)),
    'model.feature_dim': Field(integer(2)),
    'model.cae_widths': Field(integers(1)),
    'model.adapter_components': Field(integer(0)),
    'model.flow_blocks': Field(integer(1)),
    'model.flow_hidden': Field(integer(1)),
    'model.flow_type': Field(one_of('augmented', 'plain')),
    'model.coupling': Field(one_of('affine', 'spline')),
    'model.spline_bins': Field(integer(2)),
    'model.spline_range': Field(number(0.0, strict=True)),
    'model.disc_hidden': Field(integer(1), IN_STAGE1),
    'model.dtype': Field(one_of('float32', 'bfloat16')),
    'stage1.steps': Field(integer(1), IN_STAGE1),
    'stage1.batch_size': Field(integer(1)),
    'stage1.learning_rate': Field(number(0.0, strict=True)),
    'stage1.weight_decay': Field(number(0.0)),
    'stage1.ssim_weight': Field(number(0.0)),
    'stage1.augment': Field(boolean),
    'stage1.max_shift': Field(number(0.0)),
    'stage1.max_rotation': Field(number(0.0)),
    'stage1.elastic_strength': Field(number(0.0)),
    'stage2.steps': Field(integer(1), ANY_TIME),
    'stage2.batch_size': Field(integer(1), IN_STAGE1),
    'stage2.learning_rate': Field(number(0.0, strict=True), IN_STAGE1),
    'stage2.disc_learning_rate': Field(number(0.0, strict=True), IN_STAGE1),
    'stage2.weight_decay': _WEIGHT,
    'stage2.local_forward': _WEIGHT,
    'stage2.local_inverse': _WEIGHT,
    'stage2.likelihood': _WEIGHT,
    'stage2.adversarial': _WEIGHT,
    'stage2.adversarial_inverse': _WEIGHT,
    'stage2.mixup': _WEIGHT,
    'stage2.response_noise': _WEIGHT,
    'stage2.pixel': _WEIGHT,
    'stage2.gradient_penalty': _WEIGHT,
    'stage2.eval_every_steps': Field(integer(1), ANY_TIME),
    'stage2.select_by': Field(one_of('val_pcc', 'last'), IN_STAGE1),
    'stage2.select_margin': Field(number(0.0), IN_STAGE1),
    'checkpoint.every_steps': Field(integer(1), ANY_TIME),
    'checkpoint.keep': Field(integer(1), ANY_TIME),
    'log_every_steps': Field(integer(1), ANY_TIME),
    'num_figure_images': Field(integer(1), ANY_TIME),
    'distributed': Field(boolean, ANY_TIME),
}


def flatten(config: ml_collections.ConfigDict | Mapping[str, Any],
            prefix: str = '') -> Iterator[tuple[str, Any]]:
  """('a.b', value) for every leaf field."""
  for key, value in config.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      yield from flatten(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def faults(config: ml_collections.ConfigDict) -> list[str]:
  """One line per bad field: 'config.<field> = <value>: must be <allowed range>'."""
  values = dict(flatten(config))
  out = []
  for name, value in values.items():
    field = FIELDS.get(name)
    if field is None:
      out.append(f'config.{name} = {value!r}: unknown field (the known fields and their ranges '
                 'are in flig_jax/config_checks.py)')
      continue
    allowed = field.check(value)
    if allowed:
      out.append(f'config.{name} = {value!r}: must be {allowed}')
  out.extend(f'config.{name}: missing' for name in FIELDS if name not in values)
  if not out and values['data.path'] and values['data.name'] != 'npz':
    out.append(f"config.data.path = {values['data.path']!r}: read only by the npz dataset, and "
               f"config.data.name is {values['data.name']!r}; add --config.data.name=npz")
  if not out:
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
