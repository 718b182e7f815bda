"""Synthetic fMRI-like data, embedded (no files): the quick start and the tests.

  python train.py --config configs/synthetic.py --workdir runs/synthetic
  python train.py --config configs/synthetic.py:smoke --workdir /tmp/smoke   # seconds
  python train.py --config configs/synthetic.py:spikes   # the LNP spiking variant

Trains in about a minute on a laptop CPU; `evaluate.py --ckpt runs/synthetic` then shows FLIG
decoding the procedural images from the simulated population.
"""

from configs import default


def get_config(arg: str = ''):
  config = default.get_config()
  config.data.name = 'synthetic'
  options = set(filter(None, arg.split(',')))
  if 'spikes' in options:
    config.data.synthetic_mode = 'spikes'
  if 'smoke' in options:
    config = default.smoke(config)
  return config
