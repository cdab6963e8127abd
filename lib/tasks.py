"""Per-example losses and metrics. The engine minimizes the mean of 'loss' and averages every entry.

A task maps the model's outputs and the batch to a dict of arrays of shape
(batch,). Keeping values per example lets evaluation mask padding exactly.
"""
import jax
import jax.numpy as jnp
import optax


def classification(logits: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Softmax cross-entropy on logits (stable: log-softmax, never log(softmax)) and accuracy."""
  labels = batch['y']
  return {
      'loss': optax.softmax_cross_entropy_with_integer_labels(logits, labels),
      'accuracy': (jnp.argmax(logits, -1) == labels).astype(jnp.float32),
  }


def regression(predictions: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Mean squared error (the loss) and mean absolute error over each example's outputs."""
  error = predictions - batch['y'].reshape(predictions.shape)
  axes = tuple(range(1, error.ndim))
  return {'loss': jnp.mean(error**2, axes), 'mae': jnp.mean(jnp.abs(error), axes)}


def vae(outputs: dict[str, jax.Array], batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Negative ELBO in nats per example: Bernoulli reconstruction + closed-form KL(q(z|x) || N(0, I))."""
  logits, mean, logvar = outputs['logits'], outputs['mean'], outputs['logvar']
  x = batch['x'].reshape(logits.shape)
  reconstruction = bernoulli_nll(logits, x).sum(-1)
  kl = 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar, -1)
  return {'loss': reconstruction + kl, 'reconstruction': reconstruction, 'kl': kl}


def bernoulli_nll(logits: jax.Array, x: jax.Array) -> jax.Array:
  """-log p(x) of each x in {0, 1} (or a probability) under Bernoulli(sigmoid(logits)), elementwise.

  optax.sigmoid_binary_cross_entropy's values and gradient, written as TF's
  sigmoid_cross_entropy_with_logits: max(l, 0) - x l + log(1 + exp(-|l|)). One
  softplus instead of optax's two log-sigmoids: half the transcendentals, and it
  is the VAE step's largest elementwise cost.
  """
  positive = logits >= 0  # One branch for both max and |.|: the gradient at 0 is sigmoid(0) - x.
  return (jnp.where(positive, logits, 0.0) - x * logits +
          jnp.log1p(jnp.exp(jnp.where(positive, -logits, logits))))


def reconstruction(images: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Mean squared error against the clean image batch['clean'] (pixels in [0, 1]) and its PSNR.

  PSNR is 10 log10(1 / MSE) in dB per image (peak value 1), averaged over
  images as in the denoising literature. With a batch['hole'] (1 inside the
  region cut out of the input, 0 elsewhere) it adds 'hole_mse', the error
  inside that region alone: what inpainting had to invent.
  """
  error = (images - batch['clean'].reshape(images.shape))**2
  axes = tuple(range(1, error.ndim))
  mse = jnp.mean(error, axes)
  values = {'loss': mse, 'mse': mse, 'psnr': psnr(mse)}
  if 'hole' in batch:
    hole = batch['hole'].reshape(images.shape)
    values['hole_mse'] = jnp.sum(hole * error, axes) / jnp.maximum(jnp.sum(hole, axes), 1.0)
  return values


def psnr(mse: jax.Array) -> jax.Array:
  """Peak signal-to-noise ratio in dB of images with values in [0, 1]; 100 dB for a perfect copy."""
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))


def huber(predictions: jax.Array, batch: dict[str, jax.Array], delta: float = 1.0,
          scale: float = 1.0) -> dict[str, jax.Array]:
  """Huber loss (quadratic within `delta` of the target, linear beyond) and mean absolute error.

  `scale` multiplies the error first: a model that works on standardized values
  gets its loss and MAE in the data's own units.
  """
  error = (predictions - batch['y'].reshape(predictions.shape)) * scale
  axes = tuple(range(1, error.ndim))
  return {
      'loss': jnp.mean(optax.huber_loss(error, delta=delta), axes), 'mae': jnp.mean(
          jnp.abs(error), axes)
  }
