"""Synthetic data, embedded (no files): the quick start, the tests, and a stage-1 capacity check.

  python train.py --config configs/synthetic.py --workdir runs/synthetic
  python train.py --config configs/synthetic.py:smoke --workdir /tmp/smoke   # seconds
  python train.py --config configs/synthetic.py:spikes   # the LNP spiking variant
  python train.py --config configs/synthetic.py:patterns --workdir runs/patterns

Trains in about a minute on a 2-core CPU; `evaluate.py --ckpt runs/synthetic` then scores FLIG
against the baselines on the simulated population (seed 0 here: FLIG decoding PCC 0.77, encoding
mean PCC 0.87; ridge 0.76 and 0.88: the synthetic population is linear, which suits ridge).

`:patterns` is random binary 10x10 patterns at 20x20 pixels seen by 200 linear-Gaussian units with
small receptive fields: pixel ridge decodes it well (test PCC about 0.6), and an autoencoder must
carry 100 degrees of freedom per image through its D features (docs/results.md, "Stage-1 capacity").
Options combine with commas, e.g. `:patterns,smoke`.
"""

from configs import default

OPTIONS = ('smoke', 'spikes', 'patterns')


def get_config(arg: str = ''):
  config = default.get_config()
  config.data.name = 'synthetic'
  options = default.variants(arg, OPTIONS, 'configs/synthetic.py')
  if {'spikes', 'patterns'} <= options:
    raise ValueError('configs/synthetic.py: choose one of spikes and patterns')
  if 'spikes' in options:
    config.data.synthetic_mode = 'spikes'
  if 'patterns' in options:
    config.data.synthetic_mode = 'patterns'
    config.data.image_size = 20  # two pixels per pattern cell
    config.data.num_train = 1000
    config.data.num_test = 200
    config.data.num_units = 200
    config.model.feature_dim = 128  # docs/results.md, Stage-1 capacity
    config.stage1.steps = 1000
    config.stage2.steps = 1500
  if 'smoke' in options:
    config = default.smoke(config)
  return config
