"""The VAE: the bound's pieces checked against their definitions, and end-to-end runs."""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import vae as vae_config
from experiments import vae as vae_experiment
import experiments.__main__ as launcher
from lib import input_pipeline, models, tasks
from tests.conftest import mock_tfds, read_results, tiny


def _model_and_params(latents=20):
  model = models.create('vae', latents=latents)
  variables = model.init({'params': jax.random.PRNGKey(0), 'sample': jax.random.PRNGKey(1)},
                         jnp.zeros((1, 28, 28, 1)))
  return model, variables['params']


def _random_binary(n=256, seed=2):
  return (jax.random.uniform(jax.random.PRNGKey(seed), (n, 28, 28, 1)) < 0.5).astype(jnp.float32)


def test_shapes_and_param_count():
  model, params = _model_and_params()
  assert models.count_params(params) == 815_824  # Kingma & Welling's 784-500-20 VAE.
  out = model.apply({'params': params}, _random_binary(5), rngs={'sample': jax.random.PRNGKey(0)})
  assert out['logits'].shape == (5, 784) and out['mean'].shape == out['z'].shape == (5, 20)


def test_untrained_neg_elbo_is_near_784_ln2_on_random_bits():
  model, params = _model_and_params()
  x = _random_binary()
  values = tasks.vae(model.apply({'params': params}, x, rngs={'sample': jax.random.PRNGKey(0)}),
                     {'x': x})
  assert 0.95 * 784 * math.log(2) < float(values['loss'].mean()) < 1.2 * 784 * math.log(2)


def test_closed_form_kl_matches_monte_carlo():
  mean = jnp.array([[0.5, -1.0, 2.0]])
  logvar = jnp.array([[0.0, -1.5, 0.7]])
  kl = tasks.vae({'logits': jnp.zeros((1, 4)), 'mean': mean, 'logvar': logvar},
                 {'x': jnp.zeros((1, 4))})['kl']
  std = jnp.exp(0.5 * logvar)
  z = mean + std * jax.random.normal(jax.random.PRNGKey(0), (200_000, 3))
  mc = jnp.mean(
      jnp.sum(jax.scipy.stats.norm.logpdf(z, mean, std) - jax.scipy.stats.norm.logpdf(z), -1))
  assert float(kl[0]) == pytest.approx(float(mc), rel=0.01)


def test_gradients_reach_the_encoder_through_the_sample():
  model, params = _model_and_params()
  x = _random_binary(8)

  def loss(params):  # The reconstruction term alone reaches the encoder only through z.
    out = model.apply({'params': params}, x, rngs={'sample': jax.random.PRNGKey(0)})
    return jnp.mean(tasks.vae(out, {'x': x})['reconstruction'])

  grads = jax.grad(loss)(params)
  for layer in ('Dense_0', 'Dense_1'):
    assert float(jnp.abs(grads['encoder'][layer]['kernel']).sum()) > 0, layer


def test_iwae_k1_is_the_elbo_and_larger_k_is_tighter():
  model, params = _model_and_params()
  x = _random_binary(64)
  keys = jax.random.split(jax.random.PRNGKey(3), 200)
  bound = lambda k: jax.jit(jax.vmap(lambda key: vae_experiment.iwae_nll(model, params, x, key, k)))
  k1 = jnp.mean(bound(1)(keys))
  elbo = tasks.vae(model.apply({'params': params}, x, rngs={'sample': jax.random.PRNGKey(4)}),
                   {'x': x})['loss'].mean()
  # One-sample MC KL vs closed form: equal in expectation.
  assert float(k1) == pytest.approx(float(elbo), rel=0.01)
  k50 = jnp.mean(bound(50)(keys[:20]))
  assert float(k50) < float(k1)


def test_binarization_is_bernoulli_new_each_pass_and_fixed_in_evaluation():
  x = np.full((64, 28, 28, 1), 0.3, np.float32)
  split = input_pipeline.from_arrays({'x': x, 'y': np.zeros(64, np.int32)})
  # Training: each step's key (lib.train folds the step into the run's key).
  first, second = (np.asarray(
      input_pipeline.model_inputs({'x': x}, lambda b: b, vae_experiment.binarize,
                                  jax.random.PRNGKey(step))['x']) for step in (1, 2))
  assert set(np.unique(first)) == {0.0, 1.0} and abs(first.mean() - 0.3) < 0.01
  assert not np.array_equal(first, second)
  a = np.asarray(next(input_pipeline.eval_batches(split, 64, augment=vae_experiment.binarize))['x'])
  b = np.asarray(next(input_pipeline.eval_batches(split, 64, augment=vae_experiment.binarize))['x'])
  np.testing.assert_array_equal(a, b)


def test_vae_tiny_writes_results_and_every_plot(tmp_path):
  with mock_tfds(64):
    launcher.run(tiny(vae_config), str(tmp_path))
  for plot in ('curves', 'latent_space', 'manifold', 'prior_samples', 'reconstructions',
               'same_image'):
    assert os.path.getsize(tmp_path / 'plots' / f'{plot}.png') > 1000, plot
  results = read_results(tmp_path)
  assert {'test_neg_elbo', 'test_reconstruction', 'test_kl', 'test_iwae_nll'} <= set(results)
  assert results['test_iwae_nll'] <= results['test_neg_elbo'] + 1.0


def test_short_real_vae_run_beats_random_bits_by_far(mnist_dir, tmp_path):
  config = vae_config.get_config('latent20')
  config.update(manual_dir=mnist_dir, data_dir=str(tmp_path / 'tfds'), num_epochs=1,
                steps_per_epoch=300, iwae_samples=10)
  results = vae_experiment.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['test_neg_elbo'] < 200, results['test_neg_elbo']  # 784 ln 2 = 543.
  assert results['test_iwae_nll'] < results['test_neg_elbo']


def test_bernoulli_nll_is_optax_binary_cross_entropy_in_value_and_gradient():
  logits = jnp.array([-200.0, -30.0, -1.5, -1e-3, 0.0, 1e-3, 0.7, 30.0, 200.0])
  for x in (jnp.zeros_like(logits), jnp.ones_like(logits), jnp.full_like(logits, 0.3)):
    np.testing.assert_allclose(tasks.bernoulli_nll(logits, x),
                               optax.sigmoid_binary_cross_entropy(logits, x), rtol=1e-6, atol=1e-6)
    grad = lambda f: jax.grad(lambda l: f(l, x).sum())(logits)
    np.testing.assert_allclose(grad(tasks.bernoulli_nll), grad(optax.sigmoid_binary_cross_entropy),
                               rtol=1e-6, atol=1e-6)
