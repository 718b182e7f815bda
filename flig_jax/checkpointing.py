"""Checkpoints on disk: an orbax `CheckpointManager` at `<workdir>/checkpoints/` whose step
directories hold the items `model` (the FLIG variables), `config` and `meta` (JSON; `Meta` is its
one reader and writer), and the trainer's `state`.
"""

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from flig_jax import checkpoint_recovery, orbax_logs

orbax_logs.quiet()  # orbax's info and warnings (e.g. "Given directory is read only") are noise here

CHECKPOINT_SUBDIR = 'checkpoints'


@dataclasses.dataclass(frozen=True)
class Meta:
  """What a checkpoint says about itself: its `meta` item. Fields a checkpoint lacks (older ones,
  or stage 1's, which hold no model) read as their defaults; unknown keys are ignored.

  Attributes:
    step: its number in the manager (stage-2 steps are numbered after stage 1's).
    stage: 1 or 2.
    stage_step: the step within its stage.
    dataset: the dataset's name.
    image_shape: (H, W, C) of the images.
    num_units: U, the number of response units.
    adapter_k: k, the adapter's signal coordinates (checkpoints holding a model), else None.
    finished: whether stage 2 had run all its steps.
    selected_steps: stage 2: the step each flow part kept was taken at (model selection).
    pixel_path: whether the model holds the decoder's pixel path (`flig_jax.pixel_path`).
    pixel_adapter_k: m, the components its pixel paths read (`flig_jax.pixel_path`), or None: a
      model without pixel paths, or whose decoder's pixel path reads the adapter's A(r).
    cross_validation: stage 2 with `data.folds` >= 2: the cross-validated scores, their standard
      errors and the chosen steps (`training.cross_validation.Selection.to_meta`), else None.
  """
  step: int = 0
  stage: int = 1
  stage_step: int = 0
  dataset: str = ''
  image_shape: tuple[int, ...] | None = None
  num_units: int | None = None
  adapter_k: int | None = None
  finished: bool = False
  selected_steps: tuple[int, ...] = ()
  pixel_path: bool = False
  pixel_adapter_k: int | None = None
  cross_validation: dict[str, Any] | None = None

  @classmethod
  def from_json(cls, item: Mapping[str, Any], step: int | None = None) -> 'Meta':
    """The Meta of a `meta` item as read from JSON; `step` (the step folder's number) wins."""
    names = {f.name for f in dataclasses.fields(cls)}
    fields = {k: json_tuples(v) for k, v in item.items() if k in names}
    if step is not None:
      fields['step'] = int(step)
    return cls(**fields)

  def to_json(self) -> dict[str, Any]:
    """The `meta` item to save: JSON types only."""
    out = dataclasses.asdict(self)
    for key in ('image_shape', 'selected_steps'):
      out[key] = None if out[key] is None else [int(v) for v in out[key]]
    return out


def checkpoint_dir(path: str | os.PathLike, must_exist: bool = False) -> str:
  """The manager's directory for `path`: `path` itself if it is a `checkpoints/` directory, else
  `<path>/checkpoints`.

  Raises:
    FileNotFoundError: `must_exist` and there is no such directory.
  """
  path = os.path.abspath(os.fspath(path))
  if (os.path.basename(path) == CHECKPOINT_SUBDIR and os.path.isdir(path)
      and not os.path.isdir(os.path.join(path, CHECKPOINT_SUBDIR))):
    return path
  directory = os.path.join(path, CHECKPOINT_SUBDIR)
  if must_exist and not os.path.isdir(directory):
    raise FileNotFoundError(
        f'no checkpoint at {path} (expected a workdir holding '
        f'{CHECKPOINT_SUBDIR}/, or that directory itself)')
  return directory


def manager(workdir: str | os.PathLike, keep: int = 3, every_steps: int | None = None,
            read_only: bool = False) -> ocp.CheckpointManager:
  """An orbax CheckpointManager at `<workdir>/checkpoints/` (or at `workdir` if it is one).

  Args:
    workdir: the run's working directory, or its `checkpoints/` directory.
    keep: how many step directories to keep (the oldest go first).
    every_steps: `save` skips steps that are not a multiple of this (unless forced).
    read_only: open an existing directory without creating or deleting anything.
  """
  directory = checkpoint_dir(workdir, must_exist=read_only)
  if read_only:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None, save_interval_steps=0, create=False, read_only=True)
  else:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=every_steps or 1, create=True,
        cleanup_tmp_directories=True)  # what a killed save left behind
  return ocp.CheckpointManager(directory, options=options, handler_registry=_handlers())


def _handlers() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
  """The handler of each item, so orbax can list and describe the items of any step."""
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  for name in ('model', 'state'):
    handler = ocp.StandardCheckpointHandler()
    registry.add(name, ocp.args.StandardSave, handler)
    registry.add(name, ocp.args.StandardRestore, handler)
  for name in ('config', 'meta'):
    handler = ocp.JsonCheckpointHandler()
    registry.add(name, ocp.args.JsonSave, handler)
    registry.add(name, ocp.args.JsonRestore, handler)
  return registry


def _config_dict(config: Any) -> dict[str, Any]:
  return config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)


def save(mgr: ocp.CheckpointManager, step: int, *, model: Any = None, state: Any = None,
         config: Any = None, meta: Meta | None = None, force: bool = False) -> bool:
  """Saves the given items (None ones are skipped) at `step`; asynchronous, see `wait`.

  Args:
    mgr: from `manager`.
    step: the training step.
    model: the FLIG variables pytree (StandardSave).
    state: the trainer's state pytree (StandardSave).
    config: a ConfigDict or dict (JsonSave of its dict form).
    meta: what the checkpoint says about itself.
    force: save even if `step` is not a multiple of the manager's `every_steps`.

  Returns:
    Whether a save was started.
  """
  items = {}
  if model is not None:
    items['model'] = ocp.args.StandardSave(model)
  if state is not None:
    items['state'] = ocp.args.StandardSave(state)
  if config is not None:
    items['config'] = ocp.args.JsonSave(_config_dict(config))
  if meta is not None:
    items['meta'] = ocp.args.JsonSave(meta.to_json())
  if not items:
    raise ValueError('save was given no item to save')
  return bool(mgr.save(int(step), args=ocp.args.Composite(**items), force=force))


def wait(mgr: ocp.CheckpointManager) -> None:
  """Blocks until every asynchronous save has been written."""
  mgr.wait_until_finished()


def steps_with(mgr: ocp.CheckpointManager, item_name: str) -> list[int]:
  """Saved steps (ascending) that hold `item_name`, from orbax's metadata of each step."""
  mgr.wait_until_finished()
  mgr.reload()
  return [s for s in sorted(mgr.all_steps()) if item_name in mgr.item_metadata(s)]


def _step_dir(where: ocp.CheckpointManager | str | os.PathLike, step: int) -> Path:
  """The folder of `step` under a manager (its pending saves written first) or its directory."""
  if isinstance(where, ocp.CheckpointManager):
    where.wait_until_finished()
    where = where.directory
  return Path(os.fspath(where)) / str(int(step))


def read_meta(where: ocp.CheckpointManager | str | os.PathLike, step: int) -> Meta:
  """The `meta` item at `step` under a manager or its directory (`Meta.step` is `step`).

  Raises:
    checkpoint_recovery.Damaged: the step has no `meta`, or it does not parse.
  """
  return Meta.from_json(checkpoint_recovery.read_json(_step_dir(where, step), 'meta'), step)


def latest_meta(mgr: ocp.CheckpointManager) -> Meta | None:
  """The meta of the latest step that has a `meta` item, or None if there is none."""
  steps = steps_with(mgr, 'meta')
  if not steps:
    return None
  return read_meta(mgr, steps[-1])


def json_tuples(value: Any) -> Any:
  """`value` with every list (at any depth, in dicts and tuples too) made a tuple: JSON turns the
  configs' tuples into lists."""
  if isinstance(value, dict):
    return {k: json_tuples(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(json_tuples(v) for v in value)
  return value


def read_config(where: ocp.CheckpointManager | str | os.PathLike,
                step: int) -> ml_collections.ConfigDict:
  """The `config` item at `step` under a manager or its directory, as a ConfigDict (lists read
  back as tuples).

  Raises:
    checkpoint_recovery.Damaged: the step has no `config`, or it does not parse.
  """
  item = checkpoint_recovery.read_json(_step_dir(where, step), 'config')
  return ml_collections.ConfigDict(json_tuples(item))


def with_sharding(abstract_target: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
  """Gives every ShapeDtypeStruct leaf a sharding (default: the first local device)."""
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def leaf(x):
    if getattr(x, 'sharding', None) is not None:
      return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  return jax.tree.map(leaf, abstract_target)


def restore(mgr: ocp.CheckpointManager, step: int, item_name: str, abstract_target: Any) -> Any:
  """Restores the pytree item `item_name` ('model' or 'state') at `step` onto `abstract_target`.

  Args:
    mgr: from `manager`.
    step: a saved step.
    item_name: the item.
    abstract_target: a pytree of `jax.ShapeDtypeStruct` (from `jax.eval_shape`); leaves without
      a sharding are placed on the first local device.

  Raises:
    FileNotFoundError: the step has no such item.
  """
  mgr.wait_until_finished()
  mgr.reload()
  # From the folders alone: reading the metadata of this step's other items (or other steps)
  # would fail on a damaged one that this restore does not need.
  if not (Path(os.fspath(mgr.directory)) / str(int(step)) / item_name).is_dir():
    raise FileNotFoundError(
        f'{mgr.directory} has no item {item_name!r} at step {step}')
  args = ocp.args.Composite(**{item_name: ocp.args.StandardRestore(with_sharding(abstract_target))})
  return mgr.restore(int(step), args=args)[item_name]
