"""Variational autoencoder: the notes' probabilistic latent layer, reparameterization and 2-D latent space.

The encoder gives a mean and a log-variance per latent; the latent is sampled
as z = mean + exp(logvar / 2) * eps with an explicit 'sample' key, so the
gradient reaches the encoder through z (the reparameterization trick). The
loss is the negative ELBO in nats (Bernoulli reconstruction + closed-form KL).
Training images are binarized anew each time they are drawn (dynamic
binarization, in the step); the test set is binarized the same way in every
evaluation and every run, with a fixed key per image.
After training the experiment reports the importance-weighted bound on
-log p(x) with k samples (Burda et al. 2016), tighter than the ELBO.
"""
import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import ml_collections
import numpy as np

from lib import aot
from lib import input_pipeline
from lib import models
from lib import parallel
from lib import plots
from lib import tasks
from lib import train

# The results are fit's metrics; the IWAE bound is the first model's (the headline says so).
REPORTS_EACH_MEMBER = True


def binarize(example: input_pipeline.Example, key: jax.Array) -> input_pipeline.Example:
  """Each pixel becomes 1 with its intensity as probability (an input_pipeline.Augment)."""
  x = example['x']
  return {**example, 'x': (input_pipeline.uniform16(key, x.shape) < x).astype(jnp.float32)}


def iwae_nll(model: models.VAE, params: Any, x: jax.Array, key: jax.Array, k: int) -> jax.Array:
  """-log p(x) estimated with k importance samples from q(z|x); shape (batch,).

  With k = 1 this is the one-sample estimate of the negative ELBO; it can only
  tighten, on average, as k grows.
  """
  variables = {'params': params}
  mean, logvar = model.apply(variables, x, method=models.VAE.encode)
  std = jnp.exp(0.5 * logvar)
  z = mean + std * jax.random.normal(key, (k, *mean.shape))
  # Sample by sample (vmapped), not as one (k * batch) batch: merged, the batch axis split over
  # the devices is lost and every device decodes every example.
  logits = jax.vmap(lambda z: model.apply(variables, z, method=models.VAE.decode))(z)
  logits = logits.reshape(k, x.shape[0], -1)
  log_px_z = -tasks.bernoulli_nll(logits, x.reshape(1, x.shape[0], -1)).sum(-1)
  log_pz = jax.scipy.stats.norm.logpdf(z).sum(-1)
  log_qz = jax.scipy.stats.norm.logpdf(z, mean, std).sum(-1)
  return -(jax.nn.logsumexp(log_px_z + log_pz - log_qz, axis=0) - math.log(k))


def _decoded(model: models.VAE, params: Any, images: jax.Array, grid: jax.Array | None,
             key: jax.Array) -> dict[str, jax.Array]:
  """What the figures show, computed in one call: prior samples, reconstructions, resampling.

  Args:
    model: the VAE.
    params: its params.
    images: (16, ...) test images.
    grid: (n * n, 2) latent points to decode (the 2-D manifold), or None.
    key: splits into the prior's samples and the encoder's samples of z.

  Returns:
    Pixel probabilities (sigmoid of the logits) keyed by figure; 'z': the 8 codes of images[0].
  """
  variables = {'params': params}
  decode = lambda z: jax.nn.sigmoid(model.apply(variables, z, method=models.VAE.decode))
  key_prior, key_same = jax.random.split(key)
  out = {'prior': decode(jax.random.normal(key_prior, (32, model.latents)))}
  if grid is not None:
    out['manifold'] = decode(grid)
  out['reconstructions'] = jax.nn.sigmoid(
      model.apply(variables, images, rngs={'sample': key_same})['logits'])
  same = model.apply(variables, jnp.repeat(images[:1], 8, axis=0), rngs={'sample': key_same})
  return {**out, 'same': jax.nn.sigmoid(same['logits']), 'z': same['z']}


def _plots(model, state, data, config, plot_dir: str) -> None:
  """The figures of the notes: latent space, 2-D manifold, prior samples, reconstructions, resampling.

  The model runs in two compiled functions (the test set's codes, then `_decoded`):
  run op by op, its small calls would compile one by one for seconds.
  """
  encode = jax.jit(
      lambda params, x: model.apply({'params': params}, x, method=models.VAE.encode)[0])
  means, labels = [], []
  for batch in input_pipeline.eval_batches(data.test, 1000, augment=binarize):
    batch, mean = jax.device_get((batch, encode(state.params, batch['x'])))
    keep = batch['mask']
    means.append(mean[keep])
    labels.append(batch['y'][keep])
    if len(means) == 1:
      images = batch['x'][keep][:16]  # The first test images, for reconstructions.
  means, labels = np.concatenate(means), np.concatenate(labels)
  latents = means.shape[1]
  points = means if latents == 2 else (means - means.mean(0)) @ np.linalg.svd(
      means - means.mean(0), full_matrices=False)[2][:2].T
  fig, ax = plt.subplots(figsize=(6, 5))
  scatter = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap='tab10', s=2)
  fig.colorbar(scatter, ax=ax, ticks=range(10), label='digit')
  ax.set(xlabel='z[0]' if latents == 2 else 'PC 1', ylabel='z[1]' if latents == 2 else 'PC 2',
         title=f'test-set latent means ({latents}-D' + (')' if latents == 2 else ', PCA to 2-D)'))
  plots.save(fig, os.path.join(plot_dir, 'latent_space.png'))

  n, grid = config.plot_latent_grid, None
  if latents == 2:  # The notes' "new digits" from a grid through the Gaussian's quantiles.
    q = np.asarray(jax.scipy.special.ndtri(np.linspace(0.05, 0.95, n)))
    grid = np.stack(np.meshgrid(q, q[::-1]), -1).reshape(-1, 2).astype(np.float32)
  out = jax.device_get(
      jax.jit(functools.partial(_decoded, model))(state.params, images, grid,
                                                  jax.random.PRNGKey(config.seed)))
  if latents == 2:
    plots.image_grid(out['manifold'], n, os.path.join(plot_dir, 'manifold.png'),
                     f'decoded from a {n}x{n} grid of Gaussian quantiles of z')
  plots.image_grid(out['prior'], 4, os.path.join(plot_dir, 'prior_samples.png'),
                   'decoded samples z ~ N(0, I) of the prior')
  plots.image_grid(np.concatenate([images.reshape(16, -1), out['reconstructions']]), 2,
                   os.path.join(plot_dir, 'reconstructions.png'),
                   'test images (top), reconstructions', ['input', 'output'])
  z_text = ', '.join(f'({a:.2f}, {b:.2f})' for a, b in out['z'][:4, :2])
  plots.image_grid(
      np.concatenate([np.repeat(images[:1], 8, axis=0).reshape(8, -1), out['same']]), 2,
      os.path.join(plot_dir, 'same_image.png'),
      f'one image, 8 samples of z: a different latent each time\nz[:2] = {z_text}, ...',
      ['input', 'decoded'])


def _compile_iwae(bound, state: Any, test: input_pipeline.Source, batch_size: int) -> None:
  """lib.aot: the IWAE bound's programs (its batches, the bound) for the trained state."""
  get, args, batch = input_pipeline.eval_batch_program(test, batch_size, binarize)
  batches = test.num_eval_batches(batch_size)
  aot.compile(f'IWAE: batch of {batch_size} prepared', get, *args, calls=batches,
              data_bytes=aot.nbytes(args[0]))
  key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=parallel.replicated(parallel.make_mesh()))
  first = train.member(state, 0) if train.members(state) else state  # Seed config.seed's model.
  aot.compile('IWAE: the bound', bound, first.params, batch['x'], key, calls=batches)


def headline(results: dict[str, Any]) -> str:
  """The test bounds on -log p(x), in nats."""
  line = (f"{results['latents']} latents: test negative ELBO {results['test_neg_elbo']:.2f} nats, "
          f"IWAE-{results['iwae_samples']} NLL {results['test_iwae_nll']:.2f}")
  if 'members' in results:
    line += f" of seed {results['members']['seed'][0]}'s model"
  return line


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the VAE; writes results.json (negative ELBO, its terms, IWAE bound) and the plots.

  Args:
    config: configs/vae.py.
    workdir: the run's directory.

  Returns:
    The results (the launcher writes them to results.json).
  """
  info = input_pipeline.image_info(config)  # Checked before any work.
  model = models.create(config.model, outputs=int(np.prod(info.image_shape)), **config.model_kwargs)
  data = input_pipeline.image_classification(config, info=info)
  # The IWAE bound over every (fixed-binarized) test example, after training.
  bound = jax.jit(lambda params, x, key: iwae_nll(model, params, x, key, config.iwae_samples))
  # 100 examples per device: k samples of 784 logits each stay small in memory.
  iwae_batch = 100 * parallel.device_count()
  aot.after_training(lambda state: _compile_iwae(bound, state, data.test, iwae_batch))
  state, summary = train.fit(config, workdir, model=model, task=tasks.vae, train=data.train,
                             val=data.val, test=data.test, rng_streams=('sample',),
                             augment=binarize)

  total, count = 0.0, 0
  for i, batch in enumerate(input_pipeline.eval_batches(data.test, iwae_batch, augment=binarize)):
    nll = bound(state.params, batch['x'], jax.random.fold_in(jax.random.PRNGKey(config.seed), i))
    total += float(jnp.sum(jnp.where(batch['mask'], nll, 0.0)))
    count += int(jnp.sum(batch['mask']))
  results = {
      **summary, 'test_neg_elbo': summary['test_loss'], 'test_iwae_nll': total / count,
      'iwae_samples': config.iwae_samples, 'latents': config.model_kwargs.latents
  }
  if jax.process_index() == 0:
    plot_dir = os.path.join(workdir, 'plots')
    if summary['history']:
      plots.training_curves(summary['history'], os.path.join(plot_dir, 'curves.png'))
    _plots(model, state, data, config, plot_dir)
  return results
