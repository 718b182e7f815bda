"""Where a training run starts in its workdir: the newest checkpoint that restores (damaged newer
ones are set aside, with a note), a saved config that agrees with the given one, and a metrics log
cut back to that checkpoint.

Which fields may change on resume is `config_checks.FIELDS[...].on_resume`: more steps, how often
to save or log, where the data lies (any time); stage-2 settings (while the run is still in
stage 1). Any other change (model, data, optimiser) is refused unless `allow_config_change`.
"""

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections

from flig_jax import checkpoint_recovery, checkpointing, config_checks
from flig_jax.training import metrics_file


class ConfigChanged(ValueError):
  """The config differs from the saved one in fields that must not change on resume."""


def saved_steps(directory: str | os.PathLike) -> list[int]:
  """The committed steps under a checkpoint directory, ascending, damaged or not."""
  return checkpoint_recovery.steps_holding(directory)


def _read_json_item(step_dir: Path, name: str) -> dict[str, Any]:
  files = [p for p in sorted((step_dir / name).iterdir()) if p.name != 'commit_success.txt']
  return json.loads(files[0].read_text())


def _may_change(name: str, stage: int) -> bool:
  field = config_checks.FIELDS.get(name)
  rule = field.on_resume if field else config_checks.FIXED
  return rule == config_checks.ANY_TIME or (rule == config_checks.IN_STAGE1 and stage == 1)


def refused_changes(saved: dict[str, Any], config: ml_collections.ConfigDict,
                    meta: dict[str, Any]) -> list[str]:
  """'field: saved -> new' for each change that resuming at checkpoint `meta` does not allow."""
  stage, stage_step = int(meta.get('stage', 1)), int(meta.get('stage_step', 0))
  old = {k: checkpointing.json_tuples(v) for k, v in config_checks.flatten(saved)}
  new = {k: checkpointing.json_tuples(v) for k, v in config_checks.flatten(config)}
  out = [f'{k}: {old[k]!r} -> {new[k]!r}' for k in new
         if k in old and old[k] != new[k] and not _may_change(k, stage)]
  steps = new.get(f'stage{stage}.steps')
  if steps is not None and steps < stage_step:
    out.append(f'stage{stage}.steps: {steps} is below the step the run reached in stage {stage} '
               f'({stage_step})')
  return out


def _names(rule: str, *wider: str) -> str:
  """The fields with resume rule `rule`; 'section.*' for a section whose fields all have `rule` or
  one of the `wider` rules."""
  fields = config_checks.FIELDS
  names = [k for k, f in fields.items() if f.on_resume == rule]
  whole = {k.rpartition('.')[0] for k in names if '.' in k} - {
      k.rpartition('.')[0] for k, f in fields.items() if f.on_resume not in (rule, *wider)}
  return ', '.join(dict.fromkeys(
      f'{k.rpartition(".")[0]}.*' if k.rpartition('.')[0] in whole else k for k in names))


def may_change() -> str:
  """Which fields may change on resume, in a line."""
  return (f'may change on resume: {_names(config_checks.ANY_TIME)}; and while the run is in '
          f'stage 1: {_names(config_checks.IN_STAGE1, config_checks.ANY_TIME)}')


def start_point(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                allow_config_change: bool = False, writer: bool = True,
                note: Callable[[str], Any] = print) -> tuple[int, dict[str, Any]] | None:
  """Finds the checkpoint to resume from, checks the config against it, trims the metrics log.

  Args:
    config: the config of the run about to start.
    workdir: its working directory.
    allow_config_change: resume even if fields that shape the model, data or optimiser changed.
    writer: whether this process may move files and rewrite the log (process 0 of a run).
    note: prints a line for the user.

  Returns:
    (step, meta) of the newest checkpoint that restores, or None for a fresh start.

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

  step = checkpoint_recovery.newest_good(directory, saved_steps(directory), skipped)
  found = None
  if step is not None:
    meta = {**_read_json_item(directory / str(step), 'meta'), 'step': step}
    saved = _read_json_item(directory / str(step), 'config')
    changes = refused_changes(saved, config, meta)
    if changes and not allow_config_change:
      raise ConfigChanged(
          f'{Path(workdir)} holds a run whose checkpoint (step {step}, stage {meta.get("stage")}) '
          f'was made with another config; these fields shape the model, data or optimiser:\n  '
          + '\n  '.join(changes) + '\nrun with the saved values, use another --workdir, or pass '
          f'--allow_config_change to resume with the new ones ({may_change()})')
    if changes:
      note('note: resuming with a changed config (--allow_config_change): ' + '; '.join(changes))
    found = step, meta
  if writer:
    stage, stage_step = (found[1].get('stage', 1), found[1].get('stage_step', 0)) if found else (
        0, 0)
    dropped = metrics_file.trim(Path(workdir) / metrics_file.NAME, int(stage), int(stage_step))
    if dropped:
      where = f'checkpoint step {found[0]}' if found else 'a fresh start'
      note(f'note: {metrics_file.NAME}: dropped {dropped} (resuming from {where})')
  return found
