"""The FLIG module and Model: shapes of every public function, decode(encode(x)) == G(E(x)) when
the adapter keeps all D coordinates, save -> load round trips, the checkpoint API and the
discriminator."""

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from flig_jax import checkpointing, model, pixel_path
from flig_jax.nn.adapter import Adapter
from flig_jax.nn.discriminator import Discriminator, r1_penalty
from flig_jax.nn.flig import FLIG, Frozen

D = 6
N_TRAIN = 12


@pytest.fixture(autouse=True)
def _fast_prng():
  """Threefry's partitionable mode compiles very slowly on small CPUs (scoped to each test)."""
  with jax.threefry_partitionable(False):
    yield


def _config(coupling: str = 'affine', flow_type: str = 'plain'):
  c = default.get_config()
  c.model.flow_type = flow_type
  c.model.feature_dim = D
  c.model.cae_widths = (4, 8)
  c.model.flow_blocks = 2
  c.model.flow_hidden = 8
  c.model.coupling = coupling
  c.model.spline_bins = 4
  return c


@functools.cache
def _build(image_shape, num_units, coupling='affine', seed=0, flow_type='plain'):
  """(config, module, variables, images, responses), flow parameters randomly perturbed (cached:
  the arrays are never modified)."""
  config = _config(coupling, flow_type)
  module = FLIG.from_config(config.model, image_shape)
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(N_TRAIN,) + image_shape).astype(np.float32)
  responses = rng.normal(size=(N_TRAIN, num_units)) * rng.uniform(0.5, 2, num_units) + 3.0
  adapter = Adapter.fit(responses, D)
  feature_mean = rng.normal(size=D).astype(np.float32) * 0.1
  feature_std = rng.uniform(0.5, 2.0, size=D).astype(np.float32)

  def build(key, images, adapter):
    ae_key, h_key, flow_key, noise_key = jax.random.split(key, 4)
    frozen = Frozen(module.init_autoencoder(ae_key, images), jnp.asarray(feature_mean),
                    jnp.asarray(feature_std), adapter)
    flow = module.init_flow(flow_key, jax.random.normal(h_key, (N_TRAIN, D)))
    leaves, tree = jax.tree.flatten(flow)
    keys = jax.random.split(noise_key, len(leaves))
    flow = jax.tree.unflatten(
        tree, [p + 0.2 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    return frozen.variables(flow)

  variables = jax.jit(build)(jax.random.key(seed), images, adapter)
  return config, module, variables, images, responses.astype(np.float32)


@functools.cache
def _outputs(image_shape, num_units, coupling):
  """Every FLIG method on the cached build's images and responses, in one compiled call."""
  _, module, variables, x, r = _build(image_shape, num_units, coupling)

  def run(v, x, r):
    ap = lambda method, *args, **kw: module.apply(v, *args, method=method, **kw)
    h = ap(FLIG.features, x)
    h_std = ap(FLIG.standardise, h)
    z, ld = ap(FLIG.flow_forward, h_std)
    h_back, ld_inv = ap(FLIG.flow_inverse, z)
    encoded = ap(FLIG.encode, x)
    return {
        'features': h, 'reconstruct': ap(FLIG.reconstruct, x), 'latent': ap(FLIG.latent, x),
        'z': z, 'ld': ld, 'h_std': h_std, 'h_back': h_back, 'ld_inv': ld_inv,
        'encode': encoded, 'decode': ap(FLIG.decode, r),
        'decode_noise': ap(FLIG.decode, r, pad='noise', rng=jax.random.key(1)),
        'roundtrip': ap(FLIG.roundtrip, x), 'decode_features': ap(FLIG.decode_features, h),
        'unstandardised': ap(FLIG.unstandardise, h_std),
        'decode_encode': ap(FLIG.decode, encoded),
        # f^-1(A(A^-1(f(h)))): the round trip through the response space, in feature space.
        'h_via_responses': ap(FLIG.flow_inverse, ap(lambda m, r: m.adapter().forward(r),
                                                     encoded))[0]}
  return jax.jit(run)(variables, x, r)


# Two image sizes, two unit counts (U > D: k = D; U < D: padding) and both couplings.
@pytest.mark.parametrize('image_shape, num_units, coupling',
                         [((28, 28, 1), 10, 'affine'), ((64, 64, 3), 4, 'spline')])
def test_shapes_and_dtypes(image_shape, num_units, coupling):
  _, _, variables, _, _ = _build(image_shape, num_units, coupling)
  assert set(variables) == {'params', 'stats', 'adapter'}
  assert set(variables['params']) == {'autoencoder', 'flow'}
  k = min(num_units, D)
  assert variables['adapter']['components'].shape == (num_units, k)
  out = _outputs(image_shape, num_units, coupling)
  n = N_TRAIN
  image = (n,) + image_shape
  expect = {'features': (n, D), 'reconstruct': image, 'latent': (n, D), 'z': (n, D),
            'ld': (n,), 'h_back': (n, D), 'ld_inv': (n,), 'encode': (n, num_units),
            'decode': image, 'decode_noise': image, 'roundtrip': image, 'decode_features': image}
  for name, shape in expect.items():
    assert out[name].shape == shape, name
    assert out[name].dtype == jnp.float32, name
  for name in ('reconstruct', 'decode', 'roundtrip'):
    assert 0.0 <= float(out[name].min()) and float(out[name].max()) <= 1.0, name
  np.testing.assert_allclose(out['latent'], out['z'], atol=1e-6)
  # Round trips compared where they are exact, in feature space, at float32 precision (scaled by
  # the features' size: an untrained encoder gives small features).
  _assert_close(out['h_back'], out['h_std'])
  np.testing.assert_allclose(out['ld'], -out['ld_inv'], rtol=1e-5, atol=1e-5)
  _assert_close(out['unstandardised'], out['features'])
  np.testing.assert_allclose(out['decode_features'], out['reconstruct'], atol=1e-6)
  if num_units < D:                    # the noise fills padding coordinates only
    assert float(jnp.max(jnp.abs(out['decode_noise'] - out['decode']))) > 0
  else:
    np.testing.assert_allclose(out['decode_noise'], out['decode'], atol=1e-6)


def _assert_close(actual, desired, rtol=1e-5):
  actual, desired = np.asarray(actual), np.asarray(desired)
  np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * np.abs(desired).max())


def test_decode_of_encode_is_the_reconstruction_when_k_equals_d():
  _, _, variables, _, _ = _build((28, 28, 1), 10, 'affine')
  assert variables['adapter']['sqrt_eig'].shape == (D,)          # k = D: no padding
  out = _outputs((28, 28, 1), 10, 'affine')
  assert float(jnp.max(jnp.abs(out['latent'] - out['h_std']))) > 0.1   # the flow does something
  _assert_close(out['h_via_responses'], out['h_std'], rtol=1e-4)
  np.testing.assert_allclose(out['decode_encode'], out['reconstruct'], atol=1e-5)


def test_roundtrip_is_the_reconstruction_with_padding():
  _, _, variables, _, _ = _build((64, 64, 3), 4, 'spline')
  assert variables['adapter']['sqrt_eig'].shape == (4,)          # k < D: padding
  out = _outputs((64, 64, 3), 4, 'spline')
  np.testing.assert_allclose(out['roundtrip'], out['reconstruct'], atol=1e-4)
  # The response space cannot hold the padded coordinates: that path loses something.
  assert float(jnp.max(jnp.abs(out['decode_encode'] - out['reconstruct']))) > 1e-4


def test_augmented_flow_reads_the_first_half_and_round_trips_exactly():
  """Augmented: f acts on [h, e] (2D); encode reads f([h, 0]), decode f^-1([A(r), 0]); the whole
  vector comes back, so G(f^-1(f(E(x)))) is the reconstruction."""
  _, module, variables, x, r = _build((28, 28, 1), 10, 'affine', flow_type='augmented')
  ap = lambda method, *args: module.apply(variables, *args, method=method)
  h = ap(FLIG.standardise, ap(FLIG.features, x))
  e = jax.random.normal(jax.random.key(3), h.shape)
  y, ld = ap(FLIG.flow_forward, jnp.concatenate([h, e], 1))
  back, ld_inv = ap(FLIG.flow_inverse, y)
  assert y.shape == (N_TRAIN, 2 * D)
  np.testing.assert_allclose(back, jnp.concatenate([h, e], 1), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ld, -ld_inv, rtol=1e-5, atol=1e-5)
  zero = ap(FLIG.flow_forward, jnp.concatenate([h, 0 * h], 1))[0]
  np.testing.assert_allclose(ap(FLIG.latent, x), zero[:, :D], rtol=1e-5, atol=1e-5)
  assert float(jnp.max(jnp.abs(y[:, :D] - zero[:, :D]))) > 1e-3   # e does reach the responses
  a = ap(lambda m, r: m.adapter().forward(r), r)
  h_dec = ap(FLIG.flow_inverse, jnp.concatenate([a, 0 * a], 1))[0][:, :D]
  np.testing.assert_allclose(ap(FLIG.decode, r), ap(FLIG.decode_features,
                                                    ap(FLIG.unstandardise, h_dec)), atol=1e-6)
  np.testing.assert_allclose(ap(FLIG.roundtrip, x), ap(FLIG.reconstruct, x), atol=1e-5)


def test_decoder_coupling_reads_the_responses_at_their_spread():
  """decoder_input 'spread': the decoder coupling's MLP reads A(r) times the components' spread
  (root mean square 1 over the k signal coordinates, 0 on the padding); encoding is untouched."""
  _, module, variables, x, r = _build((28, 28, 1), 4, 'affine', flow_type='augmented')
  assert module.decoder_input == 'spread'
  sqrt_eig = np.asarray(variables['adapter']['sqrt_eig'])
  assert sqrt_eig.shape == (4,) and np.ptp(sqrt_eig) > 0.1                   # k < D, unequal
  scale = np.asarray(module.apply(variables, method=FLIG.decoder_input_scale))
  np.testing.assert_allclose(scale[:4], sqrt_eig / np.sqrt(np.mean(sqrt_eig ** 2)), rtol=1e-6)
  np.testing.assert_array_equal(scale[4:], 0.0)
  whitened = module.clone(decoder_input='whitened')
  assert whitened.apply(variables, method=FLIG.decoder_input_scale) is None
  np.testing.assert_array_equal(module.apply(variables, x, method=FLIG.encode),
                                whitened.apply(variables, x, method=FLIG.encode))
  decoded = module.apply(variables, r, method=FLIG.decode)
  assert float(jnp.max(jnp.abs(decoded - whitened.apply(variables, r, method=FLIG.decode)))) > 1e-4
  # A run saved before the option decodes as it did.
  config = _config(flow_type='augmented')
  del config.model['decoder_input']
  assert FLIG.from_config(config.model, (28, 28, 1)).decoder_input == 'whitened'


def _save_and_load(tmp_path, config, variables, image_shape, step=7, **meta):
  """The test helper: save a model at `step` and load it back from the workdir."""
  model.save(tmp_path, config, variables, checkpointing.Meta(image_shape=image_shape, **meta), step)
  return model.load(tmp_path)


def test_save_load_round_trip_and_numpy_model(tmp_path, monkeypatch):
  image_shape = (28, 28, 1)
  config, _, variables, x, r = _build(image_shape, 10, 'affine')
  m = model.Model(config, variables, model.model_meta(variables, image_shape))
  loaded = _save_and_load(tmp_path, config, variables, image_shape, stage=2, dataset='synthetic')
  assert loaded.meta.step == 7 and loaded.meta.stage == 2 and loaded.meta.dataset == 'synthetic'
  assert loaded.meta.num_units == 10 and loaded.meta.adapter_k == D
  assert loaded.config.model.cae_widths == (4, 8)
  assert jax.tree.structure(loaded.variables) == jax.tree.structure(variables)
  encoded = m.encode(x)
  assert isinstance(encoded, np.ndarray) and encoded.shape == (N_TRAIN, 10)
  np.testing.assert_array_equal(loaded.encode(x), encoded)
  decoded = m.decode(r)
  assert decoded.shape == (N_TRAIN,) + image_shape and decoded.dtype == np.float32
  np.testing.assert_array_equal(loaded.decode(r), decoded)
  np.testing.assert_allclose(m.decode(encoded), m.reconstruct(x), atol=1e-4)
  assert m.features(x).shape == (N_TRAIN, D) and m.latent(x).shape == (N_TRAIN, D)
  # Chunking: any N gives the same rows as one batch.
  small = model.Model(config, variables, m.meta, chunk=4)
  np.testing.assert_allclose(small.encode(x), encoded, atol=1e-5)
  assert m.encode(x[:0]).shape == (0, 10)
  np.testing.assert_array_equal(model.load(tmp_path / 'checkpoints').decode(r), decoded)
  monkeypatch.setenv('HOME', str(tmp_path.parent))  # '~' read as a shell would
  assert model.load(f'~/{tmp_path.name}').meta.step == 7
  msg = r'decode expects responses of shape \(N, 10\), got \(5, 3\)'
  with pytest.raises(ValueError, match=msg):
    m.decode(np.zeros((5, 3)))
  with pytest.raises(ValueError, match=r'encode expects images of shape \(N, 28, 28, 1\)'):
    m.encode(np.zeros((2, 32, 32, 1)))


@pytest.mark.parametrize('with_p', [True, False])  # both pixel paths on P; the older decoder-only
def test_save_load_round_trip_with_pixel_paths(tmp_path, with_p):
  """A model whose pixel paths read their own adapter P saves and loads with both maps (meta:
  `pixel_adapter_k`); one in the older format (the decoder's map on A(r), no encoder's) loads and
  decodes as it did."""
  image_shape = (28, 28, 1)
  config, _, variables, x, r = _build(image_shape, 10, 'affine')
  p = int(np.prod(image_shape))
  rng = np.random.default_rng(1)
  frozen = {'pixel_path': {'kernel': jnp.asarray(rng.normal(size=(D, p)) * 0.1, jnp.float32),
                           'bias': jnp.full((p,), 0.5), 'weight': jnp.asarray(0.5)}}
  if with_p:
    maps = pixel_path.fit_maps(r, x)
    frozen = {'pixel_path': {'kernel': maps.kernel, 'bias': maps.bias, 'weight': jnp.asarray(0.5),
                             'enc_kernel': maps.enc_kernel, 'enc_bias': maps.enc_bias,
                             'enc_weight': jnp.asarray(0.25)},
              'pixel_adapter': maps.adapter.arrays()}
  variables = {**variables, **frozen}
  m = model.Model(config, variables, model.model_meta(variables, image_shape))
  loaded = _save_and_load(tmp_path, config, variables, image_shape, stage=2)
  assert loaded.meta.pixel_path and loaded.meta.pixel_adapter_k == (10 if with_p else None)
  assert jax.tree.structure(loaded.variables) == jax.tree.structure(variables)
  np.testing.assert_array_equal(loaded.decode(r), m.decode(r))
  np.testing.assert_array_equal(loaded.encode(x), m.encode(x))
  plain = model.Model(config, {k: v for k, v in variables.items()
                               if k not in ('pixel_path', 'pixel_adapter')},
                      model.model_meta(variables, image_shape))
  if with_p:  # the blends, against the maps computed on the host
    np.testing.assert_allclose(
        m.decode(r), 0.5 * plain.decode(r) + 0.5 * maps.decode(r, image_shape), atol=1e-5)
    np.testing.assert_allclose(m.encode(x), 0.75 * plain.encode(x) + 0.25 * maps.encode(x),
                               atol=1e-4)
  else:  # no encoder path
    np.testing.assert_array_equal(m.encode(x), plain.encode(x))


def test_load_picks_the_latest_model_and_errors_without_one(tmp_path):
  with pytest.raises(FileNotFoundError, match='no checkpoint'):
    model.load(tmp_path / 'nothing_here')
  mgr = checkpointing.manager(tmp_path / 'stage1_only')
  checkpointing.save(mgr, 3, meta=checkpointing.Meta(stage=1), force=True)
  checkpointing.wait(mgr)
  mgr.close()
  with pytest.raises(FileNotFoundError, match=r'steps \[3\] hold stage 1 only'):
    model.load(tmp_path / 'stage1_only')
  config, _, variables, _, _ = _build((28, 28, 1), 10, 'affine')
  other = jax.tree.map(lambda a: a + 1.0, variables)
  meta = model.model_meta(variables, (28, 28, 1))
  model.save(tmp_path, config, variables, meta, step=1)
  model.save(tmp_path, config, other, meta, step=2)
  mgr = checkpointing.manager(tmp_path)
  checkpointing.save(mgr, 3, meta=checkpointing.Meta(stage=2), force=True)   # no model at step 3
  checkpointing.wait(mgr)
  mgr.close()
  loaded = model.load(tmp_path)
  assert loaded.meta.step == 2
  np.testing.assert_array_equal(loaded.variables['adapter']['mean'], other['adapter']['mean'])
  assert model.load(tmp_path, step=1).meta.step == 1
  with pytest.raises(FileNotFoundError, match='step 5'):
    model.load(tmp_path, step=5)


def test_meta_reads_older_checkpoints_and_round_trips_through_json():
  older = {'stage': 2, 'step': 5, 'image_shape': [28, 28, 1], 'num_units': 10, 'adapter_k': 4,
           'finished': True, 'dataset': 'digit69', 'a_retired_key': 1}  # no stage_step, no steps
  meta = checkpointing.Meta.from_json(older, step=12)   # the step folder's number wins
  assert meta == checkpointing.Meta(step=12, stage=2, dataset='digit69', image_shape=(28, 28, 1),
                                    num_units=10, adapter_k=4, finished=True)
  again = dataclasses.replace(meta, selected_steps=(3, 0))
  assert checkpointing.Meta.from_json(json.loads(json.dumps(again.to_json()))) == again


def test_checkpointing_api_for_the_trainer(tmp_path):
  mgr = checkpointing.manager(tmp_path, keep=2, every_steps=2)
  assert os.path.isdir(tmp_path / 'checkpoints')
  assert checkpointing.latest_meta(mgr) is None
  state = {'step': jnp.array(4), 'w': jnp.arange(6.0).reshape(2, 3)}
  config = default.smoke(default.get_config())
  for step in (2, 4, 6):
    assert checkpointing.save(mgr, step, state=state, config=config,
                              meta=checkpointing.Meta(step=step))
  assert not checkpointing.save(mgr, 7, state=state,
                                meta=checkpointing.Meta(step=7))   # not a multiple of 2
  checkpointing.wait(mgr)
  assert checkpointing.steps_with(mgr, 'state') == [4, 6]                # keep=2
  meta = checkpointing.latest_meta(mgr)
  assert meta == checkpointing.Meta(step=6)
  assert checkpointing.read_config(mgr, 6) == config
  target = jax.eval_shape(lambda: state)
  restored = checkpointing.restore(mgr, 6, 'state', target)
  np.testing.assert_array_equal(restored['w'], state['w'])
  with pytest.raises(FileNotFoundError, match="'model'"):
    checkpointing.restore(mgr, 6, 'model', target)
  with pytest.raises(ValueError, match='no item'):
    checkpointing.save(mgr, 8)
  mgr.close()


def test_discriminator_and_r1_penalty():
  disc = Discriminator(hidden=8)
  x = jax.random.normal(jax.random.key(0), (5, D))
  params = jax.jit(disc.init)(jax.random.key(1), x)
  logits = jax.jit(disc.apply)(params, x)
  assert logits.shape == (5,) and logits.dtype == jnp.float32
  assert float(r1_penalty(disc.apply, params, x)) > 0
  w = jnp.arange(1.0, D + 1.0)                      # a linear critic: grad = w for every row
  np.testing.assert_allclose(r1_penalty(lambda p, v: v @ p, w, x), jnp.sum(w ** 2), rtol=1e-6)
