"""benchmarks/peer_worker.py's whole-run command (`run`, behind `vs_torch.py --fullrun`): it builds
each stage in turn and runs exactly that stage's steps on the batches a training loop would take."""

import pytest

pytest.importorskip('torch', reason='torch is not installed (pip install -e ".[torch]")')

from benchmarks import peer_worker
from configs import default


def _spec(config, stage: int) -> dict:
  model = config.model
  cfg = config.stage1 if stage == 1 else config.stage2
  return {'stage': stage, 'batch_size': cfg.batch_size, 'cfg': cfg.to_dict(),
          'image_shape': [28, 28, 1], 'num_train': 12, 'feature_dim': model.feature_dim,
          'cae_widths': list(model.cae_widths), 'flow_type': model.flow_type,
          'flow_blocks': model.flow_blocks, 'flow_hidden': model.flow_hidden,
          'disc_hidden': model.disc_hidden, 'k': 5}


def test_run_builds_each_stage_and_runs_its_steps(monkeypatch):
  config = default.smoke(default.get_config())
  config.stage1.augment = False
  taken = []
  batch = peer_worker.Batches.batch

  def counted(self, step):
    taken.append((sorted(self.arrays), step))
    return batch(self, step)

  monkeypatch.setattr(peer_worker.Batches, 'batch', counted)
  out = peer_worker.Worker().run('eager', [{'spec': _spec(config, 1), 'steps': 3},
                                           {'spec': _spec(config, 2), 'steps': 2}])
  assert taken == [(['images'], 0), (['images'], 1), (['images'], 2),
                   (['adapted', 'features'], 0), (['adapted', 'features'], 1)]
  assert len(out['stages']) == 2
  for stage in out['stages']:
    assert stage['build_s'] > 0 and stage['steps_s'] > 0
