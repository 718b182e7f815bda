"""What both training stages share: the run's config, workdir, data, module, mesh, checkpoint
manager and log (`make_context`)."""

import dataclasses
from pathlib import Path
from typing import Any

import jax
import ml_collections

from flig_jax import checkpointing, data
from flig_jax.nn.flig import FLIG
from flig_jax.training import parallel, progress, timing


@dataclasses.dataclass(frozen=True)
class Context:
  """What both stages share.

  Attributes:
    config: the run's config.
    workdir: where checkpoints, logs and figures go.
    dataset: the loaded dataset.
    module: the FLIG Linen module (a pure function of its variables; `model.Model` is the
      numpy-friendly wrapper of a trained one).
    mesh: the device mesh.
    mgr: the orbax checkpoint manager.
    log: the metrics log and progress bar.
  """
  config: ml_collections.ConfigDict
  workdir: Path
  dataset: data.Dataset
  module: FLIG
  mesh: Any
  mgr: Any
  log: progress.RunLog



# Validation closer to train than this fraction of test's distance earns a note.
VAL_CLOSER_THAN_TEST = 0.5


def make_context(config: ml_collections.ConfigDict, workdir: str | Path,
                 resume_step: int = 0) -> Context:
  """Loads the data and builds the module, mesh, checkpoint manager and log of a run (resuming
  from checkpoint `resume_step`, or 0). In several processes `train` has started JAX's distributed
  runtime before."""
  workdir = Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = parallel.make_mesh()
  with timing.section('data'):
    dataset = data.from_config(config)
    data.config_fold_ids(config, dataset.train)  # more folds than stimuli: refused before stage 1
  module = FLIG.from_config(config.model, dataset.image_shape)
  mgr = checkpointing.manager(workdir, keep=config.checkpoint.keep)
  log = progress.RunLog(workdir, stage1_steps=config.stage1.steps, resume_step=resume_step)
  folds = int(config.data.get('folds', 0))
  log.info(f'{dataset.name}: train {len(dataset.train)}'
           + (f' ({folds}-fold cross-validation)' if folds >= 2 else '')
           + f', val {len(dataset.val)}, '
           f'test {len(dataset.test)}, {dataset.num_units} units, images {dataset.image_shape}; '
           f'{mesh.size} device(s) in {jax.process_count()} process(es)')
  near, far = (dataset.meta.get(f'{split}_to_train_rms', float('nan')) for split in ('val', 'test'))
  if near < VAL_CLOSER_THAN_TEST * far:  # False when either is NaN
    log.info(f'note: validation images sit much closer to training images than test images do '
             f'(median RMS distance to the nearest one {near:.3f} against {far:.3f}): they look '
             f'like near-copies, and model selection on validation may reward memorising '
             f'(docs/data.md, Splits)')
  return Context(config, workdir, dataset, module, mesh, mgr, log)
