"""Synthetic fMRI-like data, embedded (no files): the quick start and the tests.

  python train.py --config configs/synthetic.py --workdir runs/synthetic
  python train.py --config configs/synthetic.py:smoke --workdir /tmp/smoke   # seconds
  python train.py --config configs/synthetic.py:spikes   # the LNP spiking variant

Trains in about a minute on a 2-core CPU; `evaluate.py --ckpt runs/synthetic` then scores FLIG
against the baselines on the simulated population (seed 0 here: FLIG decoding PCC 0.66, encoding
mean PCC 0.59; ridge 0.76 and 0.88: the synthetic population is linear, which suits ridge).
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
