"""Macaque V4 spikes (Cowley et al. 2023): one session, 24-89 neurons, natural images at 32x32 grey.

  python train.py --config configs/spikes.py --config.data.session=190927 --workdir runs/v4_190927
  python evaluate.py --ckpt runs/v4_190927
  python train.py --config configs/spikes.py:smoke --workdir /tmp/v4_smoke   # seconds

Reads images/images_<session>.zip and responses_repeat_averaged/responses_<session>.npy from
--config.data.dir, else $FLIG_DATA_DIR/cowley_v4. Test images are those with index % 5 == 4.
2-3 minutes a run on a 2-core CPU; session 190927 should give decoding PCC 0.345, SSIM 0.161 and
encoding mean PCC 0.345 on its 240 test images (mean over seeds 0-2; docs/results.md has all eight
shared sessions with the baselines). One config for every session: nothing here was tuned to one.
"""

from configs import default


def get_config(arg: str = ''):
  config = default.get_config()
  config.data.name = 'cowley_v4'
  config.data.session = '190927'
  config.data.image_size = 32
  config.data.grayscale = True
  config.model.feature_dim = 128  # docs/results.md, Stage-1 capacity
  config.stage1.steps = 1000
  config.stage1.batch_size = 32
  config.stage1.elastic_strength = 0.5
  config.stage2.steps = 1500
  config.stage2.mixup = 0.4  # chosen on digit69's validation split
  config.stage2.select_margin = 0.0  # keep the best cross-validated step (docs/stage2.md)
  config.stage2.start_encoder_error = 'whitened'  # cross-validated: docs/stage2.md
  config.stage2.batch_size = 32
  config.checkpoint.every_steps = 500
  if 'smoke' in default.variants(arg, ('smoke',), 'configs/spikes.py'):
    config = default.smoke(config)
  return config
