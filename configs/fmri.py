"""digit69 fMRI (one subject, V1-V3, 3092 voxels; 90 train / 10 test handwritten 6s and 9s, 28x28).

  python train.py --config configs/fmri.py --workdir runs/fmri
  python evaluate.py --ckpt runs/fmri
  python train.py --config configs/fmri.py:smoke --workdir /tmp/fmri_smoke   # seconds

Reads digit69_28x28.mat from --config.data.dir, else $FLIG_DATA_DIR/digit69, else the cache.
A run (both stages, with 5-fold cross-validation of stage 2) takes 2-3 minutes on a 2-core CPU
and should give, on the 10 test digits (mean over seeds 0-2, docs/results.md), decoding PCC 0.817,
SSIM 0.640, identification 0.970 and encoding mean per-voxel PCC 0.263. Stage 2's steps are chosen
by 5-fold cross-validation over the 90 training pairs (a later step only where its gain over the
ridge start clears two jackknife standard errors): a late decoder step on seeds 0-2, the encoder's
start.
"""

from configs import default


def get_config(arg: str = ''):
  config = default.get_config()
  config.data.name = 'digit69'
  config.model.feature_dim = 64  # docs/results.md, Stage-1 capacity
  config.stage1.steps = 1000
  config.stage1.batch_size = 32
  config.stage2.steps = 1500
  config.stage2.mixup = 0.4  # chosen on digit69's validation split
  config.stage2.batch_size = 32
  config.checkpoint.every_steps = 500
  if 'smoke' in default.variants(arg, ('smoke',), 'configs/fmri.py'):
    config = default.smoke(config)
  return config
