"""Autoencoders: models, corruptions, the reconstruction task, and end-to-end runs."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import autoencoder as ae_config
from experiments import autoencoder as ae_experiment
import experiments.__main__ as launcher
from lib import input_pipeline, models, tasks
from lib.errors import UserError
from tests.conftest import mock_tfds, read_results, tiny


@pytest.mark.parametrize('name', ['mlp_autoencoder', 'conv_autoencoder'])
@pytest.mark.parametrize('shape', [(28, 28, 1), (32, 32, 3)])
def test_autoencoders_give_back_an_image_of_the_input_shape_in_0_1(name, shape):
  model = models.create(name, latents=8, shape=shape)
  x = jax.random.uniform(jax.random.PRNGKey(0), (3, *shape))
  variables = model.init(jax.random.PRNGKey(1), x)
  out = model.apply(variables, x)
  assert out.shape == x.shape
  assert float(out.min()) >= 0 and float(out.max()) <= 1
  code = model.apply(variables, x, method=type(model).encode)
  assert code.shape == (3, 8)


def test_conv_autoencoder_rejects_an_image_it_cannot_halve():
  with pytest.raises(UserError, match='multiples of 4'):
    models.create('conv_autoencoder', shape=(30, 30, 1))


def test_reconstruction_task_mse_psnr_and_hole_error():
  clean = jnp.zeros((2, 4, 4, 1))
  out = clean.at[0].set(0.1).at[1, :2, :2].set(1.0)
  hole = jnp.zeros_like(clean).at[:, :2, :2].set(1.0)
  values = tasks.reconstruction(out, {'clean': clean, 'hole': hole})
  np.testing.assert_allclose(values['mse'], [0.01, 0.25], rtol=1e-6)
  np.testing.assert_allclose(values['psnr'], [20.0, 10 * np.log10(4)], rtol=1e-5)
  np.testing.assert_allclose(values['hole_mse'], [0.01, 1.0], rtol=1e-6)
  assert float(tasks.reconstruction(clean, {'clean': clean})['psnr'][0]) == pytest.approx(100)


def _corrupted(mode, **fields):
  config = ae_config.get_config()
  config.update(corruption=mode, **fields)
  x = np.random.default_rng(0).uniform(0.2, 0.8, (64, 28, 28, 1)).astype(np.float32)
  split = input_pipeline.from_arrays({'x': x, 'y': np.zeros(64, np.int32)})
  batch = jax.device_get(
      next(input_pipeline.eval_batches(split, 64, augment=ae_experiment.corruption(config))))
  np.testing.assert_array_equal(batch['clean'], x)  # The target is never corrupted.
  return x, batch


def test_no_corruption_leaves_the_input_alone():
  x, batch = _corrupted('none')
  np.testing.assert_array_equal(batch['x'], x)


def test_noise_is_gaussian_plus_salt_and_pepper_clipped_to_0_1():
  x, batch = _corrupted('noise', noise_std=0.2, salt_pepper=0.1)
  noisy = batch['x']
  assert noisy.min() >= 0 and noisy.max() <= 1
  extreme = (noisy == 0) | (noisy == 1)
  # Salt and pepper hit ~10%; Gaussian noise of 0.2 on pixels in [0.2, 0.8] clips ~3-5% more.
  assert 0.1 < extreme.mean() < 0.17
  residual = (noisy - x)[~extreme]
  assert abs(residual.mean()) < 0.01 and 0.15 < residual.std() < 0.2


def test_mask_changes_only_a_rectangle_inside_its_size_range():
  x, batch = _corrupted('mask', mask_min=5, mask_max=9)
  for image, corrupted, hole in zip(x, batch['x'], batch['hole']):
    inside = hole[..., 0] > 0
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    assert 5 <= len(rows) <= 9 and 5 <= len(cols) <= 9
    assert inside.sum() == len(rows) * len(cols)  # One solid rectangle.
    assert np.all(corrupted[inside] == 0)
    np.testing.assert_array_equal(corrupted[~inside], image[~inside])
  centers = [np.argwhere(h[..., 0]).mean(0) for h in batch['hole']]
  assert np.std(centers, axis=0).min() > 3  # Placed at random, not always in the same spot.


@pytest.mark.parametrize('field,value,match', [
    ('corruption', 'blur', "corruption='blur' is unknown"),
    ('normalization', 'standardize', "needs 'unit'"),
    ('mask_max', 40, 'mask_max <= 28'),
    ('latent_sweep', (4, 0), 'positive integers'),
])
def test_bad_autoencoder_config_is_a_clear_error(tmp_path, field, value, match):
  with mock_tfds(16), pytest.raises(UserError, match=match):
    ae_experiment.train_and_evaluate(tiny(ae_config, **{field: value}), str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')  # Nothing ran.


@pytest.mark.parametrize('mode,model', [('none', 'mlp_autoencoder'), ('noise', 'conv_autoencoder'),
                                        ('mask', 'mlp_autoencoder')])
def test_autoencoder_tiny_writes_results_and_plots(tmp_path, mode, model):
  with mock_tfds(64):
    launcher.run(tiny(ae_config, corruption=mode, model=model), str(tmp_path))
  results = read_results(tmp_path)
  assert {'test_mse', 'test_psnr'} <= set(results)
  if mode != 'none':
    assert 'test_input_psnr' in results
  if mode == 'mask':
    assert {'test_hole_mse', 'test_mean_image_hole_mse'} <= set(results)
  for plot in ('curves', 'reconstructions'):
    assert os.path.getsize(tmp_path / 'plots' / f'{plot}.png') > 1000


def test_latent_sweep_trains_one_model_per_size_and_plots_psnr(tmp_path):
  with mock_tfds(64):
    results = launcher.run(tiny(ae_config, latent_sweep=(2, 4)), str(tmp_path))
  assert [r['latents'] for r in results['latent_sweep']] == [2, 4]
  assert results['latent_sweep'][0]['params'] < results['latent_sweep'][1]['params']
  for n in (2, 4):
    assert read_results(tmp_path / f'latents_{n}')['latents'] == n
  for plot in ('latent_sweep', 'latent_sweep_images'):
    assert os.path.getsize(tmp_path / 'plots' / f'{plot}.png') > 1000


def test_short_real_denoiser_beats_its_noisy_input(mnist_dir, tmp_path):
  config = ae_config.get_config()
  config.update(manual_dir=mnist_dir, data_dir=str(tmp_path / 'tfds'), corruption='noise',
                num_epochs=1, steps_per_epoch=300)
  results = ae_experiment.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['test_psnr'] > results['test_input_psnr'] + 5, results


def test_on_real_mnist_a_larger_code_reconstructs_better(mnist_data_dir, tmp_path):
  """The sweep's claim: PSNR rises with the latent size (2 against 16 latents, 400 steps each)."""
  config = ae_config.get_config()
  config.update(data_dir=mnist_data_dir, num_epochs=1, steps_per_epoch=400, latent_sweep=(2, 16),
                test_split='test[:2000]', eval_split='test[:1000]')
  results = ae_experiment.train_and_evaluate(config, str(tmp_path))
  psnr = {r['latents']: r['test_psnr'] for r in results['latent_sweep']}
  assert psnr[2] > 12 and psnr[16] > psnr[2] + 3, psnr
