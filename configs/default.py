"""Defaults shared by every flig_jax config; the dataset configs import this and change a few
fields.

Every field is listed and explained here, the one list of the config's fields: each default's type
is the field's type (flig_jax/config_checks.py adds only ranges, choices and resume rules). Every
field can be overridden from the command line, e.g. `--config.stage2.steps=2000`. Every config file
(this one included) has a `:smoke` variant that shrinks the model and the steps so a run takes
seconds:

  python train.py --config configs/default.py:smoke --workdir /tmp/smoke
"""

from collections.abc import Sequence

import ml_collections

OPTIONS = ('smoke',)


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the default configuration (the synthetic fMRI-like dataset, CPU-sized); `arg`
  'smoke' shrinks it (`smoke`)."""
  options = variants(arg, OPTIONS, 'configs/default.py')
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = 'synthetic'     # digit69 | cowley_v4 | npz | synthetic (data/loading.py, LOADERS)
  c.data.dir = ''               # the dataset's own folder; else $FLIG_DATA_DIR/<name>;
                                # else the cache
  c.data.path = ''              # npz: the file (needs data.name = 'npz')
  c.data.session = ''           # cowley_v4: e.g. '190927'
  c.data.image_size = 32        # cowley_v4 (and synthetic): images are resized to this square size
  c.data.grayscale = True       # cowley_v4: convert colour images to one channel
  c.data.folds = 5              # K-fold cross-validation over the training pairs (folds carved by
                                # stimulus, seeded) chooses stage 2's steps and the baselines'
                                # penalties; every model is then refitted on all training pairs.
                                # 0 or 1: no cross-validation (a val_fraction split, or nothing)
  c.data.val_fraction = 0.0     # > 0 with folds 0 or 1: a validation split carved from train
                                # (seeded) chooses instead, and no model learns from it
  c.data.split_seed = 0         # npz without a `split` key: draws its 80/20 test split; apart from
  #                               seed, so runs of every seed are scored on one test split
  c.data.synthetic_mode = 'fmri'  # synthetic: fmri (Gaussian RFs + noise) | spikes (LNP, Poisson)
  #                               | patterns (random binary 10x10 patterns, small Gaussian RFs)
  c.data.num_train = 256        # synthetic: number of training pairs
  c.data.num_test = 64          # synthetic: number of test pairs
  c.data.num_units = 48         # synthetic: voxels or neurons

  c.model = ml_collections.ConfigDict()
  c.model.feature_dim = 32      # D: size of the CAE feature vector and of the flow
  c.model.flow_type = 'augmented'  # augmented: f on [h, e_h] -> [A(r), e_a], R^2D, starting from
                                   # the ridge encoder/decoder (docs/design.md); plain:
                                   # the paper's f on R^D
  c.model.cae_widths = (16, 32)  # channels of the stride-2 conv stages (one halving of H, W each)
  c.model.adapter_components = 0  # cap on k, the adapter's signal coordinates (0: min(D, rank))
  c.model.flow_blocks = 4       # K
  c.model.flow_hidden = 128     # conditioner MLP width
  c.model.flow_dropout = 0.3    # dropout after each hidden layer of the couplings' conditioners,
                                # in training only (docs/stage2.md)
  c.model.coupling = 'affine'   # affine | spline (nn/flow.py, COUPLINGS)
  c.model.decoder_input = 'spread'  # what the decoder coupling's MLP reads: spread (principal
                                    # components at their spread) | whitened (A(r) itself)
  c.model.pixel_path = True     # decoding blends G's image with a linear map A(r) -> pixels,
                                # its weight chosen on validation (0: G alone; flig_jax/pixel_path)
  c.model.spline_bins = 8
  c.model.spline_range = 4.0
  c.model.disc_hidden = 128
  c.model.dtype = 'float32'     # compute dtype of the networks: float32 | bfloat16 (parameters,
                                # optimiser state, losses, log-dets, fits and metrics stay float32)

  c.stage1 = ml_collections.ConfigDict()
  c.stage1.steps = 400
  c.stage1.batch_size = 32
  c.stage1.learning_rate = 2e-3
  c.stage1.weight_decay = 1e-4
  c.stage1.ssim_weight = 0.0     # adds (1 - SSIM) to the pixel MSE
  c.stage1.augment = True        # random shift, rotation and elastic warp of the stimuli
  c.stage1.max_shift = 2.0       # pixels
  c.stage1.max_rotation = 10.0   # degrees
  c.stage1.elastic_strength = 1.0  # pixels of smooth random displacement
  c.stage1.init_from = ''        # a run's workdir: take its trained autoencoder and skip stage 1
                                 # (its data and autoencoder fields must equal this run's)

  c.stage2 = ml_collections.ConfigDict()
  c.stage2.steps = 400
  c.stage2.batch_size = 32
  c.stage2.learning_rate = 1e-3
  c.stage2.disc_learning_rate = 1e-3
  c.stage2.weight_decay = 1e-4   # AdamW's, on the trained noise scales
  c.stage2.coupling_weight_decay = 1.0  # AdamW's on the couplings, toward the identity (each
                                        # direction toward its ridge start): without it (and
                                        # model.flow_dropout) they overfit within a few hundred
                                        # steps (docs/stage2.md)
  c.stage2.local_forward = 1.0   # ||f(h) - a||^2 on the k signal coordinates
  c.stage2.local_forward_weighting = 'variance'  # variance: each principal component by its
                                                 # variance (the error in z-scored response
                                                 # units) | whitened: each coordinate alike
  c.stage2.start_encoder_error = 'responses'  # what chooses the closed-form start encoder's
                                 # ridge penalty (and cae_ridge's): responses (the z-scored
                                 # responses' own error) | whitened (each of the k whitened
                                 # coordinates alike: a heavier penalty, docs/stage2.md)
  c.stage2.local_inverse = 1.0   # ||f^-1(a) - h||^2
  c.stage2.likelihood = 0.01     # -log N(f(h); 0, I) - log|det df/dh|, per dimension
  c.stage2.adversarial = 0.01    # f fools Dis on f(h) vs a
  c.stage2.adversarial_inverse = 0.0  # and on f^-1(a) vs h
  c.stage2.mixup = 0.0           # > 0: train on convex mixtures of pairs,
                                 # weight ~ Beta(mixup, mixup)
  c.stage2.response_noise = 0.0  # std of Gaussian noise added to the whitened responses in training
  c.stage2.pixel = 0.0           # ||G(f^-1(a)) - x||^2 through the frozen decoder
  c.stage2.gradient_penalty = 1.0  # R1 penalty on the discriminator's real inputs
  c.stage2.eval_every_steps = 100  # validation scores (decoding and encoding PCC) every N steps
  c.stage2.select_by = 'val_pcc'   # the flow kept: val_pcc (best decoding PCC + encoding mean PCC
                                   # on the validation split, step 0 included) | last
  c.stage2.select_margin = 2.0     # a later step is kept only if its validation gain over step 0
                                   # exceeds this many jackknife standard errors (0: any gain);
                                   # worth most on small sets (docs/stage2.md)

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 200
  c.checkpoint.keep = 3

  c.log_every_steps = 20
  c.num_figure_images = 8
  c.distributed = False          # call jax.distributed.initialize()
                                 # (also set by FLIG_DISTRIBUTED=1)
  return smoke(c) if 'smoke' in options else c


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config so both stages run in seconds on a laptop CPU (the tests use this)."""
  config.model.feature_dim = 8
  config.model.cae_widths = (8, 16)
  config.model.flow_blocks = 2
  config.model.flow_hidden = 16
  config.model.disc_hidden = 16
  config.stage1.steps = 6
  config.stage2.steps = 6
  config.stage1.batch_size = 8
  config.stage2.batch_size = 8
  config.checkpoint.every_steps = 3
  config.log_every_steps = 2
  config.num_figure_images = 4
  return config


def variants(arg: str, known: Sequence[str], config_file: str) -> set[str]:
  """The comma-separated variants of `--config <file>:<arg>`, e.g. 'smoke,spikes'.

  Raises:
    ValueError: a variant that `config_file` does not know.
  """
  chosen = set(filter(None, (a.strip() for a in arg.split(','))))
  unknown = sorted(chosen - set(known))
  if unknown:
    several = ', several joined by commas' if len(known) > 1 else ''
    raise ValueError(f'{config_file}: unknown variant {unknown[0]!r}; choose from '
                     f'{", ".join(known)} (or none{several}), e.g. --config '
                     f'{config_file}:{",".join(known[:2])}')
  return chosen
