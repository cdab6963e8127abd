"""Autoencoders: compression to a latent vector, denoising and inpainting, as the notes describe.

The encoder squeezes an image into `latents` numbers and the decoder rebuilds
it; the loss is the mean squared error against the clean image. The
corruption (config.corruption) is applied in the step, in JAX, to the
encoder's input only: Gaussian plus salt-and-pepper noise teaches a denoiser,
a random rectangle cut out teaches inpainting. Evaluation corrupts every test
image the same way in every run, so numbers compare across runs and against
the baselines reported beside them: the corrupted input's own PSNR, and for
inpainting the error of filling the hole with the mean training image.
With config.latent_sweep it trains one model per latent size and plots PSNR
against size: the notes' "more latent variables, sharper images".
"""
import copy
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lib import aot
from lib import input_pipeline
from lib import models
from lib import plots
from lib import tasks
from lib import train
from lib import workdir as workdir_lib
from lib.errors import UserError

CORRUPTIONS = ('none', 'noise', 'mask')


def check(config: ml_collections.ConfigDict, shape: tuple[int, ...]) -> None:
  """Checks the autoencoder's own fields for images of `shape` (H, W, C).

  Raises:
    UserError: naming the field, its value and what is allowed.
  """
  if config.corruption not in CORRUPTIONS:
    raise UserError(f'config.corruption={config.corruption!r} is unknown; '
                    f'choose one of {list(CORRUPTIONS)}')
  if config.normalization != 'unit':
    raise UserError(f"config.normalization={config.normalization!r}: the autoencoder needs "
                    "'unit' (pixels in [0, 1], the range of its sigmoid output and of PSNR)")
  if config.noise_std < 0 or not 0 <= config.salt_pepper <= 1:
    raise UserError('config.noise_std must be >= 0 and config.salt_pepper in [0, 1]')
  if not 1 <= config.mask_min <= config.mask_max <= min(shape[:2]):
    raise UserError(f'config.mask_min={config.mask_min} and config.mask_max={config.mask_max} '
                    f'must satisfy 1 <= mask_min <= mask_max <= {min(shape[:2])} (the image side)')
  for n in config.latent_sweep:
    if not isinstance(n, int) or n < 1:
      raise UserError(f'config.latent_sweep={config.latent_sweep} must hold positive integers')


def corruption(config: ml_collections.ConfigDict) -> input_pipeline.Augment:
  """The config's corruption as an input_pipeline.Augment (one image and its key, in JAX).

  It keeps the image as 'clean' (the target) and puts the corrupted image in
  'x'; 'mask' also adds 'hole', 1 inside the cut-out rectangle.
  """
  mode = config.corruption

  def augment(example: input_pipeline.Example, key: jax.Array) -> input_pipeline.Example:
    clean = example['x']
    out = {**example, 'clean': clean}
    keys = jax.random.split(key, 3)
    if mode == 'noise':
      noisy = clean + config.noise_std * jax.random.normal(keys[0], clean.shape)
      hit, salt = input_pipeline.uniform16(keys[1], (2, *clean.shape))
      hit, salt = hit < config.salt_pepper, (salt < 0.5).astype(clean.dtype)
      out['x'] = jnp.clip(jnp.where(hit, salt, noisy), 0.0, 1.0)
    elif mode == 'mask':
      size = jax.random.randint(keys[0], (2,), config.mask_min, config.mask_max + 1)
      corner = jax.random.randint(keys[1], (2,), 0, jnp.array(clean.shape[:2]) - size + 1)
      rows = jnp.arange(clean.shape[0])[:, None, None]
      cols = jnp.arange(clean.shape[1])[None, :, None]
      inside = ((rows >= corner[0]) & (rows < corner[0] + size[0]) & (cols >= corner[1]) &
                (cols < corner[1] + size[1]))
      hole = jnp.broadcast_to(inside.astype(clean.dtype), clean.shape)
      out['x'] = clean * (1.0 - hole)
      out['hole'] = hole
    return out

  return augment


def _mean_image(split: input_pipeline.Source) -> jax.Array:
  """The mean training image."""
  total, count = 0.0, 0
  for batch in input_pipeline.eval_batches(split, 1000):
    mask = batch['mask'].reshape(-1, *([1] * (batch['x'].ndim - 1)))
    total = total + jnp.sum(jnp.where(mask, batch['x'], 0.0), 0)
    count += jnp.sum(batch['mask'])
  return total / count


def baselines(config: ml_collections.ConfigDict, data: input_pipeline.ImageData,
              augment: input_pipeline.Augment) -> dict[str, float]:
  """What the model is measured against, on the same fixed corrupted test images.

  Returns:
    For 'noise' and 'mask': test_input_mse and test_input_psnr, the corrupted
    input compared with the clean image. For 'mask' also
    test_input_hole_mse (the hole left at 0) and test_mean_image_hole_mse
    (the hole filled with the mean training image). {} for 'none'.
  """
  if config.corruption == 'none':
    return {}
  mean_image = _mean_image(data.train) if config.corruption == 'mask' else None
  sums = {}
  for batch in input_pipeline.eval_batches(data.test, 1000, augment=augment):
    keep = batch['mask']
    clean, x = batch['clean'], batch['x']
    axes = tuple(range(1, clean.ndim))
    mse = jnp.mean((x - clean)**2, axes)
    values = {'test_input_mse': mse, 'test_input_psnr': tasks.psnr(mse)}
    if mean_image is not None:
      hole = batch['hole']
      area = hole.sum(axes)
      values['test_input_hole_mse'] = jnp.sum(hole * (x - clean)**2, axes) / area
      values['test_mean_image_hole_mse'] = jnp.sum(hole * (mean_image - clean)**2, axes) / area
    values['count'] = jnp.ones_like(mse)
    for k, v in values.items():
      sums[k] = sums.get(k, 0.0) + jnp.sum(jnp.where(keep, v, 0.0))
  count = sums.pop('count')
  return {k: float(v / count) for k, v in sums.items()}


def _train_one(config: ml_collections.ConfigDict, workdir: str, data: input_pipeline.ImageData,
               augment: input_pipeline.Augment) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Trains one autoencoder in `workdir`: checkpoints, events and plots.

  Returns:
    The results, and the first test images: clean, corrupted and reconstructed.
  """
  model = models.create(config.model, shape=data.image_shape, **config.model_kwargs)
  state, summary = train.fit(config, workdir, model=model, task=tasks.reconstruction,
                             train=data.train, val=data.val, test=data.test, augment=augment)
  results = {
      **summary, **baselines(config, data, augment), 'corruption': config.corruption,
      'latents': config.model_kwargs.latents
  }
  batch = input_pipeline.first_examples(data.test, config.plot_examples, augment)
  output = jax.jit(model.apply)({'params': state.params, **state.model_state}, batch['x'])
  images = {'input': batch['clean'], 'corrupted': batch['x'], 'output': np.asarray(output)}
  if jax.process_index() == 0:
    plot_dir = os.path.join(workdir, 'plots')
    if summary['history']:
      plots.training_curves(summary['history'], os.path.join(plot_dir, 'curves.png'))
    rows = ['input', 'output'] if config.corruption == 'none' else ['input', 'corrupted', 'output']
    plots.image_grid(
        np.concatenate([images[r] for r in rows]), len(rows),
        os.path.join(plot_dir, 'reconstructions.png'),
        f'{config.model}, {config.model_kwargs.latents} latents, corruption '
        f"'{config.corruption}': test PSNR {summary['test_psnr']:.2f} dB", rows)
  return results, images


def headline(results: dict[str, Any]) -> str:
  """Test PSNR, per latent size for a sweep, beside the corrupted input's."""
  runs = results.get('latent_sweep') or [results]
  line = ', '.join(f"{r['latents']} latents {r['test_psnr']:.2f} dB" for r in runs)
  if 'test_input_psnr' in results:
    line += f" (the corrupted input: {results['test_input_psnr']:.2f} dB)"
  return f"test PSNR: {line}"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the configured autoencoder, or one per size of config.latent_sweep.

  Args:
    config: configs/autoencoder.py.
    workdir: the run's directory; a sweep puts each size's run in latents_N/.

  Returns:
    The results (the launcher writes them to results.json).
  """
  info = input_pipeline.image_info(config)  # Checked before any work.
  shape = info.image_shape
  check(config, shape)
  for n in config.latent_sweep or (config.model_kwargs.latents,):
    models.create(config.model, shape=shape, **{**config.model_kwargs, 'latents': n})
  data = input_pipeline.image_classification(config, info=info)
  augment = corruption(config)
  if not config.latent_sweep:
    return _train_one(config, workdir, data, augment)[0]

  if aot.active():  # --compile_for: each latent size's model.
    for n in config.latent_sweep:
      sub = copy.deepcopy(config)
      sub.model_kwargs.latents, sub.latent_sweep = n, ()
      with aot.part(f'latents_{n}'):
        _train_one(sub, os.path.join(workdir, f'latents_{n}'), data, augment)
    raise aot.Compiled()

  runs, outputs = [], []
  for n in config.latent_sweep:
    sub = copy.deepcopy(config)
    sub.model_kwargs.latents = n
    sub.latent_sweep = ()
    run_start = time.time()
    sub_workdir = os.path.join(workdir, f'latents_{n}')
    results, images = _train_one(sub, sub_workdir, data, augment)
    workdir_lib.write_results(sub_workdir, results, sub, run_start)
    runs.append({
        **{k: results[k] for k in ('latents', 'params', 'test_mse', 'test_psnr')}, 'wall_seconds':
            round(time.time() - run_start, 2)
    })
    outputs.append(images['output'])
  sweep = {
      'latent_sweep': runs, 'corruption': config.corruption, **baselines(config, data, augment)
  }
  if jax.process_index() == 0:
    plot_dir = os.path.join(workdir, 'plots')
    sizes = list(config.latent_sweep)
    plots.lines(sizes, {config.model: [r['test_psnr'] for r in runs]},
                os.path.join(plot_dir,
                             'latent_sweep.png'), xlabel='latent size', ylabel='test PSNR (dB)',
                title='more latent variables, sharper reconstructions', logx=2)
    plots.image_grid(np.concatenate([images['corrupted'], *outputs]), 1 + len(sizes),
                     os.path.join(plot_dir, 'latent_sweep_images.png'),
                     'test images (top), then reconstructions from each latent size',
                     ['input', *(f'{n} latents' for n in sizes)])
  return sweep
