"""Where a training run starts in its workdir: the newest checkpoint that restores (damaged newer
ones are set aside, with a note), a saved config that agrees with the given one, and a metrics log
cut back to that checkpoint.

Which fields may change on resume is `config_checks.rule(name).on_resume`: more steps, how often
to save or log, where the data lies (any time); stage-2 settings (while the run is still in
stage 1). Any other change (model, data, optimiser) is refused unless `allow_config_change`.
"""

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_collections

from flig_jax import checkpoint_recovery, checkpointing, config_checks
from flig_jax import model as model_lib
from flig_jax.training import metrics_file

# Beside every data field that may not change on resume: the fields that shape the autoencoder.
AUTOENCODER_FIELDS = ('model.feature_dim', 'model.cae_widths')


def autoencoder_from(config: ml_collections.ConfigDict) -> tuple[Any, checkpointing.Meta]:
  """The trained autoencoder of the run `config.stage1.init_from` names, and its checkpoint's meta.

  Raises:
    ValueError: there is no trained autoencoder there (no checkpoint from stage 2 on), or its
      run's data or autoencoder fields differ from `config`'s (it would have been trained on other
      images, or be shaped otherwise).
  """
  source = config.stage1.init_from
  try:
    source_model = model_lib.load(source)
  except FileNotFoundError:
    raise ValueError(f'config.stage1.init_from = {source!r}: no trained autoencoder there (the '
                     'workdir of a run that has reached stage 2)') from None
  saved = {k: checkpointing.json_tuples(v) for k, v in config_checks.flatten(source_model.config)}
  new = {k: checkpointing.json_tuples(v) for k, v in config_checks.flatten(config)}
  shaping = [k for k in new if k in AUTOENCODER_FIELDS or (
      k.startswith('data.') and config_checks.rule(k).on_resume == config_checks.FIXED)]
  differ = [f'{k}: {saved[k]!r} there, {new[k]!r} here' for k in shaping
            if k in saved and saved[k] != new[k]]
  if differ:
    raise ValueError(f'config.stage1.init_from = {source!r}: that run was trained with other data '
                     'or another autoencoder: ' + '; '.join(differ))
  return source_model.variables['params']['autoencoder'], source_model.meta


class ConfigChanged(ValueError):
  """The config differs from the saved one in fields that must not change on resume."""


def saved_steps(directory: str | os.PathLike) -> list[int]:
  """The committed steps under a checkpoint directory, ascending, damaged or not."""
  return checkpoint_recovery.steps_holding(directory)


def _may_change(name: str, stage: int) -> bool:
  rule = config_checks.rule(name).on_resume
  return rule == config_checks.ANY_TIME or (rule == config_checks.IN_STAGE1 and stage == 1)


def refused_changes(saved: Mapping[str, Any], config: ml_collections.ConfigDict,
                    meta: checkpointing.Meta) -> list[str]:
  """'field: saved -> new' for each change that resuming at checkpoint `meta` does not allow."""
  stage, stage_step = meta.stage, meta.stage_step
  old = {k: checkpointing.json_tuples(v) for k, v in config_checks.flatten(saved)}
  new = {k: checkpointing.json_tuples(v) for k, v in config_checks.flatten(config)}
  out = [f'{k}: {old[k]!r} -> {new[k]!r}' for k in new
         if k in old and old[k] != new[k] and not _may_change(k, stage)]
  steps = new.get(f'stage{stage}.steps')
  if steps is not None and steps < stage_step:
    out.append(f'stage{stage}.steps: {steps} is below the step the run reached in stage {stage} '
               f'({stage_step})')
  return out


def _names(fields: list[str], rule: str, *wider: str) -> str:
  """The `fields` with resume rule `rule`; 'section.*' for a section whose fields all have `rule`
  or one of the `wider` rules."""
  rules = {k: config_checks.rule(k).on_resume for k in fields}
  names = [k for k in config_checks.RULES if rules.get(k) == rule]  # in the table's order
  whole = {k.rpartition('.')[0] for k in names if '.' in k} - {
      k.rpartition('.')[0] for k, r in rules.items() if r not in (rule, *wider)}
  return ', '.join(dict.fromkeys(
      f'{k.rpartition(".")[0]}.*' if k.rpartition('.')[0] in whole else k for k in names))


def may_change(config: ml_collections.ConfigDict) -> str:
  """Which fields of `config` may change on resume, in a line."""
  fields = [k for k, _ in config_checks.flatten(config)]
  return (f'may change on resume: {_names(fields, config_checks.ANY_TIME)}; and while the run is '
          f'in stage 1: {_names(fields, config_checks.IN_STAGE1, config_checks.ANY_TIME)}')


def start_point(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                allow_config_change: bool = False, writer: bool = True,
                note: Callable[[str], Any] = print) -> checkpointing.Meta | None:
  """Finds the checkpoint to resume from, checks the config against it, trims the metrics log.

  Args:
    config: the config of the run about to start.
    workdir: its working directory.
    allow_config_change: resume even if fields that shape the model, data or optimiser changed.
    writer: whether this process may move files and rewrite the log (process 0 of a run).
    note: prints a line for the user.

  Returns:
    The meta of the newest checkpoint that restores, or None for a fresh start. A resumed run
    restores its `state` and keeps its `model` as the run's result, so both are read in full to
    check them (with `meta` and `config`).

  Raises:
    ConfigChanged: the config differs in a field that may not change, and not
      `allow_config_change`.
  """
  directory = Path(checkpointing.checkpoint_dir(workdir))

  def skipped(step: int, reason: str) -> None:
    where = ''
    if writer:
      where = f'; moved to {checkpoint_recovery.set_aside(directory, step, workdir)}'
    note(f'note: checkpoint step {step} does not restore, skipped: {reason}{where}')

  def read(step: int) -> tuple[checkpointing.Meta, ml_collections.ConfigDict]:
    # `state` is what resuming restores, `model` the run's result: both must read in full.
    meta = checkpointing.read_meta(directory, step)
    saved = checkpointing.read_config(directory, step)
    for name in checkpoint_recovery.ARRAY_ITEMS:
      if (directory / str(step) / name).exists():
        checkpoint_recovery.read_arrays(directory / str(step), name)
    return meta, saved

  found = checkpoint_recovery.first_that_restores(saved_steps(directory), read, skipped)
  meta = None
  if found is not None:
    meta, saved = found
    changes = refused_changes(saved, config, meta)
    if changes and not allow_config_change:
      raise ConfigChanged(
          f'{Path(workdir)} holds a run whose checkpoint (step {meta.step}, stage {meta.stage}) '
          f'was made with another config; these fields shape the model, data or optimiser:\n  '
          + '\n  '.join(changes) + '\nrun with the saved values, use another --workdir, or pass '
          f'--allow_config_change to resume with the new ones ({may_change(config)})')
    if changes:
      note('note: resuming with a changed config (--allow_config_change): ' + '; '.join(changes))
  if writer:
    stage, stage_step = (meta.stage, meta.stage_step) if meta else (0, 0)
    dropped = metrics_file.trim(Path(workdir) / metrics_file.NAME, stage, stage_step)
    if dropped:
      where = f'checkpoint step {meta.step}' if meta else 'a fresh start'
      note(f'note: {metrics_file.NAME}: dropped {dropped} (resuming from {where})')
  return meta
